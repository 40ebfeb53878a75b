//! [`PaidHandler`]: an rmcp `ServerHandler` whose priced tools, prompts and resources
//! are paid for; every other request goes to the inner handler unchanged.

use std::borrow::Cow;
use std::future::Future;

use rmcp::model::*;
use rmcp::service::{
    MaybeSendFuture, NotificationContext, RequestContext, RoleServer, SubscriptionContext,
};
use rmcp::{ErrorData as McpError, ServerHandler};

use super::paywall::{McpPayments, Paywall, Ticket};
use super::reply::Refusal;

/// A `ServerHandler` that charges for the items priced in its [`McpPayments`]; made by
/// [`McpPayments::wrap`]. Serve it as any handler (e.g. rmcp's
/// `StreamableHttpService`).
///
/// A paid call is verified for its real price, reserved, run, and charged once
/// (with the request id as the idempotency key) before its answer is sent; a call the
/// tool answers with `isError: true` (or with an error) is not charged; a charge that
/// does not settle withholds the answer. Only complete answers are charged: see the
/// [module docs](super) for input rounds and tasks.
#[derive(Clone)]
pub struct PaidHandler<H> {
    inner: H,
    payments: McpPayments,
}

impl<H> PaidHandler<H> {
    pub(crate) fn new(inner: H, payments: McpPayments) -> Self {
        PaidHandler { inner, payments }
    }

    /// The inner handler.
    pub fn get_ref(&self) -> &H {
        &self.inner
    }
}

impl<H: std::fmt::Debug> std::fmt::Debug for PaidHandler<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaidHandler")
            .field("inner", &self.inner)
            .field("payments", &self.payments)
            .finish()
    }
}

impl<H: ServerHandler> PaidHandler<H> {
    /// An `async` block, not an `async fn`: an `async fn` copies its arguments (the
    /// request and its context, 288 bytes) into locals of its future, which then held
    /// them twice; every paid call moves that future.
    // Written out by hand on purpose: see above.
    #[allow(clippy::manual_async_fn)]
    fn paid_tool(
        &self,
        request: CallToolRequestParams,
        mut context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<CallToolResponse, McpError>> + '_ {
        async move {
            let paywall = &self.payments.paywall;
            let Some(priced) = paywall.tool_price(&request.name) else {
                return self.inner.call_tool(request, context).await;
            };
            let price = &priced.price;
            let empty = JsonObject::new();
            let arguments = request.arguments.as_ref().unwrap_or(&empty);
            let credits = price.before(arguments);
            if credits.is_zero() {
                return self.inner.call_tool(request, context).await;
            }
            // Kept only when the price reads them after the tool.
            let kept = price.reads_result().then(|| arguments.clone());
            let ticket = match paywall.admit(&priced.url, credits, &mut context).await {
                Ok(ticket) => ticket,
                Err(refusal) => return refusal.into_tool_result().map(Into::into),
            };
            // An error here drops the ticket: its reservation is released, nothing charged.
            let mut result = match self
                .inner
                .call_tool(request, context)
                .await?
                .into_complete()
            {
                Ok(result) => result,
                Err(other) => return uncharged(other),
            };
            if result.is_error == Some(true) {
                tracing::debug!("the tool failed: not charged");
                return Ok(result.into());
            }
            let final_credits = kept.and_then(|arguments| price.after(&arguments, &result));
            match paywall.settle(ticket, final_credits).await {
                Ok(receipts) => {
                    extend_meta(&mut result.meta, receipts);
                    Ok(result.into())
                }
                Err(refusal) => refusal.into_tool_result().map(Into::into),
            }
        }
    }

    async fn paid_prompt(
        &self,
        request: GetPromptRequestParams,
        mut context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        let paywall = &self.payments.paywall;
        let Some(priced) = paywall.prompt_price(&request.name) else {
            return self.inner.get_prompt(request, context).await;
        };
        let ticket = paywall
            .admit(&priced.url, priced.price, &mut context)
            .await
            .map_err(Refusal::into_error)?;
        let answer = self.inner.get_prompt(request, context).await?;
        charge_answer(paywall, ticket, answer).await
    }

    async fn paid_resource(
        &self,
        request: ReadResourceRequestParams,
        mut context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let paywall = &self.payments.paywall;
        let Some(priced) = paywall.resource_price(&request.uri) else {
            return self.inner.read_resource(request, context).await;
        };
        let ticket = paywall
            .admit(&priced.url, priced.price, &mut context)
            .await
            .map_err(Refusal::into_error)?;
        let answer = self.inner.read_resource(request, context).await?;
        charge_answer(paywall, ticket, answer).await
    }
}

