//! Positive token verifications, keyed by `(token digest, route)`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::Expiry;

use super::BalanceKey;
use crate::layer::Caller;
use crate::types::TokenDigest;

/// A token digest and the route it was verified for (a hash of method and path):
/// the facilitator verifies a token against one `paymentRequired`.
pub(crate) type VerificationKey = (TokenDigest, u64);

/// A token that may pay: who pays, with which plan, for how long to trust it.
#[derive(Clone)]
pub(crate) struct Verified {
    pub(crate) caller: Arc<Caller>,
    pub(crate) balance_key: Arc<BalanceKey>,
    /// Time to live of this entry: the configured TTL, cut to the token's expiry.
    pub(crate) ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<VerificationKey, Verified> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &VerificationKey,
        value: &Verified,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

pub(crate) struct VerificationCache {
    cache: Cache<VerificationKey, Verified>,
}

impl VerificationCache {
    pub(crate) fn new(capacity: u64) -> Self {
        VerificationCache {
            cache: Cache::builder()
                .max_capacity(capacity)
                .expire_after(PerEntryTtl)
                .build(),
        }
    }

    /// Verifications kept, once moka's pending evictions have run.
    pub(crate) async fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.entry_count()
    }

    pub(crate) async fn get(&self, key: &VerificationKey) -> Option<Verified> {
        self.cache.get(key).await
    }

    /// The cached verification, or the result of `verify`; concurrent callers with one
    /// key wait on a single `verify`. Errors are not cached.
    pub(crate) async fn get_or_verify<E, F>(
        &self,
        key: VerificationKey,
        verify: F,
    ) -> Result<Verified, Arc<E>>
    where
        E: Send + Sync + 'static,
        F: Future<Output = Result<Verified, E>>,
    {
        self.cache.try_get_with(key, verify).await
    }
}
