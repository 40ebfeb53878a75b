//! Step 2: who is paying. x402 tokens are verified by the facilitator (once per token
//! and route however many requests ask at once, with a bound on calls in flight), bearer
//! JWTs locally against the issuer's JWKS; positive verifications are cached, verdicts
//! against a token are remembered for a moment, and single-use (x402 v3) tokens are
//! claimed by one request only.
//!
//! Keys are randomly seeded hashes of the tokens' canonical text (every base64 spelling
//! of one token hashes alike) and route hashes, checked against the full token on every
//! hit; no token is a key, and only SHA-256 digests of tokens, computed once per
//! verification, are logged.

mod bearer;
mod caller;
mod facilitator;
mod front;
mod single_use;
mod verification;

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foldhash::quality::RandomState;
use tokio::sync::Semaphore;

pub use caller::Caller;
pub(crate) use caller::Payer;
pub(crate) use front::Validity;
pub(crate) use single_use::{single_use_key, ClaimRefused, SharedClaims, SingleUseClaim};
pub(crate) use verification::{VerificationKey, Verified};

use self::bearer::JwksCache;
use self::single_use::SingleUseTokens;
use self::verification::VerificationCache;
use crate::backend::PaymentBackend;
use crate::credential::same_canonical;
use crate::rejection::{Rejection, RejectionKind};
use crate::types::{
    AccessToken, AccessTokenClaims, Address, AgentId, Credits, PaymentRequired, PlanId, TokenDigest,
};

/// How long a refused token is refused without asking again.
const REFUSAL_TTL: Duration = Duration::from_secs(5);

/// What authentication is allowed to accept, and how much it may remember.
pub(crate) struct AuthConfig {
    pub(crate) plan_ids: Vec<PlanId>,
    pub(crate) agent_id: Option<AgentId>,
    pub(crate) verification_ttl: Duration,
    pub(crate) verification_capacity: u64,
    pub(crate) verification_bytes: u64,
    pub(crate) max_verifications: usize,
    /// How long "no credits" is a verdict (the balance re-check interval).
    pub(crate) no_credits_ttl: Duration,
    /// Test hook: every token gets the same cache hash, to prove collisions are harmless.
    pub(crate) collide_hashes: bool,
    /// Single-use tokens are claimed there too (replicas sharing a store).
    pub(crate) shared_claims: Option<Arc<dyn SharedClaims>>,
}

/// What the verification cache knows of a token on a route.
pub(crate) enum Lookup {
    /// Verified, and it is this very token.
    Hit(Verified),
    /// Not verified yet.
    Miss,
    /// Another token shares its hash: verify this one without the cache.
    Collision,
}

/// What a facilitator `verify` said of an x402 token.
pub(crate) struct FacilitatorVerdict {
    /// The payer the facilitator names, if it does.
    pub(crate) payer: Option<Address>,
    /// The verify's `agentRequestId`, when it gave one.
    pub(crate) request_id: Option<String>,
}

pub(crate) struct Authenticator {
    config: AuthConfig,
    verifications: VerificationCache,
    /// Verdicts on tokens just given (refused, not a subscriber), so a replay costs no
    /// call; each with how long it holds and a second hash of its token, so a
    /// collision never refuses another token.
    refused: moka::future::Cache<VerificationKey, Verdict, crate::hashing::RandomState>,
    /// Seeds of the cache hash and of the verdicts' check hash (random per layer).
    key_hasher: RandomState,
    check_hasher: RandomState,
    jwks: JwksCache,
    single_use: Arc<SingleUseTokens>,
    /// Facilitator `verify` calls in flight, bounded whoever sends the tokens.
    verify_permits: Semaphore,
    /// This authenticator's slots in the per-thread front of the verification cache.
    front_owner: u64,
}

/// Entry counts, for `PaymentLayer::cache_sizes`.
pub(crate) struct AuthSizes {
    pub(crate) verifications: u64,
    pub(crate) verification_bytes: u64,
    pub(crate) refused_tokens: u64,
    pub(crate) spent_single_use_tokens: u64,
}

