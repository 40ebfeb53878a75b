//! Paid vs free MCP tool calls per second on one rmcp server (streamable HTTP on
//! 127.0.0.1), rmcp's own client driving it.
//!
//! ```text
//! cargo bench --bench mcp
//! NVM_MCP_SECS=3 NVM_MCP_ROUNDS=3 NVM_MCP_CONCURRENCY=8 cargo bench --bench mcp
//! ```
//!
//! One process, one tokio runtime runs the server and `NVM_MCP_CONCURRENCY` client
//! sessions (one call in flight each). The server, wrapped by `McpPayments` over the
//! in-process charge sink of `tests/support/sink.rs` (warm caches; the charge of every
//! call is made and awaited before its answer), has two tools with the same body:
//!
//! - `echo`: free (the baseline; it is sent the same `_meta["x402/payment"]` as the
//!   paid calls, so both rows send the same bytes);
//! - `echo_receipt`: free, but answering with a canned copy of the paid answer's
//!   `_meta` receipts, so it moves the same bytes both ways as a paid call (the rmcp
//!   client's parsing of the bigger answer is then in both rows, and the difference is
//!   the paywall's work on the server);
//! - `weather`: 2 credits a call, paid in band.
//!
//! With `NVM_MCP_PYTHON=1` it then compares, on one embedded devserver (verify, balance
//! and every settle over HTTP), this crate's paywall with the official Python SDK's
//! built-in MCP server (payments-py 1.18 `PaymentsMCP`, `tests/py/mcp_sdk_server.py`,
//! from the venv of `tests/support/python.rs`) selling the same 2-credit `weather`
//! tool; both are called in band with the same token and a `Bearer` header (the Python
//! server answers 401 without one).
//!
//! After a warm-up pass the rows run interleaved, `free same-bytes paid ...`, for
//! `NVM_MCP_ROUNDS` rounds of `NVM_MCP_SECS` seconds each; the table gives every round
//! and the ratios of the same run.
//!
//! The table is made twice, once per client (`NVM_MCP_CLIENT=rmcp`, `=raw`, default
//! `rmcp,raw`):
//!
//! - `rmcp`: rmcp's own client, which decodes every answer. It decodes a result by
//!   trying the untagged `ServerResult`'s variants in turn (15 before `CallToolResult`),
//!   most of them building the result's `_meta` and dropping it: a paid answer's receipts cost
//!   this client ≈ 180 000 instructions, five times what they cost the server, and in
//!   this one process that client work is counted against the server.
//! - `raw`: a minimal client sending the same bytes as rmcp's (same headers and JSON,
//!   a new connection per call as rmcp's default client makes) and reading each answer
//!   to its end without decoding it, so its work does not depend on the answer: the
//!   ratios then are the server's (the paywall's and the bigger answer's cost).
//!
//! For profiles, `NVM_MCP_ONLY=echo|echo_receipt|weather` runs one row only (after its
//! own warm-up), and `NVM_MCP_CALLS=N` makes every session call N times instead of
//! for a time (its warm-up too: with `NVM_MCP_ONLY`, 2 × N calls per session), e.g.
//! for instructions per call over HTTP, server and client (the slope between two N):
//!
//! ```text
//! NVM_MCP_CLIENT=raw NVM_MCP_ONLY=weather NVM_MCP_CALLS=150 valgrind --tool=callgrind target/release/deps/mcp-<hash> --bench
//! ```
//!
//! In process, without the transport (its noise hides the paywall's cost):
//!
//! ```text
//! cargo bench --bench mcp -- handler --warm-up-time 1 --measurement-time 3
//! NVM_MCP_PROFILE=10000 valgrind --tool=callgrind target/release/deps/mcp-<hash>
//! ```
//!
//! `handler` runs criterion's `mcp_handler/{free,free_same_bytes,paid}`: one
//! `tools/call` through the `PaidHandler`'s `call_tool` on a current-thread runtime,
//! the answer then written as JSON (as the transport would); `NVM_MCP_PROFILE=N` makes
//! N warm paid calls the same way and nothing else, for instruction counts
//! (`NVM_MCP_PROFILE_TOOL=echo` for the free ones), then says how many times a warm
//! call of each tool was polled.
#![allow(unreachable_pub)] // helpers shared between test and bench binaries by path

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use nvm_payments::devserver::DevServer;
use nvm_payments::mcp::McpPayments;
use nvm_payments::types::{AgentApiAttributes, AgentMetadata, Endpoint, PlanMetadata};
use nvm_payments::{
    get_dynamic_credits_config, get_free_price_config, Credits, Environment, PaymentLayer,
};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ClientConfig, ContentBlock,
    MetaObject, RequestMetaObject, ServerCapabilities, ServerConfig,
};
use rmcp::service::{RequestContext, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ErrorData as McpError, RoleClient, RoleServer, ServerHandler, ServiceExt};
use serde_json::Value;

