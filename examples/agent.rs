//! The agent a builder deploys: `POST /ask` (JSON in, JSON out) and `POST /stream`
//! (server-sent events, charged by usage) behind [`PaymentLayer`], `GET /health` open,
//! graceful shutdown that drains charges.
//!
//! Configuration, all from the environment:
//!
//! | variable | meaning |
//! |---|---|
//! | `NVM_API_KEY` | the builder's API key (its prefix picks sandbox or live) |
//! | `NVM_BACKEND_URL` | backend URL for keys with another prefix (a devserver) |
//! | `NVM_PLAN_ID` | the plan (or comma-separated plans) that pays for `/ask` |
//! | `NVM_AGENT_ID` | this agent's id |
//! | `PORT` | port on 127.0.0.1 (default 8080; `0` picks one) |
//! | `CREDITS` | credits per call (default 1) |
//! | `SHUTDOWN_GRACE_SECS` | how long in-flight requests may take to finish on shutdown (default 10) |
//! | `NVM_REDIS_URL` | when set, replicas share balances and single-use tokens through this Redis (README, "Running several replicas") |
//! | `NVM_REDIS_LEASE_TTL_MS` | how long a replica's credit lease lives in Redis (default 15000) |
//! | `NVM_CHARGE_JOURNAL` | when set, a charge journal file: charges survive a crash and are replayed at the next start (README, "Charge journal"); `redis` keeps it in `NVM_REDIS_URL`'s Redis, where another replica replays a dead one's charges |
//! | `NVM_JOURNAL_REPLAY_MS` | how often unfinished journal entries are replayed (default 30000) |
//! | `NVM_CHARGE_TIMING` | `before-response` (default), `body-end` or `background` |
//! | `METRICS_PORT` | when set, `GET /metrics` (Prometheus text) on this port of 127.0.0.1, apart from the paid API (`0` picks one) |
//!
//! ```sh
//! cargo run --bin nvm-payments -- dev-server &                        # a local backend
//! NVM_API_KEY=local:… NVM_BACKEND_URL=http://127.0.0.1:3001 \
//!   NVM_PLAN_ID=… NVM_AGENT_ID=… cargo run --example agent
//! ```
//!
//! On SIGTERM or Ctrl-C it stops accepting connections, lets in-flight requests finish
//! (their charges happen before their responses), and prints any charge it could not
//! confirm, with the request id to reconcile it by.

use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::sse::{Event, Sse};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use http::Method;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use nvm_payments::settle::{SettleOutcome, SettleStatus};
use nvm_payments::{
    AgentId, ChargeTiming, MeterRule, PaymentContext, PaymentLayer, PaymentOptions, Payments,
    PlanId,
};
use serde_json::{json, Value};

fn env_var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set"))
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v:?} is not valid")),
        Err(_) => Ok(default),
    }
}

async fn ask(payment: PaymentContext, Json(body): Json<Value>) -> Json<Value> {
    let question = body.get("question").and_then(Value::as_str).unwrap_or("");
    Json(json!({
        "answer": format!("You asked: {question}"),
        "requestId": payment.request_id(),
        "creditsCharged": payment.credits().to_string(),
    }))
}

