//! The charge journal (`PaymentLayerBuilder::charge_journal`) with the mock backend:
//! a charge is journaled before the response that makes it due is released, a replay
//! never charges twice (in-process claims, and the backend's idempotency by request
//! id across processes), a charge that could not reach the backend is replayed with
//! its own request id by the next layer on the same file, and a journal that cannot
//! be opened fails `build()`.
#![cfg(feature = "devserver")] // ed25519-dalek signs the bearer tokens

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use nvm_payments::{ChargeTiming, Credits, SettleStatus};
use tokio::sync::Semaphore;
use tower::{Layer, ServiceExt};

use crate::support::layer_mock::*;
use crate::support::temp_dir::TempDir;

fn held_backend() -> (Arc<MockBackend>, Arc<Semaphore>) {
    let permits = Arc::new(Semaphore::new(0));
    let backend = MockBackend::with(100, |m| m.charge_permits = Some(permits.clone()));
    (backend, permits)
}

#[tokio::test]
async fn a_background_charge_is_durable_before_its_response_and_done_once_settled() {
    let dir = TempDir::new("journal-bg");
    let (backend, permits) = held_backend();
    let (hook, mut outcomes) = outcomes();
    let layer = builder(backend.clone())
        .charge_journal(dir.join("charges.journal"))
        .charge_timing(ChargeTiming::Background)
        .on_settle(hook)
        .build()
        .unwrap();
    let inner = Inner::ok();
    let response = layer
        .layer(inner.service())
        .oneshot(x402_request(valid_x402()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let stats = layer.journal_stats().unwrap();
    assert_eq!(
        stats.appended, 1,
        "journaled before the response: {stats:?}"
    );
    assert_eq!(stats.unfinished, 1, "{stats:?}");
    assert!(stats.fsyncs >= 1, "made durable: {stats:?}");
    permits.add_permits(1);
    assert_eq!(outcomes.recv().await.unwrap().status, SettleStatus::Settled);
    assert_eq!(layer.journal_stats().unwrap().unfinished, 0);
    assert_eq!(backend.charged_ids(), 1);
    assert_eq!(inner.calls(), 1);
}

#[tokio::test]
async fn a_background_charge_final_at_once_releases_its_response_with_nothing_written() {
    let dir = TempDir::new("journal-bg-instant");
    // An instant backend: the charge is sent from the request's task and ends final
    // before the response asks for its entry.
    let backend = MockBackend::new(100);
    let layer = builder(backend.clone())
        .charge_journal(dir.join("charges.journal"))
        .charge_timing(ChargeTiming::Background)
        .build()
        .unwrap();
    let inner = Inner::ok();
    for n in 1..=3 {
        let response = layer
            .layer(inner.service())
            .oneshot(x402_request(valid_x402()))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        // Charged once, before the response went (its outcome was final then).
        assert_eq!(backend.charged_ids(), n);
    }
    let stats = layer.journal_stats().unwrap();
    assert_eq!(
        (stats.appended, stats.elided, stats.fsyncs, stats.unfinished),
        (0, 3, 0, 0),
        "never queued, never written, no fsync: {stats:?}"
    );
    assert_eq!(inner.calls(), 3);
    drop(layer);
    // Nothing about them in the file: the next process owes nothing.
    let bytes = std::fs::read(dir.join("charges.journal")).unwrap();
    assert!(bytes.len() <= 16, "only the header: {} bytes", bytes.len());
    let next = builder(backend.clone())
        .charge_journal(dir.join("charges.journal"))
        .build()
        .unwrap();
    assert_eq!(next.journal_stats().unwrap().unfinished, 0);
    assert_eq!(backend.charged_ids(), 3);
}

#[tokio::test]
async fn a_background_charge_that_fails_to_reach_the_backend_is_kept_for_replay_and_on_disk() {
    let dir = TempDir::new("journal-bg-unfinished");
    let path = dir.join("charges.journal");
    // Unreachable for the whole retry window: the charge ends without a final outcome.
    let down = MockBackend::with(100, |m| {
        m.charge_failures =
            std::sync::Mutex::new((0..6).map(|_| (connect_refused(), false)).collect());
    });
    let (hook, mut outcomes) = outcomes();
    let layer = builder(down.clone())
        .charge_journal(&path)
        .charge_timing(ChargeTiming::Background)
        .journal_replay_interval(Duration::from_secs(3600))
        .on_settle(hook)
        .build()
        .unwrap();
    let response = layer
        .layer(Inner::ok().service())
        .oneshot(x402_request(valid_x402()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The response went once the entry was durable; the charge ends later, unfinished.
    assert_ne!(outcomes.recv().await.unwrap().status, SettleStatus::Settled);
    let stats = layer.journal_stats().unwrap();
    assert_eq!(
        (stats.appended, stats.unfinished),
        (1, 1),
        "durable before its response, listed once its charge ended unfinished: {stats:?}"
    );
    drop(layer);
    let next = builder(down.clone())
        .charge_journal(&path)
        .journal_replay_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    assert_eq!(next.journal_stats().unwrap().unfinished, 1);
}

#[tokio::test]
async fn before_response_sends_the_charge_at_once_and_releases_a_final_one_without_the_disk() {
    let dir = TempDir::new("journal-before");
    let hold = tokio::sync::Notify::new();
    let backend = MockBackend::with(100, |m| m.charge_hold = Some(hold));
    let layer = builder(backend.clone())
        .charge_journal(dir.join("charges.journal"))
        .build()
        .unwrap();
    let inner = Inner::ok();
    let served = tokio::spawn(
        layer
            .layer(inner.service())
            .oneshot(x402_request(valid_x402())),
    );
    // The settle starts without waiting for an fsync; the response waits for it.
    backend.charge_entered.notified().await;
    assert!(
        !served.is_finished(),
        "no response before the charge is final"
    );
    backend.charge_hold.as_ref().unwrap().notify_one();
    let response = served.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("payment-response"));
    let stats = layer.journal_stats().unwrap();
    assert_eq!(stats.unfinished, 0, "{stats:?}");
    // Final before its response: never handed to the journal at all.
    assert_eq!((stats.appended, stats.elided), (0, 0), "{stats:?}");
    assert_eq!(backend.charged_ids(), 1);
    assert_eq!(inner.calls(), 1);
    // The next process owes nothing.
    drop(layer);
    let next = builder(backend.clone())
        .charge_journal(dir.join("charges.journal"))
        .build()
        .unwrap();
    assert_eq!(next.journal_stats().unwrap().unfinished, 0);
    assert_eq!(backend.charged_ids(), 1);
}

#[tokio::test]
async fn before_response_releases_a_charge_that_is_not_final_only_once_it_is_durable() {
    let dir = TempDir::new("journal-before-unknown");
    let path = dir.join("charges.journal");
    // The backend is unreachable for the whole retry window: the outcome is not final.
    let down = MockBackend::with(100, |m| {
        m.charge_failures =
            std::sync::Mutex::new((0..6).map(|_| (connect_refused(), false)).collect());
    });
    let layer = builder(down.clone())
        .charge_journal(&path)
        .journal_replay_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let response = layer
        .layer(Inner::ok().service())
        .oneshot(x402_request(valid_x402()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let stats = layer.journal_stats().unwrap();
    assert_eq!(
        (stats.appended, stats.elided, stats.unfinished),
        (1, 0, 1),
        "on disk when the response went: {stats:?}"
    );
    assert!(stats.fsyncs >= 1, "{stats:?}");
    drop(layer);
    // The next process replays it: the served request is charged.
    let next = builder(down.clone())
        .charge_journal(&path)
        .journal_replay_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    assert_eq!(next.journal_stats().unwrap().unfinished, 1);
}

#[tokio::test]
async fn a_rejected_request_writes_nothing() {
    let dir = TempDir::new("journal-reject");
    let backend = MockBackend::new(100);
    let layer = builder(backend.clone())
        .charge_journal(dir.join("charges.journal"))
        .build()
        .unwrap();
    let inner = Inner::ok();
    let response = layer
        .layer(inner.service())
        .oneshot(request_with(None))
        .await
        .unwrap();
    assert_eq!(response.status(), 402);
    assert_eq!(inner.calls(), 0, "the handler never ran");
    assert_eq!(layer.journal_stats().unwrap().appended, 0);
    assert_eq!(backend.charge_calls(), 0);
}

#[tokio::test]
async fn a_stream_dropped_before_its_end_is_marked_done_uncharged() {
    let dir = TempDir::new("journal-stream");
    let backend = MockBackend::new(100);
    let layer = builder(backend.clone())
        .charge_journal(dir.join("charges.journal"))
        .charge_timing(ChargeTiming::OnBodyEnd)
        .build()
        .unwrap();
    let response = layer
        .layer(Inner::ok().service())
        .oneshot(x402_request(valid_x402()))
        .await
        .unwrap();
    assert_eq!(
        layer.journal_stats().unwrap().unfinished,
        1,
        "due once served"
    );
    drop(response);
    assert_eq!(layer.journal_stats().unwrap().unfinished, 0);
    assert_eq!(layer.replay_charge_journal().await, 0);
    assert_eq!(backend.charge_calls(), 0, "nothing owed, nothing replayed");
}

#[tokio::test]
async fn a_replay_racing_the_original_charge_spends_once() {
    let dir = TempDir::new("journal-race");
    let path = dir.join("charges.journal");
    // Every charge call waits at the backend until the test lets them all go.
    let backend = MockBackend::with(100, |m| m.charge_hold = Some(tokio::sync::Notify::new()));
    let (hook, mut outcomes) = outcomes();
    let layer = builder(backend.clone())
        .charge_journal(&path)
        .charge_timing(ChargeTiming::Background)
        .on_settle(hook)
        .build()
        .unwrap();
    let response = layer
        .layer(Inner::ok().service())
        .oneshot(x402_request(valid_x402()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    backend.charge_entered.notified().await; // the original is at the backend

    // In this process the request id is claimed by the original: a pass skips it.
    assert_eq!(layer.replay_charge_journal().await, 0);
    assert_eq!(backend.charge_calls(), 1);

    // Another process on a copy of the journal (a replica taking over): its start-up
    // replay reaches the backend while the original is still there, same request id.
    let copy = dir.join("copy.journal");
    std::fs::copy(&path, &copy).unwrap();
    let (other_hook, mut other_outcomes) = crate::support::layer_mock::outcomes();
    let other = builder(backend.clone())
        .charge_journal(&copy)
        .journal_replay_interval(Duration::from_secs(3600))
        .on_settle(other_hook)
        .build()
        .unwrap();
    backend.charge_entered.notified().await; // the replay is at the backend too
    assert_eq!(
        backend.charge_calls(),
        2,
        "original and replay both in flight"
    );
    backend.charge_hold.as_ref().unwrap().notify_waiters();

    let original = outcomes.recv().await.unwrap();
    let replay = other_outcomes.recv().await.unwrap();
    assert_eq!(original.status, SettleStatus::Settled);
    assert_eq!(replay.status, SettleStatus::Settled);
    assert_eq!(replay.request_id, original.request_id);
    assert_eq!(backend.charged_ids(), 1, "one spend for one request id");
    assert_eq!(backend.total_charged(), Credits::from(2u64));
    assert_eq!(backend.remaining(), Credits::from(98u64));
    assert_eq!(layer.journal_stats().unwrap().unfinished, 0);
    assert_eq!(other.journal_stats().unwrap().unfinished, 0);
    assert_eq!(other.journal_stats().unwrap().replayed, 1);
}

#[tokio::test]
async fn a_charge_that_never_reached_the_backend_is_replayed_by_the_next_layer() {
    let dir = TempDir::new("journal-next");
    let path = dir.join("charges.journal");
    // The backend is unreachable for the whole retry window of the first layer.
    let down = MockBackend::with(100, |m| {
        m.charge_failures =
            std::sync::Mutex::new((0..6).map(|_| (connect_refused(), false)).collect());
    });
    let (hook, mut outcomes) = outcomes();
    let layer = builder(down.clone())
        .charge_journal(&path)
        .charge_timing(ChargeTiming::Background)
        .on_settle(hook)
        .build()
        .unwrap();
    let response = layer
        .layer(Inner::ok().service())
        .oneshot(x402_request(valid_x402()))
        .await
        .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"served");
    let first = outcomes.recv().await.unwrap();
    assert_eq!(first.status, SettleStatus::Failed);
    assert_eq!(down.charged_ids(), 0);
    assert_eq!(
        layer.journal_stats().unwrap().unfinished,
        1,
        "kept for a replay"
    );
    drop(layer); // the process goes away; the file stays

    let (hook, mut replays) = crate::support::layer_mock::outcomes();
    let next = builder(down.clone())
        .charge_journal(&path)
        .journal_replay_interval(Duration::from_secs(3600))
        .on_settle(hook)
        .build()
        .unwrap();
    // The start-up pass replays it with the same request id.
    let replayed = replays.recv().await.unwrap();
    assert_eq!(replayed.status, SettleStatus::Settled);
    assert_eq!(replayed.request_id, first.request_id);
    assert_eq!(down.charged_ids(), 1);
    assert_eq!(next.journal_stats().unwrap().replayed, 1);
    assert_eq!(next.journal_stats().unwrap().unfinished, 0);
}

#[tokio::test]
async fn build_fails_when_the_journal_cannot_be_opened() {
    let dir = TempDir::new("journal-open");
    let missing = dir.join("no/such/dir/charges.journal");
    let err = builder(MockBackend::new(1))
        .charge_journal(missing)
        .build()
        .unwrap_err();
    assert_eq!(err.field, "charge_journal");
    assert!(err.reason.contains("directory"), "{err}");

    let path = dir.join("charges.journal");
    let _first = builder(MockBackend::new(1))
        .charge_journal(&path)
        .build()
        .unwrap();
    let err = builder(MockBackend::new(1))
        .charge_journal(&path)
        .build()
        .unwrap_err();
    assert_eq!(err.field, "charge_journal");
    assert!(err.reason.contains("in use"), "{err}");

    // A journal in a format this version does not know (a newer one): refused, kept.
    let newer = dir.join("newer.journal");
    std::fs::write(&newer, b"NVMJRNL9 from a newer nvm-payments").unwrap();
    let err = builder(MockBackend::new(1))
        .charge_journal(&newer)
        .build()
        .unwrap_err();
    assert_eq!(err.field, "charge_journal");
    assert!(err.reason.contains("format"), "{err}");
    assert_eq!(
        std::fs::read(&newer).unwrap(),
        b"NVMJRNL9 from a newer nvm-payments"
    );

    let err = builder(MockBackend::new(1))
        .charge_journal(dir.join("other.journal"))
        .journal_replay_interval(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.field, "journal_replay_interval");
}
