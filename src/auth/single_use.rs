//! x402 v3 tokens (those with `payload.authorization.nonce`) are consumed by their first
//! settle (the backend answers `BCK.X402.0059` to a second one): one such token admits
//! at most one request, whatever happens to its charge and however it is spelled.
//!
//! Tokens are keyed by what they mean, `(plan, payer, nonce)`, not by their text (the
//! decoders accept several base64 and JSON spellings of one token). The set of spent
//! tokens is a plain map with no admission policy: a token just spent is never the one
//! dropped. It is bounded: past `capacity`, the oldest spent tokens are forgotten, but
//! never one spent less than `min_keep` ago (the longest a cached verification lives),
//! so no verification cached before the spend can admit the token again. When the set
//! is full of such young tokens, new single-use tokens are refused as "retry later"
//! rather than admitted unguarded.
//!
//! With a store shared by several replicas, a token claimed here is also claimed there
//! ([`SharedClaims`]): one claim per token across replicas, keyed by the same digest.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::types::{TokenDigest, X402TokenPayload};

/// How long a spent token is remembered when the set is not full.
const KEEP_SPENT: Duration = Duration::from_secs(24 * 3600);

/// The single-use key of a v3 token: a digest of `(plan, payer, nonce)`; `None` for
/// tokens without a nonce (v2 tokens are reusable).
pub(crate) fn single_use_key(payload: &X402TokenPayload) -> Option<TokenDigest> {
    let nonce = payload.payload.authorization.nonce.as_deref()?;
    if nonce.is_empty() {
        return None;
    }
    let mut h = Sha256::new();
    h.update(payload.accepted.plan_id.as_str().as_bytes());
    h.update([0]);
    // Addresses compare case-insensitively: one payer, one spelling.
    h.update(
        payload
            .payload
            .authorization
            .from
            .as_str()
            .to_ascii_lowercase()
            .as_bytes(),
    );
    h.update([0]);
    h.update(nonce.trim().as_bytes());
    Some(TokenDigest::from_bytes(h.finalize().into()))
}

/// Why a single-use token may not be spent by this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimRefused {
    /// Another request holds it now.
    InFlight,
    /// It was spent.
    Spent,
    /// Too many single-use tokens were spent too recently to remember one more.
    Full,
}

/// Single-use claims in a store every replica sees. Spending and releasing are sent
/// without waiting: a claim left in flight by a lost message expires in the store.
pub(crate) trait SharedClaims: Send + Sync {
    /// Claims the token for one request across replicas; `Err` when the store cannot
    /// answer.
    fn claim(&self, key: TokenDigest) -> BoxFuture<'_, Result<Result<(), ClaimRefused>, String>>;
    /// The claimed token was sent with a charge: remember it as spent.
    fn spend(&self, key: TokenDigest);
    /// The claimed token was not charged: another request may use it.
    fn release(&self, key: TokenDigest);
}

#[derive(Default)]
struct State {
    in_flight: HashSet<TokenDigest>,
    spent: HashMap<TokenDigest, Instant>,
    /// `spent` in the order it was filled, oldest first.
    order: VecDeque<(TokenDigest, Instant)>,
}

/// Single-use tokens in flight (claimed by an admitted request) or spent.
pub(crate) struct SingleUseTokens {
    state: Mutex<State>,
    capacity: usize,
    min_keep: Duration,
    shared: Option<Arc<dyn SharedClaims>>,
}

impl SingleUseTokens {
    /// Remembers up to `capacity` tokens (spent or in flight); a spent token is kept
    /// at least `min_keep`, whatever the capacity.
    pub(crate) fn new(capacity: usize, min_keep: Duration) -> Self {
        SingleUseTokens {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            min_keep,
            shared: None,
        }
    }

    /// Claims tokens in a store shared with other replicas as well.
    pub(crate) fn with_shared(mut self, shared: Option<Arc<dyn SharedClaims>>) -> Self {
        self.shared = shared;
        self
    }

