//! What authentication yields: the [`Caller`] handlers see, and the [`Payer`] whose
//! balance the next step charges.

use std::any::Any;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, LazyLock, OnceLock};

use foldhash::quality::RandomState;

use super::front::Validity;
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
    /// How long the verification that made it may be served from the per-thread front
    /// of the verification cache, and whether it was forgotten.
    pub(crate) validity: Validity,
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
///
/// Its hash is computed once, when the caller is authenticated: hashing the 78-digit
/// plan id and the address on every request's balance lookup was the largest part of
/// the reservation's cost (BENCHMARKS.md). The hasher is seeded at random per process,
/// so callers cannot aim collisions at the ledger tables; equality still compares the
/// fields.
///
/// It also carries the payer's ledger once the balance step has found it, so a warm
/// request makes one cache lookup (its verification) instead of two. The slot is typed
/// `Any` because the balance step comes after this one and is not imported here.
pub(crate) struct Payer {
    pub(crate) plan_id: PlanId,
    pub(crate) holder: Address,
    hash: u64,
    /// The balance step's ledger for this payer (see `BalanceCache::ledger`).
    pub(crate) ledger: OnceLock<Arc<dyn Any + Send + Sync>>,
}

impl fmt::Debug for Payer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Payer")
            .field("plan_id", &self.plan_id)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

static PAYER_HASHER: LazyLock<RandomState> = LazyLock::new(RandomState::default);

impl Payer {
    pub(crate) fn new(plan_id: PlanId, holder: Address) -> Self {
        // `Address` hashes case-insensitively, as it compares.
        let hash = PAYER_HASHER.hash_one((&plan_id, &holder));
        Payer {
            plan_id,
            holder,
            hash,
            ledger: OnceLock::new(),
        }
    }

    /// The same payer with an empty ledger slot: a key that does not keep a ledger alive.
    pub(crate) fn bare(&self) -> Self {
        Payer {
            plan_id: self.plan_id.clone(),
            holder: self.holder.clone(),
            hash: self.hash,
            ledger: OnceLock::new(),
        }
    }
}

impl PartialEq for Payer {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.plan_id == other.plan_id && self.holder == other.holder
    }
}

impl Eq for Payer {}

impl Hash for Payer {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn one_payer_in_two_spellings_is_one_key() {
        let plan: PlanId = "7".parse().unwrap();
        let lower = Payer::new(
            plan.clone(),
            "0x00000000000000000000000000000000000000ab"
                .parse()
                .unwrap(),
        );
        let upper = Payer::new(
            plan.clone(),
            "0x00000000000000000000000000000000000000AB"
                .parse()
                .unwrap(),
        );
        let other = Payer::new(
            plan,
            "0x00000000000000000000000000000000000000ac"
                .parse()
                .unwrap(),
        );
        assert_eq!(lower, upper);
        let state = std::collections::hash_map::RandomState::new();
        assert_eq!(state.hash_one(&lower), state.hash_one(&upper));
        assert_ne!(lower, other);
    }
}
