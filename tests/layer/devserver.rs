//! End to end against the devserver: real HTTP, real tokens, the ledger of record.
#![cfg(feature = "devserver")]

use std::time::Duration;

use axum::body::Body;
use axum::routing::post;
use axum::Router;
use futures_util::future::join_all;
use http::Request;
use nvm_payments::devserver::{DevServer, Fault};
use nvm_payments::types::{AgentApiAttributes, AgentMetadata, Endpoint, PlanMetadata};
use nvm_payments::{
    get_dynamic_credits_config, get_free_price_config, AgentId, ChargeOverride, Credits,
    PaymentContext, PaymentLayer, Payments, PlanId, RetryPolicy,
};
use tower::ServiceExt;

const VERIFY: &str = "POST /api/v1/x402/verify";
const SETTLE: &str = "POST /api/v1/x402/settle";
const REDEEM: &str = "POST /api/v1/protocol/plans/redeem";
const BALANCE: &str = "GET /api/v1/protocol/plans/{planId}/balance/{holder}";
const PLAN: &str = "GET /api/v1/protocol/plans/{planId}";

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

/// An agent sold through a dynamic plan (100 credits per order, 1..10 per request),
/// and a subscriber who ordered it once.
async fn world() -> World {
    let server = DevServer::start().await.unwrap();
    let owner = server.payments(&server.create_account(Some("builder")));
    let subscriber = server.payments(&server.create_account(Some("subscriber")));
    let registered = owner
        .agents()
        .register_agent_and_plan(
            AgentMetadata::named("agent"),
            AgentApiAttributes::with_endpoints(vec![Endpoint::new("POST", "http://localhost/ask")]),
            PlanMetadata::named("plan"),
            get_free_price_config(),
            get_dynamic_credits_config(c(100), c(1), c(10)),
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

impl World {
    fn layer(&self, credits: u64) -> nvm_payments::layer::PaymentLayerBuilder {
        PaymentLayer::builder(self.owner.clone())
            .plan_id(self.plan.clone())
            .agent_id(self.agent.clone())
            .credits(credits)
            .charge_retry(RetryPolicy {
                initial_backoff: Duration::from_millis(5),
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
}

async fn ask(payment: PaymentContext) -> String {
    payment.request_id().to_owned()
}

fn post_with(header: &str, value: &str) -> Request<Body> {
    Request::post("/ask")
        .header(header, value)
        .body(Body::empty())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_first_requests_make_one_verify_one_balance_and_a_charge_each() {
    let w = world().await;
    let app = Router::new()
        .route("/ask", post(ask))
        .layer(w.layer(1).build().unwrap());
    let token = w.x402().await;
    w.server
        .faults()
        .set(Fault::new("/api/v1/x402/verify").latency_ms(100));
    w.server.reset_stats();
    let statuses = join_all((0..100).map(|_| {
        let app = app.clone();
        let req = post_with("payment-signature", &token);
        tokio::spawn(async move { app.oneshot(req).await.unwrap().status().as_u16() })
    }))
    .await;
    assert!(statuses.iter().all(|s| *s.as_ref().unwrap() == 200));
    let stats = w.server.stats();
    assert_eq!(stats.get(VERIFY), 1, "{stats:?}");
    assert_eq!(stats.get(BALANCE), 1, "{stats:?}");
    assert_eq!(stats.get(PLAN), 1, "{stats:?}");
    assert_eq!(stats.get(SETTLE), 100);
    assert_eq!(w.balance().await, c(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_spend_at_most_the_balance() {
    // B = 100, c = 7: at most 14 of 30 concurrent requests are admitted.
    let w = world().await;
    let app = Router::new()
        .route("/ask", post(ask))
        .layer(w.layer(7).build().unwrap());
    let token = w.x402().await;
    let statuses = join_all((0..30).map(|_| {
        let app = app.clone();
        let req = post_with("payment-signature", &token);
        tokio::spawn(async move { app.oneshot(req).await.unwrap().status().as_u16() })
    }))
    .await;
    let admitted = statuses
        .iter()
        .filter(|s| *s.as_ref().unwrap() == 200)
        .count() as u64;
    let refused = statuses
        .iter()
        .filter(|s| *s.as_ref().unwrap() == 402)
        .count() as u64;
    assert_eq!(admitted, 14);
    assert_eq!(admitted + refused, 30);
    assert_eq!(w.balance().await, c(100 - admitted * 7), "B - admitted * c");
}

#[tokio::test]
async fn a_lost_settle_reply_is_retried_and_spent_once() {
    let w = world().await;
    let (tx, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
    let layer = w
        .layer(3)
        .on_settle(move |o: &nvm_payments::SettleOutcome| {
            let _ = tx.send(o.clone());
        })
        .build()
        .unwrap();
    let app = Router::new().route("/ask", post(ask)).layer(layer);
    let token = w.x402().await;
    // The devserver burns, then drops the connection instead of answering.
    w.server.faults().set(
        Fault::new("/api/v1/x402/settle")
            .drop_connection()
            .after_handler()
            .times(1),
    );
    w.server.reset_stats();
    let response = app
        .oneshot(post_with("payment-signature", &token))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("payment-response"));
    let outcome = outcomes.recv().await.unwrap();
    assert!(outcome.is_settled(), "{outcome:?}");
    assert_eq!(outcome.attempts, 2);
    assert_eq!(
        w.server.stats().get(SETTLE),
        2,
        "two attempts, one request id"
    );
    assert_eq!(w.balance().await, c(97), "spent once");
}

#[tokio::test]
async fn failed_handlers_are_not_charged_and_dynamic_credits_are() {
    let w = world().await;
    let layer = w.layer(10).build().unwrap();
    let app = Router::new()
        .route(
            "/ask",
            post(|| async { (ChargeOverride(c(4)), "cheap answer") }),
        )
        .route(
            "/fail",
            post(|| async { (http::StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .layer(layer);
    let token = w.x402().await;
    let failed = app
        .clone()
        .oneshot(
            Request::post("/fail")
                .header("payment-signature", &token)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(failed.status(), 500);
    let ok = app
        .oneshot(post_with("payment-signature", &token))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(w.server.stats().get(SETTLE), 1);
    assert_eq!(
        w.balance().await,
        c(96),
        "the handler's 4, not the reserved 10"
    );
}

#[tokio::test]
async fn bearer_tokens_are_verified_locally_and_redeemed() {
    let w = world().await;
    let app = Router::new()
        .route("/ask", post(ask))
        .layer(w.layer(2).build().unwrap());
    let bearer = w
        .subscriber
        .x402()
        .get_agent_access_token(&w.plan, &w.agent)
        .await
        .unwrap()
        .access_token;
    let auth = format!("Bearer {}", bearer.expose());
    w.server.reset_stats();
    for _ in 0..3 {
        let r = app
            .clone()
            .oneshot(post_with("authorization", &auth))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let stats = w.server.stats();
    assert_eq!(stats.get("GET /.well-known/jwks.json"), 1, "{stats:?}");
    assert_eq!(stats.get(VERIFY), 0);
    assert_eq!(stats.get(REDEEM), 3);
    assert_eq!(w.balance().await, c(94));
}

#[tokio::test]
async fn forged_expired_wrong_plan_and_wrong_agent_tokens_are_refused() {
    let w = world().await;
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = served.clone();
    let app = Router::new()
        .route(
            "/ask",
            post(move || {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async { "served" }
            }),
        )
        .layer(w.layer(1).build().unwrap());

    // A second plan of the same owner, and a second agent on the first plan.
    let other = w
        .owner
        .agents()
        .register_agent_and_plan(
            AgentMetadata::named("other"),
            AgentApiAttributes::with_endpoints(vec![Endpoint::new(
                "POST",
                "http://localhost/other",
            )]),
            PlanMetadata::named("other"),
            get_free_price_config(),
            get_dynamic_credits_config(c(100), c(1), c(10)),
        )
        .await
        .unwrap();
    w.subscriber
        .plans()
        .order_plan(&other.data.plan_id)
        .await
        .unwrap();
    let other_agent = w
        .owner
        .agents()
        .register_agent(
            AgentMetadata::named("sibling"),
            AgentApiAttributes::with_endpoints(vec![Endpoint::new("POST", "http://localhost/sib")]),
            vec![w.plan.clone()],
        )
        .await
        .unwrap();

    let x402 = |plan: PlanId, agent: AgentId| {
        let s = w.subscriber.clone();
        async move {
            s.x402()
                .get_x402_access_token(&plan, Some(&agent))
                .await
                .unwrap()
                .access_token
                .expose()
                .to_owned()
        }
    };
    let bearer = |plan: PlanId, agent: AgentId| {
        let s = w.subscriber.clone();
        async move {
            format!(
                "Bearer {}",
                s.x402()
                    .get_agent_access_token(&plan, &agent)
                    .await
                    .unwrap()
                    .access_token
                    .expose()
            )
        }
    };
    let good_x402 = x402(w.plan.clone(), w.agent.clone()).await;
    // Claim another payer inside a genuine envelope: still decodable, not authentic.
    let forged_x402 = {
        let mut payload = nvm_payments::credential::decode_x402_token(&good_x402).unwrap();
        payload.payload.authorization.from = "0x2222222222222222222222222222222222222222"
            .parse()
            .unwrap();
        nvm_payments::credential::encode_x402_token(&payload)
    };
    let good_bearer = bearer(w.plan.clone(), w.agent.clone()).await;
    // Change one character early in the signature: still base64url (the last one
    // may carry padding bits), no longer the issuer's signature.
    let forged_bearer = {
        let sig_start = good_bearer.rfind('.').unwrap() + 1;
        let mut bytes = good_bearer.clone().into_bytes();
        bytes[sig_start + 4] = if bytes[sig_start + 4] == b'A' {
            b'B'
        } else {
            b'A'
        };
        String::from_utf8(bytes).unwrap()
    };
    let subscriber_addr = w.subscriber.account_address().clone();
    let expired_bearer = format!(
        "Bearer {}",
        w.server
            .issue_access_token(&subscriber_addr, &w.plan, &w.agent, w.server.now() - 60)
            .expose()
    );
    let cases = [
        (
            "x402 forged",
            "payment-signature",
            forged_x402,
            402,
            "invalid_token",
        ),
        (
            "x402 wrong plan",
            "payment-signature",
            x402(other.data.plan_id.clone(), other.data.agent_id.clone()).await,
            402,
            "plan_not_accepted",
        ),
        (
            "x402 wrong agent",
            "payment-signature",
            x402(w.plan.clone(), other_agent.clone()).await,
            402,
            "wrong_agent",
        ),
        (
            "bearer forged",
            "authorization",
            forged_bearer,
            402,
            "invalid_token",
        ),
        (
            "bearer expired",
            "authorization",
            expired_bearer,
            402,
            "invalid_token",
        ),
        (
            "bearer wrong plan",
            "authorization",
            bearer(other.data.plan_id.clone(), other.data.agent_id.clone()).await,
            402,
            "plan_not_accepted",
        ),
        (
            "bearer wrong agent",
            "authorization",
            bearer(w.plan.clone(), other_agent.clone()).await,
            402,
            "wrong_agent",
        ),
    ];
    for (name, header, value, status, code) in cases {
        let r = app
            .clone()
            .oneshot(post_with(header, &value))
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{name}");
        assert!(r.headers().contains_key("payment-required"), "{name}");
        let body: serde_json::Value = serde_json::from_slice(
            &http_body_util::BodyExt::collect(r.into_body())
                .await
                .unwrap()
                .to_bytes(),
        )
        .unwrap();
        assert_eq!(body["error"], code, "{name}: {body}");
    }
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(w.balance().await, c(100));
}
