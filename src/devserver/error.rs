//! Errors as the backend sends them: the `NVMException` envelope (docs/wire-notes.md §10.2),
//! and a JSON body extractor whose rejections are envelopes too.

use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use serde::de::DeserializeOwned;

use super::clock::{iso8601, wall_clock_millis};
use crate::types::ErrorEnvelope;

/// The largest request body the devserver reads (the SDKs send a few KiB at most).
const MAX_BODY_BYTES: usize = 256 * 1024;

/// An error answered as `{uuid, code, message, httpStatus, date}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn invalid_api_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "BCK.APIKEY.0004",
            "Invalid Nevermined API Key",
        )
    }

    pub(crate) fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BCK.COMMON.0002", message)
    }

    pub(crate) fn plan_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "BCK.PROTOCOL.0002", "Plan not found")
    }

    pub(crate) fn x402_plan_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "BCK.X402.0002", "Plan not found")
    }

    pub(crate) fn agent_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "BCK.PROTOCOL.0003",
            "Agent not found",
        )
    }

    /// The envelope this error is answered with.
    pub(crate) fn envelope(&self) -> ErrorEnvelope {
        ErrorEnvelope {
            uuid: Some(format!("e-{}", uuid::Uuid::new_v4())),
            code: Some(self.code.to_owned()),
            message: self.message.clone(),
            http_status: Some(self.status.as_u16()),
            hint: None,
            details: None,
            date: Some(iso8601(wall_clock_millis())),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.envelope())).into_response()
    }
}

/// A JSON request body. Unlike `axum::Json` it ignores the content type (some clients
/// send none), and every failure is a 400 envelope (`BCK.COMMON.0001`) that names the
/// offending field instead of axum's plain-text rejection.
#[derive(Debug, Clone)]
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|_| invalid_body("the body is unreadable or larger than 256 KiB"))?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses a JSON body; an empty body reads as `{}` (Nest treats it so).
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    crate::types::serde_util::from_json_body(bytes).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            invalid_body(format!("the body is not valid JSON: {inner}"))
        } else {
            invalid_body(format!("invalid field `{path}`: {inner}"))
        }
    })
}

fn invalid_body(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "BCK.COMMON.0001", message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::MintRequest;

    #[test]
    fn names_the_bad_field() {
        let err = parse_json::<MintRequest>(br#"{"planId":"1","amount":"x","creditsReceiver":"0x0000000000000000000000000000000000000001"}"#).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(err.code, "BCK.COMMON.0001");
        assert!(err.message.contains("amount"), "{}", err.message);
        let err = parse_json::<MintRequest>(b"{not json").unwrap_err();
        assert!(err.message.contains("not valid JSON"), "{}", err.message);
    }

    #[test]
    fn envelope_shape() {
        let env = ApiError::invalid_api_key().envelope();
        assert!(env.uuid.as_deref().is_some_and(|u| u.starts_with("e-")));
        assert_eq!(env.http_status, Some(401));
        assert!(env.date.as_deref().is_some_and(|d| d.ends_with('Z')));
    }
}
