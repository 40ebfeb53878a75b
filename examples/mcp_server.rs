//! An MCP server selling one of its tools: streamable HTTP on `/mcp` (rmcp), the
//! `weather` tool (argument `city`) at 2 credits a call, the `echo` tool (argument
//! `text`) free, and a graceful shutdown that drains the charges.
//!
//! Configuration, all from the environment:
//!
//! | variable | meaning |
//! |---|---|
//! | `NVM_API_KEY` | the builder's API key (its prefix picks sandbox or live) |
//! | `NVM_BACKEND_URL` | backend URL for keys with another prefix (a devserver) |
//! | `NVM_PLAN_ID` | the plan (or comma-separated plans) that pays for `weather` |
//! | `NVM_AGENT_ID` | this agent's id |
//! | `PORT` | port on 127.0.0.1 (default 8080; `0` picks one) |
//!
//! ```sh
//! cargo run --features cli --bin nvm-payments -- dev-server &          # a local backend
//! NVM_API_KEY=local:… NVM_BACKEND_URL=http://127.0.0.1:3001 \
//!   NVM_PLAN_ID=… NVM_AGENT_ID=… cargo run --example mcp_server
//! ```
//!
//! rmcp's streamable HTTP server accepts loopback `Host`s only by default (DNS rebinding
//! protection): behind a public name, list it with
//! `StreamableHttpServerConfig::with_allowed_hosts`.
//!
//! A client pays in band, with the decoded x402 payment payload in the call's
//! `params._meta["x402/payment"]` (as the official SDKs' clients do), or with the
//! token in `Authorization: Bearer` or `payment-signature` of its HTTP request.

use std::error::Error;
use std::time::Duration;

use nvm_payments::mcp::McpPayments;
use nvm_payments::{AgentId, PaymentLayer, PaymentOptions, Payments, PlanId};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{schemars, tool, tool_handler, tool_router, ServerHandler};

/// How long charges in flight may take to end once the server has stopped.
const DRAIN: Duration = Duration::from_secs(10);

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct WeatherArgs {
    /// The city to report on.
    city: String,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    /// The text to send back.
    text: String,
}

/// The tools, written as for any rmcp server: payment is added around them.
#[derive(Clone)]
struct WeatherServer {
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl WeatherServer {
    fn new() -> Self {
        WeatherServer {
            tool_router: Self::tool_router(),
        }
    }

    #[tool(description = "Today's weather in a city (2 credits)")]
    fn weather(&self, Parameters(WeatherArgs { city }): Parameters<WeatherArgs>) -> String {
        format!("Weather in {city}: 22C, sunny")
    }

    #[tool(description = "Sends the text back (free)")]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        text
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for WeatherServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

fn env_var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set"))
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let payments = Payments::new(PaymentOptions::from_env()?)?;
    let plans = env_var("NVM_PLAN_ID")?
        .split(',')
        .map(|p| p.trim().parse::<PlanId>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("NVM_PLAN_ID: {e}"))?;
    let agent: AgentId = env_var("NVM_AGENT_ID")?
        .parse()
        .map_err(|e| format!("NVM_AGENT_ID: {e}"))?;
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p
            .trim()
            .parse()
            .map_err(|_| format!("PORT={p:?} is not valid"))?,
        Err(_) => 8080,
    };

    let layer = PaymentLayer::builder(payments)
        .plan_ids(plans)
        .agent_id(agent);
    let mcp = McpPayments::builder(layer)
        .server_name("weather-mcp")
        .tool("weather", 2u64)
        .build()?;

    let config = StreamableHttpServerConfig::default();
    let stop_sessions = config.cancellation_token.clone();
    let paid = mcp.clone();
    // One handler per session, every one on the same paywall (caches, balances, charges).
    let service = StreamableHttpService::new(
        move || Ok(paid.wrap(WeatherServer::new())),
        LocalSessionManager::default().into(),
        config,
    );
    let app = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "mcp server listening on http://{}/mcp",
        listener.local_addr()?
    );

    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            println!("shutting down: no new calls, draining the charges in flight");
            // Ends the sessions' open streams, so the server can stop.
            stop_sessions.cancel();
        })
        .await?;
    // Charges run before each answer; drain any whose caller hung up mid-charge.
    let report = mcp.drain(DRAIN).await;
    println!(
        "stopped: {} charges finished while draining, {} unfinished",
        report.settled + report.failed + report.unknown,
        report.unfinished.len()
    );
    for request_id in &report.unfinished {
        println!("unfinished charge: reconcile request {request_id}");
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
