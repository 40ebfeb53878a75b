//! [`PaymentLayer`]: a `tower::Layer` that charges Nevermined plan credits for the
//! requests of any tower, hyper or axum service.
//!
//! For each request the layer
//!
//! 1. **extracts** the caller's credential, with no I/O: an x402 access token from the
//!    `payment-signature` header, or a legacy JWT from `Authorization: Bearer`;
//! 2. **authenticates** it: x402 tokens with the facilitator's `verify` (cached by a
//!    digest of the token; concurrent first requests with one token make one call),
//!    bearer tokens locally against the issuer's JWKS;
//! 3. **reserves** the credits against the caller's balance (cached; a local ledger
//!    counts charges and in-flight reservations, so N concurrent requests never spend
//!    more than the balance);
//! 4. runs the **handler** with a [`PaymentContext`] in the request extensions;
//! 5. **charges** the credits, with the request id as the idempotency key, exactly
//!    once and only when the handler succeeded (2xx by default).
//!
//! A refused request never reaches the inner service; it gets a JSON body
//! `{"error": code, "message": text}` with `Cache-Control: no-store`, and every 402
//! carries the `payment-required` header official x402 clients act on:
//!
//! | case | status | `error` |
//! |---|---|---|
//! | no credential | 402 | `payment_required` |
//! | credential not decodable / too large | 400 | `malformed_token` |
//! | forged, expired or revoked credential | 402 | `invalid_token` |
//! | plan not accepted / token for another agent | 402 (403 if configured) | `plan_not_accepted` / `wrong_agent` |
//! | not a subscriber / balance below the charge | 402 | `insufficient_balance` |
//! | backend unreachable, nothing cached to decide with; too many charges in flight with `PendingFull::Reject` | 503 + `Retry-After` | `backend_unavailable` |
//! | the plan can never be charged (e.g. it burns 0 credits) | 500 | `payment_misconfigured` |
//!
//! # Charging
//!
//! What is reserved and charged is what the plan really burns for the configured
//! credits (`plan.registry.credits.redemption_amount(credits)`, docs/wire-notes.md §3.4).
//! The handler can lower it by putting a [`ChargeOverride`] in the response extensions;
//! it is clamped by the plan and never exceeds what was reserved.
//!
//! [`ChargeTiming`] decides when:
//! - `BeforeResponse` (default): before the response head is returned, with the receipt
//!   in a `payment-response` header. If the backend refuses the charge the handler's
//!   response is still returned (the work is done), with the backend's refusal in
//!   `payment-response` (`success: false`) when it answered one, and the outcome is
//!   reported as `Failed` — except for a single-use token the backend says was already
//!   spent (`BCK.X402.0059`): that response is withheld and the caller gets 402.
//! - `OnBodyEnd`: when the body has delivered its last frame (streams and SSE pass
//!   through unbuffered). A client that goes away before the end is **not** charged.
//! - `Background`: on a task spawned as soon as the response head is ready.
//!
//! # Metered streams
//!
//! A route with a [`MeterRule`](crate::MeterRule) (`PaymentLayerBuilder::meter` or
//! `meter_route`) is charged by usage. At admission the layer reserves the most the
//! request may cost: the rule's cap, or the plan's maximum per request. The handler
//! counts units on [`PaymentContext::meter`] as it produces them (one atomic add), and
//! the body streams through unbuffered. When the body ends the layer charges what the
//! meter reached, priced by the rule and clamped to the plan's minimum and maximum and
//! to the reservation; the rest of the reservation is released at once, before the
//! charge is sent. Whatever [`ChargeTiming`] says:
//!
//! - a client that goes away mid-stream is charged for what was metered until then
//!   (unmetered `OnBodyEnd` streams are not charged at all); units added afterwards
//!   are not charged ([`Meter::is_closed`](crate::Meter::is_closed) tells the producer);
//! - a body that ends in an error is charged what was metered: its head passed the
//!   success rule (`success_when`), and the units were sent;
//! - nothing metered on a plan whose minimum is 0 charges nothing (settle would read 0
//!   as the maximum); otherwise the plan's minimum is the least charged;
//! - on a fixed-credits plan (min == max) the meter is ignored and the request is
//!   charged like an unmetered one: the backend burns the fixed amount whatever is asked;
//! - a [`ChargeOverride`] other than `ChargeOverride(Credits::ZERO)` (which waives the
//!   charge) is ignored: the meter decides.
//!
//! The receipt cannot go in the head of a stream. With `receipt_at_stream_end` the
//! stream ends with it (the end then waits for the charge): `text/event-stream`
//! responses get a last event `event: payment-response` whose data is the header's
//! value (base64 of the settle JSON), which browsers' `EventSource`
//! (`addEventListener("payment-response", …)`) and any SSE parser read; other responses
//! get an HTTP trailer `payment-response` (announced by `Trailer:`), sent over HTTP/2
//! and, by hyper, over HTTP/1.1 only to requests with `TE: trailers`; hyper and
//! `http-body` based clients read it, browsers' `fetch` and reqwest do not. No official
//! Nevermined SDK reads either today: they read the `payment-response` header only.
//!
//! Every charge ends in one [`SettleOutcome`](crate::settle::SettleOutcome)
//! (settled, failed, unknown), logged and given to the `on_settle` hook.
//!
//! Charges in flight are bounded (`PaymentLayerBuilder::pending_charges`, see
//! [`PendingFull`](crate::settle::PendingFull)); at shutdown,
//! [`PaymentLayer::drain`] waits for them and names by request id those it could not
//! finish. The guarantees and the tests that prove them are listed in
//! `docs/guarantees.md`.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{routing::post, Router};
//! use nvm_payments::{PaymentContext, PaymentLayer, PaymentOptions, Payments};
//! use tower::ServiceExt;
//!
//! # let key = "local:eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIweDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDEifQ.c2ln";
//! let payments = Payments::new(PaymentOptions::new(key).backend_url("http://127.0.0.1:3001"))?;
//! let payment = PaymentLayer::builder(payments)
//!     .plan_id("42".parse()?)
//!     .agent_id("7".parse()?)
//!     .credits(2u64)
//!     .build()?;
//!
//! async fn ask(payment: PaymentContext) -> String {
//!     format!("paid by {} (request {})", payment.subscriber(), payment.request_id())
//! }
//! let app = Router::new().route("/ask", post(ask)).layer(payment);
//!
//! // No credential: refused before the handler, without any backend call.
//! let request = http::Request::post("/ask").body(axum::body::Body::empty())?;
//! let response = app.oneshot(request).await?;
//! assert_eq!(response.status(), 402);
//! assert!(response.headers().contains_key("payment-required"));
//! # Ok(()) }
//! ```

mod body;
mod config;
mod context;
mod future;
mod gate;
#[allow(clippy::module_inception)]
mod layer;
mod receipt;
mod rejection;
mod route;
mod service;

#[cfg(feature = "mcp")]
pub(crate) use gate::{Admission, Gate};
#[cfg(feature = "mcp")]
pub(crate) use route::Route;

pub use crate::auth::Caller;
pub use crate::rejection::RejectionKind;
pub use body::PaymentBody;
pub use config::{BackendUnavailable, ChargeTiming, ChargeVia, ConfigError, PaymentLayerBuilder};
#[cfg(feature = "axum")]
pub use context::MissingPaymentContext;
pub use context::{ChargeOverride, PaymentContext};
pub use future::ResponseFuture;
pub use gate::CacheSizes;
pub use layer::PaymentLayer;
pub use rejection::{PAYMENT_REQUIRED, PAYMENT_RESPONSE};
pub use service::Payment;
