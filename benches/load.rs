//! Loopback load bench: real HTTP/1.1 against an axum agent on 127.0.0.1.
//!
//! ```text
//! cargo bench --bench load
//! NVM_LOAD_SECS=3 NVM_LOAD_ROUNDS=3 NVM_LOAD_CONCURRENCY=32 cargo bench --bench load
//! ```
//!
//! One process, one tokio runtime (one worker per core) runs the agent, the embedded
//! devserver and the load generator: `NVM_LOAD_CONCURRENCY` keep-alive connections
//! (hyper client, one request in flight each) send `POST` requests for a fixed time.
//! The agent has three routes with the same handler:
//!
//! - `/free`: unprotected (the baseline; it is sent the same `payment-signature`
//!   header as `/paid`, so every row moves the same request bytes and the difference
//!   is the layer's work);
//! - `/paid`: behind `PaymentLayer` over the in-process charge sink of
//!   `tests/support/sink.rs` (warm caches; the charge is made and awaited in process);
//! - `/paid-each`: the same layer and sink, but each connection pays as its own holder
//!   (separates contention on one holder's ledger from the per-request work);
//! - `/paid-devserver`: behind `PaymentLayer` over the devserver, with a real x402 token
//!   it minted; verify, balance and the settle of every request go over HTTP;
//! - `/local-a` + `/local-b`: two replicas (two layers over the sink, one holder), the
//!   connections split between them, each replica with its own ledger;
//! - `/shared-a` + `/shared-b`: the same two replicas sharing one balance through credit
//!   leases on a `redis-server` the bench starts on a free port (`tests/support/redis.rs`;
//!   the bench needs `redis-server`); Redis calls are counted per request served.
//! - `/paid-bg`: `/paid` with `ChargeTiming::Background` (a second sink);
//! - `/paid-journal` and `/paid-journal-bg`: `/paid` and `/paid-bg` with a charge
//!   journal (`charge_journal`, a file under `NVM_LOAD_JOURNAL_DIR`, default the system
//!   temp dir): every charge is made durable (group commit) before its response. The
//!   report gives fsyncs per journaled request and the journal on / off ratios.
//! - `/paid-slow`, `/paid-slow-bg`, `/paid-slow-journal`, `/paid-slow-journal-bg`: the
//!   same four over a sink whose settles each take `NVM_LOAD_SLOW_SETTLE_MS` (default
//!   5 ms, a hosted settle's order of magnitude): what the charge timing costs when the
//!   backend is not instant, with and without a journal.
//! - `/paid-journal-redis` and `/paid-journal-redis-bg`: the same with the journal in
//!   Redis (`charge_journal_in`, the bench's `redis-server`, a store per row): the
//!   report gives Redis round trips per journaled request and the on / off ratios.
//!
//! After a warm-up pass the rows run interleaved, `A B C A B C ...`, for
//! `NVM_LOAD_ROUNDS` rounds of `NVM_LOAD_SECS` seconds each, so a noisy neighbour hurts
//! all rows alike; the table gives every round and the ratios against the unprotected
//! row of the same run. Backend calls are counted after the warm-up (at the sink and at
//! the devserver's `stats()`) and printed per request.
//!
//! `NVM_LOAD_WORKERS` sets the runtime's worker threads (default: one per core).
//! `NVM_LOAD_ROWS=free,paid` runs only some rows (for profiling, e.g. under
//! `valgrind --tool=callgrind`); the ratios need the `free` row.
#![allow(unreachable_pub)] // helpers shared between test and bench binaries by path

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use nvm_payments::devserver::DevServer;
use nvm_payments::settle::JournalStats;
use nvm_payments::types::{AgentApiAttributes, AgentMetadata, Endpoint, PlanMetadata};
use nvm_payments::{
    get_fixed_credits_config, get_free_price_config, ChargeTiming, Credits, Environment,
    PaymentLayer,
};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

#[path = "../tests/support/sink.rs"]
mod support;
use support::{agent, holder, plan, x402_token, Sink};
#[path = "../tests/support/redis.rs"]
mod redis_server;
use nvm_payments::shared::RedisStore;

