//! [`ResponseFuture`] of the [`Payment`](super::Payment) service.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::Response;
use pin_project_lite::pin_project;

use super::body::PaymentBody;
use super::gate::{Admission, ChargedResponse, Finish, Gate};

pin_project! {
    /// The response future of [`Payment`](super::Payment): authentication, the balance
    /// check, the inner service's future `F` and (by default) the charge.
    ///
    /// A request whose steps need not wait (a caller served lately, a fresh balance) is
    /// admitted in [`Service::call`](tower_service::Service::call) and its state stays
    /// here, in place; one that must wait (the first request of a token, a balance
    /// fetch, the charge journal) runs its steps in one boxed future.
    ///
    /// Dropping it before it completes cancels the request: the reservation is released
    /// and nothing is charged, except a charge already sent, which completes on its own
    /// task and is reported.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        state: State<F, B, E>,
    }
}

pin_project! {
    #[project = StateProj]
    #[project_replace = StateOwned]
    enum State<F, B, E> {
        /// Admitted without waiting: the handler runs; its admission waits for the
        /// response (dropped with this future, it releases the reservation).
        Handler {
            #[pin]
            handler: F,
            span: tracing::Span,
            gate: Arc<Gate>,
            admission: Admission,
        },
        /// Charged before its response: the charge is sent.
        Charging { charged: ChargedResponse<B> },
        /// A step had to wait: the request's steps, boxed.
        Guarding { rest: Detaching<Result<Response<PaymentBody<B>>, E>> },
        /// The end had to wait (the charge journal, a 404's forgetting): boxed.
        Finishing { rest: Detaching<Response<PaymentBody<B>>> },
        /// Answered without a handler (a refusal); `None` once taken.
        Answered { response: Option<Response<PaymentBody<B>>> },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    /// A request admitted at once, its handler called.
    pub(super) fn handler(
        handler: F,
        span: tracing::Span,
        gate: Arc<Gate>,
        admission: Admission,
    ) -> Self {
        ResponseFuture {
            state: State::Handler {
                handler,
                span,
                gate,
                admission,
            },
        }
    }

    /// A request refused at once.
    pub(super) fn answered(response: Response<PaymentBody<B>>) -> Self {
        ResponseFuture {
            state: State::Answered {
                response: Some(response),
            },
        }
    }

    /// A request whose steps wait: they run in `rest`.
    pub(super) fn guarding(rest: BoxFuture<'static, Result<Response<PaymentBody<B>>, E>>) -> Self
    where
        B: Send + 'static,
        E: Send + 'static,
    {
        ResponseFuture {
            state: State::Guarding {
                rest: Detaching::new(rest),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body + Send + 'static,
{
    type Output = Result<Response<PaymentBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Handler { handler, span, .. } => {
                    let output = {
                        let _entered = span.enter();
                        std::task::ready!(handler.poll(cx))
                    };
                    let done = State::Answered { response: None };
                    let StateOwned::Handler {
                        gate, admission, ..
                    } = state.as_mut().project_replace(done)
                    else {
                        unreachable!("the state was Handler a moment ago")
                    };
                    // An error drops the admission: its reservation is released.
                    match gate.finish_now(admission, output?) {
                        Finish::Ready(response) => return Poll::Ready(Ok(response)),
                        Finish::Charging(charged) => state.set(State::Charging { charged }),
                        Finish::Boxed(rest) => state.set(State::Finishing {
                            rest: Detaching::new(rest),
                        }),
                    }
                }
                StateProj::Charging { charged } => {
                    let response = std::task::ready!(Pin::new(charged).poll(cx));
                    state.set(State::Answered { response: None });
                    return Poll::Ready(Ok(response));
                }
                StateProj::Guarding { rest } => return Pin::new(rest).poll(cx),
                StateProj::Finishing { rest } => return Pin::new(rest).poll(cx).map(Ok),
                // Polled again after its output was taken: there is nothing more to give.
                StateProj::Answered { response } => {
                    return match response.take() {
                        Some(response) => Poll::Ready(Ok(response)),
                        None => Poll::Pending,
                    }
                }
            }
        }
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// A boxed rest of a request that may send its charge in place: dropped after that,
/// it is moved to a task of its own so that the charge completes and is reported.
struct Detaching<T> {
    /// `None` once it has completed.
    rest: Option<BoxFuture<'static, T>>,
    /// The rest has sent its charge.
    charging: bool,
    /// Spawns the rest (a function, since spawning needs bounds this type does not carry).
    detach: fn(BoxFuture<'static, T>),
}

impl<T: Send + 'static> Detaching<T> {
    fn new(rest: BoxFuture<'static, T>) -> Self {
        Detaching {
            rest: Some(rest),
            charging: false,
            detach: detach::<T>,
        }
    }
}

thread_local! {
    /// Set by a boxed rest, during a poll, when it sends its charge in place.
    static CHARGE_SENT: Cell<bool> = const { Cell::new(false) };
}

/// Called by a request's boxed rest when it starts a charge it runs in place (no box of
/// its own, no task): from now on, dropping the `ResponseFuture` detaches the rest
/// instead of cancelling it.
pub(super) fn charge_sent() {
    CHARGE_SENT.with(|sent| sent.set(true));
}

impl<T> Future for Detaching<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Some(rest) = self.rest.as_mut() else {
            // Polled again after its output was taken: there is nothing more to give.
            return Poll::Pending;
        };
        // Saved and restored: a `Payment` nested in the handler polls its own.
        let outer = CHARGE_SENT.with(|sent| sent.replace(false));
        let poll = rest.as_mut().poll(cx);
        if CHARGE_SENT.with(|sent| sent.replace(outer)) {
            self.charging = true;
        }
        if poll.is_ready() {
            self.rest = None;
        }
        poll
    }
}

impl<T> Drop for Detaching<T> {
    fn drop(&mut self) {
        if let (true, Some(rest)) = (self.charging, self.rest.take()) {
            (self.detach)(rest);
        }
    }
}

/// Finishes a request's rest whose charge was sent when its client hung up: the charge
/// completes and is reported; the response is dropped.
fn detach<T: Send + 'static>(rest: BoxFuture<'static, T>) {
    crate::settle::finish_on_a_task(rest);
}
