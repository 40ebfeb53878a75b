//! Dev-only routes: accounts, the fake checkout page, faults, the clock, stats.

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use http::HeaderMap;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{address, created, Params};
use crate::devserver::error::{ApiError, JsonBody};
use crate::devserver::faults::Fault;
use crate::devserver::stats::StatsSnapshot;
use crate::devserver::DevServerState;
use crate::types::serde_util::decimal_u64;

/// Body of `POST /dev/accounts` (optional).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct CreateAccountRequest {
    #[serde(default)]
    name: Option<String>,
}

pub(crate) async fn create_account(
    State(state): State<DevServerState>,
    JsonBody(req): JsonBody<CreateAccountRequest>,
) -> Response {
    created(state.create_account(req.name.as_deref()))
}

/// Completes a fiat checkout once; JSON when the client asks for it, else HTML.
pub(crate) async fn checkout(
    State(state): State<DevServerState>,
    headers: HeaderMap,
    Params(session_id): Params<String>,
) -> Result<Response, ApiError> {
    let now = state.now();
    let (checkout, first) = state.ledger().complete_checkout(&session_id, now)?;
    let wants_json = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    if wants_json {
        return Ok(Json(json!({
            "sessionId": session_id,
            "planId": checkout.plan_id,
            "buyer": checkout.buyer,
            "completed": true,
            "alreadyCompleted": !first,
        }))
        .into_response());
    }
    let what = if first {
        "Payment completed: the plan is now ordered."
    } else {
        "This checkout was already completed; nothing was charged again."
    };
    Ok(Html(format!(
        "<!doctype html><title>nvm-payments devserver checkout</title>\
         <h1>{what}</h1><p>Plan {} for {}.</p>",
        checkout.plan_id, checkout.buyer
    ))
    .into_response())
}

pub(crate) async fn set_fault(
    State(state): State<DevServerState>,
    JsonBody(fault): JsonBody<Fault>,
) -> Result<Response, ApiError> {
    if !fault.route.starts_with('/') {
        return Err(ApiError::validation(
            "route must be a path prefix starting with /",
        ));
    }
    if fault.status.is_some_and(|s| !(100..=999).contains(&s)) {
        return Err(ApiError::validation("status must be an HTTP status code"));
    }
    state.faults().set(fault);
    Ok(created(json!({ "faults": state.faults().list() })))
}

pub(crate) async fn list_faults(State(state): State<DevServerState>) -> Json<Value> {
    Json(json!({ "faults": state.faults().list() }))
}

pub(crate) async fn clear_faults(State(state): State<DevServerState>) -> Json<Value> {
    state.faults().clear();
    Json(json!({ "faults": [] }))
}

/// `GET /dev/wallets/{address}/{token}`: a dev wallet's token balance.
pub(crate) async fn wallet(
    State(state): State<DevServerState>,
    Params((holder, token)): Params<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (holder, token) = (address(&holder)?, address(&token)?);
    let balance = state.token_balance(&holder, &token);
    Ok(Json(
        json!({ "address": holder, "token": token, "balance": balance }),
    ))
}

fn clock_json(state: &DevServerState) -> Value {
    json!({ "now": state.now(), "offsetSecs": state.clock().offset() })
}

pub(crate) async fn clock(State(state): State<DevServerState>) -> Json<Value> {
    Json(clock_json(&state))
}

/// Body of `POST /dev/clock/advance`.
#[derive(Debug, Deserialize)]
pub(crate) struct AdvanceClock {
    #[serde(with = "decimal_u64")]
    seconds: u64,
}

pub(crate) async fn advance_clock(
    State(state): State<DevServerState>,
    JsonBody(req): JsonBody<AdvanceClock>,
) -> Response {
    state.clock().advance(req.seconds);
    created(clock_json(&state))
}

/// `GET /dev/ledger/spends`: every charge that burned credits, in order.
pub(crate) async fn spends(State(state): State<DevServerState>) -> Json<Value> {
    Json(json!({ "spends": state.spends() }))
}

pub(crate) async fn stats(State(state): State<DevServerState>) -> Json<StatsSnapshot> {
    Json(state.stats())
}

pub(crate) async fn reset_stats(State(state): State<DevServerState>) -> Json<StatsSnapshot> {
    state.reset_stats();
    Json(StatsSnapshot::default())
}
