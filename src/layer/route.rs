//! The `PaymentRequired` of each route, built once per method and path.
//!
//! The verify/settle bodies and the `payment-required` header of a route never change,
//! so they are built once and shared afterwards. Paths come from callers, so a route
//! enters the table only once a request to it was served successfully (a junk path,
//! an unauthenticated request or a 404 never fills it), and the table is bounded: once
//! full, new paths get a route built for the request alone. The lookup is synchronous
//! and allocation-free.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::{HeaderValue, Method};

use super::config::LayerConfig;
use crate::client::{build_payment_required, PaymentRequiredOptions};
use crate::settle::MeterRule;
use crate::types::PaymentRequired;

/// One protected method + path.
#[derive(Debug)]
pub(crate) struct Route {
    method: Method,
    path: Box<str>,
    /// A hash of method and path: the route part of verification keys.
    pub(crate) id: u64,
    pub(crate) payment_required: Arc<PaymentRequired>,
    /// `payment-required` header value (standard base64 of the JSON).
    pub(crate) header: HeaderValue,
    /// In the table already (or refused by it): nothing more to remember.
    remembered: AtomicBool,
    /// How requests to it are metered, when they are.
    pub(crate) meter: Option<MeterRule>,
}

pub(crate) struct RouteCache {
    routes: RwLock<HashMap<u64, Arc<Route>>>,
    capacity: usize,
    hasher: std::collections::hash_map::RandomState,
}

impl RouteCache {
    pub(crate) fn new(capacity: usize) -> Self {
        RouteCache {
            routes: RwLock::new(HashMap::new()),
            capacity,
            hasher: Default::default(),
        }
    }

    /// Routes kept.
    pub(crate) fn len(&self) -> usize {
        self.routes.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The route of `method` + `path`: the table's, or one built for this request.
    pub(crate) fn get(&self, config: &LayerConfig, method: &Method, path: &str) -> Arc<Route> {
        let mut h = self.hasher.build_hasher();
        method.hash(&mut h);
        path.hash(&mut h);
        let id = h.finish();
        let known = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned();
        match known {
            Some(route) if route.method == *method && *route.path == *path => route,
            // Unknown, or a hash collision: a route for this request alone.
            _ => Arc::new(build(config, method, path, id)),
        }
    }

    /// Keeps `route` for the next requests: called once a request to it was charged,
    /// so only paths that really serve paid work take a place.
    pub(crate) fn remember(&self, route: &Arc<Route>) {
        if route.remembered.swap(true, Ordering::Relaxed) {
            return;
        }
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        if routes.len() < self.capacity {
            routes.entry(route.id).or_insert_with(|| route.clone());
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
        payment_required: Arc::new(payment_required),
        header,
        remembered: AtomicBool::new(false),
        meter: config.meter_for(method, path),
    }
}
