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
//! A slot is picked by a randomly seeded hash of the raw token text sampled at 16 places
//! (and its length and route), not of all of it: the canonical hash of the whole token
//! (the cache's key, kept in the slot) is computed only on a miss. Any two tokens that
//! differ only where the sample does not look share a slot and evict each other, which
//! costs a miss each, never a mix-up; the seed keeps anyone from aiming at a slot.
//!
//! A miss costs a slot comparison and falls back to the cache; 128 direct-mapped slots
//! per thread hold the callers a thread serves most recently.

use std::cell::RefCell;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant};

use super::verification::{VerificationKey, Verified};
use super::{Caller, Payer};
use crate::credential::same_canonical_bytes;
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
    /// The cache's key of the token: its canonical hash and the route's.
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

/// Words of the token read for its slot: spread over the whole token, so that tokens
/// of one plan (alike at both ends) still land apart.
const SAMPLES: usize = 16;

static SLOT_SEED: LazyLock<(foldhash::fast::RandomState, u64)> =
    LazyLock::new(|| (Default::default(), rand::random()));

/// The slot of a raw credential on a route.
fn index(bytes: &[u8], route: u64) -> usize {
    let (seed, start) = &*SLOT_SEED;
    let mut hasher = seed.build_hasher();
    hasher.write_u64(route);
    hasher.write_usize(bytes.len());
    if bytes.len() <= SAMPLES * 8 {
        hasher.write(bytes);
    } else {
        // The words are folded by a multiply and then hashed once with the seed: a
        // seeded hash per word cost more than the rest of the lookup. (The fold starts
        // from a random value, so nobody can aim two tokens at one fold either.)
        let last = bytes.len() - 8;
        let step = last / (SAMPLES - 1);
        let word = |at: usize| {
            bytes
                .get(at..at + 8)
                .and_then(|w| <[u8; 8]>::try_from(w).ok())
                .map_or(0, u64::from_le_bytes)
        };
        let mut folded = *start;
        for i in 0..SAMPLES - 1 {
            folded = (folded.rotate_left(23) ^ word(i * step)).wrapping_mul(FOLD);
        }
        folded = (folded.rotate_left(23) ^ word(last)).wrapping_mul(FOLD);
        hasher.write_u64(folded);
    }
    // Truncation is the point: only the low bits pick the slot.
    #[allow(clippy::cast_possible_truncation)]
    let slot = hasher.finish() as usize;
    slot & (SLOTS - 1)
}

/// An odd 64-bit constant (the golden ratio's): multiplying by it spreads every bit.
const FOLD: u64 = 0x9E37_79B9_7F4A_7C15;

/// The cache key and verification of the raw credential `credential` (a header value's
/// bytes, not validated: equal to a validated token, it is that token) on `route`, if
/// this thread's front holds it and it still holds.
pub(crate) fn get(
    owner: u64,
    credential: &[u8],
    route: u64,
) -> Option<(VerificationKey, Verified)> {
    FRONT
        .try_with(|front| {
            let front = front.try_borrow().ok()?;
            let slot = front.get(index(credential, route))?.as_ref()?;
            if slot.owner != owner || slot.key.1 != route {
                return None;
            }
            let caller = slot.caller.upgrade()?;
            if !caller.validity.holds()
                || !same_canonical_bytes(caller.credential.token().expose(), credential)
            {
                return None;
            }
            let verified = Verified {
                caller,
                payer: slot.payer.upgrade()?,
                single_use: slot.single_use,
                ttl: slot.ttl,
            };
            Some((slot.key, verified))
        })
        .ok()
        .flatten()
}

