//! [`ResponseFuture`] of the [`Payment`](super::Payment) service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::Response;

use super::body::PaymentBody;

/// The response future of [`Payment`](super::Payment): authentication, the balance
/// check, the inner service and (by default) the charge.
///
/// Dropping it before it completes cancels the request: the reservation is released
/// and nothing is charged, except a charge already sent, which completes on its own
/// task and is reported.
pub struct ResponseFuture<B, E> {
    pub(crate) inner: BoxFuture<'static, Result<Response<PaymentBody<B>>, E>>,
}

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<PaymentBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<B, E> fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
