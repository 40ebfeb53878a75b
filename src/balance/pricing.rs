//! Pricing: each accepted plan's credits config, which decides what a charge really burns,
//! and its payment terms (scheme, network, asset, owner), which decide what a 402
//! advertises.
//!
//! Only accepted plans are looked up (the layer refuses others first), so the table is
//! as small as the configuration; the hot path reads it without awaiting.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use moka::future::Cache;
use tokio::time::Instant;

use crate::backend::PaymentBackend;
use crate::client::Error;
use crate::hashing::HashMap;
use crate::rejection::Rejection;
use crate::types::{
    Credits, Plan, PlanCreditsConfig, PlanId, SCHEME_CARD_DELEGATION, SCHEME_ERC4337,
};

/// After a failed load, how long [`PlanCache::priced`] answers "unknown" without asking
/// again: a flood of unauthenticated requests during an outage must not become a flood
/// of `get plan` calls.
const FAILED_LOAD_BACKOFF: Duration = Duration::from_secs(1);

/// What one `get plan` tells the layer.
#[derive(Debug)]
pub(crate) struct PricedPlan {
    /// What a charge burns.
    pub(crate) credits: Arc<PlanCreditsConfig>,
    /// How the plan is paid.
    pub(crate) terms: PlanTerms,
}

/// How a plan is paid (docs/wire-notes.md §6.1), resolved like payments-py's
/// `x402/resolve_scheme.py`: a plan whose price is not crypto is paid by card
/// delegation, on the network of its fiat payment provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlanTerms {
    /// `nvm:erc4337` or `nvm:card-delegation`.
    pub(crate) scheme: &'static str,
    /// The fiat payment provider (`stripe`, …) for card delegation; `None` for crypto
    /// plans, whose network is the environment's.
    pub(crate) fiat_network: Option<String>,
    /// The credits contract (what a request spends), else the price token, else `""`.
    pub(crate) asset: String,
    /// The plan's owner, who is paid.
    pub(crate) pay_to: String,
}

impl PlanTerms {
    fn of(plan: &Plan) -> Self {
        let price = &plan.registry.price;
        let (scheme, fiat_network) = if price.is_crypto {
            (SCHEME_ERC4337, None)
        } else {
            let provider = plan.metadata.plan.fiat_payment_provider.clone();
            (
                SCHEME_CARD_DELEGATION,
                Some(provider.unwrap_or_else(|| "stripe".to_owned())),
            )
        };
        let asset = plan
            .registry
            .credits
            .nft_address
            .as_ref()
            .or(price.token_address.as_ref())
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        PlanTerms {
            scheme,
            fiat_network,
            asset,
            pay_to: plan.registry.owner.as_str().to_owned(),
        }
    }
}

pub(crate) struct PlanCache {
    fresh: RwLock<HashMap<PlanId, (Arc<PricedPlan>, Instant)>>,
    /// Coalesces concurrent loads of one plan into one `get plan` call.
    loading: Cache<PlanId, Arc<PricedPlan>>,
    /// When a load last failed, per plan (accepted plans only: bounded).
    failed: RwLock<HashMap<PlanId, Instant>>,
    ttl: Duration,
}

impl PlanCache {
    pub(crate) fn new(ttl: Duration, capacity: u64) -> Self {
        PlanCache {
            fresh: RwLock::new(HashMap::default()),
            loading: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            failed: RwLock::new(HashMap::default()),
            ttl,
        }
    }

