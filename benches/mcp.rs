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
//! After a warm-up pass the rows run interleaved, `free same-bytes paid ...`, for
//! `NVM_MCP_ROUNDS` rounds of `NVM_MCP_SECS` seconds each; the table gives every round
//! and the ratios of the same run.
#![allow(unreachable_pub)] // helpers shared between test and bench binaries by path

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use nvm_payments::mcp::McpPayments;
use nvm_payments::{Environment, PaymentLayer};
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
    let service = StreamableHttpService::new(
        move || Ok(mcp.wrap(Tools)),
        LocalSessionManager::default().into(),
        StreamableHttpServerConfig::default(),
    );
    let app = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, sink)
}

type Client = RunningService<RoleClient, ClientConfig>;

/// Calls `tool` from every session for `secs`; answers calls per second.
async fn run(clients: &[Client], tool: &'static str, meta: &RequestMetaObject, secs: u64) -> f64 {
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let tasks = clients.iter().map(|client| {
        let peer = client.peer().clone();
        let mut params = CallToolRequestParams::new(tool);
        params.arguments = serde_json::json!({"city": "Rome"}).as_object().cloned();
        params.meta = Some(meta.clone());
        tokio::spawn(async move {
            let mut calls = 0u64;
            while Instant::now() < until {
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

fn main() {
    let secs = env_or("NVM_MCP_SECS", 2);
    let rounds = env_or("NVM_MCP_ROUNDS", 3);
    let concurrency = env_or("NVM_MCP_CONCURRENCY", 8);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let (url, sink) = serve().await;
        let token = x402_token(&holder(1), None);
        let payload: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')).unwrap())
                .unwrap();
        let mut meta = RequestMetaObject::default();
        meta.insert("x402/payment".to_owned(), payload);
        let mut clients = Vec::new();
        for _ in 0..concurrency {
            let config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
            let client = ClientConfig::default()
                .serve(StreamableHttpClientTransport::from_config(config))
                .await
                .expect("a client session");
            clients.push(client);
        }
        // Warm-up: caches filled, connections open.
        for tool in ["echo", "echo_receipt", "weather"] {
            run(&clients, tool, &meta, 1).await;
        }
        let settled_before = sink.calls.get()[3];

        println!("mcp tool calls/s, {concurrency} sessions, {secs} s per row");
        println!("round | free (echo) | free, same bytes | paid (weather) | paid / free | paid / same bytes");
        let (mut free_sum, mut same_sum, mut paid_sum) = (0.0, 0.0, 0.0);
        for round in 1..=rounds {
            let free = run(&clients, "echo", &meta, secs).await;
            let same = run(&clients, "echo_receipt", &meta, secs).await;
            let paid = run(&clients, "weather", &meta, secs).await;
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
        let settles = sink.calls.get()[3] - settled_before;
        println!("settles made after the warm-up: {settles} (one per paid call)");
    });
}
