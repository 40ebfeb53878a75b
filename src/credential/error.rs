//! [`TokenError`]: why a credential could not be decoded or verified.

/// Why a credential was refused.
///
/// No message ever contains the credential itself: messages name the problem and, for
/// JSON errors, the path of the offending field, with string literals redacted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The header value is longer than [`MAX_CREDENTIAL_BYTES`](super::MAX_CREDENTIAL_BYTES).
    #[error("credential is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Length of the value, in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The header value holds bytes other than visible ASCII.
    #[error("credential header is not visible ASCII")]
    NotUtf8,
    /// The credential is not valid base64.
    #[error("credential is not valid base64")]
    Base64,
    /// The decoded JSON does not have the expected shape.
    #[error("credential JSON is invalid at `{path}`: {message}")]
    Json {
        /// Path of the offending field (`.` for the document itself).
        path: String,
        /// What is wrong there (string literals redacted).
        message: String,
    },
    /// An x402 envelope of another protocol version.
    #[error("x402 version {0} is not supported (expected 2)")]
    WrongVersion(u32),
    /// Not a compact JWS: three `.`-separated base64url segments.
    #[error("credential is not a JWT")]
    NotAJwt,
    /// The JWT's `alg` is not allowed (or does not match its key).
    #[error("JWT algorithm `{0}` is not accepted")]
    UnsupportedAlgorithm(String),
    /// No trusted key has the JWT's `kid`.
    #[error("JWT is signed with an unknown key")]
    UnknownKey,
    /// The signature does not verify against the selected key.
    #[error("JWT signature is invalid")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("JWT has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("JWT is not valid yet")]
    NotYetValid,
    /// A claim is missing, has the wrong type, or has an unexpected value.
    #[error("JWT claims are invalid: {0}")]
    Claims(String),
    /// The key set holds no EdDSA (Ed25519) or ES256 (P-256) key this crate can use.
    #[error("the key set holds no usable EdDSA or ES256 key")]
    NoKeys,
}

impl TokenError {
    /// Whether the credential could not even be decoded (or was too large).
    ///
    /// `true`: the layer answers `400 malformed_token`. `false`: the credential is
    /// readable but not acceptable (forged, expired, wrong version or algorithm), and the
    /// layer answers `402 invalid_token`.
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            TokenError::TooLarge { .. }
                | TokenError::NotUtf8
                | TokenError::Base64
                | TokenError::Json { .. }
                | TokenError::NotAJwt
        )
    }

    /// A JSON error from `serde_path_to_error`, with string literals redacted: serde
    /// echoes unexpected string values, and those come from the credential.
    pub(crate) fn json(err: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let path = err.path().to_string();
        TokenError::Json {
            path: bounded(&path),
            message: redact_literals(&err.into_inner().to_string()),
        }
    }
}

/// Longest message or path kept in an error, in characters.
const MAX_ERROR_TEXT: usize = 160;

fn bounded(s: &str) -> String {
    if s.chars().count() <= MAX_ERROR_TEXT {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(MAX_ERROR_TEXT).collect();
        out.push('…');
        out
    }
}

/// Replaces the content of every `"…"` literal with `…` and bounds the length.
pub(crate) fn redact_literals(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len().min(MAX_ERROR_TEXT));
    let mut in_literal = false;
    for c in msg.chars() {
        if c == '"' {
            if !in_literal {
                out.push_str("\"…");
            }
            in_literal = !in_literal;
            if !in_literal {
                out.push('"');
            }
        } else if !in_literal {
            out.push(c);
        }
    }
    bounded(&out)
}

/// An attacker-chosen name (a JWT `alg`) made safe to show: printable ASCII, bounded.
pub(crate) fn sanitized_name(name: &str) -> String {
    const MAX_NAME: usize = 16;
    let mut out: String = name
        .chars()
        .take(MAX_NAME)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    if name.chars().count() > MAX_NAME {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_string_literals() {
        let m = redact_literals(r#"invalid type: string "secret-value", expected u32"#);
        assert_eq!(m, r#"invalid type: string "…", expected u32"#);
        assert!(!m.contains("secret"));
    }

    #[test]
    fn redaction_handles_unterminated_literal() {
        let m = redact_literals(r#"oops "secret"#);
        assert!(!m.contains("secret"));
    }

    #[test]
    fn names_are_bounded_and_printable() {
        assert_eq!(sanitized_name("ES256K"), "ES256K");
        assert_eq!(sanitized_name("a\nb"), "a?b");
        let long = "A".repeat(100);
        assert!(sanitized_name(&long).chars().count() <= 17);
    }

    #[test]
    fn malformed_split() {
        assert!(TokenError::Base64.is_malformed());
        assert!(TokenError::TooLarge { len: 9, max: 8 }.is_malformed());
        assert!(TokenError::NotAJwt.is_malformed());
        assert!(!TokenError::Expired.is_malformed());
        assert!(!TokenError::BadSignature.is_malformed());
        assert!(!TokenError::WrongVersion(1).is_malformed());
        assert!(!TokenError::UnsupportedAlgorithm("none".into()).is_malformed());
    }
}