/// `POST /stream` `{"prompt": "..."}`: one `data:` event per word of the prompt, one
/// every 50 ms (a stand-in for a model's tokens), each metered as it is produced; the
/// layer charges 1 credit per event when the stream ends or the client hangs up, and
/// sends the receipt as a last `payment-response` event.
async fn stream_words(
    payment: PaymentContext,
    Json(body): Json<Value>,
) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>> {
    let prompt = body.get("prompt").and_then(Value::as_str).unwrap_or("");
    let words: Vec<String> = prompt.split_whitespace().map(str::to_owned).collect();
    let meter = payment.meter();
    Sse::new(stream::iter(words).then(move |word| {
        let meter = meter.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            meter.add(1);
            Ok(Event::default().data(word))
        }
    }))
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let payments = Payments::new(PaymentOptions::from_env()?)?;
    let plans = env_var("NVM_PLAN_ID")?
        .split(',')
        .map(|p| p.trim().parse::<PlanId>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("NVM_PLAN_ID: {e}"))?;
    let agent: AgentId = env_var("NVM_AGENT_ID")?
        .parse()
        .map_err(|e| format!("NVM_AGENT_ID: {e}"))?;
    let port: u16 = env_or("PORT", 8080)?;
    let credits: u64 = env_or("CREDITS", 1)?;
    let grace = Duration::from_secs(env_or("SHUTDOWN_GRACE_SECS", 10)?);
    let metrics_port: Option<u16> = match std::env::var("METRICS_PORT") {
        Ok(_) => Some(env_or("METRICS_PORT", 0)?),
        Err(_) => None,
    };
    // Before the layer is built: it registers its series with the recorder it finds.
    let metrics = metrics_port.map(|_| install_recorder()).transpose()?;

    let timing = match std::env::var("NVM_CHARGE_TIMING").as_deref() {
        Err(_) | Ok("before-response") => ChargeTiming::BeforeResponse,
        Ok("body-end") => ChargeTiming::OnBodyEnd,
        Ok("background") => ChargeTiming::Background,
        Ok(other) => return Err(format!("NVM_CHARGE_TIMING={other:?} is not valid").into()),
    };
    // Charges that did not settle, kept to report them at shutdown.
    let unsettled: Arc<Mutex<Vec<SettleOutcome>>> = Arc::default();
    let record = unsettled.clone();
    let mut builder = PaymentLayer::builder(payments);
    let journal = std::env::var("NVM_CHARGE_JOURNAL").ok();
    // Several replicas share one balance through Redis (README, "Running several replicas").
    if let Ok(url) = std::env::var("NVM_REDIS_URL") {
        let lease_ttl = Duration::from_millis(env_or("NVM_REDIS_LEASE_TTL_MS", 15_000)?);
        let store = nvm_payments::shared::RedisStore::builder(url)
            .lease_ttl(lease_ttl)
            .connect()
            .await?;
        if journal.as_deref() == Some("redis") {
            builder = builder.charge_journal_in(store.clone());
        }
        builder = builder.shared(store);
    } else if journal.as_deref() == Some("redis") {
        return Err("NVM_CHARGE_JOURNAL=redis needs NVM_REDIS_URL".into());
    }
    let mut builder = builder
        .plan_ids(plans)
        .agent_id(agent)
        .credits(credits)
        .meter_route(Method::POST, "/stream", MeterRule::per_unit(1u64))
        .receipt_at_stream_end()
        .charge_timing(timing);
    match journal {
        Some(path) if path != "redis" => builder = builder.charge_journal(path),
        _ => {}
    }
    let replay_every = Duration::from_millis(env_or("NVM_JOURNAL_REPLAY_MS", 30_000)?);
    builder = builder.journal_replay_interval(replay_every);
    let payment = builder
        .on_settle(move |outcome: &SettleOutcome| {
            if outcome.status != SettleStatus::Settled {
                if let Ok(mut list) = record.lock() {
                    list.push(outcome.clone());
                }
            }
        })
        .build()?;

    let charges = payment.clone();
    let app = Router::new()
        .route("/stream", post(stream_words).layer(payment.clone()))
        .route("/ask", post(ask).layer(payment))
        .route("/health", get(health));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("agent listening on http://{}", listener.local_addr()?);
    if let (Some(port), Some(handle)) = (metrics_port, metrics) {
        serve_metrics(port, handle).await?;
    }

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });

    shutdown_signal().await;
    println!("shutting down: no new connections; draining in-flight requests (up to {grace:?})");
    let _ = stop_tx.send(());
    let drained = tokio::time::timeout(grace, server).await;
    // Charges still in flight (a client that hung up mid-charge leaves its charge
    // running on its own task): wait for them too, and name those that did not end.
    let report = charges.drain(grace).await;
    for request_id in &report.unfinished {
        println!("CHARGE STILL IN FLIGHT: request {request_id}: reconcile by request id");
    }
    let unsettled = unsettled.lock().map(|l| l.clone()).unwrap_or_default();
    match drained {
        Ok(_) => println!("drained: every in-flight request finished"),
        Err(_) => {
            println!("grace period over: requests still in flight were cut off (not charged)")
        }
    }
    if unsettled.is_empty() {
        println!("all charges settled");
    } else {
        for o in &unsettled {
            println!(
                "NOT SETTLED: {:?} request {} plan {} subscriber {} credits {}: {}",
                o.status,
                o.request_id,
                o.plan_id,
                o.subscriber,
                o.credits,
                o.reason.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(())
}

/// The Prometheus recorder, with buckets for the backend call durations (seconds).
fn install_recorder() -> Result<PrometheusHandle, Box<dyn Error>> {
    let buckets = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("nvm_backend_call_duration_seconds".into()),
            &buckets,
        )?
        .install_recorder()?;
    Ok(handle)
}

/// `GET /metrics` on its own listener: unauthenticated, so never on the paid port.
async fn serve_metrics(port: u16, handle: PrometheusHandle) -> Result<(), Box<dyn Error>> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("metrics on http://{}/metrics", listener.local_addr()?);
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                // Upkeep drains histogram samples into their buckets: once per scrape.
                handle.run_upkeep();
                handle.render()
            }
        }),
    );
    // Ends with the process: a scrape in flight at shutdown does not matter.
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