    /// Plans kept (fresh or not).
    pub(crate) fn len(&self) -> usize {
        self.fresh.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The plan's credits config if it was loaded less than the TTL ago.
    pub(crate) fn get(&self, plan_id: &PlanId) -> Option<Arc<PlanCreditsConfig>> {
        // On every request: one clone, of the config only.
        let fresh = self.fresh.read().unwrap_or_else(|p| p.into_inner());
        let (plan, at) = fresh.get(plan_id)?;
        (at.elapsed() < self.ttl).then(|| plan.credits.clone())
    }

    fn fresh_plan(&self, plan_id: &PlanId) -> Option<Arc<PricedPlan>> {
        let fresh = self.fresh.read().unwrap_or_else(|p| p.into_inner());
        let (plan, at) = fresh.get(plan_id)?;
        (at.elapsed() < self.ttl).then(|| plan.clone())
    }

    /// Loads the plan's credits config; concurrent loads make one `get plan` call.
    pub(crate) async fn load(
        &self,
        plan_id: &PlanId,
        backend: &dyn PaymentBackend,
    ) -> Result<Arc<PlanCreditsConfig>, Arc<Error>> {
        Ok(self.load_priced(plan_id, backend).await?.credits.clone())
    }

    async fn load_priced(
        &self,
        plan_id: &PlanId,
        backend: &dyn PaymentBackend,
    ) -> Result<Arc<PricedPlan>, Arc<Error>> {
        let loaded = self
            .loading
            .try_get_with(plan_id.clone(), async {
                let plan = backend.plan(plan_id).await?;
                Ok(Arc::new(PricedPlan {
                    terms: PlanTerms::of(&plan),
                    credits: Arc::new(plan.registry.credits),
                }))
            })
            .await;
        match loaded {
            Ok(plan) => {
                self.fresh
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(plan_id.clone(), (plan.clone(), Instant::now()));
                Ok(plan)
            }
            Err(err) => {
                self.failed
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(plan_id.clone(), Instant::now());
                Err(err)
            }
        }
    }

    /// The plan with its terms, loading it when it is not fresh; `None` when it cannot
    /// be read now (and for a second after a failed load, without asking again). For
    /// what a 402 advertises, where an unknown plan falls back to the crypto scheme as
    /// in payments-py.
    pub(crate) async fn priced(
        &self,
        plan_id: &PlanId,
        backend: &dyn PaymentBackend,
    ) -> Option<Arc<PricedPlan>> {
        if let Some(plan) = self.fresh_plan(plan_id) {
            return Some(plan);
        }
        let failed_recently = self
            .failed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(plan_id)
            .is_some_and(|at| at.elapsed() < FAILED_LOAD_BACKOFF);
        if failed_recently {
            return None;
        }
        self.load_priced(plan_id, backend).await.ok()
    }
}

/// What the plan will burn for `requested`; a plan that burns nothing cannot be charged.
pub(crate) fn chargeable(
    plan_id: &PlanId,
    plan: &PlanCreditsConfig,
    requested: Credits,
) -> Result<Credits, Rejection> {
    let amount = plan.redemption_amount(requested);
    if amount.is_zero() {
        tracing::error!(plan = %plan_id,
            "the plan's credits config burns 0 credits per request (maxAmount 0): it can never be charged");
        return Err(Rejection::misconfigured());
    }
    Ok(amount)
}

/// What a metered request is charged: the meter's credits clamped to the plan's minimum
/// and maximum per request, and never above what was reserved for it. Zero only when
/// the plan's minimum is zero and nothing was metered (then nothing is charged: settle
/// would read 0 as the plan's maximum).
pub(crate) fn metered_charge(
    plan: &PlanCreditsConfig,
    metered: Credits,
    reserved: Credits,
) -> Credits {
    metered
        .clamp_to(plan.min_amount, plan.max_amount)
        .min(reserved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::get_dynamic_credits_config;

    #[test]
    fn a_metered_charge_is_clamped_by_the_plan_and_the_reservation() {
        let c = Credits::from;
        let plan = get_dynamic_credits_config(c(100u64), c(1u64), c(20u64));
        assert_eq!(metered_charge(&plan, c(7u64), c(20u64)), c(7u64));
        assert_eq!(metered_charge(&plan, c(40u64), c(20u64)), c(20u64));
        assert_eq!(metered_charge(&plan, Credits::ZERO, c(20u64)), c(1u64));
        assert_eq!(metered_charge(&plan, c(9u64), c(5u64)), c(5u64));
        let free_min = get_dynamic_credits_config(c(100u64), Credits::ZERO, c(20u64));
        assert!(metered_charge(&free_min, Credits::ZERO, c(20u64)).is_zero());
    }
}
