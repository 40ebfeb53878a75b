//! Every rejection of the architecture table: its status, body code, headers, and the
//! inner service never running.
#![cfg(feature = "devserver")] // ed25519-dalek signs the bearer tokens

use std::sync::Arc;
use std::time::Duration;

use crate::support::layer_mock::*;
use http::StatusCode;
use nvm_payments::{BackendUnavailable, PaymentLayer};
use tower::{Layer, ServiceExt};

struct Case {
    name: &'static str,
    request: http::Request<TestBody>,
    status: u16,
    code: &'static str,
}

async fn assert_rejected(
    layer: &PaymentLayer,
    backend: &Arc<MockBackend>,
    case: Case,
) -> http::HeaderMap {
    let inner = Inner::ok();
    let response = layer
        .layer(inner.service())
        .oneshot(case.request)
        .await
        .unwrap();
    let name = case.name;
    assert_eq!(response.status().as_u16(), case.status, "{name}: status");
    assert_eq!(inner.calls(), 0, "{name}: the inner service must not run");
    assert_eq!(backend.charge_calls(), 0, "{name}: nothing is charged");
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/json", "{name}");
    assert_eq!(headers["cache-control"], "no-store", "{name}");
    if case.status == 402 || case.status == 403 {
        let pr = decode_header_json(&headers["payment-required"]);
        assert_eq!(pr["x402Version"], 2, "{name}");
        assert_eq!(pr["accepts"][0]["planId"], PLAN, "{name}");
        assert_eq!(pr["accepts"][0]["extra"]["agentId"], AGENT, "{name}");
        assert_eq!(pr["accepts"][0]["extra"]["httpVerb"], "POST", "{name}");
        assert_eq!(pr["resource"]["url"], "/ask", "{name}");
    }
    let body = body_json(response.into_body()).await;
    assert_eq!(body["error"], case.code, "{name}: body {body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{name}: a human message");
    headers
}

#[tokio::test]
async fn each_rejection_has_its_status_code_and_headers_and_skips_the_handler() {
    let backend = MockBackend::new(100);
    let layer = builder(backend.clone()).build().unwrap();
    let cases = vec![
        Case {
            name: "no credential",
            request: request_with(None),
            status: 402,
            code: "payment_required",
        },
        Case {
            name: "authorization without bearer",
            request: request_with(Some(("authorization", "Basic dXNlcjpwdw==".into()))),
            status: 402,
            code: "payment_required",
        },
        Case {
            name: "x402 garbage",
            request: x402_request("%%%not-base64%%%".into()),
            status: 400,
            code: "malformed_token",
        },
        Case {
            name: "x402 base64 of non-json",
            request: x402_request("aGVsbG8gd29ybGQ".into()),
            status: 400,
            code: "malformed_token",
        },
        Case {
            name: "oversized credential",
            request: x402_request("A".repeat(64 * 1024)),
            status: 400,
            code: "malformed_token",
        },
        Case {
            name: "bearer not a jwt",
            request: bearer_request("abc".into()),
            status: 400,
            code: "malformed_token",
        },
        Case {
            name: "x402 forged",
            request: x402_request(x402_token(PLAN, Some(AGENT), "0xforged")),
            status: 402,
            code: "invalid_token",
        },
        Case {
            name: "x402 expired",
            request: x402_request(x402_token(PLAN, Some(AGENT), "0xexpired")),
            status: 402,
            code: "invalid_token",
        },
        Case {
            name: "x402 wrong plan",
            request: x402_request(x402_token(OTHER_PLAN, Some(AGENT), "0xvalid")),
            status: 402,
            code: "plan_not_accepted",
        },
        Case {
            name: "x402 wrong agent",
            request: x402_request(x402_token(PLAN, Some(OTHER_AGENT), "0xvalid")),
            status: 402,
            code: "wrong_agent",
        },
        Case {
            name: "bearer forged",
            request: bearer_request(bearer_forged()),
            status: 402,
            code: "invalid_token",
        },
        Case {
            name: "bearer expired",
            request: bearer_request(bearer_expired()),
            status: 402,
            code: "invalid_token",
        },
        Case {
            name: "bearer wrong plan",
            request: bearer_request(bearer(OTHER_PLAN, Some(AGENT))),
            status: 402,
            code: "plan_not_accepted",
        },
        Case {
            name: "bearer wrong agent",
            request: bearer_request(bearer(PLAN, Some(OTHER_AGENT))),
            status: 402,
            code: "wrong_agent",
        },
    ];
    for case in cases {
        assert_rejected(&layer, &backend, case).await;
    }
    // Plan and agent mismatches are refused locally, without a verify call; only the
    // forged and expired x402 tokens reached the facilitator.
    assert_eq!(backend.verifies(), 2);
}

