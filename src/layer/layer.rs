//! [`PaymentLayer`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::config::{LayerConfig, PaymentLayerBuilder};
use super::gate::{CacheSizes, Gate};
use super::service::Payment;
use crate::backend::PaymentBackend;
use crate::client::Environment;
use crate::settle::{DrainReport, JournalStats};
use crate::Payments;

/// A `tower::Layer` that puts a Nevermined payment gate in front of a service.
///
/// Cheap to clone: every clone (and every service it wraps) shares one set of caches,
/// so apply one layer to many routes to share verifications and balances.
#[derive(Clone)]
pub struct PaymentLayer {
    gate: Arc<Gate>,
}

impl PaymentLayer {
    /// Starts a configuration that talks to the Nevermined backend through `payments`.
    pub fn builder(payments: Payments) -> PaymentLayerBuilder {
        PaymentLayerBuilder::from_payments(payments)
    }

    /// Starts a configuration over any [`PaymentBackend`] (a mock, an in-process
    /// charge sink, a proxy). `environment` picks the default x402 network.
    pub fn builder_with_backend(
        backend: Arc<dyn PaymentBackend>,
        environment: Environment,
    ) -> PaymentLayerBuilder {
        PaymentLayerBuilder::new(backend, environment)
    }

    /// Waits until every charge in flight has ended, or `timeout` has passed, and says
    /// how they ended; charges still in flight are listed by request id in
    /// [`DrainReport::unfinished`] (and logged at `error`) for reconciliation.
    ///
    /// Call it at shutdown, after the server has stopped accepting requests and its
    /// responses have been written (e.g. once `axum::serve(..).with_graceful_shutdown(..)`
    /// has returned): `Background` and `OnBodyEnd` charges run on their own tasks, and
    /// a process that exits without draining drops those still retrying.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use nvm_payments::{PaymentLayer, PaymentOptions, Payments};
    /// # let key = "local:eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIweDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDEifQ.c2ln";
    /// let payments = Payments::new(PaymentOptions::new(key).backend_url("http://127.0.0.1:3001"))?;
    /// let layer = PaymentLayer::builder(payments).plan_id("42".parse()?).build()?;
    /// // … serve with `layer` until a shutdown signal, then:
    /// let report = layer.drain(Duration::from_secs(10)).await;
    /// assert!(report.is_complete());
    /// # Ok(()) }
    /// ```
    pub async fn drain(&self, timeout: Duration) -> DrainReport {
        self.gate.pending.drain(timeout).await
    }

    /// Charges in flight now (being sent or retried).
    pub fn pending_charges(&self) -> usize {
        self.gate.pending.len()
    }

    /// The charge journal's counters, when one is configured
    /// ([`charge_journal`](PaymentLayerBuilder::charge_journal)).
    pub fn journal_stats(&self) -> Option<JournalStats> {
        self.gate.journal.as_ref().map(|j| j.stats())
    }

    /// Replays now every unfinished journal entry that this process is not charging
    /// already, with its own request id, and answers how many it replayed (0 without a
    /// journal). Passes also run at start-up and every `journal_replay_interval`.
    pub async fn replay_charge_journal(&self) -> usize {
        match &self.gate.journal {
            Some(journal) => journal.replay_now().await,
            None => 0,
        }
    }

    /// How many entries each of the layer's caches holds now: every one is capped
    /// (`verification_cache`, `balance_cache`, and fixed caps for routes and plans),
    /// so memory stays bounded however many callers come.
    pub async fn cache_sizes(&self) -> CacheSizes {
        self.gate.cache_sizes().await
    }

    pub(crate) fn from_parts(backend: Arc<dyn PaymentBackend>, config: LayerConfig) -> Self {
        PaymentLayer {
            gate: Arc::new(Gate::new(backend, config)),
        }
    }
}

impl fmt::Debug for PaymentLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PaymentLayer")
            .field("plan_ids", &self.gate.config.plan_ids)
            .field("agent_id", &self.gate.config.agent_id)
            .field("timing", &self.gate.config.timing)
            .field("via", &self.gate.config.via)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for PaymentLayer {
    type Service = Payment<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Payment::new(inner, self.gate.clone())
    }
}