/// The answer of a paid item: charged only when it is the complete result (its
/// receipts then go into the result's `_meta`).
trait PaidAnswer: Sized + From<Self::Complete> {
    /// The kind of item, for the logs and the error (`tool`, `prompt`, `resource`).
    const ITEM: &'static str;
    /// The complete result.
    type Complete;
    /// The complete result, or the answer back when it is something else.
    fn into_complete(self) -> Result<Self::Complete, Self>;
    /// One round of a multi-round call (MCP "input required"): the client asks again
    /// with the same request and its inputs.
    fn is_input_round(&self) -> bool;
    /// The `_meta` of a complete result.
    fn meta(result: &mut Self::Complete) -> &mut Option<MetaObject>;
}

/// The three rmcp answers, alike but for their types.
macro_rules! paid_answer {
    ($answer:ident, $complete:ident, $item:literal) => {
        impl PaidAnswer for $answer {
            const ITEM: &'static str = $item;
            type Complete = $complete;
            fn into_complete(self) -> Result<$complete, Self> {
                match self {
                    $answer::Complete(result) => Ok(result),
                    other => Err(other),
                }
            }
            fn is_input_round(&self) -> bool {
                matches!(self, $answer::InputRequired(_))
            }
            fn meta(result: &mut $complete) -> &mut Option<MetaObject> {
                &mut result.meta
            }
        }
    };
}

paid_answer!(CallToolResponse, CallToolResult, "tool");
paid_answer!(GetPromptResponse, GetPromptResult, "prompt");
paid_answer!(ReadResourceResponse, ReadResourceResult, "resource");

/// Step 5 for a prompt or resource that answered: charged once when complete.
async fn charge_answer<A: PaidAnswer>(
    paywall: &Paywall,
    ticket: Ticket,
    answer: A,
) -> Result<A, McpError> {
    // Returning before the charge drops the ticket: the reservation is released.
    let mut result = match answer.into_complete() {
        Ok(result) => result,
        Err(other) => return uncharged(other),
    };
    let receipts = paywall
        .settle(ticket, None)
        .await
        .map_err(Refusal::into_error)?;
    extend_meta(A::meta(&mut result), receipts);
    Ok(result.into())
}

/// A paid item's answer that is not its complete result: an input round is served
/// uncharged, anything else refused uncharged.
fn uncharged<A: PaidAnswer>(answer: A) -> Result<A, McpError> {
    if answer.is_input_round() {
        Ok(input_round(answer))
    } else {
        Err(incomplete(A::ITEM))
    }
}

/// An "input required" round of a paid item, served and not charged: it holds no
/// result, and the client asks again with the same request (its `_meta` payment
/// too) and the inputs; the round that completes is the one charged. Charging every
/// round would charge one item several times.
fn input_round<A: PaidAnswer>(answer: A) -> A {
    tracing::debug!(
        item = A::ITEM,
        "an input-required round: not charged (the round that completes is)"
    );
    answer
}

/// A paid item that answered neither its complete result nor an input round (a
/// tool answering with a task): refused and not charged. Its result would reach the
/// client through `tasks/get`, which is not paid for, so serving it gives away what
/// is priced; charging it would charge for work not done yet.
fn incomplete(item: &str) -> McpError {
    tracing::error!(
        item,
        "a paid MCP item answered neither its complete result nor an input round \
         (a task?): refused and not charged"
    );
    McpError::internal_error(
        format!("this paid {item} answered neither a complete result nor an input round: refused, not charged"),
        None,
    )
}

fn extend_meta(meta: &mut Option<MetaObject>, receipts: JsonObject) {
    match meta {
        Some(meta) => meta.0.extend(receipts),
        // The usual case: the receipts become the `_meta`, not copied into a new map.
        None => *meta = Some(MetaObject(receipts)),
    }
}

