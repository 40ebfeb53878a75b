//! Metered streams against the devserver: a dynamic plan (min 1, max 20 per request),
//! a `/stream` route metered at 1 credit per event, and events released by the test
//! (a semaphore of permits), never by a clock.
#![cfg(feature = "devserver")]

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http::{Method, Request};
use http_body_util::BodyExt;
use nvm_payments::devserver::{DevServer, Fault};
use nvm_payments::layer::PaymentLayerBuilder;
use nvm_payments::types::{
    AgentApiAttributes, AgentMetadata, Endpoint, PlanCreditsConfig, PlanMetadata,
};
use nvm_payments::{
    get_dynamic_credits_config, get_fixed_credits_config, get_free_price_config, AgentId, Credits,
    MeterRule, PaymentContext, PaymentLayer, Payments, PlanId, RetryPolicy, SettleOutcome,
    SettleStatus,
};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tower::ServiceExt;

fn c(v: u64) -> Credits {
    Credits::from(v)
}

struct World {
    server: DevServer,
    owner: Payments,
    subscriber: Payments,
    plan: PlanId,
    agent: AgentId,
}

/// An agent sold through `credits` (free, ordered once by one subscriber).
async fn world(credits: PlanCreditsConfig) -> World {
    let server = DevServer::start().await.unwrap();
    let owner = server.payments(&server.create_account(Some("builder")));
    let subscriber = server.payments(&server.create_account(Some("subscriber")));
    let registered = owner
        .agents()
        .register_agent_and_plan(
            AgentMetadata::named("agent"),
            AgentApiAttributes::with_endpoints(vec![Endpoint::new(
                "POST",
                "http://localhost/stream",
            )]),
            PlanMetadata::named("plan"),
            get_free_price_config(),
            credits,
        )
        .await
        .unwrap();
    subscriber
        .plans()
        .order_plan(&registered.data.plan_id)
        .await
        .unwrap();
    World {
        server,
        owner,
        subscriber,
        plan: registered.data.plan_id,
        agent: registered.data.agent_id,
    }
}

/// `grant` credits per order, 1 to 20 per request.
async fn dynamic(grant: u64) -> World {
    world(get_dynamic_credits_config(c(grant), c(1), c(20))).await
}

impl World {
    fn layer(&self) -> PaymentLayerBuilder {
        PaymentLayer::builder(self.owner.clone())
            .plan_id(self.plan.clone())
            .agent_id(self.agent.clone())
            .meter_route(Method::POST, "/stream", MeterRule::per_unit(1u64))
            .charge_retry(RetryPolicy {
                initial_backoff: std::time::Duration::from_millis(5),
                ..RetryPolicy::default()
            })
    }

    async fn x402(&self) -> String {
        let token = self
            .subscriber
            .x402()
            .get_x402_access_token(&self.plan, Some(&self.agent))
            .await
            .unwrap();
        token.access_token.expose().to_owned()
    }

    async fn balance(&self) -> Credits {
        self.subscriber
            .plans()
            .get_plan_balance(&self.plan, None)
            .await
            .unwrap()
            .balance
    }

    /// The credits the ledger of record burned for `request_id`, one entry per spend.
    fn spends(&self, request_id: &str) -> Vec<Credits> {
        self.server
            .state()
            .spends()
            .into_iter()
            .filter(|s| s.request_id.as_deref() == Some(request_id))
            .map(|s| s.credits)
            .collect()
    }
}

/// What the handler shares with the test: each stream it starts is announced with its
/// own permits to produce events, and says how many units its producer reached when
/// it finished (it keeps producing after a hang-up).
#[derive(Clone)]
struct Producer {
    initial_permits: usize,
    streams: mpsc::UnboundedSender<Stream>,
}

struct Stream {
    permits: Arc<Semaphore>,
    finished: oneshot::Receiver<u64>,
}

#[derive(serde::Deserialize)]
struct Prompt {
    prompt: String,
}

/// One SSE event per word, each metered as it is produced, on its own task.
async fn stream_words(
    State(producer): State<Producer>,
    payment: PaymentContext,
    Json(body): Json<Prompt>,
) -> Response {
    let meter = payment.meter();
    let permits = Arc::new(Semaphore::new(producer.initial_permits));
    let (done, finished) = oneshot::channel();
    let _ = producer.streams.send(Stream {
        permits: permits.clone(),
        finished,
    });
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    let words: Vec<String> = body.prompt.split_whitespace().map(str::to_owned).collect();
    tokio::spawn(async move {
        for word in words {
            permits.acquire().await.unwrap().forget();
            meter.add(1);
            // A producer that does not notice the client left.
            let _ = tx.send(word);
        }
        let _ = done.send(meter.units());
    });
    let events = stream::unfold(rx, |mut rx| async move {
        let word = rx.recv().await?;
        Some((
            Ok::<_, std::convert::Infallible>(Bytes::from(format!("data: {word}\n\n"))),
            rx,
        ))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(events))
        .unwrap()
}

/// The app over `layer`; every stream starts with `permits` events allowed.
fn app(layer: PaymentLayer, permits: usize) -> (Router, mpsc::UnboundedReceiver<Stream>) {
    let (streams, started) = mpsc::unbounded_channel();
    let router = Router::new()
        .route("/stream", post(stream_words))
        .with_state(Producer {
            initial_permits: permits,
            streams,
        })
        .layer(layer);
    (router, started)
}

fn prompt(words: usize) -> String {
    (1..=words).map(|i| format!("w{i} ")).collect()
}

fn stream_request(token: &str, words: usize) -> Request<Body> {
    Request::post("/stream")
        .header("payment-signature", token)
        .header("content-type", "application/json")
        .body(Body::from(
            serde_json::json!({ "prompt": prompt(words) }).to_string(),
        ))
        .unwrap()
}

fn outcomes() -> (
    impl nvm_payments::OnSettle,
    mpsc::UnboundedReceiver<SettleOutcome>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        move |o: &SettleOutcome| {
            let _ = tx.send(o.clone());
        },
        rx,
    )
}

