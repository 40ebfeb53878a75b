//! Plans (docs/wire-notes.md §3): register, list, get, balance, order, fiat order, mint,
//! mint-expirable, burn, redeem, agents of a plan.

use axum::extract::{RawQuery, State};
use axum::response::Response;
use axum::Json;
use http::HeaderMap;
use serde_json::json;

use super::{address, created, plan_id, Paging, Params};
use crate::devserver::accounts::Caller;
use crate::devserver::clock::wall_clock_millis;
use crate::devserver::error::{ApiError, JsonBody};
use crate::devserver::hex::random_hex;
use crate::devserver::DevServerState;
use crate::types::{
    AgentList, BurnRequest, Credits, FiatPaymentRequest, FiatPaymentResponse, ListedAgent,
    MintExpirableRequest, MintRequest, Plan, PlanBalance, PlanList, RedeemRequest,
    RegisterPlanRequest, StripeCheckoutResult,
};

pub(crate) async fn register(
    State(state): State<DevServerState>,
    Caller(caller): Caller,
    JsonBody(req): JsonBody<RegisterPlanRequest>,
) -> Result<Response, ApiError> {
    let plan_id = state.ledger().registry.register_plan(
        &caller,
        req.metadata_attributes,
        req.price_config,
        req.credits_config,
        req.access_limit,
        req.is_trial_plan,
    )?;
    Ok(created(json!({ "planId": plan_id })))
}

pub(crate) async fn list(
    State(state): State<DevServerState>,
    Caller(caller): Caller,
    RawQuery(query): RawQuery,
) -> Json<PlanList> {
    let paging = Paging::from_query(query.as_deref(), 100);
    let ledger = state.ledger();
    let plans: Vec<Plan> = ledger
        .registry
        .plans_owned_by(&caller)
        .into_iter()
        .map(|p| p.to_wire())
        .collect();
    Json(PlanList {
        total: plans.len() as u64,
        page: paging.page,
        offset: paging.size,
        plans: paging.slice(&plans).into_iter().map(Into::into).collect(),
    })
}

pub(crate) async fn get_plan(
    State(state): State<DevServerState>,
    Params(raw): Params<String>,
) -> Result<Json<Plan>, ApiError> {
    let id = plan_id(&raw)?;
    Ok(Json(state.ledger().registry.plan(&id)?.to_wire()))
}

pub(crate) async fn balance(
    State(state): State<DevServerState>,
    Params((plan, holder)): Params<(String, String)>,
) -> Result<Json<PlanBalance>, ApiError> {
    let plan = plan_id(&plan)?;
    let holder = address(&holder)?;
    let now = state.now();
    Ok(Json(state.ledger().balance(&plan, &holder, now)?))
}

pub(crate) async fn order(
    State(state): State<DevServerState>,
    Caller(caller): Caller,
    Params(raw): Params<String>,
) -> Result<Response, ApiError> {
    let plan = plan_id(&raw)?;
    let now = state.now();
    let result = state.ledger().order(&plan, &caller, now)?;
    Ok(created(result))
}

/// The fake Stripe checkout: the link points back at this server
/// (`GET /dev/checkout/{sessionId}` completes the order).
pub(crate) async fn order_fiat(
    State(state): State<DevServerState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    JsonBody(req): JsonBody<FiatPaymentRequest>,
) -> Result<Response, ApiError> {
    let session_id = format!("cs_test_{}", random_hex(16));
    state
        .ledger()
        .open_checkout(&req.plan_id, &caller, session_id.clone())?;
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost:3001");
    let created_at = wall_clock_millis();
    Ok(created(FiatPaymentResponse {
        result: StripeCheckoutResult {
            checkout_link: format!("http://{host}/dev/checkout/{session_id}"),
            stripe_checkout_session_id: session_id,
            client_reference_id: Some(caller.to_string()),
            payment_status: Some("unpaid".to_owned()),
            link_created_at: created_at,
            link_expires_at: created_at + 24 * 3600 * 1000,
        },
    }))
}

pub(crate) async fn mint(
    State(state): State<DevServerState>,
    Caller(caller): Caller,
    JsonBody(req): JsonBody<MintRequest>,
) -> Result<Response, ApiError> {
    let result = state.ledger().mint(
        &caller,
        &req.plan_id,
        req.amount,
        &req.credits_receiver,
        None,
    )?;
    Ok(created(result))
}

/// `creditsDuration` seconds on the server clock; 0 mints credits that never lapse.
pub(crate) async fn mint_expirable(
    State(state): State<DevServerState>,
    Caller(caller): Caller,
    JsonBody(req): JsonBody<MintExpirableRequest>,
) -> Result<Response, ApiError> {
    let expires_at =
        (req.credits_duration > 0).then(|| state.now().saturating_add(req.credits_duration));
    let result = state.ledger().mint(
        &caller,
        &req.plan_id,
        req.credits_amount,
        &req.credits_receiver,
        expires_at,
    )?;
    Ok(created(result))
}

pub(crate) async fn burn(
    State(state): State<DevServerState>,
    Caller(caller): Caller,
    JsonBody(req): JsonBody<BurnRequest>,
) -> Result<Response, ApiError> {
    let now = state.now();
    let result = state
        .ledger()
        .burn(&caller, &req.plan_id, req.credits_amount, now)?;
    Ok(created(result))
}

/// Redeem is idempotent by `agentRequestId`; the amount is clamped like settle's.
pub(crate) async fn redeem(
    State(state): State<DevServerState>,
    Caller(caller): Caller,
    JsonBody(req): JsonBody<RedeemRequest>,
) -> Result<Response, ApiError> {
    let now = state.now();
    let result = state.ledger().redeem(
        &caller,
        req.agent_request_id.trim(),
        &req.plan_id,
        &req.redeem_from,
        req.amount.unwrap_or(Credits::ZERO),
        now,
    );
    state.spends_changed();
    Ok(created(result?))
}

pub(crate) async fn agents(
    State(state): State<DevServerState>,
    Params(raw): Params<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<AgentList>, ApiError> {
    let plan = plan_id(&raw)?;
    let paging = Paging::from_query(query.as_deref(), 10);
    let ledger = state.ledger();
    ledger.registry.plan(&plan)?;
    let agents: Vec<ListedAgent> = ledger
        .registry
        .agents_of_plan(&plan)
        .into_iter()
        .map(|a| a.to_wire().into())
        .collect();
    Ok(Json(AgentList {
        total: agents.len() as u64,
        page: paging.page,
        offset: paging.size,
        agents: paging.slice(&agents),
    }))
}
