//! Bad input through the whole layer (token-level properties are in `token_props.rs`):
//! whatever the caller sends, the layer answers a clear rejection (400
//! `malformed_token` for what does not decode, 402 for what decodes but may not pay),
//! never panics, never runs the inner service and never charges.
#![cfg(feature = "devserver")] // ed25519-dalek signs the bearer tokens

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::support::layer_mock::*;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http::HeaderValue;
use proptest::prelude::*;
use serde_json::{json, Value};
use tower::{Layer, ServiceExt};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Status and `error` code of one request with `header: value`, after checking that
/// nothing ran and nothing was charged.
fn refused(header: &'static str, value: HeaderValue) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let backend = MockBackend::new(100);
        let layer = builder(backend.clone()).build().unwrap();
        let inner = Inner::ok();
        let mut request = request_with(None);
        request.headers_mut().insert(header, value);
        let response = layer.layer(inner.service()).oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        assert_eq!(
            inner.calls(),
            0,
            "the inner service ran for a bad credential"
        );
        assert_eq!(backend.charge_calls(), 0, "a bad credential was charged");
        let body = body_json(response.into_body()).await;
        let code = body["error"].as_str().unwrap_or_default().to_owned();
        let expected: &[&str] = match status {
            400 => &["malformed_token"],
            402 => &[
                "payment_required",
                "invalid_token",
                "plan_not_accepted",
                "wrong_agent",
            ],
            other => panic!("unexpected status {other} ({body})"),
        };
        assert!(expected.contains(&code.as_str()), "{status} {body}");
        (status, code)
    })
}

fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The issuer's key of `support::layer_mock` (seed 7, kid `k1`).
fn issuer_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[7; 32])
}

fn sign_eddsa(claims: &Value) -> String {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let der = issuer_key().to_pkcs8_der().unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("k1".into());
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()),
    )
    .unwrap()
}

fn claims(plan: &str, agent: &str, exp: u64) -> Value {
    json!({ "iss": "0x0", "sub": SUBSCRIBER, "planId": plan, "agentId": agent, "exp": exp, "iat": now() })
}

