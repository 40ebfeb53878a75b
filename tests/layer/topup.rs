//! A subscriber who buys more credits is served as soon as the backend knows, while a
//! caller with no credits costs at most one balance call per re-check interval.

use std::time::Duration;

use crate::support::layer_mock::*;
use nvm_payments::Credits;
use tower::{Layer, ServiceExt};

#[tokio::test(start_paused = true)]
async fn a_top_up_is_seen_after_the_recheck_interval_and_not_before() {
    let backend = MockBackend::new(4);
    let layer = builder(backend.clone())
        .recheck_balance_before_refusing(Duration::from_secs(1))
        .build()
        .unwrap();
    let inner = Inner::ok();
    let svc = layer.layer(inner.service());
    let token = bearer_valid_for(10_000);
    let call = || {
        let svc = svc.clone();
        let token = token.clone();
        async move {
            svc.oneshot(bearer_request(token))
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };

    assert_eq!(call().await, 200);
    assert_eq!(call().await, 200);
    assert_eq!(backend.remaining(), Credits::ZERO);
    assert_eq!(backend.balances(), 1, "one fetch served both requests");

    // Out of credits: refused, and the fetch it was refused on is brand new, so no call.
    assert_eq!(call().await, 402);
    assert_eq!(backend.balances(), 1);

    // The subscriber tops up. Within the interval the layer does not ask again.
    *backend.balance.lock().unwrap() = Credits::from(10u64);
    assert_eq!(call().await, 402);
    assert_eq!(call().await, 402);
    assert_eq!(
        backend.balances(),
        1,
        "a broke caller costs no balance call per request"
    );

    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(call().await, 200, "the top-up is seen");
    assert_eq!(backend.balances(), 2);
    assert_eq!(inner.calls(), 3);
}

#[tokio::test]
async fn with_a_zero_interval_every_refusal_rechecks() {
    let backend = MockBackend::new(2);
    let layer = builder(backend.clone())
        .recheck_balance_before_refusing(Duration::ZERO)
        .build()
        .unwrap();
    let svc = layer.layer(Inner::ok().service());
    let token = bearer_valid_for(10_000);
    let call = || {
        let svc = svc.clone();
        let token = token.clone();
        async move {
            svc.oneshot(bearer_request(token))
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(call().await, 200);
    assert_eq!(call().await, 402);
    *backend.balance.lock().unwrap() = Credits::from(2u64);
    assert_eq!(call().await, 200, "served right after the top-up");
}
