//! [`McpPayments`]: the prices of an MCP server's items and the steps of one paid call
//! on the layer's gate (credential → authentication → balance → tool → charge).

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::request::Parts;
use http::Method;
use rmcp::model::{JsonObject, RequestMetaObject};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler};

use super::config::McpPaymentsBuilder;
use super::credential::{
    call_credential, credential_head, logical_url, EncodedPayments, META_PAYMENT, PAYMENT_SIGNATURE,
};
use super::handler::PaidHandler;
use super::price::Price;
use super::reply::{receipts, Refusal};
use crate::hashing::HashMap;
use crate::layer::{Admission, Gate, PaymentLayerBuilder, Route};
use crate::rejection::Rejection;
use crate::settle::DrainReport;
use crate::types::Credits;

/// Paid tools, prompts and resources for an [rmcp](https://docs.rs/rmcp) server.
///
/// Build it from a [`PaymentLayerBuilder`] (plans, agent, caches, retries, `on_settle`:
/// every layer option applies), declare the prices, and [`wrap`](Self::wrap) the
/// server's handler. Cheap to clone: clones share one gate (caches, balances, charges
/// in flight), so wrap each session's handler with the same `McpPayments`.
/// See the [module docs](super) for an example.
#[derive(Clone)]
pub struct McpPayments {
    pub(crate) paywall: Arc<Paywall>,
}

pub(crate) struct Paywall {
    gate: Gate,
    server_name: String,
    tools: HashMap<String, Priced<Price>>,
    prompts: HashMap<String, Priced<Credits>>,
    resources: HashMap<String, Priced<Credits>>,
    /// In-band payments already encoded.
    encoded: EncodedPayments,
    /// Request heads that carry a call's credential to the gate, reused: a new one
    /// allocated its header table on every paid call. None holds a credential.
    heads: Mutex<Vec<Parts>>,
}

/// Heads kept for reuse: one per call in flight at once, up to this many.
const KEPT_HEADS: usize = 64;

/// The price of a paid item and the logical URL it is verified and settled for,
/// written once when the paywall is built rather than on every call.
pub(crate) struct Priced<P> {
    pub(crate) price: P,
    pub(crate) url: String,
}

impl<P> Priced<P> {
    fn table(
        items: std::collections::HashMap<String, P>,
        server: &str,
        segment: &str,
    ) -> HashMap<String, Self> {
        items
            .into_iter()
            .map(|(name, price)| {
                let url = logical_url(server, segment, &name);
                (name, Priced { price, url })
            })
            .collect()
    }
}

/// An admitted call: charged by [`Paywall::settle`], released when dropped.
pub(crate) struct Ticket {
    admission: Admission,
    route: Arc<Route>,
}

impl McpPayments {
    /// Starts a configuration on `layer` (its plans, agent and every other option).
    pub fn builder(layer: PaymentLayerBuilder) -> McpPaymentsBuilder {
        McpPaymentsBuilder::new(layer)
    }

    pub(crate) fn from_parts(
        gate: Gate,
        server_name: String,
        tools: std::collections::HashMap<String, Price>,
        prompts: std::collections::HashMap<String, Credits>,
        resources: std::collections::HashMap<String, Credits>,
    ) -> Self {
        McpPayments {
            paywall: Arc::new(Paywall {
                gate,
                // Prompts use the `tools` segment too, as payments-py builds it.
                tools: Priced::table(tools, &server_name, "tools"),
                prompts: Priced::table(prompts, &server_name, "tools"),
                resources: Priced::table(resources, &server_name, "resources"),
                server_name,
                encoded: EncodedPayments::default(),
                heads: Mutex::new(Vec::new()),
            }),
        }
    }

    /// `handler` with its priced tools, prompts and resources paid for; everything
    /// else (initialize, lists, free tools) passes through unchanged.
    pub fn wrap<H: ServerHandler>(&self, handler: H) -> PaidHandler<H> {
        PaidHandler::new(handler, self.clone())
    }

    /// The logical URL a tool is verified and settled for: `mcp://{server}/tools/{name}`.
    pub fn tool_url(&self, name: &str) -> String {
        logical_url(&self.paywall.server_name, "tools", name)
    }

    /// Waits until every charge in flight has ended or `timeout` has passed (see
    /// [`PaymentLayer::drain`](crate::PaymentLayer::drain)). Call it at shutdown, once
    /// the server has stopped taking requests.
    pub async fn drain(&self, timeout: Duration) -> DrainReport {
        self.paywall.gate.pending.drain(timeout).await
    }

    /// Charges in flight now.
    pub fn pending_charges(&self) -> usize {
        self.paywall.gate.pending.len()
    }
}

