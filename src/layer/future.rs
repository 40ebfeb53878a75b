//! [`ResponseFuture`] of the [`Payment`](super::Payment) service.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::Response;

use super::body::PaymentBody;

type Guarded<B, E> = BoxFuture<'static, Result<Response<PaymentBody<B>>, E>>;

/// The response future of [`Payment`](super::Payment): authentication, the balance
/// check, the inner service and (by default) the charge.
///
/// Dropping it before it completes cancels the request: the reservation is released
/// and nothing is charged, except a charge already sent, which completes on its own
/// task and is reported.
pub struct ResponseFuture<B, E> {
    /// The request's future; `None` once it has completed.
    inner: Option<Guarded<B, E>>,
    /// The request's future has sent its charge: dropped before it completes, it is
    /// moved to a task of its own so that the charge completes and is reported.
    charging: bool,
    /// Spawns the request's future (a function, since spawning needs bounds that this
    /// type does not carry).
    detach: fn(Guarded<B, E>),
}

impl<B, E> ResponseFuture<B, E> {
    pub(crate) fn new(inner: Guarded<B, E>) -> Self
    where
        B: Send + 'static,
        E: Send + 'static,
    {
        ResponseFuture {
            inner: Some(inner),
            charging: false,
            detach: detach::<B, E>,
        }
    }
}

thread_local! {
    /// Set by the request's future, during a poll, when it sends its charge in place.
    static CHARGE_SENT: Cell<bool> = const { Cell::new(false) };
}

/// Called by the request's future when it starts a charge it runs in place (no box of
/// its own, no task): from now on, dropping the `ResponseFuture` detaches the request's
/// future instead of cancelling it.
pub(super) fn charge_sent() {
    CHARGE_SENT.with(|sent| sent.set(true));
}

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<PaymentBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(inner) = self.inner.as_mut() else {
            // Polled again after its output was taken: there is nothing more to give.
            return Poll::Pending;
        };
        // Saved and restored: a `Payment` nested in the handler polls its own.
        let outer = CHARGE_SENT.with(|sent| sent.replace(false));
        let poll = inner.as_mut().poll(cx);
        if CHARGE_SENT.with(|sent| sent.replace(outer)) {
            self.charging = true;
        }
        if poll.is_ready() {
            self.inner = None;
        }
        poll
    }
}

impl<B, E> Drop for ResponseFuture<B, E> {
    fn drop(&mut self) {
        if let (true, Some(rest)) = (self.charging, self.inner.take()) {
            (self.detach)(rest);
        }
    }
}

/// Finishes a request's future whose charge was sent when its client hung up: the
/// charge completes and is reported; the response is dropped.
fn detach<B: Send + 'static, E: Send + 'static>(rest: Guarded<B, E>) {
    crate::settle::finish_on_a_task(rest);
}

impl<B, E> fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
