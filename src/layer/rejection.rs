//! Caller-facing refusals: each one is a response, never an error of the service.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderName, HeaderValue, Response, StatusCode};

use super::body::PaymentBody;

/// The `payment-required` header: standard base64 of the `PaymentRequired` JSON.
pub const PAYMENT_REQUIRED: HeaderName = HeaderName::from_static("payment-required");
/// The `payment-response` header: standard base64 of the settle receipt JSON.
pub const PAYMENT_RESPONSE: HeaderName = HeaderName::from_static("payment-response");

/// Why the layer refused a request (the `error` code of the JSON body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectionKind {
    /// 402 `payment_required`: no credential in any configured header.
    PaymentRequired,
    /// 400 `malformed_token`: the credential does not decode, or is too large.
    MalformedToken,
    /// 402 `invalid_token`: forged, expired or revoked.
    InvalidToken,
    /// 402 (or 403) `plan_not_accepted`: the token pays with a plan this route does not accept.
    PlanNotAccepted,
    /// 402 (or 403) `wrong_agent`: the token is for another agent.
    WrongAgent,
    /// 402 `insufficient_balance`: not a subscriber, or the balance is below the charge.
    InsufficientBalance,
    /// 503 `backend_unavailable` with `Retry-After`: the backend could not be reached
    /// and nothing cached can decide.
    BackendUnavailable,
    /// 500 `payment_misconfigured`: the layer's configuration can never be charged
    /// (the log says why). The caller is not at fault.
    Misconfigured,
}

impl RejectionKind {
    /// The `error` code of the body.
    pub fn code(self) -> &'static str {
        match self {
            RejectionKind::PaymentRequired => "payment_required",
            RejectionKind::MalformedToken => "malformed_token",
            RejectionKind::InvalidToken => "invalid_token",
            RejectionKind::PlanNotAccepted => "plan_not_accepted",
            RejectionKind::WrongAgent => "wrong_agent",
            RejectionKind::InsufficientBalance => "insufficient_balance",
            RejectionKind::BackendUnavailable => "backend_unavailable",
            RejectionKind::Misconfigured => "payment_misconfigured",
        }
    }

    fn status(self, mismatch: StatusCode) -> StatusCode {
        match self {
            RejectionKind::MalformedToken => StatusCode::BAD_REQUEST,
            RejectionKind::PlanNotAccepted | RejectionKind::WrongAgent => mismatch,
            RejectionKind::BackendUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            RejectionKind::Misconfigured => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::PAYMENT_REQUIRED,
        }
    }
}

/// A refusal with its human message (which never contains the token).
#[derive(Debug, Clone)]
pub(crate) struct Rejection {
    pub(crate) kind: RejectionKind,
    pub(crate) message: Cow<'static, str>,
}

impl Rejection {
    pub(crate) fn new(kind: RejectionKind, message: impl Into<Cow<'static, str>>) -> Self {
        Rejection {
            kind,
            message: message.into(),
        }
    }

    /// 503: the backend could not answer; the caller may retry.
    pub(crate) fn unavailable() -> Self {
        Rejection::new(
            RejectionKind::BackendUnavailable,
            "the payment backend is unavailable; retry later",
        )
    }

    /// 500: this route's payment setup can never charge (the log says why).
    pub(crate) fn misconfigured() -> Self {
        Rejection::new(
            RejectionKind::Misconfigured,
            "the payment configuration of this route cannot be charged",
        )
    }

    /// The response: JSON `{"error", "message"}`, `Cache-Control: no-store`,
    /// `payment-required` on 402/403, `Retry-After` on 503.
    pub(crate) fn into_response<B>(
        self,
        payment_required: &HeaderValue,
        mismatch: StatusCode,
        retry_after: Duration,
    ) -> Response<PaymentBody<B>> {
        let status = self.kind.status(mismatch);
        let body = serde_json::json!({ "error": self.kind.code(), "message": self.message });
        let mut response = Response::new(PaymentBody::rejected(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if matches!(status.as_u16(), 402 | 403) {
            headers.insert(PAYMENT_REQUIRED, payment_required.clone());
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
        }
        response
    }
}