impl fmt::Debug for McpPayments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut tools: Vec<_> = self.paywall.tools.keys().collect();
        tools.sort();
        f.debug_struct("McpPayments")
            .field("server_name", &self.paywall.server_name)
            .field("plan_ids", &self.paywall.gate.config.plan_ids)
            .field("tools", &tools)
            .finish_non_exhaustive()
    }
}

impl Paywall {
    pub(crate) fn tool_price(&self, name: &str) -> Option<&Priced<Price>> {
        self.tools.get(name)
    }

    pub(crate) fn prompt_price(&self, name: &str) -> Option<&Priced<Credits>> {
        self.prompts.get(name)
    }

    pub(crate) fn resource_price(&self, uri: &str) -> Option<&Priced<Credits>> {
        self.resources.get(uri)
    }

    /// Steps 1–3 for one call of the item whose logical URL is `url`, costing
    /// `credits`: the call's own credential, verified for that URL, and the credits
    /// reserved. The tool may read the [`PaymentContext`](crate::PaymentContext) from
    /// its request context's extensions.
    pub(crate) async fn admit(
        &self,
        url: &str,
        credits: Credits,
        context: &mut RequestContext<RoleServer>,
    ) -> Result<Ticket, Refusal> {
        let route = self.gate.route_for(&Method::POST, url).await;
        let admission = match self
            .admit_call(&context.meta, &context.extensions, &route, credits)
            .await
        {
            Ok(admission) => admission,
            Err(rejection) => {
                tracing::debug!(code = rejection.kind.code(), item = %url, "MCP call refused");
                return Err(self.refusal(rejection, &route));
            }
        };
        // The tool gets who paid, not the payment itself: a tool that logs its request
        // metadata must not log a token.
        context.meta.remove(META_PAYMENT);
        context.extensions.insert(admission.context.clone());
        Ok(Ticket { admission, route })
    }

    async fn admit_call(
        &self,
        meta: &RequestMetaObject,
        extensions: &rmcp::model::Extensions,
        route: &Arc<Route>,
        credits: Credits,
    ) -> Result<Admission, Rejection> {
        let credential =
            call_credential(meta, extensions, &self.encoded).map_err(|err| match err {
                crate::credential::TokenError::TooLarge { .. } => Rejection::credential_too_large(),
                _ => Rejection::credential_not_ascii(),
            })?;
        let reused = self.heads().pop();
        let mut head = match (reused, credential) {
            (Some(mut head), Some(value)) => {
                head.headers.insert(PAYMENT_SIGNATURE, value);
                head
            }
            (Some(head), None) => head,
            (None, credential) => credential_head(credential),
        };
        let admitted = self.gate.admit_priced(&head, route, credits).await;
        // Emptied before it is kept: a kept head never holds a credential. (A call
        // dropped while admitted simply drops its head.)
        head.headers.clear();
        let mut heads = self.heads();
        if heads.len() < KEPT_HEADS {
            heads.push(head);
        }
        admitted
    }

    fn heads(&self) -> std::sync::MutexGuard<'_, Vec<Parts>> {
        // A poisoned pool only ever held empty heads: harmless to reuse.
        self.heads.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn refusal(&self, rejection: Rejection, route: &Route) -> Refusal {
        Refusal::from_rejection(
            rejection,
            &route.payment_required,
            self.gate.config.retry_after,
        )
    }

    /// Step 5 for a call that succeeded: charges `credits` (`None`: what was
    /// reserved) and answers the `_meta` receipts, or the refusal that withholds the
    /// result when the charge did not settle.
    pub(crate) fn settle(
        &self,
        ticket: Ticket,
        credits: Option<Credits>,
    ) -> impl Future<Output = Result<JsonObject, Refusal>> + '_ {
        let Ticket { admission, route } = ticket;
        // The caller, not a clone of the context: the charge then takes the request id
        // from the context without copying it (the tool has dropped its clone).
        let caller = admission.caller().clone();
        // Started here, before the `async` block, which then holds only the started
        // charge: the admission moves into it without a copy in this future.
        let charging = self.gate.charge_now(admission, credits);
        async move {
            let outcome = match charging {
                Some(charging) => charging.await,
                None => None,
            };
            match outcome {
                None => Ok(receipts(None, &caller.plan_id, &caller.subscriber)),
                Some(outcome) if outcome.is_settled() => {
                    Ok(receipts(Some(outcome), &caller.plan_id, &caller.subscriber))
                }
                Some(outcome) => {
                    tracing::warn!(request_id = %outcome.request_id, status = ?outcome.status,
                        "MCP call served but its charge did not settle: result withheld");
                    Err(Refusal::settlement_failed(
                        &route.payment_required,
                        &outcome,
                    ))
                }
            }
        }
    }
}
