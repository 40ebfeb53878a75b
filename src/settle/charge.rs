//! The charge of one served request: settle or redeem, retried only when safe.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use super::journal::JournalTicket;
use super::{InFlight, OnSettle, PendingCharges, SettleOutcome, SettleStatus};
use crate::auth::{Caller, SingleUseClaim};
use crate::backend::PaymentBackend;
use crate::balance::Reservation;
use crate::client::Error;
use crate::metrics::ChargeMetrics;
use crate::types::{Credits, NvmApiResult, PaymentRequired, SettleResponse};

/// How a charge whose error is safe to retry is retried: exponential backoff from
/// `initial_backoff`, doubled up to `max_backoff`, at most `max_attempts` calls, and
/// no new attempt once `max_elapsed` would be exceeded. Every attempt reuses the same
/// `agentRequestId`, so the backend charges at most once.
///
/// ```
/// use std::time::Duration;
/// use nvm_payments::settle::RetryPolicy;
/// let quick = RetryPolicy { initial_backoff: Duration::from_millis(10), ..RetryPolicy::default() };
/// assert_eq!(quick.max_attempts, 6);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait before the second attempt (default 100 ms).
    pub initial_backoff: Duration,
    /// Longest wait between attempts (default 2 s).
    pub max_backoff: Duration,
    /// Total time after which no new attempt starts (default 15 s).
    pub max_elapsed: Duration,
    /// Most calls, the first included (default 6).
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            max_elapsed: Duration::from_secs(15),
            max_attempts: 6,
        }
    }
}

impl RetryPolicy {
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1");
        }
        if self.initial_backoff > self.max_backoff {
            return Err("initial_backoff must not exceed max_backoff");
        }
        Ok(())
    }
}

/// The backend call that charges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ChargeMethod {
    Settle,
    Redeem,
}

/// Everything one charge needs; no reference to the request or the response.
pub(crate) struct Charge {
    pub(crate) backend: Arc<dyn PaymentBackend>,
    pub(crate) method: ChargeMethod,
    /// What the charge pays for: the route's `paymentRequired`.
    pub(crate) payment_required: Arc<PaymentRequired>,
    pub(crate) caller: Arc<Caller>,
    pub(crate) request_id: String,
    pub(crate) credits: Credits,
    pub(crate) retry: RetryPolicy,
}

/// What the backend calls of one charge came to.
pub(super) struct Sent {
    pub(super) status: SettleStatus,
    pub(super) receipt: Option<SettleResponse>,
    pub(super) reason: Option<String>,
    pub(super) attempts: u32,
    /// The backend never gave a final answer (unknown outcome, or unreachable until
    /// the retry window closed): a journaled charge stays for a replay.
    pub(super) retry_later: bool,
}

impl Charge {
    async fn call_once(&self) -> Result<SettleResponse, Error> {
        match self.method {
            ChargeMethod::Settle => {
                self.backend
                    .settle(
                        &self.payment_required,
                        self.caller.credential.token(),
                        Some(self.credits),
                        &self.request_id,
                    )
                    .await
            }
            ChargeMethod::Redeem => {
                let result = self
                    .backend
                    .redeem(
                        &self.request_id,
                        &self.caller.plan_id,
                        &self.caller.subscriber,
                        self.credits,
                    )
                    .await?;
                Ok(self.redeem_receipt(result))
            }
        }
    }

    fn redeem_receipt(&self, result: NvmApiResult) -> SettleResponse {
        SettleResponse {
            success: result.success,
            error_reason: (!result.success).then(|| {
                result
                    .message
                    .unwrap_or_else(|| "redeem refused".to_owned())
            }),
            payer: Some(self.caller.subscriber.clone()),
            transaction: result.tx_hash.unwrap_or_default(),
            network: String::new(),
            credits_redeemed: result.success.then_some(self.credits),
            remaining_balance: None,
            order_tx: None,
        }
    }

