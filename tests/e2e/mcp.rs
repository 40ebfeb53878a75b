//! Paid MCP tools, prompts and resources (`nvm_payments::mcp`) end to end against the
//! devserver: rmcp's own client against an rmcp server wrapped by `McpPayments` (and
//! the wrapped handler called directly for "input required" rounds), the official
//! Python `mcp` client (PyPI) against `examples/mcp_server.rs` run as a process, and
//! that process shut down with SIGTERM while a charge is held at the backend.

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
    CreateTaskResult, GetPromptRequestParams, GetPromptResponse, GetPromptResult,
    InputRequiredResult, JsonObject, ListToolsResult, PaginatedRequestParams, PromptMessage,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, RequestMetaObject,
    ResourceContents, Role, ServerCapabilities, ServerConfig, Task, TaskStatus, Tool,
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

/// Items that count their runs. Tools: `weather` (2 credits), `echo` (free), `fail`
/// (2 credits, answers `isError`), `deferred` (2 credits, answers a task). Prompts:
/// `greet` (1), `broken` (1, an error), `interview` (1, asks for input once).
/// Resources: `data://report` (3), `data://broken` (3, an error), `data://interview`
/// (3, asks for input once), `data://free` (free).
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
                .enable_resources()
                .build(),
        )
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        match (&*request.name, request.request_state.as_deref()) {
            ("broken", _) => Err(McpError::internal_error("the prompt broke", None)),
            ("interview", None) => Ok(ask_for_input()),
            _ => {
                let message = PromptMessage::new_text(Role::User, "Say hello");
                Ok(GetPromptResult::new(vec![message]).into())
            }
        }
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        match (&*request.uri, request.request_state.as_deref()) {
            ("data://broken", _) => Err(McpError::resource_not_found("no such report", None)),
            ("data://interview", None) => Ok(ask_for_input()),
            (uri, _) => {
                let contents = ResourceContents::text("the report", uri);
                Ok(ReadResourceResult::new(vec![contents]).into())
            }
        }
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
            "deferred" => {
                let task = Task::new(
                    "t-1",
                    TaskStatus::Working,
                    "2026-12-01T00:00:00Z",
                    "2026-12-01T00:00:00Z",
                );
                return Ok(CallToolResponse::Task(CreateTaskResult::new(task)));
            }
            _ => return Err(McpError::invalid_params("unknown tool", None)),
        };
        Ok(result.into())
    }
}

/// An "input required" round (MCP multi-round requests) asking to be called again
/// with its request state.
fn ask_for_input<R: From<InputRequiredResult>>() -> R {
    InputRequiredResult::new(None, Some("round-2".to_owned())).into()
}

/// An MCP server on 127.0.0.1:0 selling the items of [`Tools`].
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
        .tool("deferred", 2u64)
        .prompt("greet", 1u64)
        .prompt("broken", 1u64)
        .prompt("interview", 1u64)
        .resource("data://report", 3u64)
        .resource("data://broken", 3u64)
        .resource("data://interview", 3u64)
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
/// Calls `weather` without paying: refused with the plan's `PaymentRequired`, and the
/// tool does not run.
async fn assert_unpaid_call_refused(client: &Client, s: &Server, w: &World) {
    let runs = s.tools.runs.load(Ordering::SeqCst);
    let result = client
        .call_tool(call("weather", json!({"city": "Rome"})))
        .await
        .unwrap();
    assert_payment_required(&result, w);
    assert_eq!(
        s.tools.runs.load(Ordering::SeqCst),
        runs,
        "the tool did not run"
    );
}

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

    assert_unpaid_call_refused(&anonymous, &s, &w).await;
    assert_eq!(s.tools.runs.load(Ordering::SeqCst), 0);
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

    // The paywall reuses the request heads that carry credentials to its gate: one
    // that carried a paid call's token must carry nothing into the next call.
    assert_unpaid_call_refused(&anonymous, &s, &w).await;
    assert_eq!(w.balance(0).await, c(94), "nothing charged");
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

