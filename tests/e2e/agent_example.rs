//! `examples/agent.rs` as a builder deploys it: started as a process against the
//! devserver, called with and without a token, and stopped with SIGTERM while a
//! request is in flight — that request still completes and is charged exactly once.

#![cfg(unix)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nvm_payments::devserver::{DevServer, Fault};
use nvm_payments::types::{AgentApiAttributes, AgentMetadata, PlanCreditsConfig, PlanMetadata};
use nvm_payments::{
    get_dynamic_credits_config, get_fixed_credits_config, get_native_token_price_config, AgentId,
    ApiKey, Credits, Endpoint, Payments, PlanId,
};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, BufReader};

/// The compiled example: `cargo test` builds examples next to the test binaries; when
/// only this test was asked for, build it.
pub(crate) fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = profile_dir.join("examples").join("agent");
    if !path.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--example", "agent"])
            .status()
            .expect("run cargo build --example agent");
        assert!(status.success(), "cargo build --example agent failed");
    }
    path
}

/// A builder with a plan and an agent on the devserver, and a subscriber.
pub(crate) struct World {
    /// The builder's key: the agent runs with it.
    pub(crate) api_key: ApiKey,
    pub(crate) subscriber: Payments,
    pub(crate) plan: PlanId,
    pub(crate) agent: AgentId,
}

pub(crate) async fn world(server: &DevServer) -> World {
    world_with(
        server,
        get_fixed_credits_config(Credits::from(100u64), Credits::from(1u64)),
    )
    .await
}

/// The same with the plan's credits config given.
pub(crate) async fn world_with(server: &DevServer, credits: PlanCreditsConfig) -> World {
    let builder_account = server.create_account(Some("builder"));
    let builder = server.payments(&builder_account);
    let subscriber = server.payments(&server.create_account(Some("subscriber")));
    let plan = builder
        .plans()
        .register_credits_plan(
            PlanMetadata::named("Agent plan"),
            get_native_token_price_config(
                Credits::from(1_000u64),
                builder.account_address().clone(),
            ),
            credits,
        )
        .await
        .unwrap();
    let agent = builder
        .agents()
        .register_agent(
            AgentMetadata::named("Example agent"),
            AgentApiAttributes::with_endpoints(vec![Endpoint::new("POST", "http://127.0.0.1/ask")]),
            vec![plan.clone()],
        )
        .await
        .unwrap();
    World {
        api_key: builder_account.api_key,
        subscriber,
        plan,
        agent,
    }
}

/// The agent example's command against `world`, with its output piped.
pub(crate) fn agent_command(server: &DevServer, world: &World) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(agent_binary());
    command
        .env("NVM_API_KEY", world.api_key.expose())
        .env("NVM_BACKEND_URL", server.base_url())
        .env("NVM_PLAN_ID", world.plan.to_string())
        .env("NVM_AGENT_ID", world.agent.to_string())
        .env("PORT", "0")
        .env("CREDITS", "1")
        .env("SHUTDOWN_GRACE_SECS", "20")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// The next line a child printed on stdout, which must start with `prefix` (how the
