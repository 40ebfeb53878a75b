//! Credential decoding: the x402 envelope (base64 JSON) and legacy bearer JWTs.