#[path = "../tests/support/python.rs"]
mod python;
#[path = "../tests/support/sink.rs"]
mod support;
use support::{agent, holder, plan, x402_token, Sink};

#[derive(Clone)]
struct Tools;

impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let mut result = CallToolResult::success(vec![ContentBlock::text("Weather in Rome: 22C")]);
        if request.name == "echo_receipt" {
            result.meta = Some(canned_receipts());
        }
        Ok(result.into())
    }
}

/// The `_meta` a paid call of this bench answers with (same keys, same lengths).
fn canned_receipts() -> MetaObject {
    let meta = serde_json::json!({
        "x402/payment-response": {"success": true, "payer": "0x0000000000000000000000000000000000000001",
            "transaction": "0x5e771e", "network": "eip155:84532", "creditsRedeemed": "2",
            "remainingBalance": "999999999999999998"},
        "nevermined/credits": {"txHash": "0x5e771e", "creditsRedeemed": "2",
            "remainingBalance": "999999999999999998", "planId": support::PLAN,
            "subscriberAddress": "0x0000000000000000000000000000000000000001", "success": true},
    });
    MetaObject(meta.as_object().cloned().unwrap_or_default())
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

async fn serve() -> (String, Arc<Sink>) {
    let sink = Sink::new();
    let layer = PaymentLayer::builder_with_backend(sink.clone(), Environment::Custom)
        .plan_id(plan())
        .agent_id(agent());
    let mcp = McpPayments::builder(layer)
        .server_name("bench")
        .tool("weather", 2u64)
        .build()
        .expect("a valid paywall");
    (serve_with(mcp).await, sink)
}

/// `Tools` behind `mcp` on 127.0.0.1:0; answers the MCP endpoint's URL.
async fn serve_with(mcp: McpPayments) -> String {
    let service = StreamableHttpService::new(
        move || Ok(mcp.wrap(Tools)),
        LocalSessionManager::default().into(),
        StreamableHttpServerConfig::default(),
    );
    let app = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

type Client = RunningService<RoleClient, ClientConfig>;

async fn sessions(url: &str, concurrency: u64, bearer: Option<&str>) -> Vec<Client> {
    let mut clients = Vec::new();
    for _ in 0..concurrency {
        let mut config = StreamableHttpClientTransportConfig::with_uri(url);
        if let Some(bearer) = bearer {
            config = config.auth_header(bearer);
        }
        let client = ClientConfig::default()
            .serve(StreamableHttpClientTransport::from_config(config))
            .await
            .expect("a client session");
        clients.push(client);
    }
    clients
}

/// `_meta` paying with `token` in band.
fn paying(token: &str) -> RequestMetaObject {
    let canonical = token
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_");
    let payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(canonical).expect("base64")).expect("JSON");
    let mut meta = RequestMetaObject::default();
    meta.insert("x402/payment".to_owned(), payload);
    meta
}

/// This crate's paywall and payments-py's built-in server on one devserver.
async fn versus_python(secs: u64, rounds: u64, concurrency: u64) {
    let python = python::python();
    // The built-in server needs the SDK's `fastapi` extra and uvicorn; only this bench
    // does, so they are added here rather than to every test's venv.
    let has_server = std::process::Command::new(&python)
        .args(["-c", "import fastapi, uvicorn"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_server {
        let installed = std::process::Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["payments-py[fastapi]~=1.18.0", "uvicorn"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(installed, "pip install payments-py[fastapi] uvicorn failed");
    }
    let server = DevServer::start().await.expect("devserver");
    let builder = server.create_account(Some("builder"));
    let owner = server.payments(&builder);
    let subscriber = server.payments(&server.create_account(Some("subscriber")));
    let registered = owner
        .agents()
        .register_agent_and_plan(
            AgentMetadata::named("bench agent"),
            AgentApiAttributes::with_endpoints(vec![Endpoint::new("POST", "http://127.0.0.1/mcp")]),
            PlanMetadata::named("bench plan"),
            get_free_price_config(),
            get_dynamic_credits_config(
                Credits::from(1_000_000_000u64),
                Credits::from(1u64),
                Credits::from(10u64),
            ),
        )
        .await
        .expect("register agent and plan");
    let (plan, agent) = (registered.data.plan_id, registered.data.agent_id);
    subscriber.plans().order_plan(&plan).await.expect("order");
    let token = subscriber
        .x402()
        .get_x402_access_token(&plan, Some(&agent))
        .await
        .expect("x402 token")
        .access_token;
    let meta = paying(token.expose());

    let layer = PaymentLayer::builder(owner)
        .plan_id(plan.clone())
        .agent_id(agent.clone());
    let mcp = McpPayments::builder(layer)
        .server_name("weather-mcp")
        .tool("weather", 2u64)
        .build()
        .expect("a valid paywall");
    let ours = serve_with(mcp).await;

    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/mcp_sdk_server.py");
    let mut child = tokio::process::Command::new(python)
        .arg(script)
        .env("NVM_API_KEY", builder.api_key.expose())
        .env("NVM_BACKEND_URL", server.base_url())
        .env("NVM_PLAN_ID", plan.to_string())
        .env("NVM_AGENT_ID", agent.to_string())
        .env("PYTHONWARNINGS", "ignore")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the payments-py server");
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut line)
        .await
        .expect("a line");
    let theirs = line
        .trim()
        .strip_prefix("listening ")
        .expect("listening <url>")
        .to_owned();
    // uvicorn logs every request to stdout: keep reading it, or it blocks.
    tokio::spawn(async move {
        let mut sink = tokio::io::sink();
        let _ = tokio::io::copy(&mut stdout, &mut sink).await;
    });

    let ours_clients = sessions(&ours, concurrency, Some("junk")).await;
    let their_clients = sessions(&theirs, concurrency, Some("junk")).await;
    run(&ours_clients, "weather", &meta, 1).await;
    run(&their_clients, "weather", &meta, 1).await;
    println!();
    println!("on one devserver (settle over HTTP), {concurrency} sessions, {secs} s per row");
    println!("round | nvm-payments mcp | payments-py PaymentsMCP | ours / theirs");
    let (mut ours_sum, mut theirs_sum) = (0.0, 0.0);
    for round in 1..=rounds {
        let a = run(&ours_clients, "weather", &meta, secs).await;
        let b = run(&their_clients, "weather", &meta, secs).await;
        ours_sum += a;
        theirs_sum += b;
        println!("{round:5} | {a:16.0} | {b:23.0} | {:.2}", a / b);
    }
    let n = rounds as f64;
    println!(
        "  all | {:16.0} | {:23.0} | {:.2}",
        ours_sum / n,
        theirs_sum / n,
        ours_sum / theirs_sum
    );
    let stats = server.stats();
    println!(
        "devserver calls: verify {}, settle {}",
        stats.get("POST /api/v1/x402/verify"),
        stats.get("POST /api/v1/x402/settle")
    );
    let _ = child.kill().await;
}

/// Calls `tool` from every session for `secs`; answers calls per second.
async fn run(clients: &[Client], tool: &'static str, meta: &RequestMetaObject, secs: u64) -> f64 {
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    // A fixed number of calls per session instead, for instruction counts.
    let fixed = env_or("NVM_MCP_CALLS", 0);
    let tasks = clients.iter().map(|client| {
        let peer = client.peer().clone();
        let mut params = CallToolRequestParams::new(tool);
        params.arguments = serde_json::json!({"city": "Rome"}).as_object().cloned();
        params.meta = Some(meta.clone());
        tokio::spawn(async move {
            let mut calls = 0u64;
            while if fixed > 0 {
                calls < fixed
            } else {
                Instant::now() < until
            } {
                let result = peer.call_tool(params.clone()).await.expect("a call");
                assert_ne!(result.is_error, Some(true), "{tool}: {result:?}");
                calls += 1;
            }
            calls
        })
    });
    let mut calls = 0;
    for task in tasks {
        calls += task.await.expect("a client task");
    }
    calls as f64 / started.elapsed().as_secs_f64()
}

/// A session of a minimal MCP client over raw HTTP/1.1: it sends the bytes rmcp's
/// client sends (same headers, same JSON, a new connection per call as rmcp's default
/// client makes) and reads each answer to its end without decoding its JSON, so its
/// work is the same for a free and a paid answer. rmcp's client decodes a result by
/// trying `ServerResult`'s untagged variants in turn, 15 of them before
/// `CallToolResult`, each building the result's `_meta` and dropping it: that client
/// work, not the server's, is most of what a paid answer's receipts cost the rmcp rows
/// (BENCHMARKS.md, "Paid MCP tool calls: where a paid call's time goes").
struct RawSession {
    addr: std::net::SocketAddr,
    head: String,
}

impl RawSession {
    /// Initializes a session on the server at `url` as rmcp's client does.
    async fn open(url: &str) -> RawSession {
        let addr: std::net::SocketAddr = url
            .trim_start_matches("http://")
            .trim_end_matches("/mcp")
            .parse()
            .expect("an address");
        let base = format!(
            "POST /mcp HTTP/1.1\r\naccept: text/event-stream, application/json\r\n\
             content-type: application/json\r\nhost: {addr}\r\n"
        );
        let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"capabilities":{},"clientInfo":{"name":"raw","version":"0"},"protocolVersion":"2025-11-25"}}"#;
        let answer = exchange(addr, &base, init).await;
        let session = answer
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("mcp-session-id")
                    .then(|| value.trim().to_owned())
            })
            .expect("an mcp-session-id");
        let head = format!(
            "POST /mcp HTTP/1.1\r\naccept: text/event-stream, application/json\r\n\
             mcp-protocol-version: 2025-11-25\r\nmcp-session-id: {session}\r\n\
             content-type: application/json\r\nhost: {addr}\r\n"
        );
        let answer = exchange(
            addr,
            &head,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
        RawSession { addr, head }
    }

    /// One `tools/call` of `tool` with `_meta` `meta`, answered (not an error).
    async fn call(&self, id: u64, tool: &str, meta: &RequestMetaObject) {
        let mut meta = meta.clone();
        meta.insert("progressToken".to_owned(), id.into());
        let body = serde_json::json!({"jsonrpc": "2.0", "id": id + 1, "method": "tools/call",
            "params": {"_meta": meta, "arguments": {"city": "Rome"}, "name": tool}});
        let answer = exchange(self.addr, &self.head, &body.to_string()).await;
        assert!(answer.contains(r#""isError":false"#), "{tool}: {answer}");
    }
}

/// One POST of `body` on a new connection; answers the whole response as text.
async fn exchange(addr: std::net::SocketAddr, head: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let request = format!("{head}content-length: {}\r\n\r\n{body}", body.len());
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.expect("read");
        answer.extend_from_slice(&buf[..n]);
        let done = n == 0
            || answer.ends_with(b"\r\n0\r\n\r\n")
            || (answer.starts_with(b"HTTP/1.1 202") && answer.ends_with(b"\r\n\r\n"));
        if done {
            break;
        }
    }
    String::from_utf8(answer).expect("UTF-8")
}

/// [`run`] with [`RawSession`]s.
async fn run_raw(
    sessions: &Arc<Vec<RawSession>>,
    tool: &'static str,
    meta: &RequestMetaObject,
    secs: u64,
) -> f64 {
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let fixed = env_or("NVM_MCP_CALLS", 0);
    let tasks = (0..sessions.len()).map(|i| {
        let sessions = sessions.clone();
        let meta = meta.clone();
        tokio::spawn(async move {
            let mut calls = 0u64;
            while if fixed > 0 {
                calls < fixed
            } else {
                Instant::now() < until
            } {
                sessions[i].call(calls, tool, &meta).await;
                calls += 1;
            }
            calls
        })
    });
    let mut calls = 0;
    for task in tasks {
        calls += task.await.expect("a client task");
    }
    calls as f64 / started.elapsed().as_secs_f64()
}

/// The sessions of one table: rmcp's client, or the raw one.
enum Clients {
    Rmcp(Vec<Client>),
    Raw(Arc<Vec<RawSession>>),
}

impl Clients {
    async fn run(&self, tool: &'static str, meta: &RequestMetaObject, secs: u64) -> f64 {
        match self {
            Clients::Rmcp(clients) => run(clients, tool, meta, secs).await,
            Clients::Raw(sessions) => run_raw(sessions, tool, meta, secs).await,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Clients::Rmcp(_) => "rmcp client (decodes every answer)",
            Clients::Raw(_) => "raw HTTP client (the same bytes, no decoding)",
        }
    }
}

/// The interleaved rows of one client kind (or the one row of `only`).
async fn table(
    clients: &Clients,
    only: Option<&str>,
    meta: &RequestMetaObject,
    secs: u64,
    rounds: u64,
    concurrency: u64,
) {
    // Warm-up: caches filled, code paths taken.
    for tool in ["echo", "echo_receipt", "weather"] {
        if only.is_none_or(|only| only == tool) {
            let rate = clients.run(tool, meta, 1).await;
            if only.is_some() {
                println!("warm-up {tool}: {rate:.0} calls/s, 1 s");
            }
        }
    }
    // One row only, for `strace -c`, `perf` or callgrind of one kind of call.
    if let Some(tool) = only {
        let tool: &'static str = match tool {
            "echo" => "echo",
            "echo_receipt" => "echo_receipt",
            _ => "weather",
        };
        let rate = clients.run(tool, meta, secs).await;
        println!(
            "{}: {tool}: {rate:.0} calls/s, {concurrency} sessions, {secs} s",
            clients.name()
        );
        return;
    }
    println!(
        "mcp tool calls/s, {}, {concurrency} sessions, {secs} s per row",
        clients.name()
    );
    println!(
        "round | free (echo) | free, same bytes | paid (weather) | paid / free | paid / same bytes"
    );
    let (mut free_sum, mut same_sum, mut paid_sum) = (0.0, 0.0, 0.0);
    for round in 1..=rounds {
        let free = clients.run("echo", meta, secs).await;
        let same = clients.run("echo_receipt", meta, secs).await;
        let paid = clients.run("weather", meta, secs).await;
        free_sum += free;
        same_sum += same;
        paid_sum += paid;
        println!(
            "{round:5} | {free:11.0} | {same:16.0} | {paid:14.0} | {:11.3} | {:.3}",
            paid / free,
            paid / same
        );
    }
    let n = rounds as f64;
    println!(
        "  all | {:11.0} | {:16.0} | {:14.0} | {:11.3} | {:.3}",
        free_sum / n,
        same_sum / n,
        paid_sum / n,
        paid_sum / free_sum,
        paid_sum / same_sum
    );
}

