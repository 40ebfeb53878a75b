//! The `PaymentRequired` of each route, built once per method and path.
//!
//! The verify/settle bodies and the `payment-required` header of a route never change,
//! so they are built on the first request to it and shared afterwards (a bounded cache:
//! paths come from callers).

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::{HeaderValue, Method};
use moka::future::Cache;

use super::config::LayerConfig;
use crate::client::{build_payment_required, PaymentRequiredOptions};
use crate::types::PaymentRequired;

/// One protected method + path.
#[derive(Debug)]
pub(crate) struct Route {
    method: Method,
    path: Box<str>,
    /// A hash of method and path: the route part of verification keys.
    pub(crate) id: u64,
    pub(crate) payment_required: PaymentRequired,
    /// `payment-required` header value (standard base64 of the JSON).
    pub(crate) header: HeaderValue,
}

pub(crate) struct RouteCache {
    routes: Cache<u64, Arc<Route>>,
    hasher: std::collections::hash_map::RandomState,
}

impl RouteCache {
    pub(crate) fn new(capacity: u64) -> Self {
        RouteCache {
            routes: Cache::builder().max_capacity(capacity).build(),
            hasher: Default::default(),
        }
    }

    pub(crate) async fn get(
        &self,
        config: &LayerConfig,
        method: &Method,
        path: &str,
    ) -> Arc<Route> {
        let mut h = self.hasher.build_hasher();
        method.hash(&mut h);
        path.hash(&mut h);
        let id = h.finish();
        let route = match self.routes.get(&id).await {
            Some(route) => route,
            None => {
                self.routes
                    .get_with(id, async { Arc::new(build(config, method, path, id)) })
                    .await
            }
        };
        if route.method == *method && *route.path == *path {
            route
        } else {
            // A hash collision: serve this request with its own, uncached route.
            Arc::new(build(config, method, path, id))
        }
    }
}

fn build(config: &LayerConfig, method: &Method, path: &str, id: u64) -> Route {
    let payment_required = build_payment_required(
        &config.plan_ids,
        config.environment,
        &PaymentRequiredOptions {
            endpoint: Some(path.to_owned()),
            agent_id: config.agent_id.clone(),
            http_verb: Some(method.as_str().to_owned()),
            description: config.description.clone(),
            mime_type: config.mime_type.clone(),
            ..Default::default()
        },
    );
    let json = serde_json::to_vec(&payment_required).unwrap_or_default();
    let header = HeaderValue::try_from(STANDARD.encode(json))
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    Route {
        method: method.clone(),
        path: path.into(),
        id,
        payment_required,
        header,
    }
}
