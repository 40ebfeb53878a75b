//! Charges under faults, against the devserver (the ledger of record): 5xx, timeouts,
//! dropped connections before and after the backend applied the charge, an outage, a
//! backend restart mid-charge. Every served request is charged exactly once per
//! request id; an outcome that stays unknown is reported with its request id.
#![cfg(all(feature = "devserver", feature = "cli"))] // tracing-subscriber captures logs

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::reliability::*;
use nvm_payments::devserver::Fault;
use nvm_payments::{RetryPolicy, SettleStatus};
use tower::ServiceExt;

const TIMEOUT: Duration = Duration::from_secs(2);

/// One request through the layer with `fault` on settle: served, settled, spent once.
async fn charged_once_despite(fault: Fault, timeout: Duration) -> (u32, World) {
    let w = world(1, 100).await;
    let (hook, mut outcomes) = outcomes();
    let runs = Arc::new(AtomicUsize::new(0));
    let app = app(
        w.layer(timeout).on_settle(hook).build().unwrap(),
        runs.clone(),
    );
    let token = w.x402(0).await;
    w.server.faults().set(fault.clone());
    let response = app.oneshot(ask(&token)).await.unwrap();
    assert_eq!(response.status(), 200, "{fault:?}");
    let request_id = text(response).await;
    let outcome = outcomes.recv().await.unwrap();
    assert_eq!(
        outcome.status,
        SettleStatus::Settled,
        "{fault:?}: {outcome:?}"
    );
    assert_eq!(outcome.request_id, request_id);
    let spends = w.spends_by_request();
    assert_eq!(spends.len(), 1, "{fault:?}: {spends:?}");
    assert_eq!(
        spends[&request_id].len(),
        1,
        "{fault:?}: one spend for the id"
    );
    assert_eq!(w.balance(0).await, c(99), "{fault:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    (outcome.attempts, w)
}

#[tokio::test]
async fn settle_5xx_is_retried_until_it_succeeds_and_spends_once() {
    let fault = Fault::new(SETTLE).status(503).times(3);
    let (attempts, _) = charged_once_despite(fault, TIMEOUT).await;
    assert_eq!(attempts, 4);
    // A 5xx after the backend applied the charge: the retry is answered from the
    // idempotency store.
    let fault = Fault::new(SETTLE).status(502).after_handler().times(2);
    let (attempts, _) = charged_once_despite(fault, TIMEOUT).await;
    assert_eq!(attempts, 3);
}

#[tokio::test]
async fn a_dropped_connection_before_or_after_the_charge_spends_once() {
    let before = Fault::new(SETTLE).drop_connection().times(2);
    let (attempts, _) = charged_once_despite(before, TIMEOUT).await;
    assert_eq!(attempts, 3);
    let after = Fault::new(SETTLE)
        .drop_connection()
        .after_handler()
        .times(2);
    let (attempts, _) = charged_once_despite(after, TIMEOUT).await;
    assert_eq!(attempts, 3);
}

#[tokio::test]
async fn a_settle_reply_later_than_the_client_timeout_is_retried_and_spends_once() {
    // The backend charges, then answers after the client gave up.
    let late = Fault::new(SETTLE).hold_reply_ms(3_000).times(1);
    let (attempts, _) = charged_once_despite(late, Duration::from_millis(300)).await;
    assert!(
        attempts >= 2,
        "the late reply timed out and was retried: {attempts}"
    );
}

#[tokio::test]
async fn a_backend_restart_while_the_charge_is_in_flight_spends_once() {
    let w = world(1, 100).await;
    let (hook, mut outcomes) = outcomes();
    let runs = Arc::new(AtomicUsize::new(0));
    let app = app(
        w.layer(TIMEOUT).on_settle(hook).build().unwrap(),
        runs.clone(),
    );
    let token = w.x402(0).await;
    // The backend burns, then holds its reply; it is stopped before answering.
    w.server
        .faults()
        .set(Fault::new(SETTLE).hold_reply_ms(60_000).times(1));
    let mut spent = w.server.state().watch_spends();
    let request = tokio::spawn(app.oneshot(ask(&token)));
    spent.wait_for(|n| *n == 1).await.unwrap();
    let World {
        server,
        subscribers,
        plan,
        agent,
        owner,
    } = w;
    let server = server.restart().await.unwrap();
    let w = World {
        server,
        subscribers,
        plan,
        agent,
        owner,
    };
    let response = request.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let request_id = text(response).await;
    let outcome = outcomes.recv().await.unwrap();
    assert_eq!(outcome.status, SettleStatus::Settled, "{outcome:?}");
    assert!(outcome.attempts >= 2, "{outcome:?}");
    let spends = w.spends_by_request();
    assert_eq!(spends[&request_id].len(), 1, "{spends:?}");
    assert_eq!(spends.len(), 1);
    assert_eq!(w.balance(0).await, c(99), "the ledger survived the restart");
}

#[tokio::test]
async fn a_charge_sent_during_an_outage_lands_once_when_the_backend_returns() {
    let w = world(1, 100).await;
    let (hook, mut outcomes) = outcomes();
    let runs = Arc::new(AtomicUsize::new(0));
    let app = app(
        w.layer(TIMEOUT).on_settle(hook).build().unwrap(),
        runs.clone(),
    );
    let token = w.x402(0).await;
    // Warm the caches (verification, plan, balance): the outage hits the charge only.
    let first = app.clone().oneshot(ask(&token)).await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(outcomes.recv().await.unwrap().is_settled());

    let World {
        server,
        subscribers,
        plan,
        agent,
        owner,
    } = w;
    let stopped = server.stop().await.unwrap();
    // Stand in for the crashed backend: accept the charge's connection, read the
    // request, and close without answering.
    let impostor = tokio::net::TcpListener::bind(stopped.addr()).await.unwrap();
    let request = tokio::spawn(app.oneshot(ask(&token)));
    {
        use tokio::io::AsyncReadExt;
        let (mut socket, _) = impostor.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = socket.read(&mut buf).await;
    }
    drop(impostor);
    let server = stopped.start().await.unwrap();
    let w = World {
        server,
        subscribers,
        plan,
        agent,
        owner,
    };
    let response = request.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let request_id = text(response).await;
    let outcome = outcomes.recv().await.unwrap();
    assert_eq!(outcome.status, SettleStatus::Settled, "{outcome:?}");
    assert!(outcome.attempts >= 2, "{outcome:?}");
    assert_eq!(w.spends_by_request()[&request_id].len(), 1);
    assert_eq!(w.balance(0).await, c(98), "two requests, two credits");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn an_outcome_that_stays_unknown_is_reported_with_its_request_id() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let w = world(1, 100).await;
    let (hook, mut outcomes) = outcomes();
    let layer = w
        .layer(TIMEOUT)
        .on_settle(hook)
        .charge_retry(RetryPolicy {
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(10),
            max_elapsed: Duration::from_secs(5),
            max_attempts: 3,
        })
        .build()
        .unwrap();
    let app = app(layer, Arc::new(AtomicUsize::new(0)));
    let token = w.x402(0).await;
    // Every reply is lost after the backend applied the charge.
    w.server
        .faults()
        .set(Fault::new(SETTLE).drop_connection().after_handler());
    let response = app.oneshot(ask(&token)).await.unwrap();
    assert_eq!(response.status(), 200, "the work is done: it is returned");
    let request_id = text(response).await;
    let outcome = outcomes.recv().await.unwrap();
    assert_eq!(outcome.status, SettleStatus::Unknown, "{outcome:?}");
    assert_eq!(outcome.request_id, request_id);
    assert_eq!(outcome.attempts, 3);
    let logged = logs.text();
    let line = logged
        .lines()
        .find(|l| l.contains("charge outcome unknown"))
        .unwrap_or_else(|| panic!("no unknown-outcome log in {logged}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains(&request_id),
        "the log names the request id: {line}"
    );
    assert!(!logged.contains(&token), "the token is never logged");
    // Reconciling by request id: the ledger shows the charge happened, once.
    assert_eq!(w.spends_by_request()[&request_id].len(), 1);
}

#[tokio::test]
async fn drain_names_the_charges_a_down_backend_never_answered_then_settles_them() {
    let w = world(1, 100).await;
    let (hook, mut outcomes) = outcomes();
    let layer = w
        .layer(TIMEOUT)
        .charge_timing(nvm_payments::ChargeTiming::Background)
        .on_settle(hook)
        .build()
        .unwrap();
    let app = app(layer.clone(), Arc::new(AtomicUsize::new(0)));
    let token = w.x402(0).await;
    w.server.faults().set(Fault::new(SETTLE).status(503));
    let mut served = Vec::new();
    for _ in 0..2 {
        let response = app.clone().oneshot(ask(&token)).await.unwrap();
        assert_eq!(response.status(), 200);
        served.push(text(response).await);
    }
    served.sort();
    // The backend keeps failing: a short drain names both charges, still retrying.
    let report = layer.drain(Duration::from_millis(300)).await;
    assert_eq!(report.unfinished, served, "{report:?}");
    assert_eq!(report.settled + report.failed + report.unknown, 0);
    // It returns: a longer drain sees them settle, once each.
    w.server.faults().clear();
    let report = layer.drain(Duration::from_secs(30)).await;
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.settled, 2, "{report:?}");
    for _ in 0..2 {
        assert!(outcomes.recv().await.unwrap().is_settled());
    }
    let spends = w.spends_by_request();
    for id in &served {
        assert_eq!(spends[id].len(), 1);
    }
}
