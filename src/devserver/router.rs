//! The route table (paths exactly as in docs/wire-notes.md §3-§6, §11), Nest's 404 for
//! anything else, and the per-request middleware: log line, counters, faults.

use std::time::Instant;

use axum::extract::Request;
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use http::{Method, StatusCode, Uri};
use serde_json::json;

use super::error::ApiError;
use super::handlers::{agents, delegation, dev, info, plans, x402};
use super::{faults, stats, DevServerState};
use crate::client::JWKS_PATH;

pub(crate) fn build(state: DevServerState) -> Router {
    let p = "/api/v1/protocol";
    Router::new()
        .route("/", get(info::deployment))
        .route(JWKS_PATH, get(info::jwks))
        .route(
            &format!("{p}/plans"),
            post(plans::register).get(plans::list),
        )
        .route(&format!("{p}/plans/mint"), post(plans::mint))
        .route(
            &format!("{p}/plans/mintExpirable"),
            post(plans::mint_expirable),
        )
        .route(&format!("{p}/plans/burn"), post(plans::burn))
        .route(&format!("{p}/plans/redeem"), post(plans::redeem))
        .route(&format!("{p}/plans/{{planId}}"), get(plans::get_plan))
        .route(
            &format!("{p}/plans/{{planId}}/balance/{{holder}}"),
            get(plans::balance),
        )
        .route(&format!("{p}/plans/{{planId}}/order"), post(plans::order))
        .route(&format!("{p}/plans/{{planId}}/agents"), get(plans::agents))
        .route("/api/v1/fiat/stripe/payment", post(plans::order_fiat))
        .route(
            &format!("{p}/agents"),
            post(agents::register).get(agents::list),
        )
        .route(
            &format!("{p}/agents/plans"),
            post(agents::register_with_plan),
        )
        .route(
            &format!("{p}/agents/{{agentId}}"),
            get(agents::get_agent).put(agents::update),
        )
        .route(&format!("{p}/agents/{{agentId}}/plans"), get(agents::plans))
        .route(
            &format!("{p}/agents/{{agentId}}/plan/{{planId}}"),
            post(agents::link).delete(agents::unlink),
        )
        .route(
            &format!("{p}/token/{{planId}}/{{agentId}}"),
            get(x402::legacy_token),
        )
        .route("/api/v1/delegation/create", post(delegation::create))
        .route("/api/v1/delegation", get(delegation::list))
        .route("/api/v1/payment-methods", get(delegation::payment_methods))
        .route("/api/v1/x402/permissions", post(x402::permissions))
        .route("/api/v1/x402/verify", post(x402::verify))
        .route("/api/v1/x402/settle", post(x402::settle))
        .route("/dev/accounts", post(dev::create_account))
        .route("/dev/checkout/{sessionId}", get(dev::checkout))
        .route("/dev/wallets/{address}/{token}", get(dev::wallet))
        .route(
            "/dev/faults",
            post(dev::set_fault)
                .get(dev::list_faults)
                .delete(dev::clear_faults),
        )
        .route("/dev/clock", get(dev::clock))
        .route("/dev/clock/advance", post(dev::advance_clock))
        .route("/dev/stats", get(dev::stats).delete(dev::reset_stats))
        .route("/dev/ledger/spends", get(dev::spends))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .layer(from_fn(check_api_version))
        .layer(from_fn_with_state(state.clone(), faults::inject))
        .layer(from_fn_with_state(state.clone(), stats::count))
        .layer(from_fn(log_request))
        .with_state(state)
}

/// Nest's default 404: `{"message":"Cannot POST /x","error":"Not Found","statusCode":404}`.
async fn not_found(method: Method, uri: Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        Extension(stats::Unrouted),
        Json(json!({
            "message": format!("Cannot {method} {}", uri.path()),
            "error": "Not Found",
            "statusCode": 404,
        })),
    )
        .into_response()
}

/// The backend answers a malformed `Nevermined-Version` with 400 on every call (TS
/// `base-payments.ts`); an absent header is fine.
async fn check_api_version(req: Request, next: Next) -> Response {
    let malformed = req
        .headers()
        .get("nevermined-version")
        .is_some_and(|v| !v.to_str().is_ok_and(is_api_version));
    if malformed {
        return ApiError::validation("Nevermined-Version must be MAJOR.MINOR, such as 1.1")
            .into_response();
    }
    next.run(req).await
}

fn is_api_version(v: &str) -> bool {
    matches!(v.trim().split_once('.'), Some((a, b)) if !a.is_empty() && !b.is_empty()
        && a.bytes().all(|c| c.is_ascii_digit()) && b.bytes().all(|c| c.is_ascii_digit()))
}

/// One line per request: method, path (never the query or headers, which may carry
/// secrets), status, milliseconds.
async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    tracing::info!(
        target: "nvm_payments::devserver",
        "{method} {path} {} {}ms",
        response.status().as_u16(),
        started.elapsed().as_millis()
    );
    response
}
