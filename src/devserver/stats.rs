//! Per-route request counters, keyed by method and route template.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::DevServerState;

/// A snapshot of the request counters: `{"routes": {"POST /api/v1/x402/verify": 3, …}}`.
///
/// ```
/// use nvm_payments::devserver::StatsSnapshot;
/// let stats: StatsSnapshot = serde_json::from_str(r#"{"routes":{"POST /api/v1/x402/verify":3}}"#).unwrap();
/// assert_eq!(stats.get("POST /api/v1/x402/verify"), 3);
/// assert_eq!(stats.get("POST /api/v1/x402/settle"), 0);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Requests per `"METHOD /route/{template}"`.
    pub routes: BTreeMap<String, u64>,
}

impl StatsSnapshot {
    /// Requests seen for `"METHOD /route/{template}"` (0 when none).
    pub fn get(&self, route: &str) -> u64 {
        self.routes.get(route).copied().unwrap_or(0)
    }

    /// Requests seen in total.
    pub fn total(&self) -> u64 {
        self.routes.values().sum()
    }
}

/// The live counters.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stats {
    routes: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Stats {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn record(&self, key: String) {
        *self.lock().entry(key).or_insert(0) += 1;
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            routes: self.lock().clone(),
        }
    }

    pub(crate) fn reset(&self) {
        self.lock().clear();
    }
}

/// Marks a response of the 404 fallback, which no route counter counts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unrouted;

/// Middleware: counts the request under its route template once it is answered.
/// Unknown routes and the stats routes themselves are not counted.
pub(crate) async fn count(
    State(state): State<DevServerState>,
    req: Request,
    next: Next,
) -> Response {
    let key = req
        .extensions()
        .get::<MatchedPath>()
        .filter(|path| path.as_str() != "/dev/stats")
        .map(|path| format!("{} {}", req.method(), path.as_str()));
    let response = next.run(req).await;
    if let Some(key) = key {
        if response.extensions().get::<Unrouted>().is_none() {
            state.stats_counters().record(key);
        }
    }
    response
}
