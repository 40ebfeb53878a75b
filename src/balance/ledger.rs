//! Balances by payer `(plan, holder)`, each with a local ledger: what the backend said,
//! minus what was charged since, minus what admitted requests hold.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use moka::future::Cache;
use tokio::time::Instant;

use super::lease::{LeaseState, LeaseStore};
use super::{BalanceDenied, Reservation};
use crate::auth::Payer;
use crate::backend::PaymentBackend;
use crate::hashing::{HashMap, RandomState};
use crate::types::Credits;

/// What a ledger with a fresh balance answers.
enum Fresh {
    /// Reserved, or refused on a fetch recent enough to trust.
    Answered(Result<Reservation, BalanceDenied>),
    /// Fetch first. `refused_on`: the fetch a fresh ledger refused on (only a newer one
    /// may change the answer).
    Fetch { refused_on: Option<Instant> },
}

#[derive(Default)]
pub(super) struct LedgerState {
    /// Balance the backend reported at the last fetch.
    pub(super) fetched: Credits,
    pub(super) is_subscriber: bool,
    /// When the last fetch succeeded.
    pub(super) fetched_at: Option<Instant>,
    /// A charge disagreed with our view: fetch before the next admission.
    pub(super) needs_fetch: bool,
    /// All credits charged through this ledger, ever.
    pub(super) settled_total: Credits,
    /// `settled_total` when the last successful fetch started: charges after it are
    /// not in `fetched`.
    pub(super) settled_at_fetch: Credits,
    /// Credits held by admitted requests that are not charged yet.
    pub(super) reserved: Credits,
    /// When the last fetch failed: requests right after it do not queue on another.
    pub(super) failed_at: Option<Instant>,
    /// With a shared store, the ledger's `fetched` is the lease this replica holds,
    /// `fetched_at` when it was granted and `settled_at_fetch` the charges already
    /// reported; the rest of the lease is here. Boxed: a ledger of a replica alone
    /// pays one pointer for it.
    pub(super) lease: Option<Box<LeaseState>>,
}

impl LedgerState {
    pub(super) fn available(&self) -> Credits {
        let settled_since_fetch = self.settled_total.saturating_sub(self.settled_at_fetch);
        self.fetched
            .saturating_sub(settled_since_fetch)
            .saturating_sub(self.reserved)
    }

    pub(super) fn is_fresh(&self, now: Instant, ttl: Duration) -> bool {
        !self.needs_fetch && self.fetched_at.is_some_and(|t| now.duration_since(t) < ttl)
    }

    pub(super) fn try_reserve(&mut self, amount: Credits) -> Result<Credits, BalanceDenied> {
        if !self.is_subscriber {
            return Err(BalanceDenied::NotSubscriber);
        }
        let available = self.available();
        if available < amount {
            return Err(BalanceDenied::Insufficient { available });
        }
        self.reserved = self.reserved.saturating_add(amount);
        Ok(available)
    }
}

/// The ledger of one `(plan, holder)`.
pub(crate) struct Ledger {
    state: Mutex<LedgerState>,
    /// Held by the one request that refreshes the balance; the others wait on it.
    pub(super) refresh: tokio::sync::Mutex<()>,
}