/// Remembers a verification the cache just served on this thread for `credential`
/// (this spelling of the token) under `key` on its route.
pub(crate) fn put(owner: u64, credential: &str, key: VerificationKey, verified: &Verified) {
    let _ = FRONT.try_with(|front| {
        let Ok(mut front) = front.try_borrow_mut() else {
            return;
        };
        if front.is_empty() {
            front.resize_with(SLOTS, || None);
        }
        if let Some(slot) = front.get_mut(index(credential.as_bytes(), key.1)) {
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
        let (front_key, hit) = auth
            .recent(token.as_bytes(), 1)
            .expect("served by the front");
        assert_eq!(front_key, key);
        assert!(Arc::ptr_eq(&hit.caller, &made.caller));
        assert!(Arc::ptr_eq(&hit.payer, &made.payer));

        // A 404 or a spent single-use token forgets it: no thread may serve it again,
        // although this test still holds it.
        auth.forget(&key, &hit.caller).await;
        assert!(auth.recent(token.as_bytes(), 1).is_none());
        assert!(matches!(auth.cached(&key, token).await, Lookup::Miss));
    }

    #[tokio::test]
    async fn a_verification_the_cache_already_evicted_is_still_forgotten_by_the_front() {
        clear();
        let auth = authenticator(false);
        let token = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhIn0.c2lnYQ";
        let (key, _made) = cache_and_serve(&auth, token).await;
        let (_, used) = auth
            .recent(token.as_bytes(), 1)
            .expect("served by the front");
        // Evicted from the cache while a request (this test) still holds it: the
        // front may serve it until its TTL, like any request already admitted...
        auth.verifications.invalidate(&key).await;
        assert!(auth.recent(token.as_bytes(), 1).is_some());
        // ...until a request it admitted forgets it: then no thread serves it.
        auth.forget(&key, &used.caller).await;
        assert!(auth.recent(token.as_bytes(), 1).is_none());
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
        assert!(auth.recent(a.as_bytes(), 1).is_some());
        assert!(auth.recent(b.as_bytes(), 1).is_none(), "b is not a");
        assert!(matches!(auth.cached(&key_b, b).await, Lookup::Collision));
        // Another spelling of the same token is the same token: served by the cache,
        // then by the front under that spelling.
        let padded = format!(" {a}== ");
        assert!(matches!(auth.cached(&key_a, &padded).await, Lookup::Hit(_)));
        let (key, _) = auth
            .recent(padded.as_bytes(), 1)
            .expect("the other spelling");
        assert_eq!(key, key_a);
    }

    #[test]
    fn an_expired_verification_is_not_served() {
        clear();
        let token = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhIn0.c2lnYQ";
        let expired = verified(token, Duration::ZERO);
        put(7, token, (1, 1), &expired);
        assert!(get(7, token.as_bytes(), 1).is_none());
        let live = verified(token, Duration::from_secs(60));
        put(7, token, (1, 1), &live);
        assert!(get(7, token.as_bytes(), 1).is_some());
    }

    #[test]
    fn the_front_keeps_nothing_alive_and_never_mixes_two_layers() {
        clear();
        let token = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhIn0.c2lnYQ";
        let live = verified(token, Duration::from_secs(60));
        put(8, token, (2, 2), &live);
        assert!(
            get(9, token.as_bytes(), 2).is_none(),
            "another layer's slot"
        );
        assert!(get(8, token.as_bytes(), 3).is_none(), "another route");
        assert!(get(8, token.as_bytes(), 2).is_some());
        let caller = Arc::downgrade(&live.caller);
        drop(live);
        assert!(caller.upgrade().is_none(), "the slot held it only weakly");
        assert!(get(8, token.as_bytes(), 2).is_none());
    }

    #[test]
    fn two_tokens_in_one_slot_evict_each_other_and_are_never_confused() {
        clear();
        // 200 bytes: the sample reads bytes 0..8 and 12..20 (step 192 / 15 = 12) but
        // not 8..12.
        let a = format!("eyJ{}", "x".repeat(197));
        let mut b = a.clone().into_bytes();
        b[9] = b'y';
        let b = String::from_utf8(b).unwrap();
        assert_eq!(
            index(a.as_bytes(), 4),
            index(b.as_bytes(), 4),
            "the sample does not see byte 9"
        );
        let (va, vb) = (
            verified(&a, Duration::from_secs(60)),
            verified(&b, Duration::from_secs(60)),
        );
        put(5, &a, (11, 4), &va);
        assert!(get(5, b.as_bytes(), 4).is_none(), "b is not a");
        let (key, hit) = get(5, a.as_bytes(), 4).unwrap();
        assert_eq!(key, (11, 4));
        assert!(Arc::ptr_eq(&hit.caller, &va.caller));
        put(5, &b, (22, 4), &vb);
        assert!(
            get(5, a.as_bytes(), 4).is_none(),
            "evicted: a miss, not b's verification"
        );
        let (key, hit) = get(5, b.as_bytes(), 4).unwrap();
        assert_eq!(key, (22, 4));
        assert!(Arc::ptr_eq(&hit.caller, &vb.caller));
    }
}
