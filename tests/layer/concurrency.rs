//! Coalescing and exact admission under concurrency.
#![cfg(feature = "devserver")]

use std::time::Duration;

use crate::support::layer_mock::*;
use futures_util::future::join_all;
use nvm_payments::Credits;
use tower::{Layer, ServiceExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_first_requests_with_one_token_make_one_verify_and_one_balance_call() {
    // A slow verify keeps the first call in flight while the others arrive.
    let backend = MockBackend::with(1_000, |m| {
        m.verify_delay = Duration::from_millis(50);
        m.balance_delay = Duration::from_millis(20);
    });
    let layer = builder(backend.clone()).credits(1u64).build().unwrap();
    let inner = Inner::ok();
    let svc = layer.layer(inner.service());
    let token = valid_x402();
    let responses = join_all((0..100).map(|_| {
        let svc = svc.clone();
        let token = token.clone();
        tokio::spawn(async move { svc.oneshot(x402_request(token)).await.unwrap() })
    }))
    .await;
    for r in &responses {
        assert_eq!(r.as_ref().unwrap().status(), 200);
    }
    assert_eq!(backend.verifies(), 1, "one verify for one token");
    assert_eq!(backend.balances(), 1, "one balance fetch for one holder");
    assert_eq!(
        backend.plan_calls.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(inner.calls(), 100);
    assert_eq!(
        backend.charged_ids(),
        100,
        "each request charged under its own id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_never_spend_more_than_the_balance() {
    // B = 23, c = 3 (dynamic plan 1..10 keeps 3): at most 7 admitted.
    let backend = MockBackend::with(23, |m| m.balance_delay = Duration::from_millis(20));
    let layer = builder(backend.clone()).credits(3u64).build().unwrap();
    let inner = Inner::ok();
    let svc = layer.layer(inner.service());
    let responses = join_all((0..40).map(|i| {
        let svc = svc.clone();
        // Bearer and x402 credentials of one subscriber share one ledger.
        let request = if i % 2 == 0 {
            bearer_request(bearer(PLAN, Some(AGENT)))
        } else {
            x402_request(valid_x402())
        };
        tokio::spawn(async move { svc.oneshot(request).await.unwrap().status().as_u16() })
    }))
    .await;
    let admitted = responses
        .iter()
        .filter(|s| *s.as_ref().unwrap() == 200)
        .count();
    let refused = responses
        .iter()
        .filter(|s| *s.as_ref().unwrap() == 402)
        .count();
    assert_eq!(admitted, 7, "floor(23 / 3)");
    assert_eq!(refused, 33);
    assert_eq!(inner.calls(), 7);
    assert_eq!(backend.total_charged(), Credits::from(21u64));
    assert_eq!(backend.remaining(), Credits::from(2u64), "B - admitted * c");
}

#[tokio::test]
async fn the_ledger_counts_charges_between_fetches() {
    // Balance 5, 2 per request, a long balance TTL: the third request is refused from
    // the local ledger, without a new fetch.
    let backend = MockBackend::new(5);
    let layer = builder(backend.clone()).build().unwrap();
    let svc = layer.layer(Inner::ok().service());
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let r = svc
                .clone()
                .oneshot(bearer_request(bearer(PLAN, Some(AGENT))))
                .await
                .unwrap();
            v.push(r.status().as_u16());
        }
        v
    };
    assert_eq!(statuses, [200, 200, 402]);
    assert_eq!(backend.balances(), 1);
    assert_eq!(backend.remaining(), Credits::from(1u64));
}
