//! The `PaymentRequired` of each route, built once per method and path.
//!
//! The verify/settle bodies and the `payment-required` header of a route never change,
//! so they are built once and shared afterwards. Paths come from callers, so a route
//! enters the table only once a request to it was served successfully (a junk path,
//! an unauthenticated request or a 404 never fills it), and the table is bounded: once
//! full, new paths get a route built for the request alone. The lookup is synchronous
//! and allocation-free.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::{HeaderValue, Method};
use serde::Serialize;

use super::config::{CreditsPerRequest, LayerConfig};
use crate::balance::PricedPlan;
use crate::client::{build_payment_required, PaymentRequiredOptions};
use crate::hashing::{HashMap, RandomState};
use crate::types::{Credits, PaymentRequired, PaymentResource, PaymentScheme};

/// `maxTimeoutSeconds` of the header: how long a payment stays usable for one request.
/// The charge is settled after the handler, so this bounds handler plus settle.
const MAX_TIMEOUT_SECONDS: u64 = 300;
use crate::settle::MeterRule;

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
    /// In the table already (or refused by it, or built while a plan could not be
    /// read, so with guessed terms): nothing more to remember.
    remembered: AtomicBool,
    /// How requests to it are metered, when they are.
    pub(crate) meter: Option<MeterRule>,
}

pub(crate) struct RouteCache {
    routes: RwLock<HashMap<u64, Arc<Route>>>,
    capacity: usize,
    hasher: RandomState,
}

impl RouteCache {
    pub(crate) fn new(capacity: usize) -> Self {
        RouteCache {
            routes: RwLock::new(HashMap::default()),
            capacity,
            hasher: Default::default(),
        }
    }

    /// Routes kept.
    pub(crate) fn len(&self) -> usize {
        self.routes.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The table's route of `method` + `path`, or the id to [`build`] it with.
    pub(crate) fn get(&self, method: &Method, path: &str) -> Result<Arc<Route>, u64> {
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
            Some(route) if route.method == *method && *route.path == *path => Ok(route),
            // Unknown, or a hash collision: a route for this request alone.
            _ => Err(id),
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

/// A route for this request alone, from the accepted plans (`plans[i]` is the plan of
/// `config.plan_ids[i]`, `None` when it could not be read: then the crypto scheme, as
/// payments-py falls back to, and the route is never kept).
pub(crate) fn build(
    config: &LayerConfig,
    plans: &[Option<Arc<PricedPlan>>],
    method: &Method,
    path: &str,
    id: u64,
) -> Route {
    let mut payment_required = build_payment_required(
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
    for (accepted, plan) in payment_required.accepts.iter_mut().zip(plans) {
        if let Some(plan) = plan {
            accepted.scheme = plan.terms.scheme.to_owned();
            if let Some(network) = &plan.terms.fiat_network {
                accepted.network.clone_from(network);
            }
        }
    }
    let provisional = plans.iter().any(Option::is_none);
    let advertised = Advertised {
        x402_version: payment_required.x402_version,
        resource: &payment_required.resource,
        accepts: payment_required
            .accepts
            .iter()
            .zip(plans)
            .map(|(scheme, plan)| AdvertisedScheme::new(scheme, plan.as_deref(), &config.credits))
            .collect(),
        extensions: &payment_required.extensions,
    };
    let json = serde_json::to_vec(&advertised).unwrap_or_default();
    let header = HeaderValue::try_from(STANDARD.encode(json))
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    Route {
        method: method.clone(),
        path: path.into(),
        id,
        payment_required: Arc::new(payment_required),
        header,
        remembered: AtomicBool::new(provisional),
        meter: config.meter_for(method, path),
    }
}

/// The `payment-required` header's JSON: the `PaymentRequired` with the x402 v2 fields
/// of each `accepts[]` entry.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Advertised<'a> {
    x402_version: u32,
    resource: &'a PaymentResource,
    accepts: Vec<AdvertisedScheme<'a>>,
    extensions: &'a serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AdvertisedScheme<'a> {
    #[serde(flatten)]
    scheme: &'a PaymentScheme,
    /// Credits one request spends (x402's amount "in the smallest unit").
    amount: Credits,
    asset: &'a str,
    pay_to: &'a str,
    max_timeout_seconds: u64,
}

impl<'a> AdvertisedScheme<'a> {
    fn new(
        scheme: &'a PaymentScheme,
        plan: Option<&'a PricedPlan>,
        credits: &CreditsPerRequest,
    ) -> Self {
        // A fixed price is what the plan will burn for it; a price computed per request
        // is advertised as the most a request may cost.
        let amount = match (plan, credits) {
            (Some(plan), CreditsPerRequest::Fixed(n)) => plan.credits.redemption_amount(*n),
            (Some(plan), _) => plan.credits.max_amount,
            (None, CreditsPerRequest::Fixed(n)) => *n,
            (None, _) => Credits::from(1u64),
        };
        AdvertisedScheme {
            scheme,
            amount,
            asset: plan.map_or("", |p| p.terms.asset.as_str()),
            pay_to: plan.map_or("", |p| p.terms.pay_to.as_str()),
            max_timeout_seconds: MAX_TIMEOUT_SECONDS,
        }
    }
}
