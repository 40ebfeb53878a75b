//! Positive token verifications, keyed by `(canonical token digest, route)`.
//!
//! Entries are weighed in bytes (the token is kept, decoded, to charge with), so long
//! tokens cannot make the cache hold more memory than its budget; each entry also
//! weighs at least `budget / capacity`, so the entry cap holds too.

use crate::hashing::RandomState;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::Expiry;

use super::{Caller, Payer};
use crate::types::TokenDigest;

/// A keyed hash of the token's canonical text and the route it was verified for (a
/// hash of method and path): the facilitator verifies a token against one
/// `paymentRequired`. Two tokens may share a hash: every hit is checked against the
/// full token (`Authenticator::cached`), so a collision costs a miss, never a mix-up.
pub(crate) type VerificationKey = (u64, u64);

/// A token that may pay: who pays, with which plan, for how long to trust it.
#[derive(Clone)]
pub(crate) struct Verified {
    pub(crate) caller: Arc<Caller>,
    pub(crate) payer: Arc<Payer>,
    /// x402 v3 tokens: the `(plan, payer, nonce)` digest that may be spent once.
    pub(crate) single_use: Option<TokenDigest>,
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

/// What an entry holds besides its token: the caller, keys, moka's bookkeeping.
const ENTRY_OVERHEAD: u64 = 768;

impl Verified {
    /// Bytes this entry holds: the token text and its decoded form, about twice its
    /// length, plus the fixed parts.
    fn weight(&self) -> u64 {
        let token = self.caller.credential.token().expose().len() as u64;
        ENTRY_OVERHEAD + 2 * token
    }
}

pub(crate) struct VerificationCache {
    cache: Cache<VerificationKey, Verified, RandomState>,
}

impl VerificationCache {
    /// At most `capacity` entries and `byte_budget` bytes of them.
    pub(crate) fn new(capacity: u64, byte_budget: u64) -> Self {
        let min_weight = (byte_budget / capacity.max(1)).max(1);
        VerificationCache {
            cache: Cache::builder()
                .max_capacity(byte_budget)
                .weigher(move |_key: &VerificationKey, value: &Verified| -> u32 {
                    u32::try_from(value.weight().max(min_weight)).unwrap_or(u32::MAX)
                })
                .expire_after(PerEntryTtl)
                .build_with_hasher(RandomState::default()),
        }
    }

    /// Bytes held by the entries, once moka's pending evictions have run.
    pub(crate) async fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.weighted_size()
    }

    /// Forgets one verification (a spent single-use token, a route that cannot charge).
    pub(crate) async fn invalidate(&self, key: &VerificationKey) {
        self.cache.invalidate(key).await;
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
