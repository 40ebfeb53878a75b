//! What the handler learns about the paying caller: [`PaymentContext`], and how it
//! changes the charge: [`ChargeOverride`].

use std::fmt;
use std::sync::Arc;

use crate::auth::Caller;
use crate::settle::Meter;
use crate::types::{Address, AgentId, Credits, PlanId};

/// The paid request, in the request extensions of every request the layer admits.
///
/// With the `axum` feature it is an extractor; without the layer it answers 500
/// "PaymentLayer is not installed" (and `Option<PaymentContext>` is `None`).
/// Cloning is cheap.
#[derive(Clone)]
pub struct PaymentContext {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    caller: Arc<Caller>,
    request_id: String,
    credits: Credits,
    balance_seen: Credits,
    /// Present when the layer charges this request by usage.
    meter: Option<Meter>,
}

impl PaymentContext {
    pub(crate) fn new(
        caller: Arc<Caller>,
        request_id: String,
        credits: Credits,
        balance_seen: Credits,
        meter: Option<Meter>,
    ) -> Self {
        PaymentContext {
            inner: Arc::new(ContextInner {
                caller,
                request_id,
                credits,
                balance_seen,
                meter,
            }),
        }
    }

    /// The request id, taken without a copy when no clone of this context is left (the
    /// handler has dropped its request): the charge is the last to need it.
    pub(crate) fn into_request_id(self) -> String {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner.request_id,
            Err(shared) => shared.request_id.clone(),
        }
    }

    /// The subscriber paying for this request.
    pub fn subscriber(&self) -> &Address {
        &self.inner.caller.subscriber
    }

    /// The plan paying for it.
    pub fn plan_id(&self) -> &PlanId {
        &self.inner.caller.plan_id
    }

    /// The agent, when the token or the layer names one.
    pub fn agent_id(&self) -> Option<&AgentId> {
        self.inner.caller.agent_id.as_ref()
    }

    /// The request id: the `agentRequestId` the charge will carry (its idempotency key).
    pub fn request_id(&self) -> &str {
        &self.inner.request_id
    }

    /// Credits reserved for this request, the most it can be charged: what the plan
    /// will burn for the configured credits (docs/wire-notes.md §3.4).
    pub fn credits(&self) -> Credits {
        self.inner.credits
    }

    /// Credits available to the subscriber when the request was admitted (this
    /// process's view: the last fetched balance minus charges and reservations since).
    pub fn balance_seen(&self) -> Credits {
        self.inner.balance_seen
    }

    /// The authenticated caller.
    pub fn caller(&self) -> &Caller {
        &self.inner.caller
    }

    /// The meter of this request: count the units produced with
    /// [`Meter::add`](crate::Meter::add) (clone it into the streaming task) and the layer
    /// charges them when the body ends or the client goes away, by the route's
    /// [`MeterRule`](crate::MeterRule).
    ///
    /// On a request that is not metered (no rule for its route, or a fixed-credits plan,
    /// whose backend burns the fixed amount whatever is asked) it is a
    /// [detached](crate::Meter::detached) meter nobody reads: see
    /// [`is_metered`](Self::is_metered).
    pub fn meter(&self) -> Meter {
        self.inner.meter.clone().unwrap_or_else(Meter::detached)
    }

    /// Whether this request is charged by its meter. When it is,
    /// [`credits`](Self::credits) is the most it can be charged (the reservation).
    pub fn is_metered(&self) -> bool {
        self.inner.meter.is_some()
    }
}

impl fmt::Debug for PaymentContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PaymentContext")
            .field("subscriber", self.subscriber())
            .field("plan_id", self.plan_id())
            .field("agent_id", &self.agent_id())
            .field("request_id", &self.request_id())
            .field("credits", &self.credits())
            .field("balance_seen", &self.balance_seen())
            .field("meter", &self.inner.meter)
            .finish()
    }
}

/// Put in the **response** extensions to charge a different amount than reserved
/// (dynamic pricing). The layer charges what the plan burns for it, never more than
/// [`PaymentContext::credits`]; `ChargeOverride(Credits::ZERO)` charges nothing.
///
/// ```
/// use http::Response;
/// use nvm_payments::{ChargeOverride, Credits};
/// let mut response = Response::new(String::from("short answer"));
/// response.extensions_mut().insert(ChargeOverride(Credits::from(2u64)));
/// ```
///
/// With axum, return it as part of the response: `(ChargeOverride(c), body)` or
/// `axum::Extension(ChargeOverride(c))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChargeOverride(pub Credits);

#[cfg(feature = "axum")]
mod extract {
    use std::convert::Infallible;

    use axum::extract::{FromRequestParts, OptionalFromRequestParts};
    use axum::response::{IntoResponse, IntoResponseParts, Response, ResponseParts};
    use http::request::Parts;
    use http::StatusCode;

    use super::{ChargeOverride, PaymentContext};

    /// The rejection of the [`PaymentContext`] extractor when no layer put one in the
    /// request: 500, "PaymentLayer is not installed".
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct MissingPaymentContext;

    impl IntoResponse for MissingPaymentContext {
        fn into_response(self) -> Response {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "PaymentLayer is not installed on this route",
            )
                .into_response()
        }
    }

    impl<S: Send + Sync> FromRequestParts<S> for PaymentContext {
        type Rejection = MissingPaymentContext;

        async fn from_request_parts(
            parts: &mut Parts,
            _state: &S,
        ) -> Result<Self, Self::Rejection> {
            parts
                .extensions
                .get::<PaymentContext>()
                .cloned()
                .ok_or(MissingPaymentContext)
        }
    }

    impl<S: Send + Sync> OptionalFromRequestParts<S> for PaymentContext {
        type Rejection = Infallible;

        async fn from_request_parts(
            parts: &mut Parts,
            _state: &S,
        ) -> Result<Option<Self>, Self::Rejection> {
            Ok(parts.extensions.get::<PaymentContext>().cloned())
        }
    }

    impl IntoResponseParts for ChargeOverride {
        type Error = Infallible;

        fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
            res.extensions_mut().insert(self);
            Ok(res)
        }
    }
}

#[cfg(feature = "axum")]
pub use extract::MissingPaymentContext;
