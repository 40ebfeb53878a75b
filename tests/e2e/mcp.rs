//! Paid MCP tools (`nvm_payments::mcp`) end to end against the devserver: rmcp's own
//! client against an rmcp server wrapped by `McpPayments`, and the official Python
//! `mcp` client (PyPI) against `examples/mcp_server.rs` run as a process.

use super::agent_example::announced;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::{HeaderName, HeaderValue};
use nvm_payments::devserver::Fault;
use nvm_payments::mcp::McpPayments;
use nvm_payments::{Credits, PaymentContext, SettleOutcome, SettleStatus};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ClientConfig, ContentBlock,
    GetPromptRequestParams, GetPromptResponse, GetPromptResult, JsonObject, ListToolsResult,
    PaginatedRequestParams, PromptMessage, RequestMetaObject, Role, ServerCapabilities,
    ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceError;
use rmcp::{ErrorData as McpError, RoleClient, RoleServer, ServerHandler, ServiceExt};
use serde_json::{json, Value};
use tokio::io::BufReader;

use crate::support::reliability::{c, quick_retry, world, World, SETTLE, VERIFY};

/// Tools that count their runs: `weather` (2 credits), `echo` (free), `fail` (2
/// credits, answers `isError`).
#[derive(Clone)]
struct Tools {
    runs: Arc<AtomicUsize>,
    payers: Arc<Mutex<Vec<String>>>,
}

impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_prompts()
                .build(),
        )
    }

    async fn get_prompt(
        &self,
        _: GetPromptRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let message = PromptMessage::new_text(Role::User, "Say hello");
        Ok(GetPromptResponse::Complete(GetPromptResult::new(vec![
            message,
        ])))
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let schema = Arc::new(JsonObject::new());
        Ok(ListToolsResult::with_all_items(
            ["weather", "echo", "fail"]
                .into_iter()
                .map(|name| Tool::new(name, name, schema.clone()))
                .collect(),
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        if let Some(payment) = context.extensions.get::<PaymentContext>() {
            // The payment payload is taken out of `_meta` before the tool runs.
            let seen = match context.meta.get("x402/payment") {
                None => payment.subscriber().to_string(),
                Some(_) => "the tool saw the payment payload".to_owned(),
            };
            self.payers.lock().unwrap().push(seen);
        }
        let arg = |name: &str| {
            request
                .arguments
                .as_ref()
                .and_then(|a| a.get(name))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let result = match &*request.name {
            "weather" => CallToolResult::success(vec![ContentBlock::text(format!(
                "Weather in {}: 22C",
                arg("city")
            ))]),
            "echo" => CallToolResult::success(vec![ContentBlock::text(arg("text"))]),
            "fail" => CallToolResult::error(vec![ContentBlock::text("no such city")]),
            _ => return Err(McpError::invalid_params("unknown tool", None)),
        };
        Ok(result.into())
    }
}

/// An MCP server on 127.0.0.1:0 selling `weather` and `fail` for 2 credits each.
struct Server {
    url: String,
    mcp: McpPayments,
    tools: Tools,
    outcomes: Arc<Mutex<Vec<SettleOutcome>>>,
}

async fn serve(w: &World) -> Server {
    let outcomes: Arc<Mutex<Vec<SettleOutcome>>> = Arc::default();
    let record = outcomes.clone();
    let layer = w
        .layer(Duration::from_secs(5))
        .charge_retry(quick_retry())
        .on_settle(move |o: &SettleOutcome| record.lock().unwrap().push(o.clone()));
    let mcp = McpPayments::builder(layer)
        .server_name("weather-srv")
        .tool("weather", 2u64)
        .tool("fail", 2u64)
        .prompt("greet", 1u64)
        .build()
        .unwrap();
    let tools = Tools {
        runs: Arc::default(),
        payers: Arc::default(),
    };
    let (paid, handler) = (mcp.clone(), tools.clone());
    let service = StreamableHttpService::new(
        move || Ok(paid.wrap(handler.clone())),
        LocalSessionManager::default().into(),
        StreamableHttpServerConfig::default(),
    );
    let app = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        url,
        mcp,
        tools,
        outcomes,
    }
}

type Client = RunningService<RoleClient, ClientConfig>;

/// A client session; `headers` go on every HTTP request of it.
async fn client(url: &str, headers: &[(&'static str, &str)]) -> Client {
    let headers: HashMap<HeaderName, HeaderValue> = headers
        .iter()
        .map(|(n, v)| {
            (
                HeaderName::from_static(n),
                HeaderValue::from_str(v).unwrap(),
            )
        })
        .collect();
    let config = StreamableHttpClientTransportConfig::with_uri(url).custom_headers(headers);
    ClientConfig::default()
        .serve(StreamableHttpClientTransport::from_config(config))
        .await
        .expect("the client initializes")
}

fn call(name: &str, args: Value) -> CallToolRequestParams {
    let mut params = CallToolRequestParams::new(name.to_owned());
    params.arguments = args.as_object().cloned();
    params
}

/// The payment payload object of a token (any base64 spelling).
fn payload(token: &str) -> Value {
    let canonical = token
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(canonical).unwrap()).unwrap()
}

/// `call` paying in band: the decoded payment payload in `_meta["x402/payment"]`.
fn paid_call(name: &str, args: Value, token: &str) -> CallToolRequestParams {
    let payload = payload(token);
    let mut meta = RequestMetaObject::default();
    meta.insert("x402/payment".to_owned(), payload);
    let mut params = call(name, args);
    params.meta = Some(meta);
    params
}

fn text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn meta(result: &CallToolResult, key: &str) -> Value {
    result
        .meta
        .as_ref()
        .and_then(|m| m.get(key))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Asserts a payment-required refusal naming `plan`, in both the SDKs' and the
/// x402 spec's shapes.
fn assert_payment_required(result: &CallToolResult, w: &World) {
    assert_eq!(result.is_error, Some(true), "{result:?}");
    let pr = result
        .structured_content
        .as_ref()
        .expect("structuredContent");
    assert_eq!(pr["error"], "payment required");
    assert_eq!(pr["accepts"][0]["planId"], w.plan.to_string());
    assert_eq!(pr["resource"]["url"], "mcp://weather-srv/tools/weather");
    let first: Value = serde_json::from_str(&result.content[0].as_text().unwrap().text).unwrap();
    assert_eq!(
        &first, pr,
        "the SDKs' clients read the PaymentRequired as text"
    );
    let second: Value = serde_json::from_str(&result.content[1].as_text().unwrap().text).unwrap();
    assert_eq!(second["x402/error"]["code"], 402);
    assert_eq!(&second["x402/error"]["data"], pr);
}

/// Asserts a served call charged 2 credits, with both receipts in `_meta`.
fn assert_charged_two(result: &CallToolResult, w: &World) {
    assert_ne!(result.is_error, Some(true), "{result:?}");
    let receipt = meta(result, "x402/payment-response");
    assert_eq!(receipt["success"], true, "{result:?}");
    assert_eq!(receipt["creditsRedeemed"], "2");
    let credits = meta(result, "nevermined/credits");
    assert_eq!(credits["creditsRedeemed"], "2");
    assert_eq!(credits["planId"], w.plan.to_string());
    assert_eq!(credits["success"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_client_lists_is_refused_unpaid_and_pays_in_band_or_by_header() {
    let w = world(1, 100).await;
    let s = serve(&w).await;
    let token = w.x402(0).await;

    let anonymous = client(&s.url, &[]).await;
    let tools = anonymous.list_all_tools().await.unwrap();
    let names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    assert_eq!(names, ["weather", "echo", "fail"], "listing is free");

    let unpaid = anonymous
        .call_tool(call("weather", json!({"city": "Rome"})))
        .await
        .unwrap();
    assert_payment_required(&unpaid, &w);
    assert_eq!(
        s.tools.runs.load(Ordering::SeqCst),
        0,
        "the tool did not run"
    );
    assert_eq!(w.server.stats().get(&format!("POST {VERIFY}")), 0);

    let free = anonymous
        .call_tool(call("echo", json!({"text": "hi"})))
        .await
        .unwrap();
    assert_eq!(text(&free), "hi");
    assert_eq!(free.meta, None, "a free tool is passed through untouched");

    // In band, on a session that sends no Authorization header at all.
    let in_band = anonymous
        .call_tool(paid_call("weather", json!({"city": "Rome"}), &token))
        .await
        .unwrap();
    assert_charged_two(&in_band, &w);
    assert_eq!(text(&in_band), "Weather in Rome: 22C");
    assert_eq!(w.balance(0).await, c(98));

    for header in ["authorization", "payment-signature"] {
        let value = if header == "authorization" {
            format!("Bearer {token}")
        } else {
            token.clone()
        };
        let by_header = client(&s.url, &[(header, &value)]).await;
        let result = by_header
            .call_tool(call("weather", json!({"city": "Oslo"})))
            .await
            .unwrap();
        assert_charged_two(&result, &w);
        by_header.cancel().await.unwrap();
    }
    assert_eq!(w.balance(0).await, c(94), "2 credits per call, 3 calls");
    let payer = w.subscribers[0].address.to_string();
    assert_eq!(
        *s.tools.payers.lock().unwrap(),
        vec![payer.clone(), payer.clone(), payer]
    );
    assert_eq!(w.spends_by_request().len(), 3, "one spend per call");
    assert_eq!(s.mcp.pending_charges(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_that_fails_is_not_charged() {
    let w = world(1, 100).await;
    let s = serve(&w).await;
    let token = w.x402(0).await;
    let session = client(&s.url, &[]).await;
    let result = session
        .call_tool(paid_call("fail", json!({"city": "Atlantis"}), &token))
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(true));
    assert_eq!(
        text(&result),
        "no such city",
        "the tool's own error, untouched"
    );
    assert_eq!(s.tools.runs.load(Ordering::SeqCst), 1);
    assert_eq!(w.server.stats().get(&format!("POST {SETTLE}")), 0);
    assert!(s.outcomes.lock().unwrap().is_empty());
    assert_eq!(w.balance(0).await, c(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_that_fails_withholds_the_output_and_reports_one_outcome() {
    let w = world(1, 100).await;
    let s = serve(&w).await;
    let token = w.x402(0).await;
    w.server.faults().set(Fault::new(SETTLE).status(400));
    let session = client(&s.url, &[]).await;
    let result = session
        .call_tool(paid_call("weather", json!({"city": "Rome"}), &token))
        .await
        .unwrap();
    assert_eq!(s.tools.runs.load(Ordering::SeqCst), 1, "the tool ran");
    assert_eq!(result.is_error, Some(true));
    assert!(
        !text(&result).contains("22C"),
        "output withheld: {result:?}"
    );
    let pr = result.structured_content.as_ref().unwrap();
    assert_eq!(pr["error"], "settlement failed");
    let outcomes = s.outcomes.lock().unwrap().clone();
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes[0].status, SettleStatus::Failed);
    assert_eq!(w.balance(0).await, c(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_never_spend_more_than_the_balance() {
    // 5 credits: two 2-credit calls fit, a third does not.
    let w = world(1, 5).await;
    let s = serve(&w).await;
    let token = w.x402(0).await;
    let session = client(&s.url, &[]).await;
    let calls = (0..8).map(|i| {
        let peer = session.peer().clone();
        let params = paid_call("weather", json!({"city": format!("c{i}")}), &token);
        async move { peer.call_tool(params).await.unwrap() }
    });
    let results = futures_util::future::join_all(calls).await;
    let served = results.iter().filter(|r| r.is_error != Some(true)).count();
    assert_eq!(served, 2, "{results:?}");
    assert_eq!(
        s.tools.runs.load(Ordering::SeqCst),
        2,
        "refused calls never ran"
    );
    for refused in results.iter().filter(|r| r.is_error == Some(true)) {
        assert_eq!(
            refused.structured_content.as_ref().unwrap()["error"],
            "payment required"
        );
    }
    assert_eq!(w.balance(0).await, c(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_wrong_plan_tokens_are_refused_without_running_the_tool() {
    let w = world(1, 100).await;
    let s = serve(&w).await;
    let token = w.x402(0).await;
    let mut payload = payload(&token);
    let mut forged = payload.clone();
    forged["payload"]["signature"] = json!("0xdeadbeef");
    payload["accepted"]["planId"] = json!("123456789");
    let session = client(&s.url, &[]).await;
    for bad in [forged, payload] {
        let token = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&bad).unwrap());
        let result = session
            .call_tool(paid_call("weather", json!({"city": "Rome"}), &token))
            .await
            .unwrap();
        assert_payment_required(&result, &w);
    }
    assert_eq!(s.tools.runs.load(Ordering::SeqCst), 0);
    assert_eq!(w.balance(0).await, c(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_are_each_charged_only_for_their_own_calls() {
    let w = world(2, 100).await;
    let s = serve(&w).await;
    let (alice, bob) = (w.x402(0).await, w.x402(1).await);
    // Alice's session first, Bob's last: payments-py would charge Bob for Alice.
    let a = client(&s.url, &[("authorization", &format!("Bearer {alice}"))]).await;
    let b = client(&s.url, &[("authorization", &format!("Bearer {bob}"))]).await;
    for session in [&a, &b, &a, &a] {
        let result = session
            .call_tool(call("weather", json!({"city": "Rome"})))
            .await
            .unwrap();
        assert_charged_two(&result, &w);
    }
    assert_eq!(w.balance(0).await, c(94), "Alice: three calls");
    assert_eq!(w.balance(1).await, c(98), "Bob: one call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_a_retryable_error_not_payment_required() {
    let w = world(1, 100).await;
    let s = serve(&w).await;
    let token = w.x402(0).await;
    w.server.faults().set(Fault::new(VERIFY).status(503));
    let session = client(&s.url, &[]).await;
    let result = session
        .call_tool(paid_call("weather", json!({"city": "Rome"}), &token))
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(true));
    let body = result.structured_content.as_ref().unwrap();
    assert_eq!(body["error"], "backend_unavailable", "{body}");
    assert_eq!(body["retryable"], true);
    assert!(body.get("x402Version").is_none(), "not a PaymentRequired");
    assert_eq!(s.tools.runs.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_prompt_is_refused_with_a_402_error_and_served_when_paid() {
    let w = world(1, 100).await;
    let s = serve(&w).await;
    let token = w.x402(0).await;
    let session = client(&s.url, &[]).await;
    let refused = session
        .get_prompt(GetPromptRequestParams::new("greet"))
        .await
        .unwrap_err();
    let ServiceError::McpError(error) = refused else {
        panic!("a JSON-RPC error, got {refused:?}");
    };
    assert_eq!(error.code.0, 402);
    let data = error.data.expect("the PaymentRequired in data");
    assert_eq!(data["accepts"][0]["planId"], w.plan.to_string());
    assert_eq!(data["resource"]["url"], "mcp://weather-srv/tools/greet");
    assert_eq!(s.tools.runs.load(Ordering::SeqCst), 0);

    let mut meta = RequestMetaObject::default();
    meta.insert("x402/payment".to_owned(), payload(&token));
    let mut params = GetPromptRequestParams::new("greet");
    params.meta = Some(meta);
    let served = session.get_prompt(params).await.unwrap();
    assert_eq!(served.messages.len(), 1);
    let credits = &served.meta.as_ref().unwrap()["nevermined/credits"];
    assert_eq!(credits["creditsRedeemed"], "1");
    assert_eq!(w.balance(0).await, c(99));
}

/// The compiled example: `cargo test` builds examples next to the test binaries; when
/// only this test was asked for, build it.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = profile_dir.join("examples").join("mcp_server");
    if !path.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--example", "mcp_server"])
            .status()
            .expect("run cargo build --example mcp_server");
        assert!(status.success(), "cargo build --example mcp_server failed");
    }
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_mcp_client_pays_for_the_example_servers_tools() {
    let python = crate::support::python::python();
    let w = world(2, 100).await;
    let (alice, bob) = (w.x402(0).await, w.x402(1).await);
    let mut server = tokio::process::Command::new(example_binary())
        .env("NVM_API_KEY", w.owner.api_key.expose())
        .env("NVM_BACKEND_URL", w.server.base_url())
        .env("NVM_PLAN_ID", w.plan.to_string())
        .env("NVM_AGENT_ID", w.agent.to_string())
        .env("PORT", "0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start examples/mcp_server");
    let mut stdout = BufReader::new(server.stdout.take().unwrap());
    let url = announced(&mut stdout, "mcp server listening on ").await;

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/mcp_client.py");
    let mut command = std::process::Command::new(&python);
    command
        .arg(&script)
        .env("MCP_URL", &url)
        .env("NVM_PLAN_ID", w.plan.to_string())
        .env("TOKEN_A", &alice)
        .env("TOKEN_B", &bob)
        .env("PYTHONWARNINGS", "ignore");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("the script runs");
    let (out, err) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success(),
        "mcp_client.py failed ({}):\n--- stdout\n{out}\n--- stderr\n{err}",
        output.status
    );
    // Alice: in band, by header, then three calls interleaved with Bob's one.
    assert_eq!(w.balance(0).await, c(90), "{out}");
    assert_eq!(w.balance(1).await, c(98), "{out}");
    let spends = w.spends_by_request();
    assert_eq!(spends.len(), 6, "one spend per paid call");
    assert!(spends
        .values()
        .all(|s| s.len() == 1 && s[0].credits == Credits::from(2u64)));
}
