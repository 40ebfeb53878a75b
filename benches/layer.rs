//! Per-request cost of `PaymentLayer` in process, against the same service without it.
//!
//! ```text
//! cargo bench --bench layer
//! ```
//!
//! - `hot_path/*`: one request after another through `tower::ServiceExt` on a
//!   `service_fn`, response body collected, with warm caches and the in-process charge
//!   sink of `tests/support/sink.rs` (the charge is made and awaited: default
//!   `ChargeTiming::BeforeResponse`). `bare` is the same service without the layer,
//!   measured in the same run; the summary prints the added nanoseconds and the ratio.
//!   `x402_metrics` is `x402` through a layer built with a Prometheus recorder current
//!   (the `metrics` feature; its handles are registered at build time), against `x402`
//!   of the same run, whose layer found no recorder.
//! - `meter/add`: one `Meter::add` (an atomic add).
//! - `stream/unmetered_1000` and `stream/metered_1000`: a response of 1 000 SSE events
//!   through the layer, charged at the body's end (`ChargeTiming::OnBodyEnd`) or by
//!   its meter (`meter_route`, 1 credit per event, `Meter::add` per event); the
//!   summary prints the ratio.
//! - `cold_path/first_request`: the first request of a new token and holder
//!   (decode, verify, balance fetch against the sink, charge).
//! - `cold_path/coalesce_32`: 32 concurrent first requests with one new token; the
//!   summary prints the verify and balance calls per batch (1 and 1 when they coalesce).
#![allow(unreachable_pub)] // helpers shared between test and bench binaries by path

use std::cell::Cell;
use std::convert::Infallible;
use std::fmt::Debug;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use criterion::{criterion_group, Criterion};
use futures_util::future::join_all;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use nvm_payments::{ChargeTiming, Environment, Meter, MeterRule, PaymentContext, PaymentLayer};
use tower::{Layer, Service, ServiceExt};

#[path = "../tests/support/sink.rs"]
mod support;
use support::{agent, bearer_token, criterion_mean_ns, holder, plan, x402_token, Sink};

type Body = Full<Bytes>;

/// The agent's handler: a small JSON answer.
fn handler() -> impl Service<
    Request<Body>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
       + Send
       + 'static {
    tower::service_fn(|_request: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
            b"{\"answer\":42}",
        ))))
    })
}

fn layer(sink: Arc<Sink>) -> PaymentLayer {
    // Custom: the in-process sink redeems bearer tokens, as the devserver does.
    PaymentLayer::builder_with_backend(sink, Environment::Custom)
        .plan_id(plan())
        .agent_id(agent())
        .credits(1u64)
        .build()
        .expect("a valid layer configuration")
}

#[derive(Clone)]
struct Credential {
    header: &'static str,
    value: HeaderValue,
}

impl Credential {
    fn x402(n: u64) -> Self {
        Credential {
            header: "payment-signature",
            value: HeaderValue::try_from(x402_token(&holder(n), None)).unwrap(),
        }
    }

    fn bearer(n: u64) -> Self {
        Credential {
            header: "authorization",
            value: HeaderValue::try_from(format!("Bearer {}", bearer_token(&holder(n)))).unwrap(),
        }
    }

    fn request(&self) -> Request<Body> {
        Request::post("/ask")
            .header(self.header, self.value.clone())
            .body(Full::new(Bytes::new()))
            .unwrap()
    }
}

/// Sends one request and collects the whole response body.
async fn send<S, B>(service: &mut S, request: Request<Body>) -> Bytes
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Debug,
    B: http_body::Body<Data = Bytes>,
    B::Error: Debug,
{
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    // A refused request is fast: never let one pass for a measurement.
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap().to_bytes()
}

async fn drive<S, B>(mut service: S, credential: Credential, iters: u64) -> Duration
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Debug,
    B: http_body::Body<Data = Bytes>,
    B::Error: Debug,
{
    let start = Instant::now();
    for _ in 0..iters {
        black_box(send(&mut service, credential.request()).await);
    }
    start.elapsed()
}

