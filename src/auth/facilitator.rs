//! The x402 facilitator's answers to `verify`, read as verdicts on the token or as
//! outages of the payment path.

use crate::client::Error;
use crate::rejection::{Rejection, RejectionKind};
use crate::types::AccessToken;

/// A verify that answered an error. Only a verdict on the token is `invalid_token`
/// (and remembered as such): an x402 error code, or a 4xx about the request's content.
/// A refusal of the agent's own request (its API key: 401/403 without an x402 code;
/// a body too large: 413) is an outage of the payment path, and a route that does not
/// exist on the backend (404/405) can never verify: both are logged at `error`, since
/// every paying caller is refused until someone fixes them.
pub(super) fn verify_error(err: Error) -> Rejection {
    let Some(status) = err.status() else {
        return Rejection::backend_failed(&err);
    };
    let code = err.code().unwrap_or("none").to_owned();
    let about_token = code.starts_with("BCK.X402.");
    match status.as_u16() {
        401 | 403 | 413 if !about_token => {
            tracing::error!(status = status.as_u16(), code = %code,
                "the facilitator refused the agent's own verify request (API key, permissions or size): paying callers are refused with 503 until it is fixed");
            Rejection::unavailable()
        }
        404 | 405 if !about_token => {
            tracing::error!(status = status.as_u16(), code = %code,
                "the facilitator has no verify endpoint at this address (backend URL?): paying callers are refused with 500 until it is fixed");
            Rejection::misconfigured()
        }
        429 => Rejection::backend_failed(&err),
        400..=499 => Rejection::facilitator_refused(&code),
        _ => Rejection::backend_failed(&err),
    }
}

pub(super) fn invalid_reason(reason: Option<&str>, token: &AccessToken) -> Rejection {
    let reason = reason.unwrap_or("invalid_token");
    let lower = reason.to_ascii_lowercase();
    let kind = if lower.contains("insufficient") || lower.contains("balance") {
        RejectionKind::InsufficientBalance
    } else if lower.contains("invalid_plan") || lower.contains("plan mismatch") {
        RejectionKind::PlanNotAccepted
    } else if lower.contains("invalid_agent") || lower.contains("agent mismatch") {
        RejectionKind::WrongAgent
    } else {
        RejectionKind::InvalidToken
    };
    // The backend's words, unless they are long or echo the token.
    let words = (reason.len() <= 200 && !reason.contains(token.expose())).then_some(reason);
    Rejection::facilitator_invalid(kind, words)
}
