//! Property tests for `nvm_payments::credential`: decoding is total (never panics, whatever
//! the input), size-limited, and never echoes the credential in errors or `Debug`.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nvm_payments::credential::{
    decode_x402_token, default_token_headers, encode_x402_token, extract_credential,
    BearerVerifier, Credential, TokenError, MAX_CREDENTIAL_BYTES,
};
use nvm_payments::types::{PaymentScheme, TokenAuthorization, TokenPayload, X402TokenPayload};
use proptest::prelude::*;
use serde_json::{json, Value};

const NOW: u64 = 1_800_000_000;
/// Public key of the Ed25519 seed `[7; 32]`.
const KEY_X: &str = "6kpsY-KcUgq-9VB7Ey7F-ZVHdq6-vnuSQh7qaRRG0iw";
/// PKCS#8 v1 prefix of an Ed25519 private key.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn verifier() -> BearerVerifier {
    let jwks: JwkSet = serde_json::from_value(json!({"keys": [
        {"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "k7", "x": KEY_X}
    ]}))
    .unwrap();
    BearerVerifier::from_jwks(&jwks).unwrap()
}

fn sign(claims: &Value) -> String {
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(&[7u8; 32]);
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("k7".into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&der)).unwrap()
}

fn payload(signature: String, from_hex: String, plan: u64) -> X402TokenPayload {
    X402TokenPayload {
        x402_version: 2,
        accepted: PaymentScheme {
            scheme: "nvm:erc4337".into(),
            network: "eip155:84532".into(),
            plan_id: plan.to_string().parse().unwrap(),
            extra: None,
        },
        payload: TokenPayload {
            signature,
            authorization: TokenAuthorization {
                from: format!("0x{from_hex}").parse().unwrap(),
                session_keys_provider: Some("zerodev".into()),
                session_keys: vec![],
                nonce: None,
            },
        },
        extensions: Default::default(),
        resource: None,
    }
}

fn arb_payload() -> impl Strategy<Value = X402TokenPayload> {
    ("0x[0-9a-f]{16,130}", "[0-9a-f]{40}", any::<u64>())
        .prop_map(|(sig, from, plan)| payload(sig, from, plan))
}

/// Arbitrary JSON, biased towards the keys of the envelope so that near-misses occur.
fn arb_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("x402Version".to_owned()),
        Just("accepted".to_owned()),
        Just("payload".to_owned()),
        Just("planId".to_owned()),
        Just("authorization".to_owned()),
        Just("from".to_owned()),
        "[a-z]{1,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn headers_with(name: &str, value: HeaderValue) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), value);
    h
}

