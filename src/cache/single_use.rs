//! x402 v3 tokens (those with `payload.authorization.nonce`) are consumed by their first
//! settle (wire-spec §6.2): a cached verification must not let one pay for two requests.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moka::future::Cache;

use crate::types::TokenDigest;

/// Single-use tokens in flight (claimed by an admitted request) or spent (charged).
pub(crate) struct SingleUseTokens {
    in_flight: Mutex<HashSet<TokenDigest>>,
    spent: Cache<TokenDigest, ()>,
}

impl SingleUseTokens {
    pub(crate) fn new(capacity: u64) -> Self {
        SingleUseTokens {
            in_flight: Mutex::new(HashSet::new()),
            spent: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(Duration::from_secs(24 * 3600))
                .build(),
        }
    }

    /// The right to spend the token with one request, unless another request holds it
    /// or it was already spent.
    pub(crate) fn claim(self: &Arc<Self>, digest: TokenDigest) -> Option<SingleUseClaim> {
        if self.spent.contains_key(&digest) {
            return None;
        }
        let fresh = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest);
        fresh.then(|| SingleUseClaim {
            tokens: self.clone(),
            digest,
        })
    }
}

/// Held by the one request allowed to spend a single-use token. Dropped without
/// [`spend`](Self::spend) (nothing was charged), the token may be used again.
pub(crate) struct SingleUseClaim {
    tokens: Arc<SingleUseTokens>,
    digest: TokenDigest,
}

impl SingleUseClaim {
    /// The token was (or may have been) charged: it is never admitted again.
    pub(crate) async fn spend(self) {
        self.tokens.spent.insert(self.digest, ()).await;
    }
}

impl Drop for SingleUseClaim {
    fn drop(&mut self) {
        self.tokens
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.digest);
    }
}
