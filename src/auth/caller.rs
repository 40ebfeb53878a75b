//! What authentication yields: the [`Caller`] handlers see, and the [`Payer`] whose
//! balance the next step charges.

use std::fmt;

use crate::credential::Credential;
use crate::types::{Address, AgentId, PlanId, TokenDigest};

/// An authenticated caller: who pays, with which plan, for which agent.
#[non_exhaustive]
pub struct Caller {
    /// The subscriber (payer) address.
    pub subscriber: Address,
    /// The plan the token pays with (one of the accepted plans).
    pub plan_id: PlanId,
    /// The agent the token is bound to, or the layer's agent when it is not bound.
    pub agent_id: Option<AgentId>,
    /// A digest of the credential: safe to log, useless to replay.
    pub token_digest: TokenDigest,
    /// The credential itself, needed to charge; never handed to handlers.
    pub(crate) credential: Credential,
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("subscriber", &self.subscriber)
            .field("plan_id", &self.plan_id)
            .field("agent_id", &self.agent_id)
            .field("token_digest", &self.token_digest)
            .finish_non_exhaustive()
    }
}

/// Whose balance pays: one plan, one holder. The key of the balance step's ledgers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Payer {
    pub(crate) plan_id: PlanId,
    pub(crate) holder: Address,
}
