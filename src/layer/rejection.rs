//! Caller-facing refusals as responses: each one is a response, never an error of the
//! service. (What a refusal says is decided in `crate::rejection`.)

use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderName, HeaderValue, Response, StatusCode};

use super::body::PaymentBody;
use crate::rejection::Rejection;

/// The `payment-required` header: standard base64 of the `PaymentRequired` JSON.
pub const PAYMENT_REQUIRED: HeaderName = HeaderName::from_static("payment-required");
/// The `payment-response` header: standard base64 of the settle receipt JSON.
pub const PAYMENT_RESPONSE: HeaderName = HeaderName::from_static("payment-response");

/// The response of a refusal: JSON `{"error", "message"}`, `Cache-Control: no-store`,
/// `payment-required` on 402/403, `Retry-After` on 503.
pub(crate) fn into_response<B>(
    rejection: Rejection,
    payment_required: &HeaderValue,
    mismatch: StatusCode,
    retry_after: Duration,
) -> Response<PaymentBody<B>> {
    let status = rejection.kind.status(mismatch);
    let body = serde_json::json!({ "error": rejection.kind.code(), "message": rejection.message });
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
