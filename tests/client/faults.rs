//! Malformed backend answers, served by the devserver's `body` fault: the client fails
//! with a decode error naming the endpoint and the field (never a panic), and the layer
//! turns an undecidable verify into 503 without running the handler.
#![cfg(feature = "devserver")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::reliability::*;
use nvm_payments::client::{build_payment_required, Environment, Error, PaymentRequiredOptions};
use nvm_payments::devserver::Fault;
use tower::ServiceExt;

fn decode_error(err: Error) -> (String, String) {
    match err {
        Error::Decode { endpoint, path, .. } => (endpoint, path),
        other => panic!("expected a decode error, got {other:?}"),
    }
}

#[tokio::test]
async fn garbage_answers_are_decode_errors_naming_the_field() {
    let w = world(1, 100).await;
    let owner = w.owner_client(Duration::from_secs(5));
    let subscriber = w.server.payments(&w.subscribers[0]);
    let token = subscriber
        .x402()
        .get_x402_access_token(&w.plan, Some(&w.agent))
        .await
        .unwrap()
        .access_token;
    let pr = build_payment_required(
        std::slice::from_ref(&w.plan),
        Environment::Custom,
        &PaymentRequiredOptions::default(),
    );

    w.server
        .faults()
        .set(Fault::new(VERIFY).body(r#"{"isValid":"yes"}"#));
    let err = owner
        .x402()
        .verify_permissions(&pr, &token, None)
        .await
        .unwrap_err();
    assert_eq!(
        decode_error(err),
        ("POST /api/v1/x402/verify".to_owned(), "isValid".to_owned())
    );

    w.server.faults().set(
        Fault::new(SETTLE)
            .body(r#"{"success":true,"creditsRedeemed":"-1"}"#)
            .times(1),
    );
    // A field the crate does not need reads as None instead of failing the answer
    // (issue 13, point 4); `success` is what decides the charge.
    let settled = owner
        .x402()
        .settle_permissions(&pr, &token, Some(c(1)), Some("r-1"))
        .await
        .expect("an odd creditsRedeemed does not fail the settle");
    assert!(settled.success);
    assert_eq!(settled.credits_redeemed, None);

    let balance_route = format!("{BALANCE}{}/balance", w.plan);
    w.server
        .faults()
        .set(Fault::new(&balance_route).body(r#"{"planId":"1","balance":{"nested":true}}"#));
    let err = subscriber
        .plans()
        .get_plan_balance(&w.plan, None)
        .await
        .unwrap_err();
    let (endpoint, path) = decode_error(err);
    assert!(
        endpoint.starts_with("GET /api/v1/protocol/plans/"),
        "{endpoint}"
    );
    assert_eq!(path, "balance");

    // Not JSON at all, with a success status.
    w.server
        .faults()
        .set(Fault::new(&balance_route).body("<html>oops</html>"));
    let err = subscriber
        .plans()
        .get_plan_balance(&w.plan, None)
        .await
        .unwrap_err();
    assert_eq!(decode_error(err).1, ".");
}

#[tokio::test]
async fn the_layer_answers_503_when_verify_answers_garbage() {
    let w = world(1, 100).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let app = app(
        w.layer(Duration::from_secs(5)).build().unwrap(),
        runs.clone(),
    );
    let token = w.x402(0).await;
    for garbage in [
        "null",
        "[1,2]",
        r#"{"isValid":"yes"}"#,
        "{}",
        r#"{"isValid":null}"#,
        "",
        "<html>",
        "\u{0}\u{1}",
    ] {
        w.server.faults().set(Fault::new(VERIFY).body(garbage));
        let response = app.clone().oneshot(ask(&token)).await.unwrap();
        assert_eq!(response.status(), 503, "{garbage:?}");
        assert!(response.headers().contains_key("retry-after"));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    w.server.faults().clear();
    assert_eq!(app.oneshot(ask(&token)).await.unwrap().status(), 200);
    assert_eq!(w.spends_by_request().len(), 1);
}

/// A settle answered 2xx with a body that does not decode may have charged: it is
/// retried (same request id) and, if it stays unreadable, reported `Unknown`, never
/// `Failed` ("nothing was charged").
#[tokio::test]
async fn a_settle_answer_that_does_not_decode_is_not_reported_failed() {
    let w = world(1, 100).await;
    let (hook, mut outcomes) = outcomes();
    let app = app(
        w.layer(Duration::from_secs(5))
            .on_settle(hook)
            .build()
            .unwrap(),
        Arc::new(AtomicUsize::new(0)),
    );
    let token = w.x402(0).await;
    w.server.faults().set(
        Fault::new(SETTLE)
            .after_handler()
            .body(r#"{"success":"yes"}"#)
            .times(1),
    );
    let response = app.oneshot(ask(&token)).await.unwrap();
    assert_eq!(response.status(), 200);
    let request_id = text(response).await;
    let outcome = outcomes.recv().await.unwrap();
    assert_eq!(
        w.spends_by_request()[&request_id].len(),
        1,
        "the backend charged"
    );
    assert_eq!(
        outcome.status,
        nvm_payments::SettleStatus::Settled,
        "the retry read the first result: {outcome:?}"
    );
    assert_eq!(outcome.attempts, 2);
}
