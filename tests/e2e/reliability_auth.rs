//! The backend slow or down while the layer authenticates, against the devserver's
//! faults (error status, dropped connection, latency beyond the client timeout) on the
//! verify and balance routes: a request that cannot be decided gets 503 with
//! `Retry-After` and never runs the handler; a decided one keeps being served from the
//! caches; the layer recovers by itself when the backend returns.
#![cfg(feature = "devserver")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::reliability::*;
use nvm_payments::devserver::Fault;
use nvm_payments::BackendUnavailable;
use tower::ServiceExt;

const TIMEOUT: Duration = Duration::from_millis(400);

fn faults(route: &str) -> Vec<(&'static str, Fault)> {
    vec![
        ("503", Fault::new(route).status(503)),
        ("500", Fault::new(route).status(500)),
        ("429", Fault::new(route).status(429)),
        ("dropped connection", Fault::new(route).drop_connection()),
        (
            "latency beyond the client timeout",
            Fault::new(route).latency_ms(TIMEOUT.as_millis() as u64 + 600),
        ),
    ]
}

/// Sends until the answer is not 503, as a client honouring `Retry-After` would (the
/// layer waits 1 s after a failed balance fetch before fetching again).
async fn until_served(app: &axum::Router, token: &str) -> u16 {
    for _ in 0..40 {
        let status = app.clone().oneshot(ask(token)).await.unwrap().status();
        if status != 503 {
            return status.as_u16();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    503
}

async fn assert_unavailable(app: &axum::Router, token: &str, what: &str) {
    let response = app.clone().oneshot(ask(token)).await.unwrap();
    assert_eq!(response.status(), 503, "{what}");
    assert_eq!(response.headers()["retry-after"], "3", "{what}");
    assert_eq!(response.headers()["cache-control"], "no-store", "{what}");
    let body: serde_json::Value = serde_json::from_str(&text(response).await).unwrap();
    assert_eq!(body["error"], "backend_unavailable", "{what}: {body}");
    assert!(!body.to_string().contains(token), "{what}");
}

#[tokio::test]
async fn verify_down_or_slow_is_503_with_retry_after_and_recovers() {
    let w = world(1, 100).await;
    for (what, fault) in faults(VERIFY) {
        let runs = Arc::new(AtomicUsize::new(0));
        let layer = w
            .layer(TIMEOUT)
            .retry_after(Duration::from_secs(3))
            .build()
            .unwrap();
        let app = app(layer, runs.clone());
        let token = w.x402(0).await;
        w.server.faults().set(fault);
        assert_unavailable(&app, &token, what).await;
        assert_unavailable(&app, &token, what).await; // an outage is not cached as a verdict
        assert_eq!(
            runs.load(Ordering::SeqCst),
            0,
            "{what}: the handler never ran"
        );
        w.server.faults().clear();
        assert_eq!(until_served(&app, &token).await, 200, "{what}: recovers");
        assert_eq!(runs.load(Ordering::SeqCst), 1, "{what}");
    }
    assert_eq!(w.spends_by_request().len(), faults(VERIFY).len());
}

#[tokio::test]
async fn balance_down_or_slow_is_503_with_retry_after_and_recovers() {
    let w = world(1, 100).await;
    for (what, fault) in faults(BALANCE) {
        let runs = Arc::new(AtomicUsize::new(0));
        let layer = w
            .layer(TIMEOUT)
            .retry_after(Duration::from_secs(3))
            .build()
            .unwrap();
        let app = app(layer, runs.clone());
        let token = w.x402(0).await;
        // Only the balance route: GET /api/v1/protocol/plans/{plan}/balance/{holder}.
        let fault = Fault {
            route: format!("{BALANCE}{}/balance", w.plan),
            ..fault
        };
        w.server.faults().set(fault);
        assert_unavailable(&app, &token, what).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            0,
            "{what}: the handler never ran"
        );
        w.server.faults().clear();
        assert_eq!(until_served(&app, &token).await, 200, "{what}: recovers");
        assert_eq!(runs.load(Ordering::SeqCst), 1, "{what}");
    }
}

#[tokio::test]
async fn cached_decisions_keep_being_served_while_the_backend_is_down() {
    let w = world(2, 100).await;
    let runs = Arc::new(AtomicUsize::new(0));
    // Fail closed, but every decision is cached: verification (60 s), plan (5 min),
    // balance (30 s); the charge route stays up.
    let app = app(w.layer(TIMEOUT).build().unwrap(), runs.clone());
    let token = w.x402(0).await;
    assert_eq!(
        app.clone().oneshot(ask(&token)).await.unwrap().status(),
        200
    );
    w.server.faults().set(Fault::new(VERIFY).status(503));
    w.server.faults().set(Fault::new(BALANCE).drop_connection());
    for _ in 0..5 {
        assert_eq!(
            app.clone().oneshot(ask(&token)).await.unwrap().status(),
            200
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 6);
    assert_eq!(w.server.stats().get("POST /api/v1/x402/verify"), 1);
    // A caller never seen cannot be decided.
    let fresh = w.x402(1).await;
    let response = app.clone().oneshot(ask(&fresh)).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(runs.load(Ordering::SeqCst), 6);
    assert_eq!(
        w.spends_by_request().len(),
        6,
        "every served request charged"
    );
}

#[tokio::test]
async fn serve_stale_decides_from_the_last_balance_when_its_ttl_has_passed() {
    let w = world(1, 100).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let stale = w
        .layer(TIMEOUT)
        .balance_cache(Duration::from_millis(50), 100)
        .when_backend_unavailable(BackendUnavailable::ServeStale {
            max_age: Duration::from_secs(60),
        })
        .build()
        .unwrap();
    let closed = w
        .layer(TIMEOUT)
        .balance_cache(Duration::from_millis(50), 100)
        .build()
        .unwrap();
    let stale = app(stale, runs.clone());
    let closed = app(closed, runs.clone());
    let token = w.x402(0).await;
    assert_eq!(
        stale.clone().oneshot(ask(&token)).await.unwrap().status(),
        200
    );
    assert_eq!(
        closed.clone().oneshot(ask(&token)).await.unwrap().status(),
        200
    );
    w.server
        .faults()
        .set(Fault::new(format!("{BALANCE}{}/balance", w.plan)).status(503));
    // Let the balance TTL pass: its age is what is under test.
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(
        stale.clone().oneshot(ask(&token)).await.unwrap().status(),
        200
    );
    assert_eq!(
        closed.clone().oneshot(ask(&token)).await.unwrap().status(),
        503
    );
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(w.spends_by_request().len(), 3);
}

#[tokio::test]
async fn serve_stale_never_serves_an_expired_verification() {
    let w = world(1, 100).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let layer = w
        .layer(TIMEOUT)
        .verification_cache(Duration::from_millis(150), 100)
        .when_backend_unavailable(BackendUnavailable::ServeStale {
            max_age: Duration::from_secs(60),
        })
        .build()
        .unwrap();
    let app = app(layer, runs.clone());
    let token = w.x402(0).await;
    assert_eq!(
        app.clone().oneshot(ask(&token)).await.unwrap().status(),
        200
    );
    w.server.faults().set(Fault::new(VERIFY).status(503));
    // Let the verification expire (moka's own clock: a real wait); the balance is
    // fresh, the backend down.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = app.clone().oneshot(ask(&token)).await.unwrap();
    assert_eq!(response.status(), 503, "verification fails closed");
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