/// Whatever the error, its `Display` and `Debug` must not contain `secret`.
fn assert_not_echoed(err: &TokenError, secret: &str) {
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains(secret),
        "error echoes the credential: {shown}"
    );
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decode_never_panics_on_strings(s in any::<String>()) {
        let _ = decode_x402_token(&s);
    }

    #[test]
    fn decode_never_panics_on_base64ish(s in "[A-Za-z0-9+/=_ -]{0,400}") {
        if let Err(e) = decode_x402_token(&s) {
            prop_assert!(e.is_malformed() || matches!(e, TokenError::WrongVersion(_)));
            if s.trim().len() >= 16 {
                assert_not_echoed(&e, s.trim());
            }
        }
    }

    #[test]
    fn encode_decode_round_trips(p in arb_payload(), standard in any::<bool>()) {
        let token = encode_x402_token(&p);
        prop_assert_eq!(decode_x402_token(&token).unwrap(), p.clone());
        let padded = STANDARD.encode(URL_SAFE_NO_PAD.decode(&token).unwrap());
        if standard {
            prop_assert_eq!(decode_x402_token(&padded).unwrap(), p);
        }
    }

    #[test]
    fn truncated_tokens_are_malformed(p in arb_payload(), cut in any::<prop::sample::Index>()) {
        let token = encode_x402_token(&p);
        let at = cut.index(token.len());
        let err = decode_x402_token(&token[..at]).unwrap_err();
        prop_assert!(err.is_malformed(), "{err:?}");
        if at >= 16 {
            assert_not_echoed(&err, &token[..at]);
        }
    }

    #[test]
    fn wrong_shape_json_is_refused(v in arb_json(), url_safe in any::<bool>()) {
        let json = v.to_string();
        let token = if url_safe { URL_SAFE_NO_PAD.encode(&json) } else { STANDARD.encode(&json) };
        match decode_x402_token(&token) {
            Err(TokenError::Json { .. }) | Err(TokenError::WrongVersion(_)) => {}
            Err(TokenError::TooLarge { .. }) => prop_assert!(token.len() > MAX_CREDENTIAL_BYTES),
            other => prop_assert!(false, "{json} gave {other:?}"),
        }
    }

    #[test]
    fn oversized_values_are_too_large(extra in 1usize..4096, fill in "[A-Za-z0-9]") {
        let big = fill.repeat(MAX_CREDENTIAL_BYTES + extra);
        let too_large = TokenError::TooLarge { len: big.len(), max: MAX_CREDENTIAL_BYTES };
        prop_assert_eq!(decode_x402_token(&big), Err(too_large.clone()));
        prop_assert_eq!(verifier().verify(&big), Err(too_large.clone()));
        for name in ["payment-signature", "authorization"] {
            let value = if name == "authorization" { format!("Bearer {big}") } else { big.clone() };
            let len = value.len();
            let h = headers_with(name, HeaderValue::from_str(&value).unwrap());
            prop_assert_eq!(
                extract_credential(&h, &default_token_headers()),
                Err(TokenError::TooLarge { len, max: MAX_CREDENTIAL_BYTES })
            );
        }
    }

    #[test]
    fn extract_never_panics_on_header_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        auth in any::<bool>(),
    ) {
        // from_bytes refuses control characters; everything else, non-UTF-8 included,
        // is a legal header value.
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            let name = if auth { "authorization" } else { "payment-signature" };
            let result = extract_credential(&headers_with(name, value), &default_token_headers());
            if !bytes.is_ascii() {
                prop_assert_eq!(result, Err(TokenError::NotUtf8));
            }
        }
    }

    #[test]
    fn extract_never_panics_on_strings(s in "[ -~]{0,400}", bearer in any::<bool>()) {
        let (name, value) = if bearer {
            ("authorization", format!("Bearer {s}"))
        } else {
            ("payment-signature", s.clone())
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            match extract_credential(&headers_with(name, v), &default_token_headers()) {
                Ok(Some(c)) => {
                    let shown = format!("{c:?}");
                    prop_assert!(!shown.contains(s.trim()), "{}", shown);
                }
                Ok(None) => prop_assert!(s.trim().is_empty()),
                Err(e) => {
                    if s.trim().len() >= 16 {
                        assert_not_echoed(&e, s.trim());
                    }
                }
            }
        }
    }

    #[test]
    fn jwt_shaped_garbage_never_panics(
        header in prop::collection::vec(any::<u8>(), 0..80),
        alg in prop_oneof![
            Just("EdDSA"), Just("ES256"), Just("none"), Just("HS256"), Just("ES256K"), Just("RS256"),
        ],
        kid in prop::option::of(prop_oneof![Just("k7".to_owned()), "[a-z0-9]{0,4}"]),
        claims in arb_json(),
        sig in prop::collection::vec(any::<u8>(), 0..96),
        raw_header in any::<bool>(),
    ) {
        let header_json = if raw_header {
            URL_SAFE_NO_PAD.encode(&header)
        } else {
            URL_SAFE_NO_PAD.encode(json!({"alg": alg, "kid": kid}).to_string())
        };
        let token = format!(
            "{header_json}.{}.{}",
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(&sig)
        );
        let err = verifier().verify_at(&token, NOW).unwrap_err();
        assert_not_echoed(&err, &token);
        // Through the extractor, the same token is a Bearer credential or malformed.
        let h = headers_with("authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
        match extract_credential(&h, &default_token_headers()) {
            Ok(Some(c @ Credential::Bearer { .. })) => {
                let shown = format!("{c:?}");
                prop_assert!(!shown.contains(&token), "{}", shown);
            }
            Ok(other) => prop_assert!(false, "{other:?}"),
            Err(e) => prop_assert!(e.is_malformed(), "{e:?}"),
        }
    }

    #[test]
    fn verify_never_panics_on_strings(s in any::<String>()) {
        prop_assert!(verifier().verify(&s).is_err());
    }

    #[test]
    fn tampered_signed_tokens_never_verify(
        plan in any::<u64>(),
        pos in any::<prop::sample::Index>(),
        replacement in "[A-Za-z0-9_.-]",
    ) {
        let claims = json!({"sub": "0x71e6F7f8C68e7e2E96B3c90655c2D2cA376Bc3fd",
            "planId": plan.to_string(), "exp": NOW + 60});
        let token = sign(&claims);
        prop_assert!(verifier().verify_at(&token, NOW).is_ok());
        let i = pos.index(token.len());
        let mut tampered = token.clone();
        tampered.replace_range(i..i + 1, &replacement);
        if tampered != token {
            // Any edit breaks the signature, the base64 (strict: no stray trailing bits
            // in the last character) or the three-segment shape.
            let err = verifier().verify_at(&tampered, NOW).unwrap_err();
            assert_not_echoed(&err, &tampered);
        }
    }
}