    pub(super) async fn send(&self, metrics: &ChargeMetrics) -> Sent {
        let started = Instant::now();
        let mut backoff = self.retry.initial_backoff;
        let mut maybe_applied = false;
        let mut attempts = 0;
        loop {
            attempts += 1;
            #[cfg(feature = "metrics")]
            let call_started = if attempts == 1 {
                started
            } else {
                Instant::now()
            };
            let answer = self.call_once().await;
            // Without the feature, no clock read for a duration nobody records.
            #[cfg(feature = "metrics")]
            metrics.charge_call(self.method == ChargeMethod::Redeem, call_started.elapsed());
            #[cfg(not(feature = "metrics"))]
            let _ = metrics;
            let err = match answer {
                Ok(receipt) if receipt.success => {
                    return Sent {
                        status: SettleStatus::Settled,
                        receipt: Some(receipt),
                        reason: None,
                        attempts,
                        retry_later: false,
                    }
                }
                Ok(receipt) => {
                    return Sent {
                        status: SettleStatus::Failed,
                        reason: Some(
                            receipt
                                .error_reason
                                .clone()
                                .unwrap_or_else(|| "the backend refused the charge".to_owned()),
                        ),
                        receipt: Some(receipt),
                        attempts,
                        retry_later: false,
                    }
                }
                Err(err) => err,
            };
            // A 2xx whose body does not decode: the backend answered, so it may well
            // have charged; only a retry with the same id can tell.
            let unreadable = matches!(err, Error::Decode { .. });
            maybe_applied |= err.is_outcome_unknown() || unreadable;
            let retryable = err.is_transient() || err.is_outcome_unknown() || unreadable;
            let in_window = started.elapsed() + backoff <= self.retry.max_elapsed;
            if retryable && attempts < self.retry.max_attempts && in_window {
                tracing::debug!(attempt = attempts, error = %err, "charge failed; retrying with the same request id");
                crate::metrics::charge_retried();
                // Boxed: a timer is large, and only a retry needs one.
                Box::pin(tokio::time::sleep(backoff)).await;
                backoff = (backoff * 2).min(self.retry.max_backoff);
                continue;
            }
            return Sent {
                status: if maybe_applied {
                    SettleStatus::Unknown
                } else {
                    SettleStatus::Failed
                },
                receipt: None,
                reason: Some(err.to_string()),
                attempts,
                retry_later: retryable,
            };
        }
    }
}

/// A charge together with the credits reserved for it. Dropped without running, it
/// releases the reservation and charges nothing.
pub(crate) struct PendingCharge {
    pub(crate) charge: Charge,
    pub(crate) reservation: Reservation,
    /// For a single-use token: spent once the charge is sent, whatever its outcome.
    pub(crate) single_use: Option<SingleUseClaim>,
    pub(crate) hook: Option<Arc<dyn OnSettle>>,
    /// The layer's charges in flight: this charge counts there from the moment it is
    /// sent (not while a stream it waits for is being read) until it has ended.
    pub(crate) pending: Arc<PendingCharges>,
    /// Its entry in the charge journal, when the layer has one and it was written.
    pub(crate) journal: Option<JournalTicket>,
}

impl PendingCharge {
    /// Sets the amount once it is known (a metered request, at its body's end) and
    /// gives back at once the part of the reservation it does not use.
    pub(crate) fn charge_credits(&mut self, credits: Credits) {
        self.reservation.shrink_to(credits);
        self.charge.credits = credits;
    }

    /// Registers the charge among those in flight: it is about to be sent. (By
    /// reference: moving the whole charge in and out again cost two copies of it.)
    fn start(&mut self) -> InFlight {
        let in_flight = self.pending.enter(&self.charge.request_id);
        if let Some(ticket) = &mut self.journal {
            ticket.sending();
        }
        in_flight
    }