/// The in-band credential cache picks a payload's slot by its signature alone: a
/// payload with a paying caller's signature but other content (here another plan) must
/// still be encoded as itself and refused, never served with the cached credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_reusing_a_cached_signature_is_not_taken_for_the_cached_one() {
    let w = world(1, 100).await;
    let s = serve(&w).await;
    let token = w.x402(0).await;
    let mut other = payload(&token);
    other["accepted"]["planId"] = json!("123456789");
    let other = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).unwrap());
    let session = client(&s.url, &[]).await;
    let weather = |token: &str| paid_call("weather", json!({"city": "Rome"}), token);
    assert_charged_two(&session.call_tool(weather(&token)).await.unwrap(), &w);
    let refused = session.call_tool(weather(&other)).await.unwrap();
    assert_payment_required(&refused, &w);
    assert_charged_two(&session.call_tool(weather(&token)).await.unwrap(), &w);
    assert_eq!(s.tools.runs.load(Ordering::SeqCst), 2);
    assert_eq!(w.balance(0).await, c(96));
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

/// `_meta` paying in band with `token`.
fn paying(token: &str) -> RequestMetaObject {
    let mut meta = RequestMetaObject::default();
    meta.insert("x402/payment".to_owned(), payload(token));
    meta
}

fn resource(uri: &str, token: Option<&str>) -> ReadResourceRequestParams {
    let mut params = ReadResourceRequestParams::new(uri);
    params.meta = token.map(paying);
    params
}

fn prompt(name: &str, token: Option<&str>) -> GetPromptRequestParams {
    let mut params = GetPromptRequestParams::new(name);
    params.meta = token.map(paying);
    params
}

/// The JSON-RPC error of a refused or failed call.
fn mcp_error(error: ServiceError) -> McpError {
    match error {
        ServiceError::McpError(error) => error,
        other => panic!("a JSON-RPC error, got {other:?}"),
    }
}

