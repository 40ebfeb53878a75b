//! Delegations (docs/wire-notes.md §5.3): recorded and listed so the SDKs' create-first flow
//! works; the devserver does not enforce their limits.

use axum::extract::State;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::created;
use crate::devserver::accounts::Caller;
use crate::devserver::clock::{iso8601, wall_clock_millis};
use crate::devserver::error::{ApiError, JsonBody};
use crate::devserver::ledger::Delegation;
use crate::devserver::DevServerState;
use crate::types::serde_util::null_as_default;

/// Body of `POST /api/v1/delegation/create` (other keys are ignored).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateDelegation {
    #[serde(default, deserialize_with = "null_as_default")]
    provider: String,
    #[serde(default)]
    spending_limit_cents: Option<u64>,
    #[serde(default)]
    duration_secs: Option<u64>,
    #[serde(default)]
    currency: Option<String>,
}

pub(crate) async fn create(
    State(state): State<DevServerState>,
    Caller(caller): Caller,
    JsonBody(req): JsonBody<CreateDelegation>,
) -> Result<Response, ApiError> {
    if req.provider.trim().is_empty() {
        return Err(ApiError::validation("provider is required"));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let now_ms = wall_clock_millis();
    let expires_at = req
        .duration_secs
        .map(|secs| iso8601(now_ms.saturating_add(secs.saturating_mul(1000))));
    state.ledger().delegations.add(Delegation {
        id: id.clone(),
        owner: caller,
        provider: req.provider,
        spending_limit_cents: req.spending_limit_cents,
        spent_cents: 0,
        duration_secs: req.duration_secs,
        currency: req.currency,
        status: "active",
        created_at: iso8601(now_ms),
        expires_at,
    });
    Ok(created(json!({ "delegationId": id })))
}

pub(crate) async fn list(
    State(state): State<DevServerState>,
    Caller(caller): Caller,
) -> Json<Vec<Delegation>> {
    Json(state.ledger().delegations.of(&caller))
}

/// No saved cards or wallets on the devserver.
pub(crate) async fn payment_methods(Caller(_caller): Caller) -> Json<Value> {
    Json(json!([]))
}
