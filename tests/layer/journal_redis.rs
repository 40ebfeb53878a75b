//! The charge journal in Redis (`PaymentLayerBuilder::charge_journal_in`) with the mock
//! backend and a `redis-server` of the test's own (`support::redis`): a replica killed
//! with charges in flight has them replayed by a survivor once its lease expires, each
//! served request id charged exactly once; a replica only stopped (its lease expired
//! while its charge was at the backend) races the replay and the backend still spends
//! once; a live replica's entries are never taken; without Redis a charge is made
//! before its response.
#![cfg(feature = "devserver")] // ed25519-dalek signs the bearer tokens

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use nvm_payments::shared::RedisStore;
use nvm_payments::{ChargeTiming, Credits, PaymentContext, SettleStatus};
use tokio::sync::Semaphore;
use tower::{Layer, ServiceExt};

use crate::support::layer_mock::*;
use crate::support::redis::RedisServer;

const PREFIX: &str = "journal-test";
/// Short, so a dead replica's lease expires within the test.
const SHORT_TTL: Duration = Duration::from_millis(300);
/// Only the passes a test asks for (and the start-up one).
const NO_PERIODIC_PASS: Duration = Duration::from_secs(3600);

async fn store(redis_url: &str, lease_ttl: Duration) -> RedisStore {
    RedisStore::builder(redis_url)
        .prefix(PREFIX)
        .lease_ttl(lease_ttl)
        .connect()
        .await
        .expect("redis reachable")
}

/// An inner service that records the request id of every request it serves.
fn recording(
    ids: Arc<Mutex<Vec<String>>>,
) -> impl tower::Service<
    Request<TestBody>,
    Response = Response<TestBody>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |req: Request<TestBody>| {
        let ids = ids.clone();
        async move {
            let context = req.extensions().get::<PaymentContext>();
            let context = context.expect("the handler runs with a PaymentContext");
            ids.lock().unwrap().push(context.request_id().to_owned());
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"served"))))
        }
    })
}

/// A short bounded poll on `done` (a lease expiring in Redis has no signal to await).
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn leases(redis: &RedisServer) -> Vec<String> {
    redis.keys(&format!("{PREFIX}:{{journal}}:lease:*"))
}

fn entries(redis: &RedisServer) -> Vec<String> {
    redis.keys(&format!("{PREFIX}:{{journal}}:entries:*"))
}

/// Replica A in a runtime of its own: serves `n` requests whose charges wait at the
/// backend for permits, then its runtime is dropped with them in flight, nothing
/// drained (a killed process). Answers the request ids it served.
fn serve_then_die(url: String, backend: Arc<MockBackend>, n: usize) -> Vec<String> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ids = runtime.block_on(async {
            let layer = builder(backend.clone())
                .charge_journal_in(store(&url, SHORT_TTL).await)
                .journal_replay_interval(NO_PERIODIC_PASS)
                .charge_timing(ChargeTiming::Background)
                .build()
                .unwrap();
            let ids = Arc::new(Mutex::new(Vec::new()));
            let service = layer.layer(recording(ids.clone()));
            for _ in 0..n {
                let response = service
                    .clone()
                    .oneshot(x402_request(valid_x402()))
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }
            let stats = layer.journal_stats().unwrap();
            assert_eq!(stats.appended, n as u64, "journaled before the responses");
            assert!(
                stats.fsyncs <= stats.appended,
                "one write per batch: {stats:?}"
            );
            until("every charge at the backend", || {
                backend.charge_calls() == n
            })
            .await;
            let ids = ids.lock().unwrap().clone();
            ids
        });
        drop(runtime); // killed: its charges are dropped mid-flight
        ids
    })
    .join()
    .unwrap()
}