impl Ledger {
    fn new() -> Self {
        Ledger {
            state: Mutex::new(LedgerState::default()),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, LedgerState> {
        // The state is plain numbers, consistent after every statement: a panic while
        // the lock was held cannot leave it half-updated.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) struct BalanceCache {
    ledgers: Cache<Arc<Payer>, Arc<Ledger>, RandomState>,
    /// Every ledger handed out, held weakly. A ledger lives as long as a reservation
    /// (or a charge in flight) holds it, whatever moka does: a ledger evicted (idle,
    /// capacity, or refused admission in a full cache) while reservations still count
    /// on it is found here and put back, never replaced by a fresh one that would not
    /// count them. Only idle ledgers are ever really forgotten.
    live: Mutex<LiveLedgers>,
    pub(super) ttl: Duration,
    pub(super) stale_max_age: Option<Duration>,
    /// A fresh ledger that refuses a request is fetched again when its balance is at
    /// least this old: a top-up made since the fetch is seen at once, and a caller with
    /// no credits costs at most one balance call per this interval.
    pub(super) recheck_after: Duration,
    /// Leases from a store shared with other replicas; `None`: this process alone.
    shared: Option<Arc<dyn LeaseStore>>,
}

impl BalanceCache {
    pub(crate) fn new(
        ttl: Duration,
        capacity: u64,
        stale_max_age: Option<Duration>,
        recheck_after: Duration,
    ) -> Self {
        // A ledger outlives its fetched balance (it carries the reservations); it is
        // dropped once nobody has used it for a while.
        let idle = ttl
            .max(stale_max_age.unwrap_or_default())
            .max(Duration::from_secs(600));
        BalanceCache {
            ledgers: Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(idle)
                .build_with_hasher(RandomState::default()),
            live: Mutex::new(LiveLedgers::default()),
            ttl,
            stale_max_age,
            recheck_after,
            shared: None,
        }
    }

    /// Serves from credit leases of a store shared with other replicas.
    pub(crate) fn with_shared(mut self, store: Arc<dyn LeaseStore>) -> Self {
        self.shared = Some(store);
        self
    }

    /// Ledgers kept, once moka's pending evictions have run.
    pub(crate) async fn entry_count(&self) -> u64 {
        self.ledgers.run_pending_tasks().await;
        self.ledgers.entry_count()
    }

    /// The ledger a warm payer keeps (no lookup).
    fn ledger_in_hand(&self, key: &Payer) -> Option<Arc<Ledger>> {
        key.ledger.get().and_then(|l| l.clone().downcast().ok())
    }

    /// The ledger of `key`. A warm request finds it in the payer itself (the
    /// verification that admitted it keeps its payer): no lookup. That ledger is the
    /// one every other path finds, because the payer's slot holds it strongly and
    /// `live` hands out the ledger still alive for a payer before making a new one.
    pub(super) async fn ledger(&self, key: &Arc<Payer>) -> Arc<Ledger> {
        if let Some(ledger) = self.ledger_in_hand(key) {
            return ledger;
        }
        // Boxed: the rare miss must not weigh on every request's future.
        Box::pin(async {
            let ledger = match self.ledgers.get(key).await {
                Some(ledger) => ledger,
                None => {
                    let ledger = self
                        .live
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .find_or_create(key);
                    // A key without a slot: the cache's key must not keep the ledger
                    // alive beyond the cache's own value. moka may refuse it (full
                    // cache): `live` still finds it while it is used.
                    let bare = Arc::new(key.bare());
                    self.ledgers.insert(bare, ledger.clone()).await;
                    ledger
                }
            };
            let _ = key.ledger.set(ledger.clone());
            ledger
        })
        .await
    }

    /// Reserves `amount` for one request, fetching the balance when the ledger's is
    /// older than the TTL; concurrent requests wait on one fetch.
    pub(crate) async fn reserve(
        &self,
        key: &Arc<Payer>,
        amount: Credits,
        backend: &dyn PaymentBackend,
    ) -> Result<Reservation, BalanceDenied> {
        if let Some(store) = &self.shared {
            return self.reserve_leased(key, amount, &**store, backend).await;
        }
        let ledger = self.ledger(key).await;
        let refused_on = match self.reserve_fresh(&ledger, amount) {
            Fresh::Answered(answer) => return answer,
            Fresh::Fetch { refused_on } => refused_on,
        };
        // Boxed: the rare refresh must not weigh on every request's future.
        Box::pin(self.refresh_and_reserve(ledger, key, amount, refused_on, backend)).await
    }

    /// [`reserve`](Self::reserve) without waiting: the payer's ledger in hand (a warm
    /// payer keeps it) and its balance, or this replica's lease, fresh. `None`: it
    /// needs a lookup, a fetch or a renewal; nothing was reserved.
    pub(crate) fn reserve_now(
        &self,
        key: &Arc<Payer>,
        amount: Credits,
    ) -> Option<Result<Reservation, BalanceDenied>> {
        let ledger = self.ledger_in_hand(key)?;
        match &self.shared {
            Some(store) => self.take_fresh(&ledger, amount, &**store).map(Ok),
            None => match self.reserve_fresh(&ledger, amount) {
                Fresh::Answered(answer) => Some(answer),
                Fresh::Fetch { .. } => None,
            },
        }
    }

    /// A ledger whose balance is fresh answers at once, unless it refuses on a fetch old
    /// enough to check again.
    fn reserve_fresh(&self, ledger: &Arc<Ledger>, amount: Credits) -> Fresh {
        let mut s = ledger.lock();
        if !s.is_fresh(Instant::now(), self.ttl) {
            return Fresh::Fetch { refused_on: None };
        }
        match s.try_reserve(amount) {
            Ok(seen) => {
                drop(s);
                Fresh::Answered(Ok(Reservation::new(ledger.clone(), amount, seen)))
            }
            Err(denied) => match s.fetched_at {
                Some(at) if at.elapsed() >= self.recheck_after => Fresh::Fetch {
                    refused_on: Some(at),
                },
                _ => Fresh::Answered(Err(denied)),
            },
        }
    }

    async fn refresh_and_reserve(
        &self,
        ledger: Arc<Ledger>,
        key: &Payer,
        amount: Credits,
        refused_on: Option<Instant>,
        backend: &dyn PaymentBackend,
    ) -> Result<Reservation, BalanceDenied> {
        let _refreshing = ledger.refresh.lock().await;
        let mark = {
            let mut s = ledger.lock();
            let refreshed_meanwhile = match refused_on {
                Some(at) => s.fetched_at.is_some_and(|t| t > at),
                None => true,
            };
            if refreshed_meanwhile && s.is_fresh(Instant::now(), self.ttl) {
                let seen = s.try_reserve(amount)?;
                drop(s);
                return Ok(Reservation::new(ledger.clone(), amount, seen));
            }
            if s.failed_at.is_some_and(|t| t.elapsed() < FAILURE_BACKOFF) {
                let seen = self.decide_without_fetch(&mut s, amount, "it failed moments ago")?;
                drop(s);
                return Ok(Reservation::new(ledger.clone(), amount, seen));
            }
            s.settled_total
        };
        let fetched = backend.plan_balance(&key.plan_id, &key.holder).await;
        let mut s = ledger.lock();
        let seen = match fetched {
            Ok(balance) => {
                s.fetched = balance.balance;
                s.is_subscriber = balance.is_subscriber;
                s.fetched_at = Some(Instant::now());
                s.needs_fetch = false;
                s.failed_at = None;
                // Charges that completed while the fetch was in flight may or may not
                // be in `balance`; counting them as not is the safe side.
                s.settled_at_fetch = mark;
                s.try_reserve(amount)?
            }
            Err(err) => {
                s.failed_at = Some(Instant::now());
                self.decide_without_fetch(&mut s, amount, &err.to_string())?
            }
        };
        drop(s);
        Ok(Reservation::new(ledger.clone(), amount, seen))
    }

    /// The backend could not tell us the balance: decide from the last one when the
    /// stale policy allows it, else refuse as unavailable.
    fn decide_without_fetch(
        &self,
        s: &mut LedgerState,
        amount: Credits,
        why: &str,
    ) -> Result<Credits, BalanceDenied> {
        // A re-check before refusing failed: the balance we have is still fresh.
        if s.is_fresh(Instant::now(), self.ttl) {
            return s.try_reserve(amount);
        }
        let usable = match (self.stale_max_age, s.fetched_at) {
            (Some(max_age), Some(at)) => at.elapsed() <= max_age,
            _ => false,
        };
        if usable {
            tracing::warn!(
                reason = why,
                "balance fetch failed; deciding from the last balance"
            );
            s.try_reserve(amount)
        } else {
            Err(BalanceDenied::Unavailable(why.to_owned()))
        }
    }
}

/// Weak references to every ledger handed out, swept of dead ones as it grows.
#[derive(Default)]
struct LiveLedgers {
    map: HashMap<Arc<Payer>, Weak<Ledger>>,
    /// Sweep when the map grows past this.
    sweep_at: usize,
}

impl LiveLedgers {
    /// The ledger still alive for `key`, or a fresh one. Under one lock, so concurrent
    /// misses of one key get one ledger.
    fn find_or_create(&mut self, key: &Arc<Payer>) -> Arc<Ledger> {
        if let Some(ledger) = self.map.get(key).and_then(Weak::upgrade) {
            return ledger;
        }
        let ledger = Arc::new(Ledger::new());
        // A key without a slot: a key that held its ledger would never let it die.
        self.map
            .insert(Arc::new(key.bare()), Arc::downgrade(&ledger));
        if self.map.len() > self.sweep_at {
            self.map.retain(|_, ledger| ledger.strong_count() > 0);
            // Amortised: the next sweep once the map has doubled again.
            self.sweep_at = (self.map.len() * 2).max(1_024);
        }
        ledger
    }
}

/// After a failed balance fetch, how long other requests decide without fetching.
pub(super) const FAILURE_BACKOFF: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::future::BoxFuture;

    use super::*;
    use crate::client::Error;
    use crate::types::{
        AccessLimit, AccessToken, Address, NvmApiResult, PaymentRequired, Plan, PlanBalance,
        PlanId, SettleResponse, VerifyResponse,
    };

    /// A backend that knows one balance and counts the fetches.
    struct Balance(Credits, AtomicUsize);

    impl PaymentBackend for Balance {
        fn verify<'a>(
            &'a self,
            _: &'a PaymentRequired,
            _: &'a AccessToken,
            _: Option<Credits>,
        ) -> BoxFuture<'a, Result<VerifyResponse, Error>> {
            unreachable!("balances only")
        }
        fn settle<'a>(
            &'a self,
            _: &'a PaymentRequired,
            _: &'a AccessToken,
            _: Option<Credits>,
            _: &'a str,
        ) -> BoxFuture<'a, Result<SettleResponse, Error>> {
            unreachable!("balances only")
        }
        fn redeem<'a>(
            &'a self,
            _: &'a str,
            _: &'a PlanId,
            _: &'a Address,
            _: Credits,
        ) -> BoxFuture<'a, Result<NvmApiResult, Error>> {
            unreachable!("balances only")
        }
        fn plan_balance<'a>(
            &'a self,
            plan_id: &'a PlanId,
            holder: &'a Address,
        ) -> BoxFuture<'a, Result<PlanBalance, Error>> {
            self.1.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                Ok(PlanBalance {
                    plan_id: plan_id.clone(),
                    plan_name: "plan".into(),
                    plan_type: AccessLimit::Credits,
                    holder_address: holder.clone(),
                    balance: self.0,
                    credits_contract: Address::zero(),
                    is_subscriber: true,
                    price_per_credit: 0.0,
                    batch: None,
                })
            })
        }
        fn plan<'a>(&'a self, _: &'a PlanId) -> BoxFuture<'a, Result<Plan, Error>> {
            unreachable!("balances only")
        }
        fn access_token_jwks(&self) -> BoxFuture<'_, Result<jsonwebtoken::jwk::JwkSet, Error>> {
            unreachable!("balances only")
        }
    }

    /// A ledger kept alive only by a cached verification's payer (no reservation, moka
    /// has forgotten it) is still the one another token of the same payer gets: two
    /// ledgers would each count the whole balance, and two tokens would spend it twice.
    #[tokio::test]
    async fn a_ledger_held_by_a_payer_slot_is_the_one_another_token_finds() {
        let backend = Balance(Credits::from(2u64), AtomicUsize::new(0));
        let cache = BalanceCache::new(Duration::from_secs(30), 8, None, Duration::from_secs(1));
        let first_token = Arc::new(Payer::new("1".parse().unwrap(), Address::zero()));
        let two = Credits::from(2u64);
        cache
            .reserve(&first_token, two, &backend)
            .await
            .unwrap()
            .release(false);
        assert!(
            first_token.ledger.get().is_some(),
            "the payer carries its ledger"
        );
        cache.ledgers.invalidate(&first_token.bare()).await;
        cache.ledgers.run_pending_tasks().await;
        assert_eq!(cache.ledgers.entry_count(), 0, "moka has forgotten it");
        // Only the first token's payer holds the ledger now. A second token of the same
        // payer gets that ledger: no second fetch (a new ledger would fetch) ...
        let second_token = Arc::new(first_token.bare());
        let held = cache.reserve(&second_token, two, &backend).await.unwrap();
        assert_eq!(backend.1.load(Ordering::SeqCst), 1, "one ledger, one fetch");
        // ... and the first token, on its warm path, sees what the second holds.
        let refused = cache.reserve(&first_token, two, &backend).await;
        assert!(matches!(refused, Err(BalanceDenied::Insufficient { .. })));
        held.release(false);
    }

    /// Idle time, capacity and refused admission all end in moka forgetting the entry:
    /// `invalidate` stands for each of them.
    #[tokio::test]
    async fn a_ledger_the_cache_forgets_while_reserved_is_found_again() {
        let backend = Balance(Credits::from(2u64), AtomicUsize::new(0));
        let cache = BalanceCache::new(Duration::from_secs(30), 8, None, Duration::from_secs(1));
        let key = Arc::new(Payer::new("1".parse().unwrap(), Address::zero()));
        let two = Credits::from(2u64);
        let held = cache.reserve(&key, two, &backend).await.unwrap();
        cache.ledgers.invalidate(&key).await;
        // Another token of the same payer: its key has no ledger yet, so it looks.
        let other = Arc::new(key.bare());
        let second = cache.reserve(&other, two, &backend).await;
        assert!(
            matches!(second, Err(BalanceDenied::Insufficient { .. })),
            "the reservation still counts"
        );
        assert_eq!(backend.1.load(Ordering::SeqCst), 1, "no fetch: same ledger");

        // Released: the credits are available again, whichever ledger answers.
        held.release(false);
        cache.ledgers.invalidate(&key).await;
        cache
            .reserve(&Arc::new(key.bare()), two, &backend)
            .await
            .unwrap()
            .release(false);
    }
}
