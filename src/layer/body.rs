//! [`PaymentBody`]: the response body of a guarded service.

use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;

use crate::settle::PendingCharge;

pin_project! {
    /// The body of a response that went through [`PaymentLayer`](super::PaymentLayer):
    /// a rejection, the inner service's body untouched, or (with
    /// [`ChargeTiming::OnBodyEnd`](super::ChargeTiming::OnBodyEnd)) the inner body
    /// passed through frame by frame, never buffered, and charged once its last frame
    /// has been read. A charging body dropped before its end, or whose inner body
    /// fails, charges nothing (its reservation is released).
    pub struct PaymentBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Rejected { #[pin] body: Full<Bytes> },
        Inner { #[pin] body: B },
        Charging { #[pin] body: B, pending: Option<PendingCharge> },
    }
}

impl<B> PaymentBody<B> {
    pub(crate) fn rejected(bytes: Bytes) -> Self {
        PaymentBody {
            kind: Kind::Rejected {
                body: Full::new(bytes),
            },
        }
    }

    pub(crate) fn inner(body: B) -> Self {
        PaymentBody {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn charging(body: B, pending: PendingCharge) -> Self {
        PaymentBody {
            kind: Kind::Charging {
                body,
                pending: Some(pending),
            },
        }
    }
}

impl<B> fmt::Debug for PaymentBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Rejected { .. } => "Rejected",
            Kind::Inner { .. } => "Inner",
            Kind::Charging { .. } => "Charging",
        };
        f.debug_tuple("PaymentBody").field(&kind).finish()
    }
}

impl<B> Body for PaymentBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Rejected { body } => body.poll_frame(cx).map_err(|never| match never {}),
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Charging { mut body, pending } => {
                let frame = ready!(body.as_mut().poll_frame(cx));
                match &frame {
                    // The last frame is out: a server that trusts `is_end_stream` will
                    // not poll again, so charge now.
                    Some(Ok(_)) if body.is_end_stream() => fire(pending),
                    Some(Ok(_)) => {}
                    None => fire(pending),
                    Some(Err(_)) => {
                        if pending.take().is_some() {
                            tracing::info!("response body failed before its end: not charged");
                        }
                    }
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Rejected { body } => body.is_end_stream(),
            Kind::Inner { body } | Kind::Charging { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Rejected { body } => body.size_hint(),
            Kind::Inner { body } | Kind::Charging { body, .. } => body.size_hint(),
        }
    }
}

fn fire(pending: &mut Option<PendingCharge>) {
    if let Some(charge) = pending.take() {
        charge.spawn();
    }
}