/// examples announce their address): answers the rest of it.
pub(crate) async fn announced(stdout: &mut (impl AsyncBufRead + Unpin), prefix: &str) -> String {
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .await
        .expect("read the child's stdout");
    line.trim()
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("expected a line starting {prefix:?}, got {line:?}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_charges_and_drains_on_sigterm() {
    let server = DevServer::start().await.unwrap();
    let world = world(&server).await;
    let mut child = agent_command(&server, &world)
        .spawn()
        .expect("start the agent example");
    let World {
        api_key,
        subscriber,
        plan,
        agent,
    } = world;
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let base = announced(&mut stdout, "agent listening on ").await;

    let http = reqwest::Client::new();
    let health = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200, "health is open");

    let unpaid = http
        .post(format!("{base}/ask"))
        .json(&serde_json::json!({"question": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unpaid.status(), 402);
    assert!(unpaid.headers().contains_key("payment-required"));

    subscriber.plans().order_plan(&plan).await.unwrap();
    let token = subscriber
        .x402()
        .get_x402_access_token(&plan, Some(&agent))
        .await
        .unwrap()
        .access_token;
    let ask = {
        let http = http.clone();
        let url = format!("{base}/ask");
        let token = token.expose().to_owned();
        move || {
            http.post(url.clone())
                .header("payment-signature", token.clone())
                .json(&serde_json::json!({"question": "what is 2+2?"}))
                .send()
        }
    };
    let paid = ask().await.unwrap();
    assert_eq!(paid.status(), 200);
    assert!(paid.headers().contains_key("payment-response"));
    let body: serde_json::Value = paid.json().await.unwrap();
    assert_eq!(body["answer"], "You asked: what is 2+2?");
    let balance = || async {
        subscriber
            .plans()
            .get_plan_balance(&plan, None)
            .await
            .unwrap()
            .balance
    };
    assert_eq!(balance().await, Credits::from(99u64));

    // Make the next charge slow, start a request, and wait until its charge has
    // reached the backend: that request is in flight when SIGTERM arrives.
    server
        .faults()
        .set(Fault::new("/api/v1/x402/settle").latency_ms(1_500));
    let settles_before = server.stats().get("POST /api/v1/x402/settle");
    let in_flight = tokio::spawn(ask());
    while server.stats().get("POST /api/v1/x402/settle") == settles_before {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await; // poll the counter; bounded by the request
    }
    let pid = child.id().expect("agent pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());

    let last = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(last.status(), 200, "the in-flight request is served");
    assert!(
        last.headers().contains_key("payment-response"),
        "and charged before its response"
    );
    let status = child.wait().await.unwrap();
    assert!(status.success(), "the agent exits cleanly: {status}");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).await.unwrap();
    assert!(rest.contains("drained"), "{rest}");
    assert!(rest.contains("all charges settled"), "{rest}");
    server.faults().clear();
    assert_eq!(
        balance().await,
        Credits::from(98u64),
        "charged exactly once per served request"
    );

    // After shutdown nothing listens any more.
    assert!(http.get(format!("{base}/health")).send().await.is_err());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(
        !stderr.contains(api_key.expose()),
        "the key never reaches the logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_prometheus_metrics_on_its_own_port() {
    let server = DevServer::start().await.unwrap();
    let world = world(&server).await;
    let mut child = agent_command(&server, &world)
        .env("METRICS_PORT", "0")
        .spawn()
        .expect("start the agent example");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let base = announced(&mut stdout, "agent listening on ").await;
    let metrics_url = announced(&mut stdout, "metrics on ").await;

    let http = reqwest::Client::new();
    let unpaid = http
        .post(format!("{base}/ask"))
        .json(&serde_json::json!({}))
        .send();
    assert_eq!(unpaid.await.unwrap().status(), 402);
    world
        .subscriber
        .plans()
        .order_plan(&world.plan)
        .await
        .unwrap();
    let token = world
        .subscriber
        .x402()
        .get_x402_access_token(&world.plan, Some(&world.agent))
        .await
        .unwrap()
        .access_token;
    let paid = http
        .post(format!("{base}/ask"))
        .header("payment-signature", token.expose())
        .json(&serde_json::json!({"question": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 200);

    let not_here = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(not_here.status(), 404, "metrics are not on the paid port");
    let scrape = http.get(&metrics_url).send().await.unwrap();
    assert_eq!(scrape.status(), 200);
    let text = scrape.text().await.unwrap();
    for series in [
        "nvm_requests_admitted_total 1",
        "nvm_requests_refused_total{kind=\"payment_required\"} 1",
        "nvm_charges_total{outcome=\"settled\"} 1",
        "nvm_credits_charged_total 1",
        "nvm_backend_call_duration_seconds_count{operation=\"settle\"} 1",
    ] {
        assert!(text.lines().any(|l| l == series), "{series} in:\n{text}");
    }
    assert!(!text.contains(token.expose()), "no token in a label");
    let subscriber = world.subscriber.account_address().to_string();
    let lower = text.to_lowercase();
    assert!(
        !lower.contains(&subscriber.to_lowercase()),
        "no address in a label"
    );
}

/// `POST /stream` over real HTTP: one SSE event per word, the receipt as a last
/// `payment-response` event, and 1 credit per event charged on a dynamic plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_streams_words_and_charges_one_credit_per_event() {
    let server = DevServer::start().await.unwrap();
    let c = Credits::from;
    let world = world_with(
        &server,
        get_dynamic_credits_config(c(100u64), c(1u64), c(20u64)),
    )
    .await;
    let mut child = agent_command(&server, &world)
        .spawn()
        .expect("start the agent example");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let base = announced(&mut stdout, "agent listening on ").await;
    world
        .subscriber
        .plans()
        .order_plan(&world.plan)
        .await
        .unwrap();
    let token = world
        .subscriber
        .x402()
        .get_x402_access_token(&world.plan, Some(&world.agent))
        .await
        .unwrap()
        .access_token;
    let response = reqwest::Client::new()
        .post(format!("{base}/stream"))
        .header("payment-signature", token.expose())
        .json(&serde_json::json!({"prompt": "one two three four five six seven"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    let (events, receipt) = text
        .split_once("event: payment-response\n")
        .unwrap_or_else(|| panic!("no receipt event in {text:?}"));
    assert_eq!(events.matches("data: ").count(), 7, "{events:?}");
    assert!(events.starts_with("data: one\n\n"), "{events:?}");
    assert!(receipt.starts_with("data: "), "{receipt:?}");
    let balance = world
        .subscriber
        .plans()
        .get_plan_balance(&world.plan, None)
        .await
        .unwrap()
        .balance;
    assert_eq!(balance, c(93u64), "7 events, 7 credits");
}