fn bearer_value(token: &str) -> HeaderValue {
    value(&format!("Bearer {token}"))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_header_bytes_are_refused(
        bytes in prop::collection::vec(any::<u8>(), 1..400),
        auth in any::<bool>(),
    ) {
        // Control characters are not legal header values; everything else is,
        // non-UTF-8 (obs-text) included.
        if let Ok(v) = HeaderValue::from_bytes(&bytes) {
            let (header, v) = if auth {
                let mut with_scheme = b"Bearer ".to_vec();
                with_scheme.extend_from_slice(&bytes);
                ("authorization", HeaderValue::from_bytes(&with_scheme).unwrap())
            } else {
                ("payment-signature", v)
            };
            let (status, code) = refused(header, v);
            if !bytes.is_ascii() {
                prop_assert_eq!((status, code.as_str()), (400, "malformed_token"));
            }
        }
    }

    #[test]
    fn huge_headers_are_400(extra in 1usize..56 * 1024, fill in "[A-Za-z0-9]", auth in any::<bool>()) {
        let big = fill.repeat(8 * 1024 + extra);
        let (header, v) = if auth {
            ("authorization", bearer_value(&big))
        } else {
            ("payment-signature", value(&big))
        };
        prop_assert_eq!(refused(header, v), (400, "malformed_token".to_owned()));
    }

    #[test]
    fn truncated_tokens_are_400(cut in any::<prop::sample::Index>(), bearer in any::<bool>()) {
        let (header, token) = if bearer {
            let t = sign_eddsa(&claims(PLAN, AGENT, now() + 3600));
            ("authorization", t)
        } else {
            ("payment-signature", valid_x402())
        };
        let at = 1 + cut.index(token.len() - 1);
        let truncated = &token[..at];
        let v = if bearer { bearer_value(truncated) } else { value(truncated) };
        let (status, _) = refused(header, v);
        // A JWT cut inside its signature still decodes: it is then a bad signature.
        prop_assert!(status == 400 || (bearer && status == 402), "{status}");
    }

    #[test]
    fn json_of_the_wrong_shape_is_400(
        v in prop_oneof![
            Just(json!(null)), Just(json!([])), Just(json!({})), any::<i64>().prop_map(Value::from),
            "[a-z]{0,12}".prop_map(Value::from),
            Just(json!({"x402Version": 2})),
            Just(json!({"x402Version": 2, "accepted": {"planId": 5}, "payload": "x"})),
            Just(json!({"x402Version": "two", "accepted": [], "payload": {}})),
        ],
        url_safe in any::<bool>(),
    ) {
        let text = v.to_string();
        let encoded = if url_safe { URL_SAFE_NO_PAD.encode(&text) } else { STANDARD.encode(&text) };
        prop_assert_eq!(refused("payment-signature", value(&encoded)), (400, "malformed_token".to_owned()));
    }

    #[test]
    fn alg_none_and_hs256_with_the_public_key_are_invalid(exp_in in 60u64..100_000, none in any::<bool>()) {
        let claims = claims(PLAN, AGENT, now() + exp_in);
        let token = if none {
            let header = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": "k1", "typ": "JWT"}).to_string());
            format!("{header}.{}.", URL_SAFE_NO_PAD.encode(claims.to_string()))
        } else {
            // Algorithm confusion: the issuer's public key used as an HMAC secret.
            let public = issuer_key().verifying_key();
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
            header.kid = Some("k1".into());
            jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(public.as_bytes())).unwrap()
        };
        prop_assert_eq!(refused("authorization", bearer_value(&token)), (402, "invalid_token".to_owned()));
    }

    #[test]
    fn expired_tokens_are_invalid(ago in 1u64..10_000_000) {
        let token = sign_eddsa(&claims(PLAN, AGENT, now().saturating_sub(ago)));
        prop_assert_eq!(refused("authorization", bearer_value(&token)), (402, "invalid_token".to_owned()));
    }

    #[test]
    fn tokens_for_another_plan_or_agent_are_refused(
        plan in "[1-9][0-9]{0,12}",
        agent in "[1-9][0-9]{0,12}",
        x402 in any::<bool>(),
    ) {
        let expected = if plan != PLAN {
            "plan_not_accepted"
        } else if agent != AGENT {
            "wrong_agent"
        } else {
            return Ok(()); // the accepted pair: not a bad input
        };
        let (header, v) = if x402 {
            ("payment-signature", value(&x402_token(&plan, Some(&agent), "0xvalid")))
        } else {
            ("authorization", bearer_value(&sign_eddsa(&claims(&plan, &agent, now() + 3600))))
        };
        prop_assert_eq!(refused(header, v), (402, expected.to_owned()));
    }

    #[test]
    fn tokens_edited_after_signing_are_refused(
        pos in any::<prop::sample::Index>(),
        replacement in "[A-Za-z0-9_-]",
    ) {
        let token = sign_eddsa(&claims(PLAN, AGENT, now() + 3600));
        let i = pos.index(token.len());
        let mut edited = token.clone();
        edited.replace_range(i..i + 1, &replacement);
        if edited != token {
            let (status, _) = refused("authorization", bearer_value(&edited));
            prop_assert!(status == 400 || status == 402);
        }
    }
}

/// The properties above run against the real verifier; this pins down that the
/// accepted token they are derived from really is served (so a refusal means
/// something).
#[tokio::test]
async fn the_untouched_tokens_are_served() {
    let backend = MockBackend::new(100);
    let layer = builder(backend.clone()).build().unwrap();
    let inner = Inner::ok();
    let svc = layer.layer(inner.service());
    let jwt = sign_eddsa(&claims(PLAN, AGENT, now() + 3600));
    for request in [bearer_request(jwt), x402_request(valid_x402())] {
        let response = svc.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(inner.calls(), 2);
    let _ = Arc::clone(&backend);
}
