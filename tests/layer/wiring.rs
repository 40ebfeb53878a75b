//! The four ways to wire the layer: axum `Router::layer`, `route_layer`, a per-route
//! `.layer(...)`, and a plain hyper server over a real TCP socket.
#![cfg(feature = "devserver")]

use std::convert::Infallible;

use crate::support::layer_mock::*;
use axum::body::Body;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use nvm_payments::{ChargeOverride, Credits, PaymentContext};
use tower::{Layer, ServiceExt};

async fn paid(payment: PaymentContext) -> String {
    format!("{} {}", payment.subscriber(), payment.credits())
}

async fn cheap(payment: PaymentContext) -> (ChargeOverride, String) {
    (
        ChargeOverride(Credits::from(1u64)),
        payment.request_id().to_owned(),
    )
}

async fn maybe(payment: Option<PaymentContext>) -> &'static str {
    if payment.is_some() {
        "paid"
    } else {
        "free"
    }
}

fn x402(uri: &str) -> Request<Body> {
    Request::post(uri)
        .header("payment-signature", valid_x402())
        .body(Body::empty())
        .unwrap()
}

fn anonymous(method: &str, uri: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap()
}

async fn text(response: axum::response::Response) -> String {
    String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

#[tokio::test]
async fn router_layer_guards_every_request() {
    let backend = MockBackend::new(100);
    let layer = builder(backend.clone()).build().unwrap();
    let app = Router::new().route("/ask", post(paid)).layer(layer);
    let ok = app.clone().oneshot(x402("/ask")).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.headers().contains_key("payment-response"));
    assert_eq!(text(ok).await, format!("{SUBSCRIBER} 2"));
    assert_eq!(backend.charged_ids(), 1);
    // The layer runs before routing: even unknown paths need a payment.
    let unknown = app.oneshot(anonymous("POST", "/nope")).await.unwrap();
    assert_eq!(unknown.status(), 402);
}

#[tokio::test]
async fn route_layer_guards_matched_routes_only_and_the_handler_can_lower_the_charge() {
    let backend = MockBackend::new(100);
    let layer = builder(backend.clone()).build().unwrap();
    let app = Router::new()
        .route("/cheap", post(cheap))
        .route_layer(layer);
    let ok = app.clone().oneshot(x402("/cheap")).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        backend.total_charged(),
        Credits::from(1u64),
        "ChargeOverride(1) from an axum handler"
    );
    let unknown = app.oneshot(anonymous("POST", "/nope")).await.unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn per_route_layer_leaves_other_routes_free() {
    let backend = MockBackend::new(100);
    let layer = builder(backend.clone()).build().unwrap();
    let app = Router::new()
        .route("/ask", post(paid).layer(layer))
        .route("/free", get(maybe))
        .route("/needs-layer", get(paid));
    assert_eq!(
        app.clone().oneshot(x402("/ask")).await.unwrap().status(),
        200
    );
    let refused = app
        .clone()
        .oneshot(anonymous("POST", "/ask"))
        .await
        .unwrap();
    assert_eq!(refused.status(), 402);
    let free = app
        .clone()
        .oneshot(anonymous("GET", "/free"))
        .await
        .unwrap();
    assert_eq!(
        text(free).await,
        "free",
        "Option<PaymentContext> is None without the layer"
    );
    let missing = app.oneshot(anonymous("GET", "/needs-layer")).await.unwrap();
    assert_eq!(missing.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(text(missing)
        .await
        .contains("PaymentLayer is not installed"));
    assert_eq!(backend.charged_ids(), 1);
}

#[tokio::test]
async fn plain_hyper_service_over_tcp() {
    let backend = MockBackend::new(100);
    let layer = builder(backend.clone()).build().unwrap();
    let svc = layer.layer(tower::service_fn(
        |req: Request<hyper::body::Incoming>| async move {
            let ctx = req.extensions().get::<PaymentContext>().cloned().unwrap();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                ctx.plan_id().to_string(),
            ))))
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = svc.clone();
            tokio::spawn(async move {
                let hyper_svc = hyper::service::service_fn(move |req| svc.clone().oneshot(req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), hyper_svc)
                    .await;
            });
        }
    });
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/ask");
    let paid = client
        .post(&url)
        .header("payment-signature", valid_x402())
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 200);
    assert!(paid.headers().contains_key("payment-response"));
    assert_eq!(paid.text().await.unwrap(), PLAN);
    let refused = client.post(&url).send().await.unwrap();
    assert_eq!(refused.status(), 402);
    assert!(refused.headers().contains_key("payment-required"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "payment_required");
    assert_eq!(backend.charged_ids(), 1);
    server.abort();
}