/// A `PaidHandler` called directly, with the peer of a session over an in-memory
/// pipe (a `RequestContext` needs one; nothing is sent through it).
struct Direct {
    handler: nvm_payments::mcp::PaidHandler<Tools>,
    peer: rmcp::Peer<RoleServer>,
    meta: RequestMetaObject,
    _sessions: (
        Client,
        RunningService<RoleServer, nvm_payments::mcp::PaidHandler<Tools>>,
    ),
}

impl Direct {
    async fn new() -> (Direct, Arc<Sink>) {
        let sink = Sink::new();
        let layer = PaymentLayer::builder_with_backend(sink.clone(), Environment::Custom)
            .plan_id(plan())
            .agent_id(agent());
        let mcp = McpPayments::builder(layer)
            .server_name("bench")
            .tool("weather", 2u64)
            .build()
            .expect("a valid paywall");
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let handler = mcp.wrap(Tools);
        let server = tokio::spawn(handler.clone().serve(ours));
        let client = ClientConfig::default()
            .serve(theirs)
            .await
            .expect("a client session");
        let server = server.await.expect("join").expect("a server session");
        let direct = Direct {
            handler,
            peer: server.peer().clone(),
            meta: paying(&x402_token(&holder(1), None)),
            _sessions: (client, server),
        };
        (direct, sink)
    }

