//! Shared by the reliability tests and the soak: a devserver with an agent sold through
//! a plan, subscribers who ordered it, a layer over it, and ways to count what the
//! ledger really charged.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::routing::post;
use axum::Router;
use http::Request;
use nvm_payments::devserver::{DevServer, Spend};
use nvm_payments::types::{AgentApiAttributes, AgentMetadata, DevAccount, Endpoint, PlanMetadata};
use nvm_payments::{
    get_dynamic_credits_config, get_free_price_config, AgentId, Credits, PaymentContext,
    PaymentLayer, PaymentOptions, Payments, PlanId, RetryPolicy, SettleOutcome,
};

pub const VERIFY: &str = "/api/v1/x402/verify";
pub const SETTLE: &str = "/api/v1/x402/settle";
pub const BALANCE: &str = "/api/v1/protocol/plans/";

pub fn c(v: u64) -> Credits {
    Credits::from(v)
}

pub struct World {
    pub server: DevServer,
    pub owner: DevAccount,
    pub subscribers: Vec<DevAccount>,
    pub plan: PlanId,
    pub agent: AgentId,
}

/// An agent sold through a dynamic plan (`grant` credits per order, 1..10 per
/// request) and `subscribers` accounts that ordered it once.
pub async fn world(subscribers: usize, grant: u64) -> World {
    let server = DevServer::start().await.unwrap();
    let owner = server.create_account(Some("builder"));
    let registered = server
        .payments(&owner)
        .agents()
        .register_agent_and_plan(
            AgentMetadata::named("agent"),
            AgentApiAttributes::with_endpoints(vec![Endpoint::new("POST", "http://localhost/ask")]),
            PlanMetadata::named("plan"),
            get_free_price_config(),
            get_dynamic_credits_config(c(grant), c(1), c(10)),
        )
        .await
        .unwrap();
    let plan = registered.data.plan_id;
    let mut subs = Vec::new();
    for i in 0..subscribers {
        let account = server.create_account(Some(&format!("subscriber-{i}")));
        server
            .payments(&account)
            .plans()
            .order_plan(&plan)
            .await
            .unwrap();
        subs.push(account);
    }
    World {
        server,
        owner,
        subscribers: subs,
        plan,
        agent: registered.data.agent_id,
    }
}

/// Retries quick enough for tests, long enough to outlive a short outage.
pub fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        max_elapsed: Duration::from_secs(20),
        max_attempts: 40,
    }
}

impl World {
    /// The agent owner's client, with a per-call timeout and no retries of reads
    /// (the layer's own policies are under test).
    pub fn owner_client(&self, timeout: Duration) -> Payments {
        Payments::new(
            PaymentOptions::new(self.owner.api_key.clone())
                .backend_url(self.server.base_url())
                .timeout(timeout)
                .max_retries(0),
        )
        .unwrap()
    }

    pub fn layer(&self, timeout: Duration) -> nvm_payments::layer::PaymentLayerBuilder {
        PaymentLayer::builder(self.owner_client(timeout))
            .plan_id(self.plan.clone())
            .agent_id(self.agent.clone())
            .credits(1u64)
            .charge_retry(quick_retry())
    }

    pub async fn x402(&self, subscriber: usize) -> String {
        self.server
            .payments(&self.subscribers[subscriber])
            .x402()
            .get_x402_access_token(&self.plan, Some(&self.agent))
            .await
            .unwrap()
            .access_token
            .expose()
            .to_owned()
    }

    pub async fn balance(&self, subscriber: usize) -> Credits {
        self.server
            .payments(&self.subscribers[subscriber])
            .plans()
            .get_plan_balance(&self.plan, None)
            .await
            .unwrap()
            .balance
    }

    /// Spends per request id, from the ledger of record.
    pub fn spends_by_request(&self) -> HashMap<String, Vec<Spend>> {
        spends_by_request(self.server.state().spends())
    }
}

pub fn spends_by_request(spends: Vec<Spend>) -> HashMap<String, Vec<Spend>> {
    let mut by_id: HashMap<String, Vec<Spend>> = HashMap::new();
    for spend in spends {
        let id = spend
            .request_id
            .clone()
            .expect("the layer always sends a request id");
        by_id.entry(id).or_default().push(spend);
    }
    by_id
}

/// Asserts that every `served` request id was spent exactly once and that no request
/// id was spent twice (a request cut off mid-flight may be spent once without being in
/// `served`).
pub fn assert_served_spent_once(spends: &[Spend], served: &[String]) {
    let by_id = spends_by_request(spends.to_vec());
    for id in served {
        assert_eq!(
            by_id.get(id).map(Vec::len),
            Some(1),
            "request {id} charged once"
        );
    }
    assert!(
        by_id.values().all(|s| s.len() == 1),
        "no request charged twice"
    );
}

/// A paid `/ask` that answers its request id and counts its runs.
pub fn app(layer: PaymentLayer, runs: Arc<AtomicUsize>) -> Router {
    Router::new()
        .route(
            "/ask",
            post(move |payment: PaymentContext| {
                runs.fetch_add(1, Ordering::SeqCst);
                async move { payment.request_id().to_owned() }
            }),
        )
        .layer(layer)
}

pub fn ask(token: &str) -> Request<Body> {
    Request::post("/ask")
        .header("payment-signature", token)
        .body(Body::empty())
        .unwrap()
}

pub async fn text(response: axum::response::Response) -> String {
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// An `on_settle` hook feeding a channel, so tests await outcomes instead of sleeping.
pub fn outcomes() -> (
    impl nvm_payments::OnSettle,
    tokio::sync::mpsc::UnboundedReceiver<SettleOutcome>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (
        move |o: &SettleOutcome| {
            let _ = tx.send(o.clone());
        },
        rx,
    )
}

/// Everything logged while the guard lives (this thread: use a current-thread runtime).
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || logs.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