#[tokio::test]
async fn a_dead_replicas_charges_are_replayed_by_a_survivor_exactly_once() {
    const N: usize = 6;
    let redis = RedisServer::start();
    let permits = Arc::new(Semaphore::new(0));
    let backend = MockBackend::with(100, |m| m.charge_permits = Some(permits.clone()));
    let served = serve_then_die(redis.url(), backend.clone(), N);
    let served: HashSet<String> = served.into_iter().collect();
    assert_eq!(served.len(), N, "one request id per request");
    assert_eq!(backend.charged_ids(), 0, "A's charges never landed");
    assert_eq!(entries(&redis).len(), 1, "A's entries are in Redis");

    permits.add_permits(N); // the backend answers from now on
    let (hook, mut outcomes) = outcomes();
    let survivor = builder(backend.clone())
        .charge_journal_in(store(&redis.url(), SHORT_TTL).await)
        .journal_replay_interval(NO_PERIODIC_PASS)
        .on_settle(hook)
        .build()
        .unwrap();
    // Passes take nothing while A's lease lives, then take over all of A's entries.
    let mut replayed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while replayed.len() < N {
        assert!(Instant::now() < deadline, "replayed {replayed:?}");
        survivor.replay_charge_journal().await;
        while let Ok(outcome) = outcomes.try_recv() {
            replayed.push(outcome);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ids: HashSet<String> = replayed.iter().map(|o| o.request_id.clone()).collect();
    assert_eq!(ids, served, "each of A's request ids, with its own id");
    assert!(replayed.iter().all(|o| o.status == SettleStatus::Settled));
    assert_eq!(replayed.len(), N, "none twice");
    assert_eq!(backend.charged_ids(), N);
    assert_eq!(backend.total_charged(), Credits::from(2 * N as u64));
    assert_eq!(survivor.journal_stats().unwrap().unfinished, 0);

    // Final: removed from Redis, and a later pass sends nothing.
    until("the replayed entries removed", || {
        entries(&redis).iter().all(|key| redis.hlen(key) == 0)
    })
    .await;
    assert_eq!(survivor.replay_charge_journal().await, 0);
    assert_eq!(survivor.journal_stats().unwrap().replayed, N as u64);
    assert_eq!(
        backend.charge_calls(),
        2 * N,
        "A's lost calls, then one replay each"
    );
}

#[tokio::test]
async fn a_replica_stopped_past_its_lease_races_the_replay_and_the_backend_spends_once() {
    let redis = RedisServer::start();
    // Every charge waits at the backend until the test lets those there go.
    let backend = MockBackend::with(100, |m| m.charge_hold = Some(tokio::sync::Notify::new()));
    let (served_tx, served_rx) = tokio::sync::oneshot::channel::<String>();
    let (resume, frozen) = std::sync::mpsc::channel::<()>();
    let url = redis.url();
    let a_backend = backend.clone();
    let replica_a = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let (hook, mut outcomes) = outcomes();
            let layer = builder(a_backend.clone())
                .charge_journal_in(store(&url, SHORT_TTL).await)
                .journal_replay_interval(NO_PERIODIC_PASS)
                .charge_timing(ChargeTiming::Background)
                .on_settle(hook)
                .build()
                .unwrap();
            let ids = Arc::new(Mutex::new(Vec::new()));
            let response = layer
                .layer(recording(ids.clone()))
                .oneshot(x402_request(valid_x402()))
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            a_backend.charge_entered.notified().await; // the original is at the backend
            let id = ids.lock().unwrap()[0].clone();
            served_tx.send(id).unwrap();
            // Stopped (SIGSTOP, a long pause): the runtime's only thread blocks, so
            // nothing of A runs, its lease renewal included.
            frozen.recv().unwrap();
            outcomes.recv().await.unwrap()
        })
    });
    let request_id = served_rx.await.unwrap();
    until("A's lease expired", || leases(&redis).is_empty()).await;

    let (hook, mut replays) = outcomes();
    let survivor = builder(backend.clone())
        .charge_journal_in(store(&redis.url(), SHORT_TTL).await)
        .journal_replay_interval(NO_PERIODIC_PASS)
        .on_settle(hook)
        .build()
        .unwrap();
    // The start-up pass takes A's entry and sends it beside A's original.
    backend.charge_entered.notified().await;
    assert_eq!(
        backend.charge_calls(),
        2,
        "original and replay both in flight"
    );
    backend.charge_hold.as_ref().unwrap().notify_waiters();
    resume.send(()).unwrap();

    let replay = replays.recv().await.unwrap();
    let original = tokio::task::spawn_blocking(move || replica_a.join().unwrap())
        .await
        .unwrap();
    assert_eq!(
        replay.request_id, request_id,
        "replayed with the same request id"
    );
    assert_eq!(original.request_id, request_id);
    assert_eq!(replay.status, SettleStatus::Settled);
    assert_eq!(original.status, SettleStatus::Settled);
    assert_eq!(backend.charged_ids(), 1, "one spend for one request id");
    assert_eq!(backend.total_charged(), Credits::from(2u64));
    assert_eq!(backend.remaining(), Credits::from(98u64));
    assert_eq!(survivor.journal_stats().unwrap().replayed, 1);
    assert_eq!(survivor.journal_stats().unwrap().unfinished, 0);
}

