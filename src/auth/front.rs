//! A small per-thread front of the verification cache: the hot path's lookup of a
//! token it has just seen, without moka's read path (its clock, its read log, its
//! housekeeping and a future of 872 bytes: BENCHMARKS.md).
//!
//! What it may serve is exactly what the verification cache would serve:
//! - a slot holds *weak* references to a verification the cache made: once nothing else
//!   keeps it (moka evicted it, no request holds it) the slot is empty, so the front
//!   never keeps a token, a caller or a ledger alive;
//! - a hit is checked against the full token, like every hit of the cache, so a slot
//!   another token's hash lands on is a miss, never a mix-up;
//! - a verification carries its own expiry (the entry's TTL, taken before the cache's
//!   own clock starts) and a forgotten flag set before the cache forgets it
//!   (`Authenticator::forget`, a spent single-use token), and the front checks both;
//! - slots are keyed by the authenticator too: two layers never share a verification.
//!
//! A miss costs a slot comparison and falls back to the cache; 128 direct-mapped slots
//! per thread hold the callers a thread serves most recently.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::verification::{VerificationKey, Verified};
use super::{Caller, Payer};
use crate::credential::same_canonical;
use crate::types::TokenDigest;

/// Slots per thread (a power of two).
const SLOTS: usize = 128;

/// How long a verification may be served, and whether it was forgotten: read by the
/// front on every hit, so that it never serves what the cache no longer would.
pub(crate) struct Validity {
    until: Instant,
    forgotten: AtomicBool,
}

impl Validity {
    /// Valid for `ttl` from now (the cache's own TTL starts a moment later).
    pub(crate) fn for_ttl(ttl: Duration) -> Self {
        let now = Instant::now();
        Validity {
            until: now.checked_add(ttl).unwrap_or(now),
            forgotten: AtomicBool::new(false),
        }
    }

    /// Never served by the front (a caller rebuilt to replay a journaled charge).
    pub(crate) fn never() -> Self {
        Validity {
            until: Instant::now(),
            forgotten: AtomicBool::new(true),
        }
    }

    /// Set before the cache forgets the verification.
    pub(crate) fn forget(&self) {
        self.forgotten.store(true, Ordering::Release);
    }

    fn holds(&self) -> bool {
        !self.forgotten.load(Ordering::Acquire) && Instant::now() < self.until
    }
}

struct Slot {
    owner: u64,
    key: VerificationKey,
    caller: Weak<Caller>,
    payer: Weak<Payer>,
    single_use: Option<TokenDigest>,
    ttl: Duration,
}

thread_local! {
    static FRONT: RefCell<Vec<Option<Slot>>> = const { RefCell::new(Vec::new()) };
}

/// A unique id per authenticator, so that slots of two layers never mix.
pub(crate) fn new_owner() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn index(key: &VerificationKey) -> usize {
    // The token hash is randomly seeded; the route hash spreads one token's routes.
    // Truncation is the point: only the low bits pick the slot.
    #[allow(clippy::cast_possible_truncation)]
    let mixed = (key.0 ^ key.1.rotate_left(29)) as usize;
    mixed & (SLOTS - 1)
}

/// The verification of `credential` under `key`, if this thread's front holds it and it
/// still holds.
pub(crate) fn get(owner: u64, key: &VerificationKey, credential: &str) -> Option<Verified> {
    FRONT
        .try_with(|front| {
            let front = front.try_borrow().ok()?;
            let slot = front.get(index(key))?.as_ref()?;
            if slot.owner != owner || slot.key != *key {
                return None;
            }
            let caller = slot.caller.upgrade()?;
            if !caller.validity.holds()
                || !same_canonical(caller.credential.token().expose(), credential)
            {
                return None;
            }
            Some(Verified {
                caller,
                payer: slot.payer.upgrade()?,
                single_use: slot.single_use,
                ttl: slot.ttl,
            })
        })
        .ok()
        .flatten()
}

/// Remembers a verification the cache just served on this thread.
pub(crate) fn put(owner: u64, key: VerificationKey, verified: &Verified) {
    let _ = FRONT.try_with(|front| {
        let Ok(mut front) = front.try_borrow_mut() else {
            return;
        };
        if front.is_empty() {
            front.resize_with(SLOTS, || None);
        }
        if let Some(slot) = front.get_mut(index(&key)) {
            *slot = Some(Slot {
                owner,
                key,
                caller: Arc::downgrade(&verified.caller),
                payer: Arc::downgrade(&verified.payer),
                single_use: verified.single_use,
                ttl: verified.ttl,
            });
        }
    });
}

