//! The `metrics` feature: each request moves exactly its series, by exactly one, and
//! no label carries a token, an address or a request id.
#![cfg(all(feature = "metrics", feature = "devserver"))] // ed25519-dalek signs the bearer tokens

use std::collections::BTreeMap;

use crate::support::layer_mock::*;
use http::StatusCode;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use nvm_payments::client::{ApiError, Error};
use nvm_payments::{PaymentLayer, SettleStatus};
use tower::{Layer, ServiceExt};

const KINDS: [&str; 8] = [
    "payment_required",
    "malformed_token",
    "invalid_token",
    "plan_not_accepted",
    "wrong_agent",
    "insufficient_balance",
    "backend_unavailable",
    "payment_misconfigured",
];
const OUTCOMES: [&str; 3] = ["settled", "failed", "unknown"];
const OPERATIONS: [&str; 6] = ["verify", "balance", "plan", "settle", "redeem", "jwks"];

/// What moved since the last look: counters by how much, histograms by how many
/// samples, keyed `name{label=value}`. The debugging recorder resets on each snapshot.
struct Moved {
    counters: BTreeMap<String, u64>,
    samples: BTreeMap<String, usize>,
}

fn moved(snapshotter: &Snapshotter, forbidden: &[&str]) -> Moved {
    let mut counters = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let mut name = key.name().to_owned();
        for label in key.labels() {
            let allowed = match label.key() {
                "kind" => KINDS.contains(&label.value()),
                "outcome" => OUTCOMES.contains(&label.value()),
                "operation" => OPERATIONS.contains(&label.value()),
                _ => false,
            };
            assert!(allowed, "{name}: unbounded label {label:?}");
            for secret in forbidden {
                assert!(!label.value().contains(secret), "{name}: {label:?}");
            }
            name = format!("{name}{{{}={}}}", label.key(), label.value());
        }
        match value {
            DebugValue::Counter(0) => {}
            DebugValue::Counter(n) => {
                counters.insert(name, n);
            }
            DebugValue::Histogram(values) if !values.is_empty() => {
                samples.insert(name, values.len());
            }
            DebugValue::Histogram(_) | DebugValue::Gauge(_) => {}
        }
    }
    Moved { counters, samples }
}

fn series(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

async fn send(layer: &PaymentLayer, request: http::Request<TestBody>) -> StatusCode {
    let response = layer
        .layer(Inner::ok().service())
        .oneshot(request)
        .await
        .unwrap();
    response.status()
}

#[tokio::test]
async fn an_admitted_and_charged_request_moves_admitted_settled_and_credits() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let backend = MockBackend::new(100);
    let (hook, mut outcomes) = outcomes();
    let layer = builder(backend.clone()).on_settle(hook).build().unwrap();
    moved(&snapshotter, &[]);

    let token = valid_x402();
    assert_eq!(send(&layer, x402_request(token.clone())).await, 200);
    let outcome = outcomes.recv().await.unwrap();
    assert_eq!(outcome.status, SettleStatus::Settled);
    let forbidden = [
        token.as_str(),
        SUBSCRIBER,
        &SUBSCRIBER[2..],
        outcome.request_id.as_str(),
    ];
    let m = moved(&snapshotter, &forbidden);
    assert_eq!(
        m.counters,
        series(&[
            ("nvm_requests_admitted_total", 1),
            ("nvm_charges_total{outcome=settled}", 1),
            ("nvm_credits_charged_total", 2),
        ])
    );
    let calls = |op: &str| format!("nvm_backend_call_duration_seconds{{operation={op}}}");
    let expected: BTreeMap<String, usize> = ["verify", "plan", "balance", "settle"]
        .into_iter()
        .map(|op| (calls(op), 1))
        .collect();
    assert_eq!(m.samples, expected, "one timed call per backend step");

    // Served from the caches: no backend call but the charge.
    assert_eq!(send(&layer, x402_request(token.clone())).await, 200);
    let m = moved(&snapshotter, &forbidden);
    assert_eq!(m.counters["nvm_requests_admitted_total"], 1);
    assert_eq!(m.samples, [(calls("settle"), 1)].into_iter().collect());
}

/// Sends one request that the layer refuses with `kind`; only that series moves.
async fn assert_refused_once(
    snapshotter: &Snapshotter,
    layer: &PaymentLayer,
    request: http::Request<TestBody>,
    token: &str,
    kind: &str,
) {
    let status = send(layer, request).await;
    assert!(status.as_u16() >= 400, "{kind}: refused, got {status}");
    let forbidden: &[&str] = if token.is_empty() {
        &[SUBSCRIBER]
    } else {
        &[token, SUBSCRIBER]
    };
    let m = moved(snapshotter, forbidden);
    let expected = format!("nvm_requests_refused_total{{kind={kind}}}");
    assert_eq!(m.counters, series(&[(expected.as_str(), 1)]), "{kind}");
}

