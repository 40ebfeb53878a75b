//! A bounded soak: many concurrent callers, many subscribers, valid and invalid tokens,
//! faults switched on and off during the run, against the devserver. It ends with the
//! books balanced: every successful response charged exactly once (spends per request
//! id at the devserver), no refused or failed response charged, the ledger's totals
//! equal to the requests served, and memory growth bounded.
//!
//! `cargo test --test e2e soak` runs 3 000 requests. The long soak:
//! `SOAK_REQUESTS=100000 cargo test --release --test e2e soak -- --ignored --nocapture`.
#![cfg(feature = "devserver")]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::reliability::*;
use axum::body::Body;
use axum::routing::post;
use axum::Router;
use http::{Request, StatusCode};
use nvm_payments::devserver::Fault;
use nvm_payments::{ChargeTiming, OnSettle, PaymentContext, RetryPolicy, SettleStatus};
use tower::ServiceExt;

const TASKS: usize = 64;
const SUBSCRIBERS: usize = 50;
const GRANT: u64 = 1_000_000;
/// Faults change every this many requests.
const PHASE: usize = 250;

/// What one request ended as.
#[derive(Default)]
struct Tally {
    /// Request ids of 200 responses.
    served: HashSet<String>,
    /// Handler runs that answered 500 (never charged).
    failed_runs: usize,
    /// Refusals by status.
    refused: HashMap<u16, usize>,
    /// Invalid credentials that were served (must stay 0).
    invalid_served: usize,
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn set_phase(w: &World, phase: usize) {
    let faults = w.server.faults();
    faults.clear();
    match phase % 5 {
        0 => {}
        1 => faults.set(Fault::new(SETTLE).status(503).times(20)),
        2 => faults.set(
            Fault::new(SETTLE)
                .drop_connection()
                .after_handler()
                .times(20),
        ),
        3 => faults.set(Fault::new(VERIFY).latency_ms(20)),
        _ => {
            faults.set(Fault::new(SETTLE).drop_connection().times(10));
            faults.set(Fault::new(VERIFY).status(502).times(5));
        }
    }
}

async fn soak(requests: usize) {
    let w = Arc::new(world(SUBSCRIBERS, GRANT).await);
    let (hook, mut outcomes) = outcomes();
    let hook = Arc::new(hook);
    let retry = RetryPolicy {
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        max_elapsed: Duration::from_secs(20),
        max_attempts: 30,
    };
    // Small caches: the run must live with evictions, and memory stays bounded by them.
    let layer = |timing| {
        let hook = hook.clone();
        w.layer(Duration::from_secs(5))
            .charge_timing(timing)
            .charge_retry(retry)
            .verification_cache(Duration::from_secs(60), 16)
            .balance_cache(Duration::from_millis(200), 16)
            .on_settle(move |o: &nvm_payments::SettleOutcome| hook.on_settle(o))
            .build()
            .unwrap()
    };
    let handler = |payment: PaymentContext| async move { payment.request_id().to_owned() };
    let failing = || async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") };
    let (before, background) = (
        layer(ChargeTiming::BeforeResponse),
        layer(ChargeTiming::Background),
    );
    let app = Router::new()
        .route("/ask", post(handler))
        .route("/fail", post(failing))
        .layer(before.clone())
        .merge(
            Router::new()
                .route("/bg", post(handler))
                .layer(background.clone()),
        );

    let mut valid = Vec::new();
    for i in 0..SUBSCRIBERS {
        valid.push(w.x402(i).await);
    }
    let forged = {
        let mut payload = nvm_payments::credential::decode_x402_token(&valid[0]).unwrap();
        payload.payload.authorization.from = "0x2222222222222222222222222222222222222222"
            .parse()
            .unwrap();
        nvm_payments::credential::encode_x402_token(&payload)
    };
    let invalid = Arc::new(vec![
        Some(forged),
        Some("not-a-token".to_owned()),
        Some(valid[1][..valid[1].len() / 2].to_owned()),
        None,
    ]);
    let valid = Arc::new(valid);

    let next = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    // RSS once a tenth of the run is done: caches and pools are warm by then.
    let rss_warm = Arc::new(std::sync::OnceLock::new());
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (app, w, next, tally) = (app.clone(), w.clone(), next.clone(), tally.clone());
        let rss_warm = rss_warm.clone();
        let (valid, invalid) = (valid.clone(), invalid.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= requests {
                    break;
                }
                if i % PHASE == 0 {
                    set_phase(&w, i / PHASE);
                }
                if i == requests / 10 {
                    let _ = rss_warm.set(rss_kib());
                }
                let bad = i % 10 == 3;
                let token = if bad {
                    invalid[i % invalid.len()].clone()
                } else {
                    Some(valid[(i * 7) % valid.len()].clone())
                };
                let path = match i % 13 {
                    0 => "/fail",
                    1 | 5 | 9 => "/bg",
                    _ => "/ask",
                };
                let mut request = Request::post(path);
                if let Some(t) = &token {
                    request = request.header("payment-signature", t);
                }
                let response = app
                    .clone()
                    .oneshot(request.body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                let status = response.status();
                let body = text(response).await;
                let mut t = tally.lock().unwrap();
                match status.as_u16() {
                    200 => {
                        if bad {
                            t.invalid_served += 1;
                        }
                        assert!(t.served.insert(body), "request ids are unique");
                    }
                    500 => t.failed_runs += 1,
                    other => *t.refused.entry(other).or_default() += 1,
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let rss_warm = rss_warm.get().copied().flatten();
    w.server.faults().clear();
    // Shutdown: every charge still in flight ends within the drain.
    for layer in [&before, &background] {
        let report = layer.drain(Duration::from_secs(30)).await;
        assert!(report.is_complete(), "{report:?}");
        assert_eq!(report.failed + report.unknown, 0, "{report:?}");
        assert_eq!(layer.pending_charges(), 0);
        // Memory bounded by the caches' caps, whatever the number of callers.
        let sizes = layer.cache_sizes().await;
        assert!(sizes.verifications <= 16, "{sizes:?}");
        assert!(sizes.refused_tokens <= 16, "{sizes:?}");
        assert!(sizes.balances <= 16, "{sizes:?}");
        assert!(sizes.plans <= 1 && sizes.routes <= 3, "{sizes:?}");
        println!("soak: cache sizes {sizes:?}");
    }
    let tally = Arc::try_unwrap(tally).ok().unwrap().into_inner().unwrap();
    // Background charges report when done: wait for one outcome per served request.
    let mut settled = HashSet::new();
    while settled.len() < tally.served.len() {
        let outcome = outcomes.recv().await.unwrap();
        assert_eq!(outcome.status, SettleStatus::Settled, "{outcome:?}");
        assert!(settled.insert(outcome.request_id));
    }
    let elapsed = started.elapsed();
    let rss_end = rss_kib();

    assert_eq!(tally.invalid_served, 0, "no invalid credential is served");
    assert_eq!(settled, tally.served, "every served request settled");
    let spends = w.spends_by_request();
    for (id, s) in &spends {
        assert_eq!(s.len(), 1, "request {id} spent {} times", s.len());
        assert!(
            tally.served.contains(id),
            "request {id} was charged but not served"
        );
    }
    assert_eq!(
        spends.len(),
        tally.served.len(),
        "every served request charged"
    );
    let spent: u64 = spends
        .values()
        .map(|s| s[0].credits.to_string().parse::<u64>().unwrap())
        .sum();
    assert_eq!(
        spent,
        tally.served.len() as u64,
        "1 credit per served request"
    );
    let mut burned = 0u64;
    for i in 0..SUBSCRIBERS {
        let left: u64 = w.balance(i).await.to_string().parse().unwrap();
        burned += GRANT - left;
    }
    assert_eq!(
        burned, spent,
        "the balances moved by exactly what was charged"
    );
    assert!(
        tally.refused.keys().all(|s| [400, 402, 503].contains(s)),
        "{:?}",
        tally.refused
    );

    let growth = match (rss_warm, rss_end) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    println!(
        "soak: {requests} requests, {} served, {} handler failures, refused {:?}, {:?} ({:.0} req/s), RSS at a tenth of the run {:?} KiB, at the end {:?} KiB (growth {:?} KiB, devserver ledger included)",
        tally.served.len(),
        tally.failed_runs,
        tally.refused,
        elapsed,
        requests as f64 / elapsed.as_secs_f64(),
        rss_warm,
        rss_end,
        growth,
    );
    if let Some(growth) = growth {
        // The layer's caches are capped (16 entries). What grows with the run lives in
        // this process too: the devserver's ledger (a spend and an idempotency record
        // per charge) and this test's tally, together ~1.7 KiB per request measured
        // over 20 000 requests. A leak of the layer's per-request state would show
        // beyond that.
        assert!(
            growth < 64 * 1024 + 3 * requests as u64,
            "RSS grew by {growth} KiB over {requests} requests"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_3000_requests_balance_the_books() {
    soak(3_000).await;
}

/// `SOAK_REQUESTS=100000 cargo test --release --test e2e soak -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long soak: run on demand"]
async fn long_soak() {
    let requests = std::env::var("SOAK_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    soak(requests).await;
}