#[tokio::test]
async fn mismatches_can_be_403() {
    let backend = MockBackend::new(100);
    let layer = builder(backend.clone())
        .reject_mismatch_with(StatusCode::FORBIDDEN)
        .build()
        .unwrap();
    for (name, request, code) in [
        (
            "x402 wrong plan",
            x402_request(x402_token(OTHER_PLAN, Some(AGENT), "0xvalid")),
            "plan_not_accepted",
        ),
        (
            "bearer wrong agent",
            bearer_request(bearer(PLAN, Some(OTHER_AGENT))),
            "wrong_agent",
        ),
    ] {
        assert_rejected(
            &layer,
            &backend,
            Case {
                name,
                request,
                status: 403,
                code,
            },
        )
        .await;
    }
}

#[tokio::test]
async fn facilitator_4xx_is_invalid_token() {
    let backend = MockBackend::new(100);
    *backend.verify_mode.lock().unwrap() = VerifyMode::Refuse403;
    let layer = builder(backend.clone()).build().unwrap();
    let case = Case {
        name: "verify 403",
        request: x402_request(valid_x402()),
        status: 402,
        code: "invalid_token",
    };
    assert_rejected(&layer, &backend, case).await;
}

#[tokio::test]
async fn short_balance_and_non_subscribers_are_insufficient_balance() {
    // Balance 1 < 2 credits: the facilitator would say so too; the ledger refuses
    // a bearer token (no facilitator) on its own.
    let backend = MockBackend::new(1);
    let layer = builder(backend.clone()).build().unwrap();
    for (name, request) in [
        ("x402 short", x402_request(valid_x402())),
        ("bearer short", bearer_request(bearer(PLAN, Some(AGENT)))),
    ] {
        assert_rejected(
            &layer,
            &backend,
            Case {
                name,
                request,
                status: 402,
                code: "insufficient_balance",
            },
        )
        .await;
    }

    let backend = MockBackend::new(100);
    *backend.is_subscriber.lock().unwrap() = false;
    let layer = builder(backend.clone()).build().unwrap();
    let case = Case {
        name: "not a subscriber",
        request: bearer_request(bearer(PLAN, Some(AGENT))),
        status: 402,
        code: "insufficient_balance",
    };
    assert_rejected(&layer, &backend, case).await;
}

#[tokio::test]
async fn unreachable_backend_is_503_with_retry_after() {
    let backend = MockBackend::new(100);
    *backend.verify_mode.lock().unwrap() = VerifyMode::Down;
    let layer = builder(backend.clone())
        .retry_after(Duration::from_secs(7))
        .build()
        .unwrap();
    let case = Case {
        name: "verify down",
        request: x402_request(valid_x402()),
        status: 503,
        code: "backend_unavailable",
    };
    let headers = assert_rejected(&layer, &backend, case).await;
    assert_eq!(headers["retry-after"], "7");

    let backend = MockBackend::new(100);
    *backend.balance_down.lock().unwrap() = true;
    let layer = builder(backend.clone()).build().unwrap();
    let case = Case {
        name: "balance down",
        request: bearer_request(bearer(PLAN, Some(AGENT))),
        status: 503,
        code: "backend_unavailable",
    };
    let headers = assert_rejected(&layer, &backend, case).await;
    assert_eq!(headers["retry-after"], "5");
}