async fn body_text(response: Response) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn a_seven_word_stream_is_charged_seven() {
    let w = dynamic(100).await;
    let (hook, mut settled) = outcomes();
    let (app, _streams) = app(w.layer().on_settle(hook).build().unwrap(), 1_000);
    let response = app
        .oneshot(stream_request(&w.x402().await, 7))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        !response.headers().contains_key("payment-response"),
        "no receipt in the head of a stream"
    );
    let text = body_text(response).await;
    assert_eq!(text.matches("data: ").count(), 7);
    let outcome = settled.recv().await.unwrap();
    assert_eq!(outcome.status, SettleStatus::Settled);
    assert_eq!(outcome.credits, c(7));
    assert_eq!(w.spends(&outcome.request_id), vec![c(7)]);
    assert_eq!(w.balance().await, c(93));
}

#[tokio::test]
async fn a_forty_word_stream_is_charged_the_plan_maximum_and_not_cut() {
    let w = dynamic(100).await;
    let (hook, mut settled) = outcomes();
    let (app, _streams) = app(w.layer().on_settle(hook).build().unwrap(), 1_000);
    let response = app
        .oneshot(stream_request(&w.x402().await, 40))
        .await
        .unwrap();
    let text = body_text(response).await;
    assert_eq!(text.matches("data: ").count(), 40, "every event delivered");
    assert!(text.contains("data: w40\n\n"));
    let outcome = settled.recv().await.unwrap();
    assert_eq!(outcome.credits, c(20), "clamped to the plan's maximum");
    assert_eq!(w.spends(&outcome.request_id), vec![c(20)]);
    assert_eq!(w.balance().await, c(80));
}