impl Authenticator {
    pub(crate) fn new(config: AuthConfig) -> Self {
        Authenticator {
            verifications: VerificationCache::new(
                config.verification_capacity,
                config.verification_bytes,
            ),
            refused: moka::future::Cache::builder()
                .max_capacity(config.verification_capacity)
                .expire_after(PerVerdictTtl)
                .build_with_hasher(Default::default()),
            jwks: JwksCache::default(),
            single_use: Arc::new(
                SingleUseTokens::new(
                    usize::try_from(config.verification_capacity).unwrap_or(usize::MAX),
                    // A cached verification lives at most this long: a spent token is
                    // remembered longer than any verification that could admit it again.
                    config.verification_ttl,
                )
                .with_shared(config.shared_claims.clone()),
            ),
            verify_permits: Semaphore::new(config.max_verifications),
            key_hasher: RandomState::default(),
            check_hasher: RandomState::default(),
            front_owner: front::new_owner(),
            config,
        }
    }

    pub(crate) async fn sizes(&self) -> AuthSizes {
        self.refused.run_pending_tasks().await;
        AuthSizes {
            verifications: self.verifications.entry_count().await,
            verification_bytes: self.verifications.weighted_size().await,
            refused_tokens: self.refused.entry_count(),
            spent_single_use_tokens: self.single_use.spent_count(),
        }
    }

    /// The cache key of a credential's text on a route: no cryptographic hash on the
    /// hot path, a randomly seeded one nobody can aim collisions at.
    pub(crate) fn key(&self, credential: &str, route: u64) -> VerificationKey {
        if self.config.collide_hashes {
            return (0, route);
        }
        (hash_canonical(&self.key_hasher, credential), route)
    }

    /// The cache key and verification of this raw credential (a header value's bytes)
    /// on this route if this thread served it lately (the hot path: no await, no moka,
    /// no hash of the whole token, no validation of the text: equal to a validated
    /// token, it is that token), checked against the full token; `None` says nothing,
    /// ask [`cached`](Self::cached).
    pub(crate) fn recent(
        &self,
        credential: &[u8],
        route: u64,
    ) -> Option<(VerificationKey, Verified)> {
        front::get(self.front_owner, credential, route)
    }

    /// The cached verification of this token on this route, checked against the full
    /// token.
    pub(crate) async fn cached(&self, key: &VerificationKey, credential: &str) -> Lookup {
        match self.verifications.get(key).await {
            None => Lookup::Miss,
            Some(v) if same_canonical(v.caller.credential.token().expose(), credential) => {
                front::put(self.front_owner, credential, *key, &v);
                Lookup::Hit(v)
            }
            Some(_) => Lookup::Collision,
        }
    }

    /// Forgets the verification `used` admitted a request with (one that cannot be
    /// charged, a spent single-use token), everywhere. It is flagged itself, since a
    /// thread's front may hold it after the cache has let it go, and so is whatever the
    /// cache holds under its key; then the cache forgets the key.
    pub(crate) async fn forget(&self, key: &VerificationKey, used: &Caller) {
        used.validity.forget();
        if let Some(verified) = self.verifications.get(key).await {
            verified.caller.validity.forget();
        }
        self.verifications.invalidate(key).await;
    }

    /// Runs `verify` for a token not verified yet on this route: once however many
    /// requests ask at the same time, cached when it succeeds, and a verdict on the
    /// token remembered for a few seconds when it fails. `Ok(None)`: another token
    /// with the same hash got there first; verify this one without the cache.
    pub(crate) async fn verify_once<F>(
        &self,
        key: VerificationKey,
        credential: &str,
        verify: F,
    ) -> Result<Option<Verified>, Rejection>
    where
        F: Future<Output = Result<Verified, Rejection>>,
    {
        let check = hash_canonical(&self.check_hasher, credential);
        if let Some(verdict) = self.refused.get(&key).await {
            if verdict.check == check {
                return Err(verdict.rejection);
            }
        }
        match self.verifications.get_or_verify(key, verify).await {
            Ok(verified)
                if same_canonical(verified.caller.credential.token().expose(), credential) =>
            {
                Ok(Some(verified))
            }
            Ok(_) => Ok(None),
            Err(rejection) => {
                // Only verdicts on the token itself: outages and back-pressure pass.
                if let Some(ttl) = self.verdict_ttl(rejection.kind) {
                    let verdict = Verdict {
                        rejection: (*rejection).clone(),
                        ttl,
                        check,
                    };
                    self.refused.insert(key, verdict).await;
                }
                Err((*rejection).clone())
            }
        }
    }

    /// How long a refusal of this kind is a verdict on the token: forged or refused
    /// tokens a few seconds; "no credits" until the balance is worth asking again.
    fn verdict_ttl(&self, kind: RejectionKind) -> Option<Duration> {
        match kind {
            RejectionKind::InvalidToken
            | RejectionKind::PlanNotAccepted
            | RejectionKind::WrongAgent => Some(REFUSAL_TTL),
            RejectionKind::InsufficientBalance if !self.config.no_credits_ttl.is_zero() => {
                Some(self.config.no_credits_ttl)
            }
            _ => None,
        }
    }

