//! [`PaymentBody`]: the response body of a guarded service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tokio::task::JoinHandle;

use super::receipt::receipt_header;
use super::rejection::PAYMENT_RESPONSE;
use crate::balance::metered_charge;
use crate::settle::{Meter, MeterRule, PendingCharge, SettleOutcome};
use crate::types::PlanCreditsConfig;

pin_project! {
    /// The body of a response that went through [`PaymentLayer`](super::PaymentLayer):
    /// a rejection, the inner service's body untouched, or (with
    /// [`ChargeTiming::OnBodyEnd`](super::ChargeTiming::OnBodyEnd)) the inner body
    /// passed through frame by frame, never buffered, and charged once its last frame
    /// has been read. A charging body dropped before its end, or whose inner body
    /// fails, charges nothing (its reservation is released).
    ///
    /// A **metered** body (a route with a [`MeterRule`](crate::MeterRule)) is also
    /// passed through unbuffered and charged what its meter reached at its end; dropped
    /// before its end or failed, it is charged what the meter reached by then. With
    /// `receipt_at_stream_end` it ends with the receipt: a `payment-response` SSE event
    /// or HTTP trailer.
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
        // The charges are boxed: they are rare, and a response moves several times
        // on every request (hundreds of bytes copied each time otherwise).
        Charging { #[pin] body: B, pending: Option<Box<PendingCharge>> },
        Metered { #[pin] body: B, state: Box<MeteredState> },
    }
}

/// What a metered body keeps besides its inner body.
struct MeteredState {
    charge: MeteredCharge,
    /// The charge sent at the end, awaited for its receipt.
    receipt: Option<JoinHandle<SettleOutcome>>,
    /// Trailers of the inner body, held back to carry the receipt too.
    trailers: Option<HeaderMap>,
    /// The inner body has ended: it is not polled again.
    ended: bool,
}

/// Where a metered stream's receipt goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReceiptAt {
    /// Not sent: the body ends with the inner body.
    Nowhere,
    /// A last SSE event `event: payment-response`.
    SseEvent,
    /// An HTTP trailer `payment-response`.
    Trailer,
}

/// The charge of a metered request, decided when its body ends, fails or is dropped.
pub(crate) struct MeteredCharge {
    pending: Option<PendingCharge>,
    meter: Meter,
    rule: MeterRule,
    plan: Arc<PlanCreditsConfig>,
    receipt_at: ReceiptAt,
}

impl MeteredCharge {
    pub(crate) fn new(
        pending: PendingCharge,
        meter: Meter,
        rule: MeterRule,
        plan: Arc<PlanCreditsConfig>,
        receipt_at: ReceiptAt,
    ) -> Self {
        MeteredCharge {
            pending: Some(pending),
            meter,
            rule,
            plan,
            receipt_at,
        }
    }

    /// Reads the meter (closing it) and charges what it reached, clamped by the plan
    /// and the reservation, once; the rest of the reservation is released at once.
    pub(crate) fn fire(&mut self, why: &'static str) -> Option<JoinHandle<SettleOutcome>> {
        let mut pending = self.pending.take()?;
        let units = self.meter.close();
        let reserved = pending.reservation.amount();
        let credits = metered_charge(&self.plan, self.rule.credits(units), reserved);
        tracing::debug!(units, credits = %credits, why, "metered request charged");
        if credits.is_zero() {
            // Dropped: the reservation is released, nothing is charged.
            return None;
        }
        pending.charge_credits(credits);
        pending.spawn()
    }
}

