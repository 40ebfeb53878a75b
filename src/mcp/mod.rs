//! Paid MCP tools (feature `mcp`): [`McpPayments`] charges for the tools, prompts and
//! resources of an [rmcp](https://docs.rs/rmcp) server, wire-compatible with the
//! official Nevermined SDKs' MCP servers (payments-py 1.18, payments 1.11).
//!
//! It runs the layer's steps on each paid call, with the layer's machinery (credential
//! decoding, verification cache, balance reservations, charge-once settlement,
//! outcomes, drain):
//!
//! 1. the **credential** of this call: `params._meta["x402/payment"]` (the decoded
//!    payment payload, as the SDKs' clients send it), then the HTTP request's
//!    `Authorization: Bearer`, then its `payment-signature` — never another
//!    session's. No `Authorization` header is demanded from a client that pays in band;
//! 2. **verified** with the facilitator for the real price and the logical URL
//!    `mcp://{server}/tools/{name}` (cached like the layer's verifications);
//! 3. the price **reserved** on the payer's balance;
//! 4. the tool **runs**, with the [`PaymentContext`](crate::PaymentContext) in its
//!    request context's `extensions`;
//! 5. **charged** once, with the request id, before the answer is sent: the result
//!    carries `_meta["x402/payment-response"]` (the settle receipt) and
//!    `_meta["nevermined/credits"]`. A tool that fails (`isError: true` or an error)
//!    is not charged; a charge that does not settle withholds the result.
//!
//! Only a complete answer is charged. An "input required" round of a multi-round
//! request is served uncharged: the client asks again with the same request (and
//! `_meta` payment), and the round that completes is charged once. A paid tool that
//! answers with a task is refused (an internal error) and not charged: its result
//! would be fetched with `tasks/get`, which is not paid for.
//!
//! A refused `tools/call` is a result with `isError: true`: the `PaymentRequired`
//! (`error: "payment required"` or `"settlement failed"`) as `structuredContent` and as
//! the first text, as the SDKs send it, then the x402 MCP transport spec's
//! `{"x402/error": {"code": 402, "message", "data"}}` as a second text. A backend
//! outage is not "payment required": its `structuredContent` is
//! `{"error": "backend_unavailable", "retryable": true, "retryAfterSeconds"}`.
//! `prompts/get` and `resources/read` refusals are JSON-RPC errors with code 402 and
//! the `PaymentRequired` in `data`.
//!
//! # Example
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use nvm_payments::mcp::{McpPayments, Price};
//! use nvm_payments::{Credits, PaymentLayer, PaymentOptions, Payments};
//! use rmcp::ServerHandler;
//!
//! # let key = "local:eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIweDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDEifQ.c2ln";
//! let payments = Payments::new(PaymentOptions::new(key).backend_url("http://127.0.0.1:3001"))?;
//! let layer = PaymentLayer::builder(payments).plan_id("42".parse()?).agent_id("7".parse()?);
//! let mcp = McpPayments::builder(layer)
//!     .server_name("weather-srv")
//!     .tool("weather", 2u64) // 2 credits a call; unpriced tools stay free
//!     .tool("forecast", Price::from_result(10u64, |_, result| Credits::from(result.content.len() as u64)))
//!     .build()?;
//! assert_eq!(mcp.tool_url("weather"), "mcp://weather-srv/tools/weather");
//!
//! #[derive(Clone)]
//! struct Weather;
//! impl ServerHandler for Weather {}
//! // Serve `mcp.wrap(Weather)` as any handler, e.g. with rmcp's StreamableHttpService:
//! // StreamableHttpService::new(move || Ok(mcp.wrap(Weather)), sessions, config)
//! let _paid = mcp.wrap(Weather);
//! # Ok(()) }
//! ```
//!
//! `examples/mcp_server.rs` is a complete server (streamable HTTP on `/mcp`, graceful
//! shutdown draining the charges).

mod config;
mod credential;
mod handler;
mod paywall;
mod price;
mod reply;

pub use config::McpPaymentsBuilder;
pub use handler::PaidHandler;
pub use paywall::McpPayments;
pub use price::Price;