    /// The token's plan is accepted here and it is for this agent (when both say).
    pub(crate) fn check_plan_and_agent(
        &self,
        plan_id: &PlanId,
        agent: Option<&AgentId>,
    ) -> Result<(), Rejection> {
        if !self.config.plan_ids.contains(plan_id) {
            return Err(Rejection::plan_not_accepted(plan_id));
        }
        if let (Some(ours), Some(theirs)) = (&self.config.agent_id, agent) {
            if ours != theirs {
                return Err(Rejection::wrong_agent(theirs, ours));
            }
        }
        Ok(())
    }

    /// Asks the facilitator whether `token` may pay `amount` for `payment_required`;
    /// at most the configured number of these calls are in flight.
    pub(crate) async fn facilitator_verify(
        &self,
        backend: &dyn PaymentBackend,
        payment_required: &PaymentRequired,
        token: &AccessToken,
        amount: Credits,
    ) -> Result<FacilitatorVerdict, Rejection> {
        let _permit = self.verify_permits.try_acquire().map_err(|_| {
            tracing::warn!(
                limit = self.config.max_verifications,
                "too many token verifications in flight: request refused"
            );
            Rejection::too_many_verifications()
        })?;
        let response = backend
            .verify(payment_required, token, Some(amount))
            .await
            .map_err(facilitator::verify_error)?;
        if !response.is_valid {
            return Err(facilitator::invalid_reason(
                response.invalid_reason.as_deref(),
                token,
            ));
        }
        let request_id = response
            .agent_request_id
            .or_else(|| response.agent_request.map(|r| r.agent_request_id))
            .filter(|id| !id.is_empty());
        Ok(FacilitatorVerdict {
            payer: response.payer,
            request_id,
        })
    }

    /// Verifies a bearer JWT against the issuer's JWKS, with the plan and agent checks;
    /// answers its claims and how long to trust them (never beyond its expiry).
    pub(crate) async fn bearer(
        &self,
        backend: &dyn PaymentBackend,
        token: &AccessToken,
    ) -> Result<(AccessTokenClaims, Duration), Rejection> {
        let claims = self.jwks.verify(token, backend).await?;
        self.check_plan_and_agent(&claims.plan_id, claims.agent_id.as_ref())?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let left = Duration::from_secs(claims.exp.saturating_sub(now));
        if left.is_zero() {
            return Err(Rejection::bearer_expired());
        }
        let ttl = self.config.verification_ttl.min(left);
        Ok((claims, ttl))
    }

    /// How long an x402 verification is trusted.
    pub(crate) fn verification_ttl(&self) -> Duration {
        self.config.verification_ttl
    }

    /// The one request allowed to spend a single-use token. A spent token's cached
    /// verification is forgotten, so its next replay goes back to the facilitator.
    pub(crate) async fn claim_single_use(
        &self,
        token: TokenDigest,
        key: &VerificationKey,
        used: &Caller,
    ) -> Result<SingleUseClaim, Rejection> {
        let claimed = self
            .single_use
            .claim_everywhere(token)
            .await
            .map_err(|why| {
                tracing::warn!(reason = %why, "shared store unreachable: single-use token refused");
                Rejection::unavailable()
            })?;
        match claimed {
            Ok(claim) => Ok(claim),
            Err(ClaimRefused::Spent) => {
                self.forget(key, used).await;
                Err(Rejection::single_use_spent())
            }
            Err(ClaimRefused::InFlight) => Err(Rejection::single_use_in_flight()),
            Err(ClaimRefused::Full) => Err(Rejection::single_use_full()),
        }
    }
}

/// A refusal remembered for a token.
#[derive(Clone)]
struct Verdict {
    rejection: Rejection,
    ttl: Duration,
    /// A second, independently seeded hash of the token it was given to.
    check: u64,
}

/// How long each remembered verdict holds.
struct PerVerdictTtl;

impl moka::Expiry<VerificationKey, Verdict> for PerVerdictTtl {
    fn expire_after_create(
        &self,
        _key: &VerificationKey,
        value: &Verdict,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// A seeded hash of a credential's canonical text.
fn hash_canonical(seed: &RandomState, credential: &str) -> u64 {
    let mut hasher = seed.build_hasher();
    crate::credential::hash_canonical(credential, &mut hasher);
    hasher.finish()
}
