//! x402 (docs/wire-notes.md §6): permissions (mint a token), verify, settle; and the legacy
//! bearer access token (§5.1).

use axum::extract::State;
use axum::response::Response;
use axum::Json;
use http::StatusCode;
use serde_json::json;

use super::{agent_id, created, plan_id, Params};
use crate::devserver::accounts::Caller;
use crate::devserver::error::{ApiError, JsonBody};
use crate::devserver::ledger::{Charge, InvalidReason};
use crate::devserver::resource_check;
use crate::devserver::x402_token::{self, TokenDecodeError, TokenVersion};
use crate::devserver::DevServerState;
use crate::types::{
    AccessToken, AgentId, Credits, PaymentRequired, PermissionsRequest, PermissionsResponse,
    PlanId, SettleRequest, SettleResponse, StartAgentRequest, VerifyRequest, VerifyResponse,
    X402TokenPayload,
};

/// Legacy access tokens live one hour on the server clock.
const ACCESS_TOKEN_LIFETIME_SECS: u64 = 3600;

pub(crate) async fn permissions(
    State(state): State<DevServerState>,
    Caller(caller): Caller,
    JsonBody(req): JsonBody<PermissionsRequest>,
) -> Result<Response, ApiError> {
    if state.ledger().registry.plan(&req.accepted.plan_id).is_err() {
        return Err(ApiError::x402_plan_not_found());
    }
    if let Some(agent) = req.accepted.agent_id() {
        if state.ledger().registry.agent(agent).is_err() {
            return Err(ApiError::agent_not_found());
        }
    }
    let version = match req.token_version {
        None | Some(2) => TokenVersion::V2,
        Some(3) => TokenVersion::V3 {
            resource_url: req.resource.map(|r| r.url).filter(|u| !u.is_empty()),
        },
        Some(other) => {
            return Err(ApiError::validation(format!(
                "tokenVersion must be 2 or 3, not {other}"
            )))
        }
    };
    let access_token = state.x402().mint(&req.accepted, &caller, version);
    Ok(created(PermissionsResponse { access_token }))
}

/// Decodes the token and checks it is one this server signed.
fn authentic_token(
    state: &DevServerState,
    token: &AccessToken,
) -> Result<X402TokenPayload, ApiError> {
    let payload = x402_token::decode(token.expose()).map_err(|e| {
        let message = match e {
            TokenDecodeError::NotAPayload(_) => {
                "Invalid x402 access token: not an x402 payment payload".to_owned()
            }
            other => format!("Invalid x402 access token: {other}"),
        };
        ApiError::new(StatusCode::BAD_REQUEST, "BCK.X402.0001", message)
    })?;
    if !state.x402().is_authentic(&payload) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "BCK.X402.0005",
            "Invalid x402 access token: the signature does not match its contents",
        ));
    }
    Ok(payload)
}

/// A token bound to a resource (v3) must name the route's resource and, when the
/// agent registered endpoints, one of them; other tokens skip both checks.
fn check_resource(
    state: &DevServerState,
    token: &X402TokenPayload,
    payment_required: &PaymentRequired,
) -> Result<(), ApiError> {
    let Some(url) = token
        .resource
        .as_ref()
        .map(|r| r.url.as_str())
        .filter(|u| !u.is_empty())
    else {
        return Ok(());
    };
    resource_check::same_resource(url, &payment_required.resource.url)?;
    let agent = token.accepted.agent_id().or_else(|| {
        payment_required
            .accepts
            .iter()
            .find(|a| a.plan_id == token.accepted.plan_id)
            .and_then(|a| a.agent_id())
    });
    let Some(agent) = agent else { return Ok(()) };
    let endpoints = match state.ledger().registry.agent(agent) {
        Ok(record) => record.api.endpoints.clone(),
        // An unknown agent is for check_charge to answer (invalid_agent).
        Err(_) => return Ok(()),
    };
    let verb = token
        .accepted
        .extra
        .as_ref()
        .and_then(|e| e.http_verb.as_deref());
    resource_check::allowed_endpoint(&endpoints, url, verb)
}