// Every method of the trait, delegated (the list follows rmcp 3.11's own wrapper impl
// for `Box`/`Arc`), except the three paid ones. Deprecated ones too: a handler that
// still serves them must keep doing so.
#[allow(deprecated)]
impl<H: ServerHandler> ServerHandler for PaidHandler<H> {
    fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<CallToolResponse, McpError>> + MaybeSendFuture + '_ {
        self.paid_tool(request, context)
    }

    fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<GetPromptResponse, McpError>> + MaybeSendFuture + '_ {
        self.paid_prompt(request, context)
    }

    fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<ReadResourceResponse, McpError>> + MaybeSendFuture + '_ {
        self.paid_resource(request, context)
    }

    fn ping(
        &self,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<(), McpError>> + MaybeSendFuture + '_ {
        self.inner.ping(context)
    }

    fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<InitializeResult, McpError>> + MaybeSendFuture + '_ {
        self.inner.initialize(request, context)
    }

    fn negotiate_initialize(
        &self,
        request: &InitializeRequestParams,
    ) -> Result<InitializeResult, McpError> {
        self.inner.negotiate_initialize(request)
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        self.inner.supported_protocol_versions()
    }

    fn discover(
        &self,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<DiscoverResult, McpError>> + MaybeSendFuture + '_ {
        self.inner.discover(context)
    }

    fn complete(
        &self,
        request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<CompleteResult, McpError>> + MaybeSendFuture + '_ {
        self.inner.complete(request, context)
    }

    fn set_level(
        &self,
        request: SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<(), McpError>> + MaybeSendFuture + '_ {
        self.inner.set_level(request, context)
    }

    fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<ListPromptsResult, McpError>> + MaybeSendFuture + '_ {
        self.inner.list_prompts(request, context)
    }

    fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<ListResourcesResult, McpError>> + MaybeSendFuture + '_ {
        self.inner.list_resources(request, context)
    }

    fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<ListResourceTemplatesResult, McpError>> + MaybeSendFuture + '_
    {
        self.inner.list_resource_templates(request, context)
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        self.inner.accepted_subscription_filter(requested)
    }

    fn listen(
        &self,
        context: SubscriptionContext,
    ) -> impl Future<Output = Result<(), McpError>> + MaybeSendFuture + '_ {
        self.inner.listen(context)
    }

    fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<(), McpError>> + MaybeSendFuture + '_ {
        self.inner.subscribe(request, context)
    }

    fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<(), McpError>> + MaybeSendFuture + '_ {
        self.inner.unsubscribe(request, context)
    }

    fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<ListToolsResult, McpError>> + MaybeSendFuture + '_ {
        self.inner.list_tools(request, context)
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.inner.get_tool(name)
    }

    fn on_custom_request(
        &self,
        request: CustomRequest,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<CustomResult, McpError>> + MaybeSendFuture + '_ {
        self.inner.on_custom_request(request, context)
    }

    fn on_cancelled(
        &self,
        notification: CancelledNotificationParam,
        context: NotificationContext<RoleServer>,
    ) -> impl Future<Output = ()> + MaybeSendFuture + '_ {
        self.inner.on_cancelled(notification, context)
    }

    fn on_progress(
        &self,
        notification: ProgressNotificationParam,
        context: NotificationContext<RoleServer>,
    ) -> impl Future<Output = ()> + MaybeSendFuture + '_ {
        self.inner.on_progress(notification, context)
    }

    fn on_initialized(
        &self,
        context: NotificationContext<RoleServer>,
    ) -> impl Future<Output = ()> + MaybeSendFuture + '_ {
        self.inner.on_initialized(context)
    }

    fn on_roots_list_changed(
        &self,
        context: NotificationContext<RoleServer>,
    ) -> impl Future<Output = ()> + MaybeSendFuture + '_ {
        self.inner.on_roots_list_changed(context)
    }

    fn on_custom_notification(
        &self,
        notification: CustomNotification,
        context: NotificationContext<RoleServer>,
    ) -> impl Future<Output = ()> + MaybeSendFuture + '_ {
        self.inner.on_custom_notification(notification, context)
    }

    fn get_info(&self) -> ServerConfig {
        self.inner.get_info()
    }

    fn get_task(
        &self,
        request: GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<GetTaskResult, McpError>> + MaybeSendFuture + '_ {
        self.inner.get_task(request, context)
    }

    fn update_task(
        &self,
        request: UpdateTaskParams,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<(), McpError>> + MaybeSendFuture + '_ {
        self.inner.update_task(request, context)
    }

    fn cancel_task(
        &self,
        request: CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<(), McpError>> + MaybeSendFuture + '_ {
        self.inner.cancel_task(request, context)
    }

    fn list_skills(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<ListSkillsResult, McpError>> + MaybeSendFuture + '_ {
        self.inner.list_skills(request, context)
    }

    fn get_skill(
        &self,
        request: GetSkillRequestParams,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<GetSkillResult, McpError>> + MaybeSendFuture + '_ {
        self.inner.get_skill(request, context)
    }

    fn read_resource_directory(
        &self,
        request: ReadResourceDirectoryRequestParams,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<ReadResourceDirectoryResult, McpError>> + MaybeSendFuture + '_
    {
        self.inner.read_resource_directory(request, context)
    }
}