/// [`drive`], yielding after each request as a server's connection task does between
/// requests: a charge spawned in the background (`ChargeTiming::Background`) runs
/// then, instead of piling up until the layer's pending-charge capacity is full.
async fn drive_yielding<S, B>(mut service: S, credential: Credential, iters: u64) -> Duration
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Debug,
    B: http_body::Body<Data = Bytes>,
    B::Error: Debug,
{
    let start = Instant::now();
    for _ in 0..iters {
        black_box(send(&mut service, credential.request()).await);
        tokio::task::yield_now().await;
    }
    start.elapsed()
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn hot_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("hot_path");
    let x402 = Credential::x402(1);
    let bearer = Credential::bearer(2);

    // current_thread: the layer's own cost, with no cross-thread wake-ups.
    let rt = current_thread();
    let sink = Sink::new();
    let guarded = layer(sink.clone()).layer(handler());
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    let metered = metrics::with_local_recorder(&recorder, || layer(Sink::new()).layer(handler()));
    rt.block_on(async {
        // Warm the route, verification, plan and balance caches and the JWKS.
        send(&mut guarded.clone(), x402.request()).await;
        send(&mut guarded.clone(), bearer.request()).await;
        send(&mut metered.clone(), x402.request()).await;
    });
    sink.calls.reset();
    group.bench_function("bare", |b| {
        b.iter_custom(|iters| rt.block_on(drive(handler(), x402.clone(), iters)))
    });
    group.bench_function("x402", |b| {
        b.iter_custom(|iters| rt.block_on(drive(guarded.clone(), x402.clone(), iters)))
    });
    group.bench_function("x402_metrics", |b| {
        b.iter_custom(|iters| {
            // A server's exporter drains histogram samples every few seconds, off the
            // request path: here before each timed batch.
            prometheus.run_upkeep();
            rt.block_on(drive(metered.clone(), x402.clone(), iters))
        })
    });
    group.bench_function("bearer", |b| {
        b.iter_custom(|iters| rt.block_on(drive(guarded.clone(), bearer.clone(), iters)))
    });
    let [verify, balance, ..] = sink.calls.get();
    println!("hot_path: backend lookups after warm-up: verify {verify}, balance {balance}");

    // multi_thread: as a server runs it, the request on a worker task; the charge
    // task may be stolen by the other worker.
    let rt = multi_thread();
    let guarded = layer(Sink::new()).layer(handler());
    rt.block_on(send(&mut guarded.clone(), x402.request()));
    group.bench_function("bare_mt", |b| {
        b.iter_custom(|iters| {
            let x402 = x402.clone();
            rt.block_on(async move { tokio::spawn(drive(handler(), x402, iters)).await })
                .unwrap()
        })
    });
    group.bench_function("x402_mt", |b| {
        b.iter_custom(|iters| {
            let (service, x402) = (guarded.clone(), x402.clone());
            rt.block_on(async move { tokio::spawn(drive(service, x402, iters)).await })
                .unwrap()
        })
    });
    group.finish();
}

fn cold_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("cold_path");
    let rt = current_thread();
    let next_holder = Cell::new(1_000_000u64);
    let fresh = |n: u64| -> Vec<Credential> {
        let first = next_holder.get();
        next_holder.set(first + n);
        (first..first + n).map(Credential::x402).collect()
    };

    group.bench_function("first_request", |b| {
        b.iter_custom(|iters| {
            // A new layer per sample: caches hold only this sample's holders.
            let mut guarded = layer(Sink::new()).layer(handler());
            let credentials = fresh(iters);
            rt.block_on(async {
                // The plan and the route are known; each holder is new.
                send(&mut guarded, Credential::x402(0).request()).await;
                let start = Instant::now();
                for credential in &credentials {
                    black_box(send(&mut guarded, credential.request()).await);
                }
                start.elapsed()
            })
        })
    });

    const N: usize = 32;
    let sink = Sink::new();
    let guarded = layer(sink.clone()).layer(handler());
    rt.block_on(send(&mut guarded.clone(), Credential::x402(0).request()));
    sink.calls.reset();
    let batches = Cell::new(0u64);
    group.bench_function("coalesce_32", |b| {
        b.iter_custom(|iters| {
            let credentials = fresh(iters);
            batches.set(batches.get() + iters);
            rt.block_on(async {
                let start = Instant::now();
                for credential in &credentials {
                    let all = join_all((0..N).map(|_| {
                        let mut service = guarded.clone();
                        let request = credential.request();
                        async move { send(&mut service, request).await }
                    }));
                    black_box(all.await);
                }
                start.elapsed()
            })
        })
    });
    let [verify, balance, ..] = sink.calls.get();
    let n = batches.get().max(1) as f64;
    println!(
        "cold_path/coalesce_32: {} batches of {N} first requests: verify calls per batch {:.3}, balance calls per batch {:.3}",
        batches.get(),
        verify as f64 / n,
        balance as f64 / n
    );
    group.finish();
}

