//! Operator metrics through the [`metrics`](https://docs.rs/metrics) facade, with the
//! `metrics` feature; without it every function here is empty and the types are
//! zero-sized, so the layer pays nothing.
//!
//! Every series is recorded here and nowhere else. Labels take values from closed
//! sets only (a rejection code, a charge outcome, a backend operation): never a token,
//! an address or a request id, so the number of series cannot grow with traffic.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `nvm_requests_admitted_total` | counter | |
//! | `nvm_requests_refused_total` | counter | `kind` = [`RejectionKind::code`] |
//! | `nvm_credits_charged_total` | counter | |
//! | `nvm_charges_total` | counter | `outcome` = `settled` \| `failed` \| `unknown` |
//! | `nvm_charge_retries_total` | counter | |
//! | `nvm_backend_call_duration_seconds` | histogram | `operation` = `verify` \| `balance` \| `plan` \| `settle` \| `redeem` \| `jwks` |
//! | `nvm_charges_in_flight` | gauge | |
//! | `nvm_cached_verifications`, `nvm_cached_ledgers`, `nvm_cached_plans` | gauge | |
//!
//! Handles are registered once, when the layer is built: install the recorder (e.g.
//! the Prometheus exporter) before building the layer.

use std::sync::Arc;

use crate::backend::PaymentBackend;
use crate::rejection::RejectionKind;
use crate::settle::SettleStatus;
use crate::types::Credits;

#[cfg(feature = "metrics")]
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

/// Every kind, in declaration order (`kind as usize` indexes the refused counters).
#[cfg(feature = "metrics")]
const KINDS: [RejectionKind; 8] = [
    RejectionKind::PaymentRequired,
    RejectionKind::MalformedToken,
    RejectionKind::InvalidToken,
    RejectionKind::PlanNotAccepted,
    RejectionKind::WrongAgent,
    RejectionKind::InsufficientBalance,
    RejectionKind::BackendUnavailable,
    RejectionKind::Misconfigured,
];

/// The series the gate moves: admissions, refusals, cache sizes.
pub(crate) struct GateMetrics {
    #[cfg(feature = "metrics")]
    admitted: Counter,
    #[cfg(feature = "metrics")]
    refused: [Counter; KINDS.len()],
    #[cfg(feature = "metrics")]
    cached: [Gauge; 3],
}

impl GateMetrics {
    pub(crate) fn register() -> Self {
        GateMetrics {
            #[cfg(feature = "metrics")]
            admitted: counter!("nvm_requests_admitted_total"),
            #[cfg(feature = "metrics")]
            refused: KINDS
                .map(|kind| counter!("nvm_requests_refused_total", "kind" => kind.code())),
            #[cfg(feature = "metrics")]
            cached: [
                gauge!("nvm_cached_verifications"),
                gauge!("nvm_cached_ledgers"),
                gauge!("nvm_cached_plans"),
            ],
        }
    }

    #[inline]
    pub(crate) fn admitted(&self) {
        #[cfg(feature = "metrics")]
        self.admitted.increment(1);
    }

    #[inline]
    pub(crate) fn refused(&self, kind: RejectionKind) {
        #[cfg(feature = "metrics")]
        self.refused[kind as usize].increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = kind;
    }

    /// Entry counts of the verification, ledger and plan caches.
    pub(crate) fn cache_sizes(&self, verifications: u64, ledgers: u64, plans: u64) {
        #[cfg(feature = "metrics")]
        for (gauge, value) in self.cached.iter().zip([verifications, ledgers, plans]) {
            // Precision is lost only past 2^53 entries: far above any cache cap.
            gauge.set(value as f64);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (verifications, ledgers, plans);
    }
}

/// The series of charges: in flight, outcomes, credits.
#[cfg_attr(not(feature = "metrics"), derive(Default))]
pub(crate) struct ChargeMetrics {
    #[cfg(feature = "metrics")]
    in_flight: Gauge,
    #[cfg(feature = "metrics")]
    outcomes: [Counter; 3],
    #[cfg(feature = "metrics")]
    credits: Counter,
    /// `nvm_backend_call_duration_seconds` of settle and redeem: timed by the charge
    /// itself, so the hot path's call is not wrapped in another boxed future.
    #[cfg(feature = "metrics")]
    calls: [Histogram; 2],
}

/// Registers the handles with the recorder current when the layer is built.
#[cfg(feature = "metrics")]
impl Default for ChargeMetrics {
    fn default() -> Self {
        ChargeMetrics {
            in_flight: gauge!("nvm_charges_in_flight"),
            outcomes: ["settled", "failed", "unknown"]
                .map(|outcome| counter!("nvm_charges_total", "outcome" => outcome)),
            credits: counter!("nvm_credits_charged_total"),
            calls: ["settle", "redeem"].map(|operation| {
                histogram!("nvm_backend_call_duration_seconds", "operation" => operation)
            }),
        }
    }
}

impl ChargeMetrics {
    #[inline]
    pub(crate) fn entered(&self) {
        #[cfg(feature = "metrics")]
        self.in_flight.increment(1.0);
    }

    #[inline]
    pub(crate) fn left(&self) {
        #[cfg(feature = "metrics")]
        self.in_flight.decrement(1.0);
    }