impl Drop for MeteredCharge {
    fn drop(&mut self) {
        // The client went away mid-stream: it pays for what it was sent.
        if self.pending.is_some() {
            tracing::info!("metered response dropped before its end: charged what was metered");
            self.fire("dropped");
        }
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

    pub(crate) fn metered(body: B, charge: MeteredCharge) -> Self {
        PaymentBody {
            kind: Kind::Metered {
                body,
                state: Box::new(MeteredState {
                    charge,
                    receipt: None,
                    trailers: None,
                    ended: false,
                }),
            },
        }
    }

    pub(crate) fn charging(body: B, pending: PendingCharge) -> Self {
        PaymentBody {
            kind: Kind::Charging {
                body,
                pending: Some(Box::new(pending)),
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
            Kind::Metered { .. } => "Metered",
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
            KindProj::Metered { mut body, state } => loop {
                let MeteredState {
                    charge,
                    receipt,
                    trailers,
                    ended,
                } = &mut **state;
                if let Some(handle) = receipt.as_mut() {
                    let outcome = ready!(Pin::new(handle).poll(cx));
                    *receipt = None;
                    let value = outcome
                        .ok()
                        .and_then(|o| o.receipt)
                        .and_then(|r| receipt_header(&r));
                    return Poll::Ready(receipt_frame(charge.receipt_at, value, trailers.take()));
                }
                if *ended {
                    return Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))));
                }
                match ready!(body.as_mut().poll_frame(cx)) {
                    Some(Ok(frame)) => {
                        let last = body.is_end_stream();
                        if last {
                            *ended = true;
                            *receipt = charge
                                .fire("end")
                                .filter(|_| charge.receipt_at != ReceiptAt::Nowhere);
                        }
                        if charge.receipt_at != ReceiptAt::Nowhere && frame.is_trailers() {
                            *trailers = frame.into_trailers().ok();
                            continue;
                        }
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    None => {
                        *ended = true;
                        *receipt = charge
                            .fire("end")
                            .filter(|_| charge.receipt_at != ReceiptAt::Nowhere);
                    }
                    Some(Err(err)) => {
                        // The head said success: the units sent so far are charged,
                        // as for a client that went away.
                        *ended = true;
                        tracing::info!("metered response body failed: charged what was metered");
                        charge.fire("failed");
                        return Poll::Ready(Some(Err(err)));
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Rejected { body } => body.is_end_stream(),
            Kind::Inner { body } | Kind::Charging { body, .. } => body.is_end_stream(),
            Kind::Metered { body, state } => {
                if state.charge.receipt_at == ReceiptAt::Nowhere {
                    state.ended || body.is_end_stream()
                } else {
                    state.ended && state.receipt.is_none() && state.trailers.is_none()
                }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Rejected { body } => body.size_hint(),
            Kind::Inner { body } | Kind::Charging { body, .. } => body.size_hint(),
            // A receipt adds bytes (or trailers, which need chunked encoding): no
            // exact length.
            Kind::Metered { body, state } if state.charge.receipt_at != ReceiptAt::Nowhere => {
                let mut hint = SizeHint::new();
                hint.set_lower(body.size_hint().lower());
                hint
            }
            Kind::Metered { body, .. } => body.size_hint(),
        }
    }
}

/// The last frame of a metered stream that carries its receipt.
fn receipt_frame<E>(
    at: ReceiptAt,
    value: Option<HeaderValue>,
    trailers: Option<HeaderMap>,
) -> Option<Result<Frame<Bytes>, E>> {
    match (at, value) {
        (ReceiptAt::SseEvent, Some(value)) => {
            // Inner trailers, if any, are lost here: an SSE stream carries none.
            let event = format!(
                "event: {PAYMENT_RESPONSE}\ndata: {}\n\n",
                String::from_utf8_lossy(value.as_bytes())
            );
            Some(Ok(Frame::data(Bytes::from(event))))
        }
        (ReceiptAt::Trailer, Some(value)) => {
            let mut trailers = trailers.unwrap_or_default();
            trailers.insert(PAYMENT_RESPONSE, value);
            Some(Ok(Frame::trailers(trailers)))
        }
        (_, _) => trailers.map(|t| Ok(Frame::trailers(t))),
    }
}

fn fire(pending: &mut Option<Box<PendingCharge>>) {
    if let Some(charge) = pending.take() {
        charge.spawn();
    }
}
