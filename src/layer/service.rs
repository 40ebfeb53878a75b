//! [`Payment`]: the service that guards an inner service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tower_service::Service;
use tracing::Instrument;

use super::body::PaymentBody;
use super::future::ResponseFuture;
use super::gate::{Admission, Finish, Gate};

/// Guards the inner service `S`: only requests that authenticate and can pay reach it,
/// and successful ones are charged. Built by [`PaymentLayer`](super::PaymentLayer).
pub struct Payment<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S> Payment<S> {
    pub(crate) fn new(inner: S, gate: Arc<Gate>) -> Self {
        Payment { inner, gate }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone> Clone for Payment<S> {
    fn clone(&self) -> Self {
        Payment {
            inner: self.inner.clone(),
            gate: self.gate.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Payment<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Payment")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Payment<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<PaymentBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        // Take the service that was driven to readiness; leave a clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (mut parts, body) = request.into_parts();
        // A warm caller is admitted here, without waiting, and its request's state then
        // stays in the response future: no box, and nothing moved from step to step.
        // Any other request runs the same steps in one boxed future (`guard`).
        match self.gate.admit_now(&parts) {
            Some((_, Ok(admission))) => {
                parts.extensions.insert(admission.context.clone());
                let span = handler_span(&admission);
                let handler = span.in_scope(|| inner.call(Request::from_parts(parts, body)));
                ResponseFuture::handler(handler, span, self.gate.clone(), admission)
            }
            Some((route, Err(rejection))) => {
                tracing::debug!(code = rejection.kind.code(), "request refused");
                ResponseFuture::answered(self.gate.reject(rejection, &route))
            }
            None => {
                ResponseFuture::guarding(Box::pin(guard(self.gate.clone(), inner, parts, body)))
            }
        }
    }
}

/// The `debug` span the handler runs in.
fn handler_span(admission: &Admission) -> tracing::Span {
    tracing::debug_span!("nvm.handler", request_id = admission.context.request_id())
}

/// The request's steps when one of them must wait (see [`ResponseFuture`]). An `async`
/// block built by a plain function, not an `async fn`: an `async fn` copies its
/// arguments into locals of its future, which then held the request's head twice.
// Written out by hand on purpose: see above.
#[allow(clippy::manual_async_fn)]
fn guard<S, ReqB, ResB>(
    gate: Arc<Gate>,
    mut inner: S,
    mut parts: http::request::Parts,
    body: ReqB,
) -> impl std::future::Future<Output = Result<Response<PaymentBody<ResB>>, S::Error>>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: http_body::Body + Send + 'static,
{
    async move {
        let route = gate.route(&parts).await;
        let admission = match gate.admit(&parts, &route).await {
            Ok(admission) => admission,
            Err(rejection) => {
                tracing::debug!(code = rejection.kind.code(), "request refused");
                return Ok(gate.reject(rejection, &route));
            }
        };
        parts.extensions.insert(admission.context.clone());
        let span = handler_span(&admission);
        // An error or a panic here drops `admission`: its reservation is released.
        let response = inner
            .call(Request::from_parts(parts, body))
            .instrument(span)
            .await?;
        Ok(match gate.finish_now(admission, response) {
            Finish::Ready(response) => response,
            Finish::Charging(charged) => charged.await,
            Finish::Boxed(rest) => rest.await,
        })
    }
}
