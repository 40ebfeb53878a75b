//! Fault injection: latency, error statuses and dropped connections per route prefix.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::DevServerState;

/// One injected fault. Over HTTP it is the JSON body of `POST /dev/faults`, e.g.
/// `{"route": "/api/v1/x402/settle", "method": "POST", "drop": true, "after": true, "times": 1}`.
///
/// ```
/// use nvm_payments::devserver::Fault;
/// let slow = Fault::new("/api/v1/x402/verify").latency_ms(200);
/// let down = Fault::new("/api/v1/protocol/plans").status(503).times(2);
/// let lost_reply = Fault::new("/api/v1/x402/settle").drop_connection().after_handler().times(1);
/// # let _ = (slow, down, lost_reply);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[must_use]
pub struct Fault {
    /// Path prefix the fault applies to (`/api/v1/x402/settle`). `/dev/…` is never
    /// faulted, so a test can always clear faults.
    pub route: String,
    /// Only this HTTP method (any when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Delay before anything else happens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Answer this status (in the error envelope, code `BCK.DEV.0001`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Drop the connection instead of answering.
    #[serde(default)]
    pub drop: bool,
    /// Run the handler first (the ledger changes), then apply `status` or `drop`.
    #[serde(default)]
    pub after: bool,
    /// Run the handler (the ledger changes), then wait this long before answering
    /// (or applying `status`, `drop`, `body`): a reply that is late or, if the server
    /// stops meanwhile, lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_reply_ms: Option<u64>,
    /// Answer this raw body (as `application/json`, with `status` or 200) instead of the
    /// handler's: garbage for client decoders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Apply to the next N matching requests only (forever when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
}

impl Fault {
    /// A fault on every request whose path starts with `route`; it does nothing until
    /// a latency, a status or a drop is set.
    pub fn new(route: impl Into<String>) -> Self {
        Fault {
            route: route.into(),
            method: None,
            latency_ms: None,
            status: None,
            drop: false,
            after: false,
            hold_reply_ms: None,
            body: None,
            times: None,
        }
    }

    /// Only requests with this method.
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self
    }

    /// Delay each matching request.
    pub fn latency_ms(mut self, ms: u64) -> Self {
        self.latency_ms = Some(ms);
        self
    }

    /// Answer this status instead of the handler's.
    pub fn status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Drop the connection instead of answering.
    pub fn drop_connection(mut self) -> Self {
        self.drop = true;
        self
    }

    /// Run the handler before applying the status or the drop.
    pub fn after_handler(mut self) -> Self {
        self.after = true;
        self
    }

    /// Run the handler, then hold its reply for `ms` milliseconds.
    pub fn hold_reply_ms(mut self, ms: u64) -> Self {
        self.hold_reply_ms = Some(ms);
        self
    }

    /// Answer this raw body (`application/json`) instead of the handler's.
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Only the next `n` matching requests.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    fn matches(&self, method: &http::Method, path: &str) -> bool {
        path.starts_with(&self.route)
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
    }
}

/// The active faults; a cheap handle shared with the server.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    active: Arc<Mutex<Vec<Fault>>>,
}

impl Faults {
    /// Adds a fault (replacing one with the same route and method).
    pub fn set(&self, fault: Fault) {
        let mut active = self.lock();
        active.retain(|f| !(f.route == fault.route && f.method == fault.method));
        active.push(fault);
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// The active faults.
    pub fn list(&self) -> Vec<Fault> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Fault>> {
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The fault for this request, counting it against `times`.
    fn take(&self, method: &http::Method, path: &str) -> Option<Fault> {
        if path.starts_with("/dev/") {
            return None;
        }
        let mut active = self.lock();
        let idx = active.iter().position(|f| f.matches(method, path))?;
        let fault = active[idx].clone();
        if let Some(times) = &mut active[idx].times {
            *times = times.saturating_sub(1);
            if *times == 0 {
                let _expired = active.remove(idx);
            }
        }
        Some(fault)
    }
}

/// Middleware: applies the fault matching the request, if any.
pub(crate) async fn inject(
    State(state): State<DevServerState>,
    req: Request,
    next: Next,
) -> Response {
    let Some(fault) = state.faults().take(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    if let Some(ms) = fault.latency_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let replaces_answer = fault.status.is_some() || fault.drop || fault.body.is_some();
    let handled = if fault.after || fault.hold_reply_ms.is_some() {
        // With `after`, the handler's response is discarded: only its effect remains.
        Some(next.run(req).await)
    } else if !replaces_answer {
        return next.run(req).await;
    } else {
        None
    };
    if let Some(ms) = fault.hold_reply_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if fault.drop {
        return dropped_connection();
    }
    let status = fault.status.and_then(|s| StatusCode::from_u16(s).ok());
    if let Some(body) = fault.body {
        let status = status.unwrap_or(StatusCode::OK);
        return (
            status,
            [(http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
    }
    match (status, handled) {
        (Some(status), _) => {
            ApiError::new(status, "BCK.DEV.0001", "Fault injected by the devserver").into_response()
        }
        (None, Some(response)) if !fault.after => response,
        _ => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "BCK.DEV.0001",
            "Fault injected by the devserver",
        )
        .into_response(),
    }
}

/// A response whose body fails at once: hyper then aborts the connection, so the
/// client sees a transport error, not a status.
pub(crate) fn dropped_connection() -> Response {
    let stream = futures_util::stream::once(async {
        Err::<Bytes, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "connection dropped by an injected fault",
        ))
    });
    Response::new(Body::from_stream(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_counts_down_and_dev_routes_are_exempt() {
        let faults = Faults::default();
        faults.set(Fault::new("/api").status(503).times(2));
        let get = http::Method::GET;
        assert!(faults.take(&get, "/api/v1/x").is_some());
        assert!(faults.take(&get, "/dev/stats").is_none());
        assert!(faults.take(&get, "/other").is_none());
        assert!(faults.take(&get, "/api/v1/y").is_some());
        assert!(faults.take(&get, "/api/v1/z").is_none());
    }

    #[test]
    fn method_filter() {
        let faults = Faults::default();
        faults.set(Fault::new("/api").method("post").drop_connection());
        assert!(faults.take(&http::Method::GET, "/api").is_none());
        assert!(faults.take(&http::Method::POST, "/api").is_some());
        faults.clear();
        assert!(faults.list().is_empty());
    }
}