    /// One call of `tool`, its answer written as JSON; answers the JSON's length.
    async fn call(&self, tool: &'static str) -> usize {
        let mut context =
            RequestContext::new(rmcp::model::NumberOrString::Number(1), self.peer.clone());
        context.meta = self.meta.clone();
        let mut params = CallToolRequestParams::new(tool);
        params.arguments = serde_json::json!({"city": "Rome"}).as_object().cloned();
        let response = self
            .handler
            .call_tool(params, context)
            .await
            .expect("a call");
        let CallToolResponse::Complete(result) = &response else {
            panic!("{tool}: not complete");
        };
        assert_ne!(result.is_error, Some(true), "{tool}: {result:?}");
        serde_json::to_vec(result).expect("JSON").len()
    }

    async fn calls(&self, tool: &'static str, n: u64) -> Duration {
        let started = Instant::now();
        for _ in 0..n {
            std::hint::black_box(self.call(tool).await);
        }
        started.elapsed()
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// criterion's `mcp_handler/{free,free_same_bytes,paid}`.
fn handler_bench() {
    let rt = current_thread();
    let (direct, sink) = rt.block_on(Direct::new());
    for tool in ["echo", "echo_receipt", "weather"] {
        rt.block_on(direct.call(tool));
    }
    let before = sink.calls.get();
    let mut criterion = criterion::Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("mcp_handler");
    for (id, tool) in [
        ("free", "echo"),
        ("free_same_bytes", "echo_receipt"),
        ("paid", "weather"),
    ] {
        group.bench_function(id, |b| {
            b.iter_custom(|n| rt.block_on(direct.calls(tool, n)))
        });
    }
    group.finish();
    let after = sink.calls.get();
    println!(
        "mcp_handler: after the warm-up, verify {}, balance {}, settle {} (one per paid call)",
        after[0] - before[0],
        after[1] - before[1],
        after[3] - before[3]
    );
    criterion.final_summary();
}

/// `n` warm calls and nothing else, for callgrind.
fn profile(n: u64) {
    let tool = match std::env::var("NVM_MCP_PROFILE_TOOL").as_deref() {
        Ok("echo") => "echo",
        _ => "weather",
    };
    let rt = current_thread();
    let (direct, _sink) = rt.block_on(Direct::new());
    rt.block_on(direct.call(tool));
    let elapsed = rt.block_on(direct.calls(tool, n));
    println!("{n} {tool} calls in {elapsed:?}");
    // Each extra poll is a trip through the scheduler, which costs far more on a busy
    // multi-threaded server than on this runtime.
    for tool in ["echo", "weather"] {
        let polls = rt.block_on(async {
            let mut call = std::pin::pin!(direct.call(tool));
            let mut polls = 0u32;
            std::future::poll_fn(|cx| {
                polls += 1;
                call.as_mut().poll(cx)
            })
            .await;
            polls
        });
        println!("a warm {tool} call: polled {polls} times");
    }
}

fn main() {
    if let Some(n) = std::env::var("NVM_MCP_PROFILE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        profile(n);
        return;
    }
    if std::env::args()
        .skip(1)
        .any(|a| a.starts_with("handler") || a.starts_with("mcp_handler"))
    {
        handler_bench();
        return;
    }
    let secs = env_or("NVM_MCP_SECS", 2);
    let rounds = env_or("NVM_MCP_ROUNDS", 3);
    let concurrency = env_or("NVM_MCP_CONCURRENCY", 8);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let (url, sink) = serve().await;
        let meta = paying(&x402_token(&holder(1), None));
        let kinds = std::env::var("NVM_MCP_CLIENT").unwrap_or_else(|_| "rmcp,raw".to_owned());
        let only = std::env::var("NVM_MCP_ONLY").ok();
        for kind in kinds.split(',') {
            let clients = match kind.trim() {
                "raw" => {
                    let mut raw = Vec::new();
                    for _ in 0..concurrency {
                        raw.push(RawSession::open(&url).await);
                    }
                    Clients::Raw(Arc::new(raw))
                }
                _ => Clients::Rmcp(sessions(&url, concurrency, None).await),
            };
            let settled_before = sink.calls.get()[3];
            table(&clients, only.as_deref(), &meta, secs, rounds, concurrency).await;
            let settles = sink.calls.get()[3] - settled_before;
            println!("settles made with this client: {settles} (one per paid call)");
            println!();
        }
        if std::env::var("NVM_MCP_PYTHON").is_ok_and(|v| v == "1") {
            versus_python(secs, rounds, concurrency).await;
        }
    });
}