#[tokio::test]
async fn each_refusal_moves_its_kind_by_one() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let backend = MockBackend::new(100);
    let layer = builder(backend.clone()).build().unwrap();
    moved(&snapshotter, &[]);

    let cases = [
        (String::new(), "payment_required"),
        ("%%%not-base64%%%".to_owned(), "malformed_token"),
        (x402_token(PLAN, Some(AGENT), "0xforged"), "invalid_token"),
        (
            x402_token(OTHER_PLAN, Some(AGENT), "0xvalid"),
            "plan_not_accepted",
        ),
        (
            x402_token(PLAN, Some(OTHER_AGENT), "0xvalid"),
            "wrong_agent",
        ),
    ];
    for (token, kind) in cases {
        let request = if token.is_empty() {
            request_with(None)
        } else {
            x402_request(token.clone())
        };
        assert_refused_once(&snapshotter, &layer, request, &token, kind).await;
    }

    let broke = MockBackend::new(0);
    let layer = builder(broke).build().unwrap();
    let token = valid_x402();
    let request = x402_request(token.clone());
    assert_refused_once(
        &snapshotter,
        &layer,
        request,
        &token,
        "insufficient_balance",
    )
    .await;

    let down = MockBackend::new(100);
    *down.verify_mode.lock().unwrap() = VerifyMode::Down;
    let layer = builder(down).build().unwrap();
    let request = x402_request(token.clone());
    assert_refused_once(&snapshotter, &layer, request, &token, "backend_unavailable").await;

    let zero = MockBackend::with(100, |m| {
        *m.credits_config.get_mut().unwrap() = nvm_payments::get_fixed_credits_config(
            nvm_payments::Credits::from(100u64),
            nvm_payments::Credits::ZERO,
        );
    });
    let layer = builder(zero).build().unwrap();
    let bearer = bearer(PLAN, Some(AGENT));
    let request = bearer_request(bearer.clone());
    assert_refused_once(
        &snapshotter,
        &layer,
        request,
        &bearer,
        "payment_misconfigured",
    )
    .await;
}

async fn charge_with(failures: Vec<Error>) -> (Moved, nvm_payments::SettleOutcome) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let backend = MockBackend::new(100);
    backend
        .charge_failures
        .lock()
        .unwrap()
        .extend(failures.into_iter().map(|e| (e, false)));
    let (hook, mut outcomes) = outcomes();
    let layer = builder(backend).on_settle(hook).build().unwrap();
    moved(&snapshotter, &[]);
    let token = valid_x402();
    assert_eq!(send(&layer, x402_request(token.clone())).await, 200);
    let outcome = outcomes.recv().await.unwrap();
    let m = moved(
        &snapshotter,
        &[token.as_str(), SUBSCRIBER, outcome.request_id.as_str()],
    );
    (m, outcome)
}

#[tokio::test]
async fn a_failed_charge_moves_failed_and_charges_no_credits() {
    let refused = Error::Api(ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "BCK.X402.0001".into(),
        message: "refused".into(),
        hint: None,
        endpoint: "POST /api/v1/x402/settle".into(),
    });
    let (m, outcome) = charge_with(vec![refused]).await;
    assert_eq!(outcome.status, SettleStatus::Failed);
    assert_eq!(outcome.attempts, 1);
    assert_eq!(
        m.counters,
        series(&[
            ("nvm_requests_admitted_total", 1),
            ("nvm_charges_total{outcome=failed}", 1),
        ])
    );
}

#[tokio::test]
async fn an_unknown_charge_moves_unknown_and_counts_its_retries() {
    let (m, outcome) = charge_with((0..10).map(|_| transient()).collect()).await;
    assert_eq!(outcome.status, SettleStatus::Unknown);
    assert!(outcome.attempts > 1);
    assert_eq!(
        m.counters,
        series(&[
            ("nvm_requests_admitted_total", 1),
            ("nvm_charges_total{outcome=unknown}", 1),
            ("nvm_charge_retries_total", u64::from(outcome.attempts - 1)),
        ])
    );
    assert_eq!(
        m.samples["nvm_backend_call_duration_seconds{operation=settle}"],
        outcome.attempts as usize
    );
}

#[tokio::test]
async fn the_in_flight_gauge_returns_to_zero_and_cache_gauges_are_set() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let backend = MockBackend::new(100);
    let layer = builder(backend).build().unwrap();
    assert_eq!(send(&layer, x402_request(valid_x402())).await, 200);
    let gauges: BTreeMap<String, f64> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Gauge(v) => Some((key.key().name().to_owned(), v.0)),
            _ => None,
        })
        .collect();
    assert_eq!(gauges["nvm_charges_in_flight"], 0.0, "entered and left");
    assert_eq!(gauges["nvm_cached_plans"], 1.0);
}