    /// Sends the charge, settles the reservation, logs and reports the outcome.
    ///
    /// An `async` block, not an `async fn`: an `async fn` copies its `mut self` into
    /// a local of its future, which then held the 328-byte charge twice (1 160 bytes,
    /// over the allocator's thread cache for the boxed charges of MCP calls and
    /// `Background` responses); captured, it is used in place.
    // Written out by hand on purpose: see above.
    #[allow(clippy::manual_async_fn)]
    fn execute(
        mut self,
        in_flight: InFlight,
    ) -> impl Future<Output = SettleOutcome> + Send + 'static {
        async move {
            // Fields used in place, not destructured into locals: the locals would be a
            // second copy of the charge in this future's state, which is boxed per request.
            // Spent before the first call: a replay arriving while this charge is sent
            // must not be admitted.
            if let Some(claim) = self.single_use.take() {
                claim.spend();
            }
            // A debug span: at `info` a settled charge costs no span and no log line; the
            // failed and unknown ones carry their request id themselves (log_outcome).
            let span = tracing::debug_span!(
                "nvm.settle",
                token = %self.charge.caller.token_digest,
                request_id = %self.charge.request_id,
                credits = %self.charge.credits,
            );
            let sent = self
                .charge
                .send(&self.pending.metrics)
                .instrument(span.clone())
                .await;
            if let Some(ticket) = self.journal.take() {
                ticket.end(!sent.retry_later);
            }
            let credits = self.charge.credits;
            let burned = sent
                .receipt
                .as_ref()
                .and_then(|r| r.credits_redeemed)
                .unwrap_or(credits);
            match sent.status {
                SettleStatus::Settled => self.reservation.commit(burned, false),
                // Our view of the balance disagreed with the backend's: learn it again.
                SettleStatus::Failed => self.reservation.release(true),
                // It may have burned: count it, and learn the truth at the next fetch.
                SettleStatus::Unknown => self.reservation.commit(credits, true),
            }
            let outcome = SettleOutcome {
                status: sent.status,
                request_id: self.charge.request_id,
                plan_id: self.charge.caller.plan_id.clone(),
                subscriber: self.charge.caller.subscriber.clone(),
                credits,
                attempts: sent.attempts,
                receipt: sent.receipt,
                reason: sent.reason,
                retry_later: sent.retry_later,
            };
            span.in_scope(|| log_outcome(&outcome));
            self.pending
                .metrics
                .outcome(outcome.status, outcome.is_settled().then_some(burned));
            in_flight.finish(outcome.status);
            if let Some(hook) = self.hook {
                hook.on_settle(&outcome);
            }
            outcome
        }
    }

    /// Runs the charge on its own task, so it completes (and is reported) even when
    /// the request future or the body that started it is dropped.
    pub(crate) fn spawn(self) -> Option<JoinHandle<SettleOutcome>> {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let mut charge = self;
                let in_flight = charge.start();
                Some(handle.spawn(charge.execute(in_flight)))
            }
            Err(_) => {
                tracing::error!(
                    request_id = %self.charge.request_id,
                    "no tokio runtime to charge on: the request is not charged"
                );
                None
            }
        }
    }

    /// Runs the charge in the caller's future, which must itself be completed once it
    /// has polled this (the layer's `ResponseFuture` moves the request's future to its
    /// own task when it is dropped mid-charge): no allocation of its own.
    pub(crate) fn run_in_place(mut self) -> impl Future<Output = SettleOutcome> + Send {
        let in_flight = self.start();
        self.execute(in_flight)
    }

    /// Sends the charge from the caller's task as far as it goes without waiting, and
    /// moves the rest to its own task only if it has to wait (a backend over the
    /// network). With a charge journal, a `Background` response is released once its
    /// charge is durable or final: an instant backend (in process) makes it final
    /// here, before the response asks, so the journal has nothing to wait for and no
    /// thread to wake; a spawned charge could only run after the response asked.
    pub(crate) fn start_here(self) -> Started {
        let mut charge = self.run_to_completion();
        // A no-op waker: if the charge waits, its task polls it again at once and
        // registers its own waker then.
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        match Pin::new(&mut charge).poll(&mut cx) {
            Poll::Ready(_) => Started::Ended,
            Poll::Pending => Started::Spawned(charge.charge.take().and_then(finish_on_a_task)),
        }
    }

    /// Runs the charge in the caller's task (no spawn); if the caller
    /// is dropped before it completes (the client hung up), the rest of the charge
    /// moves to its own task, so it still completes and is reported.
    pub(crate) fn run_to_completion(mut self) -> DetachOnDrop {
        let in_flight = self.start();
        let charge = self;
        DetachOnDrop {
            charge: Some(Box::pin(charge.execute(in_flight))),
        }
    }
}

/// Where [`PendingCharge::start_here`] left a charge.
pub(crate) enum Started {
    /// It ended in the caller's task (its outcome reported as any charge's).
    Ended,
    /// It waits for the backend on its own task (`None`: no runtime to run it on).
    Spawned(Option<JoinHandle<SettleOutcome>>),
}

/// The future of [`PendingCharge::run_to_completion`].
pub(crate) struct DetachOnDrop {
    charge: Option<futures_util::future::BoxFuture<'static, SettleOutcome>>,
}

impl Future for DetachOnDrop {
    type Output = Option<SettleOutcome>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(charge) = self.charge.as_mut() else {
            return Poll::Ready(None);
        };
        let outcome = std::task::ready!(charge.as_mut().poll(cx));
        self.charge = None;
        Poll::Ready(Some(outcome))
    }
}

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        if let Some(charge) = self.charge.take() {
            finish_on_a_task(charge);
        }
    }
}

/// Runs the rest of a charge already sent (or of a request future carrying one) on a
/// task of its own, so that it completes and is reported whoever stops waiting for it.
pub(crate) fn finish_on_a_task<F>(rest: F) -> Option<JoinHandle<F::Output>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => Some(handle.spawn(rest)),
        Err(_) => {
            tracing::error!(
                "a charge in flight was left outside a tokio runtime: its outcome is unknown"
            );
            None
        }
    }
}

pub(super) fn log_outcome(outcome: &SettleOutcome) {
    match outcome.status {
        SettleStatus::Settled => tracing::debug!(
            plan = %outcome.plan_id, subscriber = %outcome.subscriber,
            attempts = outcome.attempts, "charge settled"
        ),
        SettleStatus::Failed => tracing::warn!(
            request_id = %outcome.request_id,
            plan = %outcome.plan_id, subscriber = %outcome.subscriber,
            attempts = outcome.attempts, reason = outcome.reason.as_deref().unwrap_or(""),
            "charge failed: nothing was charged"
        ),
        SettleStatus::Unknown => tracing::error!(
            request_id = %outcome.request_id,
            plan = %outcome.plan_id, subscriber = %outcome.subscriber,
            attempts = outcome.attempts, reason = outcome.reason.as_deref().unwrap_or(""),
            "charge outcome unknown: reconcile by request id"
        ),
    }
}