type Events = http_body_util::StreamBody<
    futures_util::stream::Iter<std::vec::IntoIter<Result<http_body::Frame<Bytes>, Infallible>>>,
>;

/// 1 000 SSE events; each counted on the request's meter as it is produced.
fn stream_handler() -> impl Service<
    Request<Body>,
    Response = Response<Events>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
       + Send
       + 'static {
    tower::service_fn(|request: Request<Body>| async move {
        let meter = request
            .extensions()
            .get::<PaymentContext>()
            .map_or_else(Meter::detached, PaymentContext::meter);
        let frames: Vec<_> = (0..1_000)
            .map(|_| {
                meter.add(1);
                Ok(http_body::Frame::data(Bytes::from_static(
                    b"data: token\n\n",
                )))
            })
            .collect();
        Ok::<_, Infallible>(Response::new(http_body_util::StreamBody::new(
            futures_util::stream::iter(frames),
        )))
    })
}

fn streams(c: &mut Criterion) {
    let mut group = c.benchmark_group("meter");
    let meter = Meter::detached();
    group.bench_function("add", |b| b.iter(|| meter.add(black_box(1))));
    group.finish();

    let mut group = c.benchmark_group("stream");
    let rt = current_thread();
    let base = || {
        PaymentLayer::builder_with_backend(Sink::new(), Environment::Custom)
            .plan_id(plan())
            .agent_id(agent())
    };
    let unmetered = base()
        .charge_timing(ChargeTiming::OnBodyEnd)
        .build()
        .unwrap()
        .layer(stream_handler());
    let metered = base()
        .meter_route(http::Method::POST, "/ask", MeterRule::per_unit(1u64))
        .build()
        .unwrap()
        .layer(stream_handler());
    let x402 = Credential::x402(3);
    rt.block_on(send(&mut unmetered.clone(), x402.request()));
    rt.block_on(send(&mut metered.clone(), x402.request()));
    group.bench_function("unmetered_1000", |b| {
        b.iter_custom(|n| rt.block_on(drive(unmetered.clone(), x402.clone(), n)))
    });
    group.bench_function("metered_1000", |b| {
        b.iter_custom(|n| rt.block_on(drive(metered.clone(), x402.clone(), n)))
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = hot_path, cold_path, streams
}

fn main() {
    // Instruction counts without criterion around the code (see BENCHMARKS.md):
    // `NVM_LAYER_PROFILE=10000 valgrind --tool=callgrind target/release/deps/layer-<hash>`
    if let Some(n) = std::env::var("NVM_LAYER_PROFILE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        profile(n);
        return;
    }
    let started = SystemTime::now();
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary(started);
}

/// `n` warm requests on a current-thread runtime, for instruction counts:
/// `NVM_LAYER_PROFILE_SERVICE` is `x402` (default), `x402_metrics`, `bearer`, `bare`,
/// `x402_bg` (`ChargeTiming::Background`) or `x402_journal_bg` (the same with a charge
/// journal in `NVM_LAYER_PROFILE_JOURNAL_DIR`, default the system temp dir; count the
/// whole process, the journal's writer thread included). `NVM_LAYER_PROFILE_MT=1` runs
/// them on a two-worker runtime instead, as a server does.
fn profile(n: u64) {
    let rt = if std::env::var_os("NVM_LAYER_PROFILE_MT").is_some() {
        multi_thread()
    } else {
        current_thread()
    };
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let which = std::env::var("NVM_LAYER_PROFILE_SERVICE").unwrap_or_default();
    let journal_dir = std::env::var_os("NVM_LAYER_PROFILE_JOURNAL_DIR")
        .map_or_else(std::env::temp_dir, Into::into)
        .join(format!("nvm-layer-profile-{}", std::process::id()));
    let mut journaled = None;
    let guarded = match which.as_str() {
        "x402_metrics" => {
            metrics::with_local_recorder(&recorder, || layer(Sink::new()).layer(handler()))
        }
        "x402_bg" => background_layer(Sink::new(), None).layer(handler()),
        "x402_journal_bg" => {
            std::fs::create_dir_all(&journal_dir).unwrap();
            journaled = Some(background_layer(Sink::new(), Some(&journal_dir)));
            journaled.as_ref().unwrap().layer(handler())
        }
        _ => layer(Sink::new()).layer(handler()),
    };
    // On a worker, as a server's request task runs (on the current-thread runtime
    // that is the same thread).
    fn on_worker(
        rt: &tokio::runtime::Runtime,
        driving: impl std::future::Future<Output = Duration> + Send + 'static,
    ) -> Duration {
        rt.block_on(async { tokio::spawn(driving).await.unwrap() })
    }
    let elapsed = match which.as_str() {
        "bare" => on_worker(&rt, drive(handler(), Credential::x402(1), n)),
        "bearer" => {
            let bearer = Credential::bearer(2);
            rt.block_on(send(&mut guarded.clone(), bearer.request()));
            on_worker(&rt, drive(guarded, bearer, n))
        }
        "x402_bg" | "x402_journal_bg" => {
            let x402 = Credential::x402(1);
            rt.block_on(send(&mut guarded.clone(), x402.request()));
            on_worker(&rt, drive_yielding(guarded, x402, n))
        }
        _ => {
            let x402 = Credential::x402(1);
            rt.block_on(send(&mut guarded.clone(), x402.request()));
            on_worker(&rt, drive(guarded, x402, n))
        }
    };
    println!(
        "{n} requests, {:.0} ns each",
        elapsed.as_nanos() as f64 / n as f64
    );
    if let Some(stats) = journaled.and_then(|l| l.journal_stats()) {
        println!("journal: {stats:?}");
    }
    let _ = std::fs::remove_dir_all(&journal_dir);
}

/// The layer of [`layer`] with `ChargeTiming::Background`, and a charge journal in
/// `journal_dir` when given.
fn background_layer(sink: Arc<Sink>, journal_dir: Option<&std::path::Path>) -> PaymentLayer {
    let builder = PaymentLayer::builder_with_backend(sink, Environment::Custom)
        .plan_id(plan())
        .agent_id(agent())
        .credits(1u64)
        .charge_timing(ChargeTiming::Background);
    match journal_dir {
        Some(dir) => builder.charge_journal(dir.join("charges.journal")),
        None => builder,
    }
    .build()
    .expect("a valid layer configuration")
}

/// Added cost and ratio of each guarded variant against `bare` of the same run.
fn summary(since: SystemTime) {
    let mean = |id: &str| criterion_mean_ns("hot_path", id, since);
    println!("\nsummary (time per request as criterion reports it, same run):");
    for (bare, guarded) in [
        ("bare", "x402"),
        ("x402", "x402_metrics"),
        ("bare", "bearer"),
        ("bare_mt", "x402_mt"),
    ] {
        if let (Some(b), Some(g)) = (mean(bare), mean(guarded)) {
            println!(
                "  {guarded:<12} {g:>9.0} ns vs {bare:<8} {b:>7.0} ns: +{:.0} ns, ratio {:.3}x",
                g - b,
                g / b
            );
        }
    }
    if let (Some(u), Some(m)) = (
        criterion_mean_ns("stream", "unmetered_1000", since),
        criterion_mean_ns("stream", "metered_1000", since),
    ) {
        println!(
            "  stream of 1 000 events: metered {m:.0} ns vs unmetered {u:.0} ns: ratio {:.3}x",
            m / u
        );
    }
    if let Some(add) = criterion_mean_ns("meter", "add", since) {
        println!("  meter/add: {add:.2} ns per call");
    }
    let cold = criterion_mean_ns("cold_path", "first_request", since);
    let batch = criterion_mean_ns("cold_path", "coalesce_32", since);
    if let Some(ns) = cold {
        println!("  cold first request: {ns:.0} ns");
    }
    if let Some(ns) = batch {
        println!(
            "  32 concurrent first requests: {ns:.0} ns per batch, {:.0} ns per request",
            ns / 32.0
        );
    }
}
