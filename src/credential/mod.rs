//! Credential decoding: the x402 envelope (base64 JSON) and legacy bearer JWTs.
//!
//! This is step 1 and the local half of step 2 of the request lifecycle:
//!
//! - [`extract_credential`] finds the caller's credential in the request headers
//!   (`payment-signature`, then `authorization: Bearer …`) and decodes it into a
//!   [`Credential`], without any I/O.
//! - [`decode_x402_token`] / [`encode_x402_token`] read and write the x402 v2 access
//!   token (docs/wire-notes.md §6.3). An x402 token is authenticated by the facilitator, not here.
//! - [`BearerVerifier`] verifies a legacy bearer JWT (docs/wire-notes.md §7.4) against the
//!   issuer's JWKS: EdDSA and ES256 only, `kid`-selected, `exp`/`nbf` checked.
//!
//! Every function here is total: any input, however hostile, gives a value or a
//! [`TokenError`], never a panic. Header values over [`MAX_CREDENTIAL_BYTES`] are refused
//! before they are decoded, and no error message contains the credential.
//! [`TokenError::is_malformed`] tells a caller-facing `400 malformed_token` from a
//! `402 invalid_token`.
//!
//! ```
//! use http::{HeaderMap, HeaderValue};
//! use nvm_payments::credential::{
//!     decode_x402_token, default_token_headers, encode_x402_token, extract_credential,
//!     Credential,
//! };
//! use nvm_payments::types::{
//!     PaymentScheme, TokenAuthorization, TokenPayload, X402TokenPayload,
//! };
//!
//! let payload = X402TokenPayload {
//!     x402_version: 2,
//!     accepted: PaymentScheme {
//!         scheme: "nvm:erc4337".into(),
//!         network: "eip155:84532".into(),
//!         plan_id: "42".parse()?,
//!         extra: None,
//!     },
//!     payload: TokenPayload {
//!         signature: "0xsig".into(),
//!         authorization: TokenAuthorization {
//!             from: "0x71e6F7f8C68e7e2E96B3c90655c2D2cA376Bc3fd".parse()?,
//!             session_keys_provider: Some("zerodev".into()),
//!             session_keys: vec![],
//!             nonce: None,
//!         },
//!     },
//!     extensions: Default::default(),
//!     resource: None,
//! };
//!
//! // Encode as the SDKs do, then decode.
//! let token = encode_x402_token(&payload);
//! assert_eq!(decode_x402_token(&token)?, payload);
//!
//! // A request carrying it in the x402 v2 header.
//! let mut headers = HeaderMap::new();
//! headers.insert("payment-signature", HeaderValue::from_str(&token)?);
//! let credential = extract_credential(&headers, &default_token_headers())?;
//! match credential {
//!     Some(Credential::X402 { payload: p, .. }) => assert_eq!(p.accepted.plan_id.as_str(), "42"),
//!     other => panic!("expected an x402 credential, got {other:?}"),
//! }
//!
//! // No credential at all is not an error: the layer answers 402 payment_required.
//! assert!(extract_credential(&HeaderMap::new(), &default_token_headers())?.is_none());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod extract;
mod jwt;
mod x402;

pub use error::TokenError;
pub use extract::{
    canonical_digest, default_token_headers, extract_credential, find_credential, Credential,
};
pub(crate) use extract::{credential_bytes, hash_canonical, same_canonical, same_canonical_bytes};
pub use jwt::BearerVerifier;
pub use x402::{decode_x402_token, encode_x402_token};

/// The largest credential header value accepted, in bytes. Larger values are refused
/// with [`TokenError::TooLarge`] before any decoding.
pub const MAX_CREDENTIAL_BYTES: usize = 8 * 1024;

#[cfg(test)]
pub(crate) mod test_support;
