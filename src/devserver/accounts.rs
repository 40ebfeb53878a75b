//! Who is calling: the [`Caller`] extractor that checks `Authorization: Bearer <key>`
//! against the keys this server issued.

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use http::request::Parts;

use super::error::ApiError;
use super::DevServerState;
use crate::types::Address;

/// The authenticated account. Missing or foreign keys answer 401 `BCK.APIKEY.0004`.
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub(crate) Address);

fn bearer(parts: &Parts) -> Option<Result<&str, ApiError>> {
    let value = parts.headers.get(http::header::AUTHORIZATION)?;
    Some(
        value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, key) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
            })
            .ok_or_else(ApiError::invalid_api_key),
    )
}

impl FromRequestParts<DevServerState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &DevServerState,
    ) -> Result<Self, Self::Rejection> {
        let key = bearer(parts).ok_or_else(ApiError::invalid_api_key)??;
        state
            .keys()
            .verify_api_key(key)
            .map(Caller)
            .ok_or_else(ApiError::invalid_api_key)
    }
}

/// Optional authentication (verify and settle tolerate a missing key, as the platform
/// does), but a key that is present must be valid.
impl OptionalFromRequestParts<DevServerState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &DevServerState,
    ) -> Result<Option<Self>, Self::Rejection> {
        match bearer(parts) {
            None => Ok(None),
            Some(key) => state
                .keys()
                .verify_api_key(key?)
                .map(|a| Some(Caller(a)))
                .ok_or_else(ApiError::invalid_api_key),
        }
    }
}
