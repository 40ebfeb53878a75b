//! Step 3 with a store shared by several replicas: a payer's ledger serves from the
//! credit lease this replica holds (no network call), and renews it from the store in
//! one atomic step when it is spent or half its TTL old, reporting what it charged.
//!
//! When the store cannot be reached, the replica serves what is left of the lease it
//! holds until the lease would expire in the store, then refuses with 503: never more
//! than the store has counted against this replica.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::lease::{Fetched, LeaseAnswer, LeaseRequest, LeaseState, LeaseStatus, LeaseStore};
use super::ledger::{BalanceCache, Ledger, LedgerState, FAILURE_BACKOFF};
use super::{BalanceDenied, Reservation};
use crate::auth::Payer;
use crate::backend::PaymentBackend;
use crate::types::Credits;

impl BalanceCache {
    /// Reserves `amount` from this replica's lease, renewing it when needed.
    pub(super) async fn reserve_leased(
        &self,
        key: &Arc<Payer>,
        amount: Credits,
        store: &dyn LeaseStore,
        backend: &dyn PaymentBackend,
    ) -> Result<Reservation, BalanceDenied> {
        let ledger = self.ledger(key).await;
        if let Some(reservation) = self.take_fresh(&ledger, amount, store) {
            return Ok(reservation);
        }
        // Boxed: the rare renewal must not weigh on every request's future.
        Box::pin(self.renew_and_reserve(ledger, key, amount, store, backend)).await
    }

    /// Takes `amount` from a lease still fresh with room for it; `None`: renew first.
    pub(super) fn take_fresh(
        &self,
        ledger: &Arc<Ledger>,
        amount: Credits,
        store: &dyn LeaseStore,
    ) -> Option<Reservation> {
        let mut s = ledger.lock();
        if !s.is_fresh(Instant::now(), renew_after(store)) {
            return None;
        }
        let seen = take(&mut s, amount).ok()?;
        drop(s);
        Some(Reservation::new(ledger.clone(), amount, seen))
    }

    async fn renew_and_reserve(
        &self,
        ledger: Arc<Ledger>,
        key: &Payer,
        amount: Credits,
        store: &dyn LeaseStore,
        backend: &dyn PaymentBackend,
    ) -> Result<Reservation, BalanceDenied> {
        // One renewal per payer at a time on this replica: the requests waiting here
        // are then served from the lease it brings back.
        let _renewing = ledger.refresh.lock().await;
        {
            let mut s = ledger.lock();
            if s.is_fresh(Instant::now(), renew_after(store)) {
                if let Ok(seen) = take(&mut s, amount) {
                    drop(s);
                    return Ok(Reservation::new(ledger.clone(), amount, seen));
                }
            }
            if s.failed_at.is_some_and(|t| t.elapsed() < FAILURE_BACKOFF) {
                let seen = serve_from_lease(&mut s, amount, "the shared store failed moments ago")?;
                drop(s);
                return Ok(Reservation::new(ledger.clone(), amount, seen));
            }
        }
        let mut fetched = Fetched::No;
        loop {
            let asked_at = Instant::now();
            let (mark, request) = {
                let s = ledger.lock();
                let request = LeaseRequest {
                    payer: key,
                    report: s.settled_total.saturating_sub(s.settled_at_fetch),
                    reserved: s.reserved,
                    amount,
                    extra: wish(&s, amount, store.max_extra()),
                    fetched,
                    force_fetch: s.needs_fetch && matches!(fetched, Fetched::No),
                    balance_ttl: self.ttl,
                    recheck_after: self.recheck_after,
                    stale_max_age: self.stale_max_age,
                };
                (s.settled_total, request)
            };
            let answer = store.lease(request).await;
            let mark = match self.apply(&ledger, amount, store, answer, fetched, mark, asked_at) {
                Applied::Done(result) => {
                    return result.map(|seen| Reservation::new(ledger.clone(), amount, seen))
                }
                Applied::Fetch { mark } => mark,
            };
            fetched = match backend.plan_balance(&key.plan_id, &key.holder).await {
                Ok(b) => Fetched::Yes {
                    balance: b.balance,
                    is_subscriber: b.is_subscriber,
                    mark,
                },
                Err(err) => {
                    tracing::warn!(error = %err, "balance fetch failed");
                    Fetched::Failed
                }
            };
        }
    }

