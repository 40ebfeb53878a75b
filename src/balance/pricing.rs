//! Pricing: each accepted plan's credits config, which decides what a charge really burns.
//!
//! Only accepted plans are looked up (the layer refuses others first), so the table is
//! as small as the configuration; the hot path reads it without awaiting.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use moka::future::Cache;
use tokio::time::Instant;

use crate::backend::PaymentBackend;
use crate::client::Error;
use crate::rejection::Rejection;
use crate::types::{Credits, PlanCreditsConfig, PlanId};

pub(crate) struct PlanCache {
    fresh: RwLock<HashMap<PlanId, (Arc<PlanCreditsConfig>, Instant)>>,
    /// Coalesces concurrent loads of one plan into one `get plan` call.
    loading: Cache<PlanId, Arc<PlanCreditsConfig>>,
    ttl: Duration,
}

impl PlanCache {
    pub(crate) fn new(ttl: Duration, capacity: u64) -> Self {
        PlanCache {
            fresh: RwLock::new(HashMap::new()),
            loading: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            ttl,
        }
    }

    /// Plans kept (fresh or not).
    pub(crate) fn len(&self) -> usize {
        self.fresh.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The plan's credits config if it was loaded less than the TTL ago.
    pub(crate) fn get(&self, plan_id: &PlanId) -> Option<Arc<PlanCreditsConfig>> {
        let fresh = self.fresh.read().unwrap_or_else(|p| p.into_inner());
        let (config, at) = fresh.get(plan_id)?;
        (at.elapsed() < self.ttl).then(|| config.clone())
    }

    /// Loads the plan's credits config; concurrent loads make one `get plan` call.
    pub(crate) async fn load(
        &self,
        plan_id: &PlanId,
        backend: &dyn PaymentBackend,
    ) -> Result<Arc<PlanCreditsConfig>, Arc<Error>> {
        let config = self
            .loading
            .try_get_with(plan_id.clone(), async {
                let plan = backend.plan(plan_id).await?;
                Ok(Arc::new(plan.registry.credits))
            })
            .await?;
        self.fresh
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(plan_id.clone(), (config.clone(), Instant::now()));
        Ok(config)
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
