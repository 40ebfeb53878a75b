//! Each accepted plan's credits config: it decides what a charge really burns.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;

use crate::backend::PaymentBackend;
use crate::client::Error;
use crate::types::{PlanCreditsConfig, PlanId};

pub(crate) struct PlanCache {
    cache: Cache<PlanId, Arc<PlanCreditsConfig>>,
}

impl PlanCache {
    pub(crate) fn new(ttl: Duration, capacity: u64) -> Self {
        PlanCache {
            cache: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The plan's credits config; concurrent misses make one `get plan` call.
    pub(crate) async fn credits_config(
        &self,
        plan_id: &PlanId,
        backend: &dyn PaymentBackend,
    ) -> Result<Arc<PlanCreditsConfig>, Arc<Error>> {
        if let Some(config) = self.cache.get(plan_id).await {
            return Ok(config);
        }
        self.cache
            .try_get_with(plan_id.clone(), async {
                let plan = backend.plan(plan_id).await?;
                Ok(Arc::new(plan.registry.credits))
            })
            .await
    }
}
