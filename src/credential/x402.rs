//! The x402 v2 access token: base64 of the JSON "PaymentPayload" (docs/wire-notes.md §6.3).

use base64::alphabet;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;

use super::{TokenError, MAX_CREDENTIAL_BYTES};
use crate::types::{X402TokenPayload, X402_VERSION};

const LENIENT_PADDING: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
/// URL-safe alphabet, padding optional: what the SDKs try first.
const URL_SAFE_ANY_PAD: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT_PADDING);
/// Standard alphabet, padding optional: backend-minted tokens.
const STANDARD_ANY_PAD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT_PADDING);

/// Decodes an x402 access token (the `payment-signature` header value).
///
/// Surrounding whitespace is ignored. Like the SDK decoders, URL-safe base64 is tried
/// first, then standard base64; padding is optional in both. The JSON must be an x402
/// version 2 "PaymentPayload". Nothing is verified here: the signature is checked by the
/// facilitator.
///
/// # Errors
/// [`TokenError::TooLarge`] over [`MAX_CREDENTIAL_BYTES`], [`TokenError::Base64`],
/// [`TokenError::Json`] (with the path of the bad field), [`TokenError::WrongVersion`].
pub fn decode_x402_token(raw: &str) -> Result<X402TokenPayload, TokenError> {
    if raw.len() > MAX_CREDENTIAL_BYTES {
        return Err(TokenError::TooLarge {
            len: raw.len(),
            max: MAX_CREDENTIAL_BYTES,
        });
    }
    let b64 = raw.trim();
    let json = URL_SAFE_ANY_PAD
        .decode(b64)
        .or_else(|_| STANDARD_ANY_PAD.decode(b64))
        .map_err(|_| TokenError::Base64)?;
    let value: serde_json::Value = parse(&mut serde_json::Deserializer::from_slice(&json))?;
    check_version(&value)?;
    parse(value)
}

/// Encodes a token the way the SDKs' `encode_access_token` does: compact JSON,
/// base64url without padding.
pub fn encode_x402_token(payload: &X402TokenPayload) -> String {
    // Serialising these plain structs (string keys, no floats) cannot fail; an empty
    // token would be refused by any decoder, so it is a safe fallback.
    let json = serde_json::to_vec(payload).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

fn parse<'de, T, D>(de: D) -> Result<T, TokenError>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de, Error = serde_json::Error>,
{
    serde_path_to_error::deserialize(de).map_err(TokenError::json)
}

/// A numeric `x402Version` other than 2 is reported as such, before the shape is checked,
/// because other versions have other shapes.
fn check_version(value: &serde_json::Value) -> Result<(), TokenError> {
    match value.get("x402Version").and_then(serde_json::Value::as_u64) {
        Some(v) if v != u64::from(X402_VERSION) => Err(TokenError::WrongVersion(
            u32::try_from(v).unwrap_or(u32::MAX),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;

    use super::*;
    use crate::credential::test_support::FIXTURE_JSON;

    #[test]
    fn decodes_the_wire_spec_fixture_in_standard_padded_base64() {
        let token = STANDARD.encode(FIXTURE_JSON);
        let p = decode_x402_token(&token).unwrap();
        assert_eq!(p.x402_version, 2);
        assert_eq!(p.accepted.scheme, "nvm:erc4337");
        assert_eq!(p.accepted.network, "eip155:84532");
        assert_eq!(
            p.accepted.plan_id.as_str(),
            "105906633592154016712415751065660953070604027297000423385655551747721326921578"
        );
        assert_eq!(p.accepted.agent_id().map(|a| a.as_str()), Some("4242"));
        assert_eq!(
            p.payload.authorization.from.as_str(),
            "0x71e6F7f8C68e7e2E96B3c90655c2D2cA376Bc3fd"
        );
        assert_eq!(
            p.payload.authorization.session_keys_provider.as_deref(),
            Some("zerodev")
        );
        assert_eq!(p.payload.signature, "0x1b2c3d");
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let p = decode_x402_token(&STANDARD.encode(FIXTURE_JSON)).unwrap();
        let token = encode_x402_token(&p);
        assert!(!token.contains('='), "the SDK encoder does not pad");
        assert!(!token.contains('+') && !token.contains('/'));
        assert_eq!(decode_x402_token(&token).unwrap(), p);
    }

    #[test]
    fn accepts_every_base64_flavour_and_surrounding_whitespace() {
        let p = decode_x402_token(&STANDARD.encode(FIXTURE_JSON)).unwrap();
        let json = serde_json::to_vec(&p).unwrap();
        for token in [
            URL_SAFE_NO_PAD.encode(&json),
            base64::engine::general_purpose::URL_SAFE.encode(&json),
            STANDARD.encode(&json),
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(&json),
            format!("  {}\t", STANDARD.encode(&json)),
        ] {
            assert_eq!(decode_x402_token(&token).unwrap(), p, "{token}");
        }
    }

    #[test]
    fn refuses_other_versions() {
        let v1 = FIXTURE_JSON.replace("\"x402Version\": 2", "\"x402Version\": 1");
        assert_eq!(
            decode_x402_token(&STANDARD.encode(v1)),
            Err(TokenError::WrongVersion(1))
        );
        let huge = FIXTURE_JSON.replace("\"x402Version\": 2", "\"x402Version\": 99999999999");
        assert_eq!(
            decode_x402_token(&STANDARD.encode(huge)),
            Err(TokenError::WrongVersion(u32::MAX))
        );
    }

    #[test]
    fn names_the_path_of_a_bad_field() {
        let bad = FIXTURE_JSON.replace(
            "0x71e6F7f8C68e7e2E96B3c90655c2D2cA376Bc3fd",
            "not-an-address",
        );
        match decode_x402_token(&STANDARD.encode(bad)) {
            Err(TokenError::Json { path, message }) => {
                assert_eq!(path, "payload.authorization.from");
                assert!(!message.contains("not-an-address"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let missing = r#"{"x402Version":2,"payload":{}}"#;
        assert!(matches!(
            decode_x402_token(&STANDARD.encode(missing)),
            Err(TokenError::Json { .. })
        ));
    }

    #[test]
    fn refuses_non_base64_and_non_json() {
        assert_eq!(decode_x402_token("not base64!"), Err(TokenError::Base64));
        assert!(matches!(
            decode_x402_token(&STANDARD.encode("[1,2")),
            Err(TokenError::Json { .. })
        ));
        assert!(matches!(
            decode_x402_token(""),
            Err(TokenError::Json { .. })
        ));
    }

    #[test]
    fn size_limited_before_any_work() {
        let big = "A".repeat(MAX_CREDENTIAL_BYTES + 1);
        assert_eq!(
            decode_x402_token(&big),
            Err(TokenError::TooLarge {
                len: MAX_CREDENTIAL_BYTES + 1,
                max: MAX_CREDENTIAL_BYTES
            })
        );
    }
}