const VERIFY: &str = "POST /api/v1/x402/verify";
const SETTLE: &str = "POST /api/v1/x402/settle";
const BALANCE: &str = "GET /api/v1/protocol/plans/{planId}/balance/{holder}";
const PLAN: &str = "GET /api/v1/protocol/plans/{planId}";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn answer() -> &'static str {
    "{\"answer\":42}"
}

struct Row {
    name: &'static str,
    path: &'static str,
    /// Odd connections go here instead (a second replica).
    also: Option<&'static str>,
    /// Connection `i` sends `credentials[i % len]` (none when empty).
    credentials: Vec<HeaderValue>,
    rounds: Vec<Measured>,
}

#[derive(Default)]
struct Measured {
    ok: u64,
    failed: u64,
    elapsed: Duration,
    /// Latency of every successful request, in microseconds.
    latencies: Vec<u32>,
    /// CPU time the whole process (server, client, journal writer) used meanwhile.
    cpu: Duration,
}

/// User + system CPU time of this process so far, from `/proc/self/stat` (in ticks of
/// `USER_HZ`, 100 per second on Linux): zero where there is no procfs.
fn process_cpu() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

impl Measured {
    fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// `concurrency` keep-alive connections send requests to `path` for `duration`.
async fn measure(
    addr: SocketAddr,
    (path, also): (&'static str, Option<&'static str>),
    credentials: Vec<HeaderValue>,
    concurrency: usize,
    duration: Duration,
) -> Measured {
    let barrier = Arc::new(Barrier::new(concurrency + 1));
    let start_at = Arc::new(std::sync::OnceLock::<Instant>::new());
    let workers: Vec<_> = (0..concurrency)
        .map(|i| {
            let (barrier, start_at) = (barrier.clone(), start_at.clone());
            let credential =
                (!credentials.is_empty()).then(|| credentials[i % credentials.len()].clone());
            let path = match also {
                Some(other) if i % 2 == 1 => other,
                _ => path,
            };
            tokio::spawn(async move {
                let stream = TcpStream::connect(addr).await.expect("connect");
                stream.set_nodelay(true).unwrap();
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .expect("handshake");
                tokio::spawn(connection);
                barrier.wait().await;
                let deadline = *start_at.get().unwrap() + duration;
                let mut m = Measured {
                    latencies: Vec::with_capacity(1 << 16),
                    ..Measured::default()
                };
                while Instant::now() < deadline {
                    let mut request = Request::post(path).header("host", "127.0.0.1");
                    if let Some(value) = &credential {
                        request =
                            request.header(HeaderName::from_static("payment-signature"), value);
                    }
                    let request = request.body(Empty::<Bytes>::new()).unwrap();
                    let sent = Instant::now();
                    sender.ready().await.expect("connection alive");
                    let response = sender.send_request(request).await.expect("response");
                    let status = response.status();
                    let body = response.into_body().collect().await.expect("body");
                    if status == 200 && !body.to_bytes().is_empty() {
                        m.ok += 1;
                        m.latencies.push(sent.elapsed().as_micros() as u32);
                    } else {
                        m.failed += 1;
                    }
                }
                m
            })
        })
        .collect();
    start_at.set(Instant::now()).unwrap();
    barrier.wait().await;
    let start = *start_at.get().unwrap();
    let mut total = Measured::default();
    for worker in workers {
        let m = worker.await.expect("worker");
        total.ok += m.ok;
        total.failed += m.failed;
        total.latencies.extend(m.latencies);
    }
    total.elapsed = start.elapsed();
    total
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn main() {
    let secs: f64 = env_or("NVM_LOAD_SECS", 3.0);
    let rounds: usize = env_or("NVM_LOAD_ROUNDS", 3);
    let concurrency: usize = env_or("NVM_LOAD_CONCURRENCY", 32);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let workers: usize = env_or("NVM_LOAD_WORKERS", cores);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(
        Duration::from_secs_f64(secs),
        rounds,
        concurrency,
        workers,
    ));
}

async fn run(duration: Duration, rounds: usize, concurrency: usize, workers: usize) {
    // The devserver: an agent, its plan (a billion credits, 1 per request), a
    // subscriber who ordered it, and the x402 token the subscriber would send.
    let server = DevServer::start().await.expect("devserver");
    let owner = server.payments(&server.create_account(Some("builder")));
    let subscriber = server.payments(&server.create_account(Some("subscriber")));
    let registered = owner
        .agents()
        .register_agent_and_plan(
            AgentMetadata::named("bench agent"),
            AgentApiAttributes::with_endpoints(vec![Endpoint::new(
                "POST",
                "http://127.0.0.1/paid-devserver",
            )]),
            PlanMetadata::named("bench plan"),
            get_free_price_config(),
            get_fixed_credits_config(Credits::from(1_000_000_000u64), Credits::from(1u64)),
        )
        .await
        .expect("register agent and plan");
    let (dev_plan, dev_agent) = (registered.data.plan_id, registered.data.agent_id);
    subscriber
        .plans()
        .order_plan(&dev_plan)
        .await
        .expect("order");
    let dev_token = subscriber
        .x402()
        .get_x402_access_token(&dev_plan, Some(&dev_agent))
        .await
        .expect("x402 token")
        .access_token;

    let sink = Sink::new();
    let sink_layer = PaymentLayer::builder_with_backend(sink.clone(), Environment::Custom)
        .plan_id(plan())
        .agent_id(agent())
        .credits(1u64)
        .build()
        .unwrap();
    // Journal on / off, before the response and in the background: a sink of their own.
    let journal_sink = Sink::new();
    let journal_dir = std::env::var_os("NVM_LOAD_JOURNAL_DIR")
        .map_or_else(std::env::temp_dir, std::path::PathBuf::from)
        .join(format!("nvm-load-journal-{}", std::process::id()));
    std::fs::create_dir_all(&journal_dir).expect("journal dir");
    let sink_layer_with = |timing: ChargeTiming, journal: Option<&str>| {
        let builder = PaymentLayer::builder_with_backend(journal_sink.clone(), Environment::Custom)
            .plan_id(plan())
            .agent_id(agent())
            .credits(1u64)
            .charge_timing(timing);
        match journal {
            Some(name) => builder.charge_journal(journal_dir.join(name)),
            None => builder,
        }
        .build()
        .unwrap()
    };
    let bg_layer = sink_layer_with(ChargeTiming::Background, None);
    let journal_layer = sink_layer_with(ChargeTiming::BeforeResponse, Some("before.journal"));
    let journal_bg_layer = sink_layer_with(ChargeTiming::Background, Some("background.journal"));
    // The same four over a slow settle.
    let slow_ms: u64 = std::env::var("NVM_LOAD_SLOW_SETTLE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let slow_sink = Sink::with_settle_delay(Duration::from_millis(slow_ms));
    let slow_layer_with = |timing: ChargeTiming, journal: Option<&str>| {
        let builder = PaymentLayer::builder_with_backend(slow_sink.clone(), Environment::Custom)
            .plan_id(plan())
            .agent_id(agent())
            .credits(1u64)
            .charge_timing(timing);
        match journal {
            Some(name) => builder.charge_journal(journal_dir.join(name)),
            None => builder,
        }
        .build()
        .unwrap()
    };
    let slow_layer = slow_layer_with(ChargeTiming::BeforeResponse, None);
    let slow_bg_layer = slow_layer_with(ChargeTiming::Background, None);
    let slow_journal_layer = slow_layer_with(ChargeTiming::BeforeResponse, Some("slow.journal"));
    let slow_journal_bg_layer =
        slow_layer_with(ChargeTiming::Background, Some("slow-background.journal"));
    let journals = [
        ("/paid-journal", journal_layer.clone()),
        ("/paid-journal-bg", journal_bg_layer.clone()),
        ("/paid-slow-journal", slow_journal_layer.clone()),
        ("/paid-slow-journal-bg", slow_journal_bg_layer.clone()),
    ];
    let dev_layer = PaymentLayer::builder(owner)
        .plan_id(dev_plan)
        .agent_id(dev_agent)
        .credits(1u64)
        .build()
        .unwrap();
    // Two replicas of one agent, alone or sharing a balance; their own sink so their
    // backend calls are not counted with the rows above.
    let redis = redis_server::RedisServer::start();
    let store = RedisStore::builder(redis.url())
        .prefix("bench")
        .connect()
        .await
        .expect("redis");
    // The journal in Redis, a store per row so each row's round trips are its own.
    let mut redis_journals = Vec::new();
    for (path, timing) in [
        ("/paid-journal-redis", ChargeTiming::BeforeResponse),
        ("/paid-journal-redis-bg", ChargeTiming::Background),
    ] {
        let journal_store = RedisStore::builder(redis.url())
            .prefix(path.trim_start_matches('/'))
            .connect()
            .await
            .expect("redis");
        let layer = PaymentLayer::builder_with_backend(journal_sink.clone(), Environment::Custom)
            .plan_id(plan())
            .agent_id(agent())
            .credits(1u64)
            .charge_timing(timing)
            .charge_journal_in(journal_store.clone())
            .build()
            .unwrap();
        redis_journals.push((path, layer, journal_store));
    }
    let replica_sink = Sink::new();
    let replica = |shared: bool| {
        let builder = PaymentLayer::builder_with_backend(replica_sink.clone(), Environment::Custom)
            .plan_id(plan())
            .agent_id(agent())
            .credits(1u64);
        let builder = if shared {
            builder.shared(store.clone())
        } else {
            builder
        };
        builder.build().unwrap()
    };
    let app = Router::new()
        .route("/local-a", post(answer).layer(replica(false)))
        .route("/local-b", post(answer).layer(replica(false)))
        .route("/shared-a", post(answer).layer(replica(true)))
        .route("/shared-b", post(answer).layer(replica(true)))
        .route("/free", post(answer))
        .route("/paid", post(answer).layer(sink_layer.clone()))
        .route("/paid-each", post(answer).layer(sink_layer))
        .route("/paid-devserver", post(answer).layer(dev_layer))
        .route("/paid-bg", post(answer).layer(bg_layer))
        .route("/paid-journal", post(answer).layer(journal_layer))
        .route("/paid-journal-bg", post(answer).layer(journal_bg_layer))
        .route("/paid-slow", post(answer).layer(slow_layer))
        .route("/paid-slow-bg", post(answer).layer(slow_bg_layer))
        .route("/paid-slow-journal", post(answer).layer(slow_journal_layer))
        .route(
            "/paid-slow-journal-bg",
            post(answer).layer(slow_journal_bg_layer),
        )
        .route(
            "/paid-journal-redis",
            post(answer).layer(redis_journals[0].1.clone()),
        )
        .route(
            "/paid-journal-redis-bg",
            post(answer).layer(redis_journals[1].1.clone()),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let sink_token = HeaderValue::try_from(x402_token(&holder(1), None)).unwrap();
    // Another holder: the journal rows' ledger is not the `/paid` row's.
    let journal_token = HeaderValue::try_from(x402_token(&holder(1_000_000), None)).unwrap();
    let replica_token = HeaderValue::try_from(x402_token(&holder(7), None)).unwrap();
    let slow_token = HeaderValue::try_from(x402_token(&holder(2_000_000), None)).unwrap();
    let mut rows = vec![
        Row {
            name: "unprotected",
            path: "/free",
            also: None,
            credentials: vec![sink_token.clone()],
            rounds: vec![],
        },
        Row {
            name: "protected, in-process charge sink",
            path: "/paid",
            also: None,
            credentials: vec![sink_token],
            rounds: vec![],
        },
        Row {
            name: "protected, sink, a holder per connection",
            path: "/paid-each",
            also: None,
            credentials: (1..=concurrency as u64)
                .map(|n| HeaderValue::try_from(x402_token(&holder(n), None)).unwrap())
                .collect(),
            rounds: vec![],
        },
        Row {
            name: "protected, devserver (HTTP settle)",
            path: "/paid-devserver",
            also: None,
            credentials: vec![HeaderValue::try_from(dev_token.expose()).unwrap()],
            rounds: vec![],
        },
        Row {
            name: "protected, sink, background",
            path: "/paid-bg",
            credentials: vec![journal_token.clone()],
            also: None,
            rounds: vec![],
        },
        Row {
            name: "protected, sink, journal",
            path: "/paid-journal",
            credentials: vec![journal_token.clone()],
            also: None,
            rounds: vec![],
        },
        Row {
            name: "protected, sink, journal, background",
            path: "/paid-journal-bg",
            credentials: vec![journal_token.clone()],
            also: None,
            rounds: vec![],
        },
        Row {
            name: "protected, sink, journal in Redis",
            path: "/paid-journal-redis",
            credentials: vec![journal_token.clone()],
            also: None,
            rounds: vec![],
        },
        Row {
            name: "protected, sink, journal in Redis, bg",
            path: "/paid-journal-redis-bg",
            credentials: vec![journal_token],
            also: None,
            rounds: vec![],
        },
        Row {
            name: "protected, slow settle",
            path: "/paid-slow",
            credentials: vec![slow_token.clone()],
            also: None,
            rounds: vec![],
        },
        Row {
            name: "protected, slow settle, background",
            path: "/paid-slow-bg",
            credentials: vec![slow_token.clone()],
            also: None,
            rounds: vec![],
        },
        Row {
            name: "protected, slow settle, journal",
            path: "/paid-slow-journal",
            credentials: vec![slow_token.clone()],
            also: None,
            rounds: vec![],
        },
        Row {
            name: "protected, slow settle, journal, background",
            path: "/paid-slow-journal-bg",
            credentials: vec![slow_token],
            also: None,
            rounds: vec![],
        },
        Row {
            name: "two replicas, each alone",
            path: "/local-a",
            also: Some("/local-b"),
            credentials: vec![replica_token.clone()],
            rounds: vec![],
        },
        Row {
            name: "two replicas, shared store (Redis)",
            path: "/shared-a",
            also: Some("/shared-b"),
            credentials: vec![replica_token],
            rounds: vec![],
        },
    ];

    if let Ok(only) = std::env::var("NVM_LOAD_ROWS") {
        rows.retain(|row| {
            only.split(',')
                .any(|p| row.path.trim_start_matches('/') == p.trim())
        });
    }
    println!(
        "loopback load: {concurrency} keep-alive connections, {} s per row, {rounds} interleaved rounds, {workers} runtime workers",
        duration.as_secs_f64()
    );
    // Warm-up: connections, caches (one verify and one balance per token), allocator.
    for row in &rows {
        let m = measure(
            addr,
            (row.path, row.also),
            row.credentials.clone(),
            concurrency,
            Duration::from_millis(500),
        )
        .await;
        assert!(
            m.ok > 0 && m.failed == 0,
            "{}: warm-up failed ({} failed)",
            row.name,
            m.failed
        );
    }
    sink.calls.reset();
    server.reset_stats();
    let journal_before: Vec<_> = journals
        .iter()
        .map(|(_, layer)| layer.journal_stats().unwrap_or_default())
        .collect();
    let redis_before = store.round_trips();
    let redis_journal_before: Vec<_> = redis_journals
        .iter()
        .map(|(_, _, store)| store.round_trips())
        .collect();

    for round in 0..rounds {
        for row in rows.iter_mut() {
            let cpu_before = process_cpu();
            let mut m = measure(
                addr,
                (row.path, row.also),
                row.credentials.clone(),
                concurrency,
                duration,
            )
            .await;
            m.cpu = process_cpu().saturating_sub(cpu_before);
            println!(
                "  round {} {:<36} {:>8.0} req/s ({} failed)",
                round + 1,
                row.name,
                m.rps(),
                m.failed
            );
            row.rounds.push(m);
        }
    }

    report(&rows, &sink, &server);
    report_replicas(&rows, store.round_trips() - redis_before);
    report_journal(&rows, &journals, &journal_before);
    report_redis_journal(&rows, &redis_journals, &redis_journal_before);
    drop(journals);
    let _ = std::fs::remove_dir_all(&journal_dir);
}

/// The shared store's two figures: Redis calls per request at steady state, and the
/// two replicas' throughput with the store against without.
fn report_replicas(rows: &[Row], redis_calls: u64) {
    let find = |path: &str| rows.iter().find(|r| r.path == path);
    let (Some(local), Some(shared)) = (find("/local-a"), find("/shared-a")) else {
        return;
    };
    let rps = |row: &Row| {
        let ok: u64 = row.rounds.iter().map(|m| m.ok).sum();
        let secs: f64 = row.rounds.iter().map(|m| m.elapsed.as_secs_f64()).sum();
        (ok, ok as f64 / secs)
    };
    let (served, shared_rps) = rps(shared);
    let (_, local_rps) = rps(local);
    println!(
        "\ntwo replicas, one holder: shared/alone req/s = {:.3}; Redis calls after warm-up {redis_calls} for {served} requests = 1 per {:.0} requests",
        shared_rps / local_rps,
        served as f64 / redis_calls.max(1) as f64
    );
}

/// Journal on / off ratios of the same run, and fsyncs per journaled request.
fn report_journal(rows: &[Row], journals: &[(&str, PaymentLayer)], before: &[JournalStats]) {
    let rps = |path: &str| {
        let row = rows.iter().find(|r| r.path == path)?;
        let ok: u64 = row.rounds.iter().map(|m| m.ok).sum();
        let secs: f64 = row.rounds.iter().map(|m| m.elapsed.as_secs_f64()).sum();
        Some(ok as f64 / secs)
    };
    let served = |path: &str| -> u64 {
        rows.iter()
            .filter(|r| r.path == path)
            .flat_map(|r| r.rounds.iter().map(|m| m.ok))
            .sum()
    };
    // Process CPU time (all threads) per request served: what the journal costs in
    // core time, whatever the disk and the neighbours do to the wall clock.
    let cpu_us = |path: &str| -> Option<f64> {
        let row = rows.iter().find(|r| r.path == path)?;
        let ok: u64 = row.rounds.iter().map(|m| m.ok).sum();
        let cpu: f64 = row.rounds.iter().map(|m| m.cpu.as_secs_f64()).sum();
        Some(cpu * 1e6 / ok.max(1) as f64)
    };
    println!("\ncharge journal (same run): req/s with the journal on / off, fsyncs per request");
    println!(
        "| settle | timing | off req/s | on req/s | on / off | requests | written | elided | fsyncs | fsyncs per request | core µs per request off / on |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for ((path, layer), before) in journals.iter().zip(before) {
        let (settle, timing, off) = match *path {
            "/paid-journal" => ("instant", "before response", "/paid"),
            "/paid-journal-bg" => ("instant", "background", "/paid-bg"),
            "/paid-slow-journal" => ("slow", "before response", "/paid-slow"),
            _ => ("slow", "background", "/paid-slow-bg"),
        };
        let (Some(on_rps), Some(off_rps)) = (rps(path), rps(off)) else {
            continue;
        };
        let after = layer.journal_stats().unwrap_or_default();
        let fsyncs = after.fsyncs - before.fsyncs;
        let n = served(path);
        println!(
            "| {settle} | {timing} | {off_rps:.0} | {on_rps:.0} | {:.3} | {n} | {} | {} | {fsyncs} | {:.4} | {:.1} / {:.1} |",
            on_rps / off_rps,
            after.appended - before.appended,
            after.elided - before.elided,
            fsyncs as f64 / n.max(1) as f64,
            cpu_us(off).unwrap_or(0.0),
            cpu_us(path).unwrap_or(0.0),
        );
    }
    if let (Some(bg), Some(before_response)) =
        (rps("/paid-slow-journal-bg"), rps("/paid-slow-journal"))
    {
        println!(
            "slow settle, journal on: background / before response req/s = {:.3}",
            bg / before_response
        );
    }
}

/// The journal in Redis against no journal, same run: req/s ratios and Redis round
/// trips per journaled request (writes, lease renewals and replay passes together).
fn report_redis_journal(
    rows: &[Row],
    journals: &[(&str, PaymentLayer, RedisStore)],
    before: &[u64],
) {
    let tally = |path: &str| {
        let row = rows.iter().find(|r| r.path == path)?;
        let ok: u64 = row.rounds.iter().map(|m| m.ok).sum();
        let secs: f64 = row.rounds.iter().map(|m| m.elapsed.as_secs_f64()).sum();
        Some((ok, ok as f64 / secs))
    };
    println!("\ncharge journal in Redis (same run): req/s with it on / off, Redis round trips per request");
    println!("| timing | off req/s | on req/s | on / off | requests | round trips | per request |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for ((path, _, store), before) in journals.iter().zip(before) {
        let (timing, off) = match *path {
            "/paid-journal-redis" => ("before response", "/paid"),
            _ => ("background", "/paid-bg"),
        };
        let (Some((n, on_rps)), Some((_, off_rps))) = (tally(path), tally(off)) else {
            continue;
        };
        let trips = store.round_trips() - before;
        println!(
            "| {timing} | {off_rps:.0} | {on_rps:.0} | {:.3} | {n} | {trips} | {:.4} |",
            on_rps / off_rps,
            trips as f64 / n.max(1) as f64
        );
    }
}

fn report(rows: &[Row], sink: &Sink, server: &DevServer) {
    let rps = |row: &Row| {
        let ok: u64 = row.rounds.iter().map(|m| m.ok).sum();
        let secs: f64 = row.rounds.iter().map(|m| m.elapsed.as_secs_f64()).sum();
        ok as f64 / secs
    };
    let base = rows.iter().find(|r| r.path == "/free").map(rps);
    println!("\n| route | req/s | vs unprotected | p50 ms | p99 ms | req/s per round | failed |");
    println!("|---|---:|---:|---:|---:|---|---:|");
    for row in rows {
        let mut latencies: Vec<u32> = row
            .rounds
            .iter()
            .flat_map(|m| m.latencies.iter().copied())
            .collect();
        latencies.sort_unstable();
        let per_round: Vec<String> = row
            .rounds
            .iter()
            .map(|m| format!("{:.0}", m.rps()))
            .collect();
        let failed: u64 = row.rounds.iter().map(|m| m.failed).sum();
        println!(
            "| {} | {:.0} | {} | {:.2} | {:.2} | {} | {} |",
            row.name,
            rps(row),
            base.map_or("-".into(), |b| format!("{:.3}", rps(row) / b)),
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            per_round.join(" "),
            failed
        );
    }

    let [verify, balance, plan_calls, settle, redeem, _] = sink.calls.get();
    let stats = server.stats();
    let calls = |path: &str| -> Option<[u64; 4]> {
        match path {
            "/paid" => Some([verify, balance, plan_calls, settle + redeem]),
            // Shares the sink (and its counters) with `/paid`.
            "/paid-each" => None,
            "/paid-devserver" => Some([
                stats.get(VERIFY),
                stats.get(BALANCE),
                stats.get(PLAN),
                stats.get(SETTLE),
            ]),
            _ => None,
        }
    };
    println!(
        "\nbackend calls after warm-up (count at the sink / the devserver), per request served:"
    );
    println!("| route | requests | verify | balance | plan | charge |");
    println!("|---|---:|---:|---:|---:|---:|");
    for row in rows {
        let Some([verify, balance, plan_calls, charge]) = calls(row.path) else {
            continue;
        };
        let served = |path: &str| -> u64 {
            rows.iter()
                .filter(|r| r.path == path)
                .flat_map(|r| r.rounds.iter().map(|m| m.ok))
                .sum()
        };
        // The two sink rows share one sink: count their calls against both.
        let n = match row.path {
            "/paid" => served("/paid") + served("/paid-each"),
            path => served(path),
        };
        let per = |c: u64| c as f64 / n.max(1) as f64;
        let name = if row.path == "/paid" {
            "in-process sink (both sink rows)"
        } else {
            row.name
        };
        println!(
            "| {} | {n} | {:.6} ({verify}) | {:.6} ({balance}) | {:.6} ({plan_calls}) | {:.3} ({charge}) |",
            name,
            per(verify),
            per(balance),
            per(plan_calls),
            per(charge),
        );
    }
    println!("(devserver counters: {:?})", stats.routes);
}