#[cfg(test)]
pub(crate) fn clear() {
    let _ = FRONT.try_with(|front| front.borrow_mut().clear());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthConfig, Authenticator, Lookup};
    use crate::credential::Credential;
    use crate::types::{AccessToken, Address, PlanId};

    fn authenticator(collide_hashes: bool) -> Authenticator {
        Authenticator::new(AuthConfig {
            plan_ids: Vec::new(),
            agent_id: None,
            verification_ttl: Duration::from_secs(60),
            verification_capacity: 100,
            verification_bytes: 1 << 20,
            max_verifications: 4,
            no_credits_ttl: Duration::from_secs(1),
            collide_hashes,
            shared_claims: None,
        })
    }

    fn verified(token: &str, ttl: Duration) -> Verified {
        let credential = Credential::Bearer {
            token: AccessToken::new(token),
        };
        let plan: PlanId = "7".parse().unwrap();
        Verified {
            caller: Arc::new(Caller {
                subscriber: Address::zero(),
                plan_id: plan.clone(),
                agent_id: None,
                token_digest: credential.digest(),
                credential,
                validity: Validity::for_ttl(ttl),
            }),
            payer: Arc::new(Payer::new(plan, Address::zero())),
            single_use: None,
            ttl,
        }
    }

    /// Verifies `token` into the cache, then looks it up once: the lookup that puts it
    /// in this thread's front.
    async fn cache_and_serve(auth: &Authenticator, token: &str) -> (VerificationKey, Verified) {
        let key = auth.key(token, 1);
        let made = verified(token, Duration::from_secs(60));
        let fresh = made.clone();
        let first = auth.verify_once(key, token, async move { Ok(fresh) }).await;
        assert!(first.unwrap().is_some());
        match auth.cached(&key, token).await {
            Lookup::Hit(v) => assert!(Arc::ptr_eq(&v.caller, &made.caller)),
            _ => panic!("the cache holds the verification"),
        }
        (key, made)
    }

    #[tokio::test]
    async fn the_front_serves_what_the_cache_served_and_never_once_it_is_forgotten() {
        clear();
        let auth = authenticator(false);
        let token = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhIn0.c2lnYQ";
        let (key, made) = cache_and_serve(&auth, token).await;
        let hit = auth.recent(&key, token).expect("served by the front");
        assert!(Arc::ptr_eq(&hit.caller, &made.caller));
        assert!(Arc::ptr_eq(&hit.payer, &made.payer));

        // A 404 or a spent single-use token forgets it: no thread may serve it again,
        // although this test still holds it.
        auth.forget(&key).await;
        assert!(auth.recent(&key, token).is_none());
        assert!(matches!(auth.cached(&key, token).await, Lookup::Miss));
    }

    #[tokio::test]
    async fn a_token_whose_hash_collides_is_never_served_anothers_verification() {
        clear();
        let auth = authenticator(true);
        let a = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhIn0.c2lnYQ";
        let b = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJiIn0.c2lnYg";
        let (key_a, _held) = cache_and_serve(&auth, a).await;
        let key_b = auth.key(b, 1);
        assert_eq!(key_a, key_b, "the test hook makes every token collide");
        assert!(auth.recent(&key_a, a).is_some());
        assert!(auth.recent(&key_b, b).is_none(), "b is not a");
        assert!(matches!(auth.cached(&key_b, b).await, Lookup::Collision));
        // Another spelling of the same token is the same token.
        let padded = format!(" {a}== ");
        assert!(auth.recent(&key_a, &padded).is_some());
    }

    #[test]
    fn an_expired_verification_is_not_served() {
        clear();
        let token = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhIn0.c2lnYQ";
        let expired = verified(token, Duration::ZERO);
        put(7, (1, 1), &expired);
        assert!(get(7, &(1, 1), token).is_none());
        let live = verified(token, Duration::from_secs(60));
        put(7, (1, 1), &live);
        assert!(get(7, &(1, 1), token).is_some());
    }

    #[test]
    fn the_front_keeps_nothing_alive_and_never_mixes_two_layers() {
        clear();
        let token = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhIn0.c2lnYQ";
        let live = verified(token, Duration::from_secs(60));
        put(8, (2, 2), &live);
        assert!(get(9, &(2, 2), token).is_none(), "another layer's slot");
        assert!(get(8, &(2, 3), token).is_none(), "another route");
        assert!(get(8, &(2, 2), token).is_some());
        let caller = Arc::downgrade(&live.caller);
        drop(live);
        assert!(caller.upgrade().is_none(), "the slot held it only weakly");
        assert!(get(8, &(2, 2), token).is_none());
    }
}