    /// One settle (`redeem` false) or redeem call took `elapsed`, errors included.
    #[cfg(feature = "metrics")]
    #[inline]
    pub(crate) fn charge_call(&self, redeem: bool, elapsed: std::time::Duration) {
        self.calls[usize::from(redeem)].record(elapsed);
    }

    /// A charge ended; `burned` is what the backend confirmed (settled charges only).
    #[inline]
    pub(crate) fn outcome(&self, status: SettleStatus, burned: Option<Credits>) {
        #[cfg(feature = "metrics")]
        {
            let index = match status {
                SettleStatus::Settled => 0,
                SettleStatus::Failed => 1,
                SettleStatus::Unknown => 2,
            };
            self.outcomes[index].increment(1);
            if let Some(credits) = burned {
                self.credits.increment(credits.to_u64().unwrap_or(u64::MAX));
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (status, burned);
    }
}

/// A charge is about to be retried (rare: the handle is not cached).
#[inline]
pub(crate) fn charge_retried() {
    #[cfg(feature = "metrics")]
    counter!("nvm_charge_retries_total").increment(1);
}

/// The backend the layer calls: with the feature, every call is timed into
/// `nvm_backend_call_duration_seconds{operation}` (settle and redeem by the charge
/// that makes them, the others here).
pub(crate) fn timed(backend: Arc<dyn PaymentBackend>) -> Arc<dyn PaymentBackend> {
    #[cfg(feature = "metrics")]
    let backend: Arc<dyn PaymentBackend> = Arc::new(timed::TimedBackend::new(backend));
    backend
}

#[cfg(feature = "metrics")]
mod timed {
    use std::future::Future;
    use std::sync::Arc;
    use std::time::Instant;

    use futures_util::future::BoxFuture;
    use jsonwebtoken::jwk::JwkSet;
    use metrics::{histogram, Histogram};

    use crate::backend::PaymentBackend;
    use crate::client::Error;
    use crate::types::{
        AccessToken, Address, Credits, NvmApiResult, PaymentRequired, Plan, PlanBalance, PlanId,
        SettleResponse, VerifyResponse,
    };

    /// A backend whose calls are timed, errors included (a timeout is a slow call).
    pub(super) struct TimedBackend {
        inner: Arc<dyn PaymentBackend>,
        /// verify, balance, plan, jwks (settle and redeem: `ChargeMetrics`).
        durations: [Histogram; 4],
    }

    impl TimedBackend {
        pub(super) fn new(inner: Arc<dyn PaymentBackend>) -> Self {
            let durations = ["verify", "balance", "plan", "jwks"].map(
                |operation| histogram!("nvm_backend_call_duration_seconds", "operation" => operation),
            );
            TimedBackend { inner, durations }
        }
    }

    fn time<'a, T: Send + 'a>(
        histogram: &Histogram,
        call: impl Future<Output = T> + Send + 'a,
    ) -> BoxFuture<'a, T> {
        let histogram = histogram.clone();
        Box::pin(async move {
            let started = Instant::now();
            let result = call.await;
            histogram.record(started.elapsed());
            result
        })
    }

    impl PaymentBackend for TimedBackend {
        fn verify<'a>(
            &'a self,
            payment_required: &'a PaymentRequired,
            token: &'a AccessToken,
            max_amount: Option<Credits>,
        ) -> BoxFuture<'a, Result<VerifyResponse, Error>> {
            let call = self.inner.verify(payment_required, token, max_amount);
            time(&self.durations[0], call)
        }

        fn settle<'a>(
            &'a self,
            payment_required: &'a PaymentRequired,
            token: &'a AccessToken,
            max_amount: Option<Credits>,
            agent_request_id: &'a str,
        ) -> BoxFuture<'a, Result<SettleResponse, Error>> {
            // Timed by the charge (`ChargeMetrics::charge_call`): no second box.
            self.inner
                .settle(payment_required, token, max_amount, agent_request_id)
        }

        fn redeem<'a>(
            &'a self,
            agent_request_id: &'a str,
            plan_id: &'a PlanId,
            redeem_from: &'a Address,
            amount: Credits,
        ) -> BoxFuture<'a, Result<NvmApiResult, Error>> {
            self.inner
                .redeem(agent_request_id, plan_id, redeem_from, amount)
        }

        fn plan_balance<'a>(
            &'a self,
            plan_id: &'a PlanId,
            holder: &'a Address,
        ) -> BoxFuture<'a, Result<PlanBalance, Error>> {
            time(&self.durations[1], self.inner.plan_balance(plan_id, holder))
        }

        fn plan<'a>(&'a self, plan_id: &'a PlanId) -> BoxFuture<'a, Result<Plan, Error>> {
            time(&self.durations[2], self.inner.plan(plan_id))
        }

        fn access_token_jwks(&self) -> BoxFuture<'_, Result<JwkSet, Error>> {
            time(&self.durations[3], self.inner.access_token_jwks())
        }
    }
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;

    #[test]
    fn each_kind_indexes_its_own_refused_counter() {
        for (index, kind) in KINDS.iter().enumerate() {
            assert_eq!(*kind as usize, index, "{kind:?}");
        }
    }
}