/// The spends the ledger made, as `(request id, credits)`, one entry per spend.
fn spends(w: &World) -> Vec<(String, Credits)> {
    let mut all: Vec<_> = w
        .spends_by_request()
        .into_iter()
        .flat_map(|(id, spends)| spends.into_iter().map(move |s| (id.clone(), s.credits)))
        .collect();
    all.sort();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_resource_is_refused_unpaid_then_served_and_charged_once() {
    let w = world(1, 100).await;
    let s = serve(&w).await;
    let token = w.x402(0).await;
    let session = client(&s.url, &[]).await;

    let refused = mcp_error(
        session
            .read_resource(resource("data://report", None))
            .await
            .unwrap_err(),
    );
    assert_eq!(refused.code.0, 402);
    let data = refused.data.expect("the PaymentRequired in data");
    assert_eq!(data["error"], "payment required");
    assert_eq!(data["accepts"][0]["planId"], w.plan.to_string());
    assert_eq!(
        data["resource"]["url"],
        "mcp://weather-srv/resources/data://report"
    );
    assert_eq!(s.tools.runs.load(Ordering::SeqCst), 0, "not read unpaid");

    let free = session
        .read_resource(resource("data://free", None))
        .await
        .unwrap();
    assert_eq!(free.meta, None, "an unpriced resource passes through");

    let served = session
        .read_resource(resource("data://report", Some(&token)))
        .await
        .unwrap();
    assert_eq!(served.contents.len(), 1);
    let meta = served.meta.as_ref().expect("the receipts in _meta");
    assert_eq!(meta["x402/payment-response"]["success"], true);
    assert_eq!(meta["x402/payment-response"]["creditsRedeemed"], "3");
    assert_eq!(meta["nevermined/credits"]["creditsRedeemed"], "3");
    assert_eq!(w.balance(0).await, c(97));
    let spends = spends(&w);
    assert_eq!(spends.len(), 1, "charged once: {spends:?}");
    assert_eq!(spends[0].1, c(3), "the resource's price");
    let outcomes = s.outcomes.lock().unwrap().clone();
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].status, SettleStatus::Settled);
    assert_eq!(
        outcomes[0].request_id, spends[0].0,
        "settled with its request id"
    );
    assert_eq!(s.mcp.pending_charges(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_prompt_or_resource_that_errors_is_not_charged() {
    // 3 credits: a reservation left behind by the failures would refuse the last read.
    let w = world(1, 3).await;
    let s = serve(&w).await;
    let token = w.x402(0).await;
    let session = client(&s.url, &[]).await;

    let prompt_error = mcp_error(
        session
            .get_prompt(prompt("broken", Some(&token)))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        prompt_error.message, "the prompt broke",
        "the prompt's own error"
    );
    let resource_error = mcp_error(
        session
            .read_resource(resource("data://broken", Some(&token)))
            .await
            .unwrap_err(),
    );
    assert_eq!(resource_error.message, "no such report");
    assert_eq!(s.tools.runs.load(Ordering::SeqCst), 2, "both ran");
    assert_eq!(w.server.stats().get(&format!("POST {SETTLE}")), 0);
    assert!(s.outcomes.lock().unwrap().is_empty());
    assert_eq!(w.balance(0).await, c(3));

    let served = session
        .read_resource(resource("data://report", Some(&token)))
        .await
        .unwrap();
    assert_eq!(
        served.meta.unwrap()["nevermined/credits"]["creditsRedeemed"],
        "3"
    );
    assert_eq!(w.balance(0).await, c(0), "the reservations were released");
}

/// `handler` called directly, as the server calls it, with `_meta` paying with
/// `token`: rmcp's transports send "input required" rounds only on protocol
/// 2026-07-28 sessions, which its streamable-HTTP client does not open yet.
struct Direct<H: ServerHandler> {
    handler: H,
    peer: rmcp::Peer<RoleServer>,
    _sessions: (Client, RunningService<RoleServer, H>),
}

impl<H: ServerHandler + Clone> Direct<H> {
    async fn new(handler: H) -> Self {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(handler.clone().serve(ours));
        let client = ClientConfig::default().serve(theirs).await.unwrap();
        let server = server.await.unwrap().unwrap();
        Direct {
            handler,
            peer: server.peer().clone(),
            _sessions: (client, server),
        }
    }

    fn context(&self, token: &str) -> RequestContext<RoleServer> {
        let mut context =
            RequestContext::new(rmcp::model::NumberOrString::Number(7), self.peer.clone());
        context.meta = paying(token);
        context
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_round_is_not_charged_and_the_round_that_completes_is_charged_once() {
    let w = world(1, 100).await;
    let s = serve(&w).await;
    let token = w.x402(0).await;
    let direct = Direct::new(s.mcp.wrap(s.tools.clone())).await;

    // Each round is a request of its own, paid in band (rmcp's client repeats the
    // request's `_meta` when it asks again): only the complete answer is charged.
    let first = direct
        .handler
        .read_resource(
            ReadResourceRequestParams::new("data://interview"),
            direct.context(&token),
        )
        .await
        .unwrap();
    let ReadResourceResponse::InputRequired(round) = first else {
        panic!("an input round, got {first:?}");
    };
    assert_eq!(round.meta, None, "no receipt: nothing charged");
    assert_eq!(w.balance(0).await, c(100));
    assert_eq!(s.mcp.pending_charges(), 0);
    let mut again = ReadResourceRequestParams::new("data://interview");
    again.request_state = round.request_state;
    let done = direct
        .handler
        .read_resource(again, direct.context(&token))
        .await
        .unwrap();
    let ReadResourceResponse::Complete(done) = done else {
        panic!("the complete answer, got {done:?}");
    };
    assert_eq!(
        done.meta.unwrap()["nevermined/credits"]["creditsRedeemed"],
        "3"
    );

    let first = direct
        .handler
        .get_prompt(
            GetPromptRequestParams::new("interview"),
            direct.context(&token),
        )
        .await
        .unwrap();
    let GetPromptResponse::InputRequired(round) = first else {
        panic!("an input round, got {first:?}");
    };
    let mut again = GetPromptRequestParams::new("interview");
    again.request_state = round.request_state;
    let done = direct
        .handler
        .get_prompt(again, direct.context(&token))
        .await
        .unwrap();
    let GetPromptResponse::Complete(done) = done else {
        panic!("the complete answer, got {done:?}");
    };
    assert_eq!(
        done.meta.unwrap()["nevermined/credits"]["creditsRedeemed"],
        "1"
    );

    assert_eq!(s.tools.runs.load(Ordering::SeqCst), 4, "two rounds each");
    assert_eq!(w.balance(0).await, c(96), "3 + 1 credits");
    let mut credits: Vec<_> = spends(&w).into_iter().map(|(_, c)| c).collect();
    credits.sort();
    assert_eq!(credits, [c(1), c(3)], "one spend per completed item");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_tool_answering_a_task_is_refused_and_not_charged() {
    // Its result would come through `tasks/get`, which nobody pays for.
    let w = world(1, 2).await;
    let s = serve(&w).await;
    let token = w.x402(0).await;
    let session = client(&s.url, &[]).await;
    let refused = session
        .peer()
        .call_tool_once(paid_call("deferred", json!({}), &token))
        .await
        .unwrap_err();
    let error = mcp_error(refused);
    assert!(error.message.contains("refused, not charged"), "{error:?}");
    assert_eq!(s.tools.runs.load(Ordering::SeqCst), 1);
    assert_eq!(w.server.stats().get(&format!("POST {SETTLE}")), 0);
    // The 2 credits reserved for it were released.
    let served = session
        .call_tool(paid_call("weather", json!({"city": "Rome"}), &token))
        .await
        .unwrap();
    assert_charged_two(&served, &w);
    assert_eq!(w.balance(0).await, c(0));
}

/// The devserver's routes (same ledger) behind a front that holds every settle before
/// it reaches the ledger until `release` is set; `held` says when one is held, and
/// `answered` is set once the ledger has made a settle and before its reply leaves.
struct HoldingFront {
    url: String,
    held: tokio::sync::mpsc::UnboundedReceiver<()>,
    release: tokio::sync::watch::Sender<bool>,
    answered: Arc<std::sync::atomic::AtomicBool>,
}

async fn holding_front(w: &World) -> HoldingFront {
    let (held_tx, held) = tokio::sync::mpsc::unbounded_channel();
    let (release, released) = tokio::sync::watch::channel(false);
    let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = answered.clone();
    let hold = move |request: axum::extract::Request, next: axum::middleware::Next| {
        let (held, mut released, done) = (held_tx.clone(), released.clone(), done.clone());
        async move {
            if request.uri().path() != SETTLE {
                return next.run(request).await;
            }
            let _ = held.send(());
            let _ = released.wait_for(|go| *go).await;
            let response = next.run(request).await;
            done.store(true, Ordering::SeqCst);
            response
        }
    };
    let app = nvm_payments::devserver::DevServer::router(w.server.state().clone())
        .layer(axum::middleware::from_fn(hold));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    HoldingFront {
        url,
        held,
        release,
        answered,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_server_drains_a_charge_in_flight_on_sigterm_before_exiting() {
    let w = world(1, 100).await;
    let token = w.x402(0).await;
    let mut front = holding_front(&w).await;
    let mut server = tokio::process::Command::new(example_binary())
        .env("NVM_API_KEY", w.owner.api_key.expose())
        .env("NVM_BACKEND_URL", &front.url)
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

    // A paid call whose charge reaches the backend and is held there.
    let session = client(&url, &[]).await;
    let peer = session.peer().clone();
    let call = tokio::spawn(async move {
        peer.call_tool(paid_call("weather", json!({"city": "Rome"}), &token))
            .await
    });
    front
        .held
        .recv()
        .await
        .expect("the charge reaches the backend");

    let pid = server.id().expect("the server's pid").to_string();
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(signalled.success());
    // Its logs share stdout: read up to its own line.
    let mut line = String::new();
    while !line.starts_with("shutting down") {
        line.clear();
        let read = tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut line)
            .await
            .unwrap();
        assert_ne!(read, 0, "the server said it was shutting down");
    }
    // The exit is watched from now on: it must come only after the ledger made the charge.
    let answered = front.answered.clone();
    let mut exit = tokio::spawn(async move {
        let status = server.wait().await.expect("wait for the server");
        (status, answered.load(Ordering::SeqCst))
    });
    // Not a time assertion: an exit before the release would be the bug; the wait
    // only gives a wrong example the chance to show it.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut exit)
            .await
            .is_err(),
        "the server exited with its charge still held"
    );
    front.release.send_replace(true);

    let (status, charged_before_exit) = exit.await.unwrap();
    assert!(status.success(), "the server exits cleanly: {status}");
    assert!(charged_before_exit, "the server waited for its charge");
    let mut rest = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut rest)
        .await
        .unwrap();
    assert!(rest.contains(" 0 unfinished"), "{rest}");
    let spends = spends(&w);
    assert_eq!(spends.len(), 1, "charged exactly once: {spends:?}");
    assert_eq!(spends[0].1, c(2));
    assert_eq!(w.balance(0).await, c(98));
    // The call may or may not have got its answer before the sessions closed (rmcp's
    // client may wait for a reconnection): either way it was charged once.
    call.abort();
}