fn charge<'a>(
    token: &'a X402TokenPayload,
    payment_required: &PaymentRequired,
    max_amount: Option<Credits>,
) -> Charge<'a> {
    Charge {
        payer: &token.payload.authorization.from,
        plan_id: &token.accepted.plan_id,
        token_agent: token.accepted.agent_id(),
        accepts: payment_required
            .accepts
            .iter()
            .map(|a| (a.plan_id.clone(), a.agent_id().cloned()))
            .collect(),
        requested: max_amount.unwrap_or(Credits::ZERO),
        nonce: token
            .payload
            .authorization
            .nonce
            .as_deref()
            .filter(|n| !n.is_empty()),
    }
}

/// Verify never spends. Authentication is optional, as on the platform.
pub(crate) async fn verify(
    State(state): State<DevServerState>,
    _caller: Option<Caller>,
    JsonBody(req): JsonBody<VerifyRequest>,
) -> Result<Json<VerifyResponse>, ApiError> {
    let token = authentic_token(&state, &req.x402_access_token)?;
    check_resource(&state, &token, &req.payment_required)?;
    let network = token.accepted.network.clone();
    let payer = token.payload.authorization.from.clone();
    let charge = charge(&token, &req.payment_required, req.max_amount);
    let now = state.now();
    let ledger = state.ledger();
    let checked = match ledger.check_charge(&charge, now) {
        Ok(c) => c,
        Err(reason) => return Ok(Json(invalid(reason, payer, network))),
    };
    let balance = ledger.balance(charge.plan_id, &payer, now).ok();
    drop(ledger);
    let agent_request_id = format!("arId-{}", uuid::Uuid::new_v4());
    let url = Some(req.payment_required.resource.url.clone()).filter(|u| !u.is_empty());
    let verb = req
        .payment_required
        .accepts
        .iter()
        .find(|a| &a.plan_id == charge.plan_id)
        .and_then(|a| a.extra.as_ref())
        .and_then(|e| e.http_verb.clone());
    Ok(Json(VerifyResponse {
        is_valid: true,
        invalid_reason: None,
        payer: Some(payer),
        network: Some(network),
        agent_request_id: Some(agent_request_id.clone()),
        url_matching: url.clone(),
        // The Python SDK's `StartAgentRequest` model wants every string present.
        agent_request: Some(StartAgentRequest {
            agent_request_id,
            agent_name: Some(checked.agent_name.unwrap_or_default()),
            agent_id: checked.agent,
            balance,
            url_matching: Some(url.unwrap_or_default()),
            verb_matching: Some(verb.unwrap_or_default()),
            batch: Some(false),
        }),
    }))
}

fn invalid(reason: InvalidReason, payer: crate::types::Address, network: String) -> VerifyResponse {
    VerifyResponse {
        is_valid: false,
        invalid_reason: Some(reason.as_str().to_owned()),
        payer: Some(payer),
        network: Some(network),
        agent_request_id: None,
        url_matching: None,
        agent_request: None,
    }
}

/// Settle burns the clamped amount, idempotent by `agentRequestId`; an insufficient
/// balance is `200 {success: false, errorReason: "insufficient_balance"}` (no top-up).
pub(crate) async fn settle(
    State(state): State<DevServerState>,
    _caller: Option<Caller>,
    JsonBody(req): JsonBody<SettleRequest>,
) -> Result<Json<SettleResponse>, ApiError> {
    let token = authentic_token(&state, &req.x402_access_token)?;
    let charge = charge(&token, &req.payment_required, req.max_amount);
    let now = state.now();
    let request_id = req
        .agent_request_id
        .as_deref()
        .map(str::trim)
        .filter(|id| !id.is_empty());
    let response = state
        .ledger()
        .settle(&charge, &token.accepted.network, request_id, now);
    state.spends_changed();
    Ok(Json(response))
}

/// `GET /api/v1/protocol/token/{planId}/{agentId}`: an EdDSA JWT for the caller.
pub(crate) async fn legacy_token(
    State(state): State<DevServerState>,
    Caller(caller): Caller,
    Params((plan, agent)): Params<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (plan, agent): (PlanId, AgentId) = (plan_id(&plan)?, agent_id(&agent)?);
    {
        let ledger = state.ledger();
        ledger.registry.plan(&plan)?;
        ledger.registry.agent(&agent)?;
    }
    let now = state.now();
    let token = state.keys().issue_access_token(
        &caller,
        &plan,
        &agent,
        now,
        now + ACCESS_TOKEN_LIFETIME_SECS,
    );
    Ok(Json(
        json!({ "accessToken": token.expose(), "proxies": [] }),
    ))
}