#[tokio::test(start_paused = true)]
async fn stale_balance_serves_within_its_window_only() {
    let backend = MockBackend::new(100);
    let layer = builder(backend.clone())
        .balance_cache(Duration::from_millis(50), 100)
        .when_backend_unavailable(BackendUnavailable::ServeStale {
            max_age: Duration::from_secs(60),
        })
        .build()
        .unwrap();
    let inner = Inner::ok();
    let svc = layer.layer(inner.service());
    let ok = svc
        .clone()
        .oneshot(bearer_request(bearer(PLAN, Some(AGENT))))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    *backend.balance_down.lock().unwrap() = true;
    // The ledger's clock (tokio's) decides staleness, not moka's.
    tokio::time::advance(Duration::from_millis(60)).await;
    let stale = svc
        .clone()
        .oneshot(bearer_request(bearer(PLAN, Some(AGENT))))
        .await
        .unwrap();
    assert_eq!(stale.status(), 200, "served from the last balance");
    assert_eq!(inner.calls(), 2);
    // Past max_age the stale balance is not used any more.
    tokio::time::advance(Duration::from_secs(61)).await;
    let too_old = svc
        .clone()
        .oneshot(bearer_request(bearer(PLAN, Some(AGENT))))
        .await
        .unwrap();
    assert_eq!(too_old.status(), 503);

    // Fail closed: the same situation is a 503.
    let backend = MockBackend::new(100);
    let layer = builder(backend.clone())
        .balance_cache(Duration::from_millis(50), 100)
        .build()
        .unwrap();
    let svc = layer.layer(Inner::ok().service());
    assert_eq!(
        svc.clone()
            .oneshot(bearer_request(bearer(PLAN, Some(AGENT))))
            .await
            .unwrap()
            .status(),
        200
    );
    *backend.balance_down.lock().unwrap() = true;
    tokio::time::advance(Duration::from_millis(60)).await;
    let closed = svc
        .oneshot(bearer_request(bearer(PLAN, Some(AGENT))))
        .await
        .unwrap();
    assert_eq!(closed.status(), 503);
}

#[tokio::test]
async fn a_plan_that_burns_nothing_is_refused_as_misconfigured() {
    let backend = MockBackend::with(100, |m| {
        *m.credits_config.get_mut().unwrap() = nvm_payments::get_fixed_credits_config(
            nvm_payments::Credits::from(100u64),
            nvm_payments::Credits::ZERO,
        );
    });
    let layer = builder(backend.clone()).build().unwrap();
    let case = Case {
        name: "zero plan",
        request: bearer_request(bearer(PLAN, Some(AGENT))),
        status: 500,
        code: "payment_misconfigured",
    };
    assert_rejected(&layer, &backend, case).await;
}

#[tokio::test]
async fn error_bodies_and_logs_never_carry_the_token() {
    let backend = MockBackend::new(100);
    let layer = builder(backend.clone()).build().unwrap();
    let token = x402_token(PLAN, Some(AGENT), "0xforged");
    let response = layer
        .layer(Inner::ok().service())
        .oneshot(x402_request(token.clone()))
        .await
        .unwrap();
    let text = body_json(response.into_body()).await.to_string();
    assert!(!text.contains(&token));
}