#[tokio::test]
async fn a_client_that_hangs_up_after_three_events_is_charged_three() {
    let w = dynamic(100).await;
    let (hook, mut settled) = outcomes();
    let (app, mut streams) = app(w.layer().on_settle(hook).build().unwrap(), 3);
    let response = app
        .oneshot(stream_request(&w.x402().await, 10))
        .await
        .unwrap();
    let producer = streams.recv().await.unwrap();
    let mut body = response.into_body();
    for i in 1..=3 {
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(frame, format!("data: w{i}\n\n"));
    }
    drop(body); // the client went away (what hyper does when the connection closes)
    let outcome = settled.recv().await.unwrap();
    assert_eq!(outcome.status, SettleStatus::Settled);
    assert_eq!(outcome.credits, c(3));
    // The handler keeps producing after the hang-up: those units are not charged.
    producer.permits.add_permits(100);
    assert_eq!(producer.finished.await, Ok(10));
    assert_eq!(w.spends(&outcome.request_id), vec![c(3)]);
    assert_eq!(w.balance().await, c(97));
    assert!(settled.try_recv().is_err(), "one charge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_metered_streams_never_spend_more_than_the_balance() {
    // Balance 50, each stream reserves the plan's maximum (20): two fit, a third not.
    let w = dynamic(50).await;
    let (hook, mut settled) = outcomes();
    let (app, mut streams) = app(w.layer().on_settle(hook).build().unwrap(), 0);
    let token = w.x402().await;
    let a = app
        .clone()
        .oneshot(stream_request(&token, 5))
        .await
        .unwrap();
    let a_producer = streams.recv().await.unwrap();
    let b = app
        .clone()
        .oneshot(stream_request(&token, 30))
        .await
        .unwrap();
    let b_producer = streams.recv().await.unwrap();
    let refused = app
        .clone()
        .oneshot(stream_request(&token, 1))
        .await
        .unwrap();
    assert_eq!(
        (
            a.status().as_u16(),
            b.status().as_u16(),
            refused.status().as_u16()
        ),
        (200, 200, 402)
    );

    // `a` produces its 5 events and ends: charged 5, and the 15 it no longer needs are
    // free at once (with its settle held at the devserver): 50 - 5 - 20 leaves 25.
    w.server
        .faults()
        .set(Fault::new("/api/v1/x402/settle").latency_ms(300).times(1));
    a_producer.permits.add_permits(5);
    assert_eq!(body_text(a).await.matches("data: ").count(), 5);
    let c_stream = app
        .clone()
        .oneshot(stream_request(&token, 30))
        .await
        .unwrap();
    assert_eq!(
        c_stream.status(),
        200,
        "admitted on the released reservation"
    );
    let c_producer = streams.recv().await.unwrap();
    let refused = app
        .clone()
        .oneshot(stream_request(&token, 1))
        .await
        .unwrap();
    assert_eq!(refused.status(), 402, "5 + 20 + 20 held: 5 left");

    b_producer.permits.add_permits(1_000);
    c_producer.permits.add_permits(1_000);
    let (b_text, c_text) = tokio::join!(body_text(b), body_text(c_stream));
    assert_eq!(b_text.matches("data: ").count(), 30);
    assert_eq!(c_text.matches("data: ").count(), 30);
    let mut charged = Vec::new();
    for _ in 0..3 {
        charged.push(settled.recv().await.unwrap().credits);
    }
    charged.sort();
    assert_eq!(charged, vec![c(5), c(20), c(20)]);
    assert_eq!(w.balance().await, c(5), "50 - 45: never below zero");
}

#[tokio::test]
async fn a_lost_settle_reply_of_a_metered_stream_is_retried_and_spent_once() {
    let w = dynamic(100).await;
    let (hook, mut settled) = outcomes();
    let (app, _streams) = app(w.layer().on_settle(hook).build().unwrap(), 1_000);
    w.server.faults().set(
        Fault::new("/api/v1/x402/settle")
            .drop_connection()
            .after_handler()
            .times(1),
    );
    let response = app
        .oneshot(stream_request(&w.x402().await, 7))
        .await
        .unwrap();
    body_text(response).await;
    let outcome = settled.recv().await.unwrap();
    assert!(outcome.is_settled(), "{outcome:?}");
    assert_eq!(outcome.attempts, 2);
    assert_eq!(
        w.spends(&outcome.request_id),
        vec![c(7)],
        "two attempts, one request id, one spend"
    );
    assert_eq!(w.balance().await, c(93));
}

#[tokio::test]
async fn the_receipt_ends_an_sse_stream_as_a_payment_response_event() {
    let w = dynamic(100).await;
    let layer = w.layer().receipt_at_stream_end().build().unwrap();
    let (app, _streams) = app(layer, 1_000);
    let response = app
        .oneshot(stream_request(&w.x402().await, 7))
        .await
        .unwrap();
    let text = body_text(response).await;
    let (events, receipt) = text
        .split_once("event: payment-response\ndata: ")
        .expect("a receipt event");
    assert_eq!(events.matches("data: ").count(), 7);
    let receipt = receipt.strip_suffix("\n\n").expect("one event, last");
    let json = base64::engine::general_purpose::STANDARD
        .decode(receipt)
        .unwrap();
    let receipt: nvm_payments::types::SettleResponse = serde_json::from_slice(&json).unwrap();
    assert!(receipt.success);
    assert_eq!(receipt.credits_redeemed, Some(c(7)));
}

#[tokio::test]
async fn the_receipt_of_a_stream_that_is_not_sse_is_an_http_trailer() {
    let w = dynamic(100).await;
    let layer = w
        .layer()
        .meter_route(Method::POST, "/text", MeterRule::per_block(4, 1u64))
        .receipt_at_stream_end()
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/text",
            post(|payment: PaymentContext| async move {
                let meter = payment.meter();
                let chunks =
                    stream::iter(["one ", "two ", "three ", "four ", "five"]).map(move |chunk| {
                        meter.add(1);
                        Ok::<_, std::convert::Infallible>(chunk)
                    });
                Body::from_stream(chunks)
            }),
        )
        .layer(layer);
    let request = Request::post("/text")
        .header("payment-signature", w.x402().await)
        .body(Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.headers()["trailer"], "payment-response");
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    let bytes = collected.to_bytes();
    assert_eq!(bytes, "one two three four five");
    let json = base64::engine::general_purpose::STANDARD
        .decode(trailers["payment-response"].as_bytes())
        .unwrap();
    let receipt: nvm_payments::types::SettleResponse = serde_json::from_slice(&json).unwrap();
    assert_eq!(
        receipt.credits_redeemed,
        Some(c(2)),
        "5 units: 2 blocks of 4"
    );
}

#[tokio::test]
async fn on_a_fixed_plan_the_meter_is_ignored() {
    // 100 credits, 3 per request whatever is asked: the backend burns 3.
    let w = world(get_fixed_credits_config(c(100), c(3))).await;
    let (hook, mut settled) = outcomes();
    let layer = w.layer().on_settle(hook).build().unwrap();
    let app = Router::new()
        .route(
            "/stream",
            post(|payment: PaymentContext| async move {
                assert!(!payment.is_metered());
                payment.meter().add(7);
                "seven units"
            }),
        )
        .layer(layer);
    let response = app
        .oneshot(
            Request::post("/stream")
                .header("payment-signature", w.x402().await)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().contains_key("payment-response"),
        "charged like any request: before the response"
    );
    let outcome = settled.recv().await.unwrap();
    assert_eq!(w.spends(&outcome.request_id), vec![c(3)]);
}