    /// [`claim`](Self::claim) here, then in the shared store when there is one; `Err`
    /// of the outer result when the store cannot answer (the token is not admitted).
    pub(crate) async fn claim_everywhere(
        self: &Arc<Self>,
        key: TokenDigest,
    ) -> Result<Result<SingleUseClaim, ClaimRefused>, String> {
        let claim = match self.claim(key) {
            Ok(claim) => claim,
            Err(refused) => return Ok(Err(refused)),
        };
        let Some(shared) = &self.shared else {
            return Ok(Ok(claim));
        };
        let mut claim = claim;
        // Until the store said yes, dropping the claim must not release the store's.
        claim.shared_held = false;
        match shared.claim(key).await? {
            Ok(()) => {
                claim.shared_held = true;
                Ok(Ok(claim))
            }
            Err(refused) => Ok(Err(refused)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Sets of digests, consistent after every statement.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spent tokens remembered.
    pub(crate) fn spent_count(&self) -> u64 {
        self.lock().spent.len() as u64
    }

    /// The right to spend the token with one request, unless another request holds it,
    /// it was spent, or the set cannot remember one more.
    pub(crate) fn claim(
        self: &Arc<Self>,
        key: TokenDigest,
    ) -> Result<SingleUseClaim, ClaimRefused> {
        let mut s = self.lock();
        self.forget_old(&mut s, Instant::now());
        if s.spent.contains_key(&key) {
            return Err(ClaimRefused::Spent);
        }
        if s.in_flight.contains(&key) {
            return Err(ClaimRefused::InFlight);
        }
        if s.spent.len() + s.in_flight.len() >= self.capacity {
            tracing::warn!(
                capacity = self.capacity,
                "single-use token memory full of recently spent tokens: new v3 tokens refused until some age"
            );
            return Err(ClaimRefused::Full);
        }
        s.in_flight.insert(key);
        Ok(SingleUseClaim {
            tokens: self.clone(),
            key,
            spent: false,
            shared_held: true,
        })
    }

    /// Drops spent tokens past [`KEEP_SPENT`], and past the capacity those older than
    /// `min_keep`, oldest first.
    fn forget_old(&self, s: &mut State, now: Instant) {
        while let Some(&(key, at)) = s.order.front() {
            let age = now.saturating_duration_since(at);
            let over = s.spent.len() + s.in_flight.len() >= self.capacity;
            if age < KEEP_SPENT && !(over && age >= self.min_keep) {
                break;
            }
            s.order.pop_front();
            if s.spent.get(&key) == Some(&at) {
                s.spent.remove(&key);
            }
        }
    }
}

/// Held by the one request allowed to spend a single-use token. Dropped without
/// [`spend`](Self::spend) (the request was not charged), the token may be used again.
pub(crate) struct SingleUseClaim {
    tokens: Arc<SingleUseTokens>,
    key: TokenDigest,
    spent: bool,
    /// Whether the shared store holds a claim this one must spend or release.
    shared_held: bool,
}

impl SingleUseClaim {
    /// A charge was sent with the token: it is never admitted again, whatever the
    /// charge's outcome (a refused settle does not make the served request unserved).
    pub(crate) fn spend(mut self) {
        let now = Instant::now();
        let mut s = self.tokens.lock();
        s.in_flight.remove(&self.key);
        s.spent.insert(self.key, now);
        s.order.push_back((self.key, now));
        self.spent = true;
        drop(s);
        if let (Some(shared), true) = (&self.tokens.shared, self.shared_held) {
            shared.spend(self.key);
        }
    }
}

impl Drop for SingleUseClaim {
    fn drop(&mut self) {
        if !self.spent {
            self.tokens.lock().in_flight.remove(&self.key);
            if let (Some(shared), true) = (&self.tokens.shared, self.shared_held) {
                shared.release(self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> TokenDigest {
        TokenDigest::from_bytes([n; 32])
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_set_never_forgets_a_token_spent_within_min_keep() {
        let tokens = Arc::new(SingleUseTokens::new(4, Duration::from_secs(60)));
        for n in 0..4 {
            tokens.claim(key(n)).unwrap().spend();
        }
        assert_eq!(tokens.claim(key(9)).err(), Some(ClaimRefused::Full));
        for n in 0..4 {
            assert_eq!(tokens.claim(key(n)).err(), Some(ClaimRefused::Spent));
        }
        tokio::time::advance(Duration::from_secs(61)).await;
        // Now the oldest may go to make room, and only as much as needed.
        let fresh = tokens.claim(key(9)).unwrap();
        fresh.spend();
        assert_eq!(tokens.spent_count(), 4);
        assert_eq!(tokens.claim(key(3)).err(), Some(ClaimRefused::Spent));
        assert_eq!(tokens.claim(key(9)).err(), Some(ClaimRefused::Spent));
    }

    /// A shared store that answers `refuse` (or fails) and records what it was told.
    struct Store {
        answer: Result<Result<(), ClaimRefused>, String>,
        told: Mutex<Vec<&'static str>>,
    }

    impl SharedClaims for Store {
        fn claim(&self, _: TokenDigest) -> BoxFuture<'_, Result<Result<(), ClaimRefused>, String>> {
            self.told.lock().unwrap().push("claim");
            Box::pin(std::future::ready(self.answer.clone()))
        }
        fn spend(&self, _: TokenDigest) {
            self.told.lock().unwrap().push("spend");
        }
        fn release(&self, _: TokenDigest) {
            self.told.lock().unwrap().push("release");
        }
    }

    fn shared(
        answer: Result<Result<(), ClaimRefused>, String>,
    ) -> (Arc<SingleUseTokens>, Arc<Store>) {
        let store = Arc::new(Store {
            answer,
            told: Mutex::new(Vec::new()),
        });
        let tokens = SingleUseTokens::new(8, Duration::from_secs(60))
            .with_shared(Some(store.clone() as Arc<dyn SharedClaims>));
        (Arc::new(tokens), store)
    }

    #[tokio::test]
    async fn a_token_claimed_elsewhere_is_refused_and_free_here() {
        let (tokens, store) = shared(Ok(Err(ClaimRefused::Spent)));
        let refused = tokens.claim_everywhere(key(1)).await.unwrap().err();
        assert_eq!(refused, Some(ClaimRefused::Spent));
        // Not held here, and the other replica's claim was not released.
        assert!(tokens.lock().in_flight.is_empty());
        assert_eq!(*store.told.lock().unwrap(), ["claim"]);

        let (tokens, _) = shared(Err("redis down".into()));
        assert!(
            tokens.claim_everywhere(key(1)).await.is_err(),
            "no store, no claim"
        );
        assert!(tokens.lock().in_flight.is_empty());
    }

    #[tokio::test]
    async fn a_shared_claim_is_spent_or_released_there_too() {
        let (tokens, store) = shared(Ok(Ok(())));
        tokens
            .claim_everywhere(key(1))
            .await
            .unwrap()
            .unwrap()
            .spend();
        drop(tokens.claim_everywhere(key(2)).await.unwrap().unwrap());
        assert_eq!(
            *store.told.lock().unwrap(),
            ["claim", "spend", "claim", "release"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_dropped_unspent_frees_the_token() {
        let tokens = Arc::new(SingleUseTokens::new(8, Duration::from_secs(60)));
        let claim = tokens.claim(key(1)).unwrap();
        assert_eq!(tokens.claim(key(1)).err(), Some(ClaimRefused::InFlight));
        drop(claim);
        tokens.claim(key(1)).unwrap().spend();
        assert_eq!(tokens.claim(key(1)).err(), Some(ClaimRefused::Spent));
        tokio::time::advance(KEEP_SPENT).await;
        assert!(tokens.claim(key(1)).is_ok(), "forgotten after a day");
    }
}