#[test]
fn build_names_the_bad_field() {
    let backend = MockBackend::new(1);
    let base =
        || PaymentLayer::builder_with_backend(backend.clone(), nvm_payments::Environment::Sandbox);
    let field = |r: Result<PaymentLayer, nvm_payments::ConfigError>| r.unwrap_err().field;
    assert_eq!(field(base().build()), "plan_id");
    assert_eq!(
        field(base().plan_id(plan()).credits(0u64).build()),
        "credits"
    );
    assert_eq!(
        field(
            base()
                .plan_id(plan())
                .balance_cache(Duration::from_secs(1), 0)
                .build()
        ),
        "balance_cache"
    );
    assert_eq!(
        field(
            base()
                .plan_id(plan())
                .verification_cache(Duration::ZERO, 10)
                .build()
        ),
        "verification_cache"
    );
    assert_eq!(
        field(base().plan_id(plan()).token_headers([]).build()),
        "token_headers"
    );
    assert_eq!(
        field(
            base()
                .plan_id(plan())
                .reject_mismatch_with(StatusCode::NOT_FOUND)
                .build()
        ),
        "reject_mismatch_with"
    );
    assert!(base().plan_id(plan()).build().is_ok());
}

#[tokio::test]
async fn a_refused_token_replayed_at_once_costs_no_second_verify() {
    let backend = MockBackend::new(100);
    let layer = builder(backend.clone()).build().unwrap();
    let svc = layer.layer(Inner::ok().service());
    let forged = x402_token(PLAN, Some(AGENT), "0xforged");
    for _ in 0..3 {
        let r = svc
            .clone()
            .oneshot(x402_request(forged.clone()))
            .await
            .unwrap();
        assert_eq!(r.status(), 402);
        assert_eq!(body_json(r.into_body()).await["error"], "invalid_token");
    }
    assert_eq!(backend.verifies(), 1);
    // An insufficient balance may change any moment: it is remembered only as long as
    // a refused balance is (`recheck_balance_before_refusing`); with zero, not at all.
    let short = MockBackend::new(1);
    let svc = builder(short.clone())
        .recheck_balance_before_refusing(std::time::Duration::ZERO)
        .build()
        .unwrap()
        .layer(Inner::ok().service());
    for _ in 0..2 {
        let r = svc
            .clone()
            .oneshot(x402_request(valid_x402()))
            .await
            .unwrap();
        assert_eq!(r.status(), 402);
    }
    assert_eq!(short.verifies(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_jwks_is_fetched_again_for_an_unknown_key_at_most_once_a_minute() {
    let backend = MockBackend::with(100, |m| *m.jwks.get_mut().unwrap() = unrelated_jwks());
    let layer = builder(backend.clone()).build().unwrap();
    let svc = layer.layer(Inner::ok().service());
    let call = |token: String| {
        let svc = svc.clone();
        async move {
            svc.oneshot(bearer_request(token))
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        call(bearer_valid_for(1000)).await,
        402,
        "signed with a key we do not know"
    );
    // The issuer publishes its key; within the minute we do not ask again.
    *backend.jwks.lock().unwrap() = bearer_jwks();
    assert_eq!(call(bearer_valid_for(2000)).await, 402);
    assert_eq!(
        backend.jwks_calls.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(
        call(bearer_valid_for(3000)).await,
        200,
        "refetched after a minute"
    );
    assert_eq!(call(bearer_valid_for(4000)).await, 200);
    assert_eq!(
        backend.jwks_calls.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}

#[tokio::test]
async fn a_failed_recheck_before_refusing_still_answers_insufficient_balance() {
    let backend = MockBackend::new(1);
    let layer = builder(backend.clone())
        .recheck_balance_before_refusing(Duration::ZERO)
        .build()
        .unwrap();
    let svc = layer.layer(Inner::ok().service());
    let first = svc
        .clone()
        .oneshot(bearer_request(bearer(PLAN, Some(AGENT))))
        .await
        .unwrap();
    assert_eq!(
        body_json(first.into_body()).await["error"],
        "insufficient_balance"
    );
    *backend.balance_down.lock().unwrap() = true;
    let second = svc
        .oneshot(bearer_request(bearer(PLAN, Some(AGENT))))
        .await
        .unwrap();
    assert_eq!(second.status(), 402, "the balance known is fresh: no 503");
    assert_eq!(
        body_json(second.into_body()).await["error"],
        "insufficient_balance"
    );
    assert_eq!(backend.balances(), 2, "the re-check was tried");
}