#[tokio::test]
async fn a_live_replicas_entries_are_never_taken() {
    let redis = RedisServer::start();
    // Long enough that a renewal delayed by a loaded machine does not let it lapse.
    let ttl = Duration::from_millis(600);
    let backend = MockBackend::with(100, |m| m.charge_hold = Some(tokio::sync::Notify::new()));
    let (hook, mut outcomes) = outcomes();
    let live = builder(backend.clone())
        .charge_journal_in(store(&redis.url(), ttl).await)
        .journal_replay_interval(NO_PERIODIC_PASS)
        .charge_timing(ChargeTiming::Background)
        .on_settle(hook)
        .build()
        .unwrap();
    let response = live
        .layer(Inner::ok().service())
        .oneshot(x402_request(valid_x402()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    backend.charge_entered.notified().await; // its charge is at the backend, held

    let other = builder(backend.clone())
        .charge_journal_in(store(&redis.url(), ttl).await)
        .journal_replay_interval(NO_PERIODIC_PASS)
        .build()
        .unwrap();
    // Passes over three lease TTLs: the live replica renews, nothing is taken. A
    // pass that took the entry would wait at the backend: bounded, it fails instead.
    let until = Instant::now() + ttl * 3;
    while Instant::now() < until {
        let pass = tokio::time::timeout(Duration::from_secs(5), other.replay_charge_journal());
        assert_eq!(pass.await.expect("a pass taking nothing returns"), 0);
        tokio::time::sleep(ttl / 4).await;
    }
    assert_eq!(backend.charge_calls(), 1, "only the original was sent");
    assert_eq!(other.journal_stats().unwrap().replayed, 0);
    assert_eq!(live.journal_stats().unwrap().unfinished, 1);

    backend.charge_hold.as_ref().unwrap().notify_waiters();
    assert_eq!(outcomes.recv().await.unwrap().status, SettleStatus::Settled);
    assert_eq!(live.journal_stats().unwrap().unfinished, 0);
    assert_eq!(backend.charged_ids(), 1);
}

#[tokio::test]
async fn a_file_and_a_redis_journal_together_fail_build() {
    let redis = RedisServer::start();
    let dir = crate::support::temp_dir::TempDir::new("journal-both");
    let error = builder(MockBackend::new(100))
        .charge_journal(dir.join("charges.journal"))
        .charge_journal_in(store(&redis.url(), SHORT_TTL).await)
        .build()
        .unwrap_err();
    assert_eq!(error.field, "charge_journal_in");
}

#[tokio::test]
async fn without_redis_a_charge_is_made_before_its_response() {
    let mut redis = RedisServer::start();
    // Held at the backend: the charge is not final when the response asks for its
    // entry, so the journal is needed (an instant charge would not need it).
    let hold = tokio::sync::Notify::new();
    let backend = MockBackend::with(100, |m| m.charge_hold = Some(hold));
    let store = RedisStore::builder(redis.url())
        .prefix(PREFIX)
        .timeout(Duration::from_millis(200))
        .connect()
        .await
        .expect("redis reachable");
    let layer = builder(backend.clone())
        .charge_journal_in(store)
        .journal_replay_interval(NO_PERIODIC_PASS)
        .charge_timing(ChargeTiming::Background)
        .build()
        .unwrap();
    redis.stop();
    let served = tokio::spawn(
        layer
            .layer(Inner::ok().service())
            .oneshot(x402_request(valid_x402())),
    );
    backend.charge_entered.notified().await;
    assert!(
        !served.is_finished(),
        "neither durable nor final: no response"
    );
    backend.charge_hold.as_ref().unwrap().notify_one();
    let response = served.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    // Not journaled, so not left to the background: charged before the response.
    assert_eq!(backend.charged_ids(), 1);
    let stats = layer.journal_stats().unwrap();
    assert_eq!((stats.appended, stats.unfinished), (0, 0), "{stats:?}");
}

#[tokio::test]
async fn a_charge_final_before_its_batch_is_never_written_to_redis() {
    let redis = RedisServer::start();
    let backend = MockBackend::new(100);
    let layer = builder(backend.clone())
        .charge_journal_in(store(&redis.url(), SHORT_TTL).await)
        .journal_replay_interval(NO_PERIODIC_PASS)
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
        assert_eq!(
            backend.charged_ids(),
            n,
            "charged once, before its response"
        );
    }
    let stats = layer.journal_stats().unwrap();
    assert_eq!(
        (stats.appended, stats.elided, stats.fsyncs, stats.unfinished),
        (0, 3, 0, 0),
        "no entry and no pipeline reached Redis: {stats:?}"
    );
    assert_eq!(inner.calls(), 3);
}
