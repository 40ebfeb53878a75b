//! Charges in flight: `PaymentLayer::drain` waits for them at shutdown and names those
//! it could not finish; their number is bounded, and a request admitted at the bound
//! is refused (`PendingFull::Reject`) or charged before its response
//! (`PendingFull::ChargeBeforeResponse`). The mock's charges wait for permits, so the
//! tests hold them in flight and release them at will.
#![cfg(feature = "devserver")] // ed25519-dalek signs the bearer tokens

use std::sync::Arc;
use std::time::Duration;

use crate::support::layer_mock::*;
use nvm_payments::{ChargeTiming, PendingFull, SettleStatus};
use tokio::sync::Semaphore;
use tower::{Layer, ServiceExt};

fn held_backend() -> (Arc<MockBackend>, Arc<Semaphore>) {
    let permits = Arc::new(Semaphore::new(0));
    let backend = MockBackend::with(100, |m| m.charge_permits = Some(permits.clone()));
    (backend, permits)
}

async fn yield_a_while() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn drain_waits_for_background_charges_and_reports_how_they_ended() {
    let (backend, permits) = held_backend();
    let (hook, mut outcomes) = outcomes();
    let layer = builder(backend.clone())
        .charge_timing(ChargeTiming::Background)
        .on_settle(hook)
        .build()
        .unwrap();
    let inner = Inner::ok();
    let svc = layer.layer(inner.service());
    for _ in 0..3 {
        let response = svc
            .clone()
            .oneshot(x402_request(valid_x402()))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        layer.pending_charges(),
        3,
        "counted as soon as the response is ready"
    );
    let drain = tokio::spawn({
        let layer = layer.clone();
        async move { layer.drain(Duration::from_secs(30)).await }
    });
    yield_a_while().await;
    assert!(!drain.is_finished(), "the drain waits for the charges");
    permits.add_permits(3);
    let report = drain.await.unwrap();
    assert_eq!(report.settled, 3, "{report:?}");
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(layer.pending_charges(), 0);
    for _ in 0..3 {
        assert_eq!(outcomes.recv().await.unwrap().status, SettleStatus::Settled);
    }
    assert_eq!(backend.charged_ids(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_drain_that_times_out_names_the_unfinished_charges() {
    let (backend, permits) = held_backend();
    let (hook, mut outcomes) = outcomes();
    let layer = builder(backend.clone())
        .charge_timing(ChargeTiming::Background)
        .on_settle(hook)
        .build()
        .unwrap();
    let svc = layer.layer(Inner::ok().service());
    for _ in 0..2 {
        let response = svc
            .clone()
            .oneshot(x402_request(valid_x402()))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let report = layer.drain(Duration::from_secs(5)).await;
    assert_eq!(report.settled, 0);
    assert_eq!(report.unfinished.len(), 2, "{report:?}");
    // The ids reported are the ids the charges carry.
    permits.add_permits(2);
    let mut charged: Vec<String> = vec![
        outcomes.recv().await.unwrap().request_id,
        outcomes.recv().await.unwrap().request_id,
    ];
    charged.sort();
    assert_eq!(report.unfinished, charged);
}

#[tokio::test(start_paused = true)]
async fn at_the_bound_reject_refuses_before_the_handler() {
    let (backend, permits) = held_backend();
    let layer = builder(backend.clone())
        .charge_timing(ChargeTiming::Background)
        .pending_charges(2, PendingFull::Reject)
        .retry_after(Duration::from_secs(2))
        .build()
        .unwrap();
    let inner = Inner::ok();
    let svc = layer.layer(inner.service());
    for _ in 0..2 {
        let response = svc
            .clone()
            .oneshot(x402_request(valid_x402()))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let full = svc
        .clone()
        .oneshot(x402_request(valid_x402()))
        .await
        .unwrap();
    assert_eq!(full.status(), 503);
    assert_eq!(full.headers()["retry-after"], "2");
    assert_eq!(
        body_json(full.into_body()).await["error"],
        "backend_unavailable"
    );
    assert_eq!(
        inner.calls(),
        2,
        "the handler did not run for the refused request"
    );
    permits.add_permits(10);
    assert!(layer.drain(Duration::from_secs(30)).await.is_complete());
    let again = svc.oneshot(x402_request(valid_x402())).await.unwrap();
    assert_eq!(again.status(), 200, "room again once the charges ended");
    assert!(layer.drain(Duration::from_secs(30)).await.is_complete());
    assert_eq!(backend.charged_ids(), 3);
}

#[tokio::test(start_paused = true)]
async fn at_the_bound_charge_before_response_makes_the_caller_wait_for_the_charge() {
    let (backend, permits) = held_backend();
    let layer = builder(backend.clone())
        .charge_timing(ChargeTiming::Background)
        .pending_charges(1, PendingFull::ChargeBeforeResponse)
        .build()
        .unwrap();
    let svc = layer.layer(Inner::ok().service());
    let first = svc
        .clone()
        .oneshot(x402_request(valid_x402()))
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert!(
        !first.headers().contains_key("payment-response"),
        "a background charge has no receipt"
    );
    let second = tokio::spawn(svc.clone().oneshot(x402_request(valid_x402())));
    yield_a_while().await;
    assert!(
        !second.is_finished(),
        "the second response waits for its charge"
    );
    permits.add_permits(10);
    let second = second.await.unwrap().unwrap();
    assert_eq!(second.status(), 200);
    let receipt = decode_header_json(&second.headers()["payment-response"]);
    assert_eq!(
        receipt["success"], true,
        "charged before its response: {receipt}"
    );
    assert!(layer.drain(Duration::from_secs(30)).await.is_complete());
    assert_eq!(backend.charged_ids(), 2);
}

#[test]
fn a_zero_bound_is_a_config_error() {
    let err = builder(MockBackend::new(1))
        .pending_charges(0, PendingFull::Reject)
        .build()
        .unwrap_err();
    assert_eq!(err.field, "pending_charges");
}