    /// Takes the store's answer into the ledger: the request's verdict, or the fetch
    /// the store asked for.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        ledger: &Ledger,
        amount: Credits,
        store: &dyn LeaseStore,
        answer: Result<LeaseAnswer, String>,
        fetched: Fetched,
        reported: Credits,
        asked_at: Instant,
    ) -> Applied {
        let mut s = ledger.lock();
        let answer = match answer {
            Ok(answer) if answer.status != LeaseStatus::Recovering => answer,
            // The store forgot every lease (a restart): ours is counted nowhere now,
            // so it is served only until it would have expired.
            Ok(_) => {
                return Applied::Done(serve_from_lease(
                    &mut s,
                    amount,
                    "the shared store is recovering",
                ))
            }
            Err(why) => {
                s.failed_at = Some(Instant::now());
                tracing::warn!(reason = %why, "shared store unreachable: serving from the lease held");
                return Applied::Done(serve_from_lease(&mut s, amount, &why));
            }
        };
        // The report is in the store now, and the lease is what the store says.
        s.failed_at = None;
        s.settled_at_fetch = reported;
        s.fetched = answer.held;
        let granted_until = asked_at + lease_life(store);
        let verdict = match answer.status {
            LeaseStatus::Fetch { mark } if matches!(fetched, Fetched::No) => {
                return Applied::Fetch { mark };
            }
            LeaseStatus::Granted => {
                let lease = lease_of(&mut s);
                lease.used = Credits::ZERO;
                lease.beyond = answer.available.saturating_sub(answer.held);
                Ok(())
            }
            LeaseStatus::Insufficient => {
                lease_of(&mut s).beyond = Credits::ZERO;
                let available = answer.available.saturating_sub(s.reserved);
                Err(BalanceDenied::Insufficient { available })
            }
            LeaseStatus::NotSubscriber => Err(BalanceDenied::NotSubscriber),
            LeaseStatus::Fetch { .. } | LeaseStatus::Unavailable | LeaseStatus::Recovering => {
                return Applied::Done(Err(BalanceDenied::Unavailable(
                    "the balance could not be fetched".to_owned(),
                )));
            }
        };
        s.fetched_at = Some(asked_at);
        lease_of(&mut s).until = Some(granted_until);
        s.is_subscriber = answer.status != LeaseStatus::NotSubscriber;
        s.needs_fetch = false;
        Applied::Done(verdict.and_then(|()| take(&mut s, amount)))
    }
}

/// What the store's answer leaves to do.
enum Applied {
    /// The request's verdict: what the payer had, or why it is refused.
    Done(Result<Credits, BalanceDenied>),
    /// Fetch the backend balance and ask again with this mark.
    Fetch { mark: Credits },
}

/// A lease is renewed once half its life is gone, so a busy replica never serves near
/// its expiry.
fn renew_after(store: &dyn LeaseStore) -> Duration {
    store.lease_ttl() / 2
}

/// How long this replica serves a lease: a little less than the store keeps it, from
/// before the call (the store's clock starts later).
fn lease_life(store: &dyn LeaseStore) -> Duration {
    let ttl = store.lease_ttl();
    ttl - ttl / 20
}

fn lease_of(s: &mut LedgerState) -> &mut LeaseState {
    s.lease.get_or_insert_with(Box::default)
}

/// Reserves from the lease; answers what the payer had (this lease and beyond it).
fn take(s: &mut LedgerState, amount: Credits) -> Result<Credits, BalanceDenied> {
    let free = s.try_reserve(amount)?;
    let lease = lease_of(s);
    lease.used = lease.used.saturating_add(amount);
    Ok(free.saturating_add(lease.beyond))
}

/// The store cannot decide: serve from the lease while it is counted in the store,
/// else refuse as unavailable (a spent lease is never topped up without the store).
/// Not after the backend refused a charge (`needs_fetch`): a refused charge gives its
/// credits back to the lease, which would then serve them again and again for free.
fn serve_from_lease(
    s: &mut LedgerState,
    amount: Credits,
    why: &str,
) -> Result<Credits, BalanceDenied> {
    let counted = s.is_subscriber
        && !s.needs_fetch
        && s.lease
            .as_ref()
            .and_then(|l| l.until)
            .is_some_and(|t| Instant::now() < t);
    if counted {
        if let Ok(seen) = take(s, amount) {
            return Ok(seen);
        }
    }
    Err(BalanceDenied::Unavailable(why.to_owned()))
}

/// Credits to ask beyond the request: twice what the last lease served (so a busy payer
/// needs fewer and fewer calls), at least one more request, at most `max_extra`. The
/// store gives less when little is left.
fn wish(s: &LedgerState, amount: Credits, max_extra: Credits) -> Credits {
    let used = s.lease.as_ref().map_or(Credits::ZERO, |l| l.used);
    used.saturating_add(used).max(amount).min(max_extra)
}
