//! HTTP handlers, one file per area of the API.

pub(crate) mod agents;
pub(crate) mod delegation;
pub(crate) mod dev;
pub(crate) mod info;
pub(crate) mod plans;
pub(crate) mod x402;

use std::str::FromStr;

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::request::Parts;
use http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::ApiError;
use crate::types::{Address, AgentId, PlanId};

/// Path parameters whose rejection is an envelope.
pub(crate) struct Params<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| Params(t))
            .map_err(|e: PathRejection| ApiError::validation(e.body_text()))
    }
}

/// A plan id from the path; anything that is not one is an unknown plan (404).
pub(crate) fn plan_id(raw: &str) -> Result<PlanId, ApiError> {
    PlanId::from_str(raw).map_err(|_| ApiError::plan_not_found())
}

/// An agent id from the path; anything that is not one is an unknown agent (404).
pub(crate) fn agent_id(raw: &str) -> Result<AgentId, ApiError> {
    AgentId::from_str(raw).map_err(|_| ApiError::agent_not_found())
}

/// An address from the path (400 when malformed).
pub(crate) fn address(raw: &str) -> Result<Address, ApiError> {
    Address::from_str(raw).map_err(|_| ApiError::validation(format!("`{raw}` is not an address")))
}

/// 201 with a JSON body, as Nest answers POST.
pub(crate) fn created<T: Serialize>(body: T) -> Response {
    (StatusCode::CREATED, Json(body)).into_response()
}

/// `page`, `offset` / `pageSize` of list queries; lenient like Nest (bad values fall
/// back to the defaults).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Paging {
    pub(crate) page: u64,
    pub(crate) size: u64,
}

impl Paging {
    pub(crate) fn from_query(query: Option<&str>, default_size: u64) -> Self {
        let mut paging = Paging {
            page: 1,
            size: default_size,
        };
        for pair in query.unwrap_or("").split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let Ok(v) = v.parse::<u64>() else { continue };
            match k {
                "page" if v > 0 => paging.page = v,
                "offset" | "pageSize" if v > 0 => paging.size = v.min(1000),
                _ => {}
            }
        }
        paging
    }

    /// The items of this page.
    pub(crate) fn slice<T: Clone>(&self, items: &[T]) -> Vec<T> {
        let start =
            usize::try_from((self.page - 1).saturating_mul(self.size)).unwrap_or(usize::MAX);
        let size = usize::try_from(self.size).unwrap_or(usize::MAX);
        items.iter().skip(start).take(size).cloned().collect()
    }
}
