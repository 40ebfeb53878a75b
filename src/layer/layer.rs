//! [`PaymentLayer`].

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::config::{LayerConfig, PaymentLayerBuilder};
use super::gate::Gate;
use super::service::Payment;
use crate::backend::PaymentBackend;
use crate::client::Environment;
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
