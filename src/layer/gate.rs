//! The decisions of the layer, independent of tower: who is calling (authenticate),
//! may they pay (balance), and the charge once the handler has answered.
//!
//! (A file beyond tower-http's layer/service/future/body split: the service stays a
//! thin adapter and this logic reads top to bottom without tower's generics.)

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::body::PaymentBody;
use super::config::{ChargeTiming, ChargeVia, LayerConfig};
use super::context::{Caller, ChargeOverride, PaymentContext};
use super::layer::CacheSizes;
use super::rejection::{Rejection, RejectionKind, PAYMENT_RESPONSE};
use super::route::{Route, RouteCache};
use super::token::{self, BearerVerifier, Credential, TokenError};
use crate::backend::PaymentBackend;
use crate::cache::{
    single_use_key, BalanceCache, BalanceDenied, BalanceKey, ClaimRefused, PlanCache, Reservation,
    SingleUseClaim, SingleUseTokens, VerificationCache, VerificationKey, Verified,
};
use crate::client::Error;
use crate::settle::{Charge, ChargeMethod, PendingCharge, PendingCharges, PendingFull};
use crate::types::{AccessToken, AgentId, Credits, PlanCreditsConfig, PlanId, TokenDigest};

/// Routes kept with a prebuilt `PaymentRequired` (paths come from callers: bounded).
const ROUTE_CAPACITY: usize = 4_096;
/// Plans kept with their credits config.
const PLAN_CAPACITY: u64 = 1_024;
/// How long a refused token is refused without asking again.
const REFUSAL_TTL: Duration = Duration::from_secs(5);
/// A JWKS is fetched again for an unknown key at most this often.
const JWKS_REFETCH: Duration = Duration::from_secs(60);
/// After a failed JWKS fetch, how long bearer requests share its failure (like the
/// balance path's back-off).
const JWKS_FAILURE_BACKOFF: Duration = Duration::from_secs(1);

pub(crate) struct Gate {
    pub(crate) config: LayerConfig,
    backend: Arc<dyn PaymentBackend>,
    routes: RouteCache,
    verifications: VerificationCache,
    plans: PlanCache,
    balances: BalanceCache,
    jwks: JwksCache,
    single_use: Arc<SingleUseTokens>,
    /// Verdicts on tokens the facilitator or the JWKS just gave (refused, not a
    /// subscriber), so a replay costs no call; each with how long it holds.
    refused: moka::future::Cache<VerificationKey, (Rejection, Duration)>,
    /// Facilitator `verify` calls in flight, bounded whoever sends the tokens.
    verify_permits: Semaphore,
    /// Charges in flight, for the bound and for `drain`.
    pub(crate) pending: Arc<PendingCharges>,
}

/// An admitted request: its context, its reservation, how it will be charged.
pub(crate) struct Admission {
    pub(crate) context: PaymentContext,
    route: Arc<Route>,
    /// The verification that admitted it: forgotten if the route cannot charge.
    key: VerificationKey,
    caller: Arc<Caller>,
    plan: Arc<PlanCreditsConfig>,
    reservation: Reservation,
    single_use: Option<SingleUseClaim>,
    method: ChargeMethod,
    /// Admitted while the pending-charge bound was reached: charge before responding.
    charge_now: bool,
}

impl Gate {
    pub(crate) fn new(backend: Arc<dyn PaymentBackend>, config: LayerConfig) -> Self {
        let stale = match config.unavailable {
            super::BackendUnavailable::ServeStale { max_age } => Some(max_age),
            super::BackendUnavailable::FailClosed => None,
        };
        Gate {
            routes: RouteCache::new(ROUTE_CAPACITY),
            verifications: VerificationCache::new(
                config.verification_capacity,
                config.verification_bytes,
            ),
            plans: PlanCache::new(config.plan_ttl, PLAN_CAPACITY),
            balances: BalanceCache::new(
                config.balance_ttl,
                config.balance_capacity,
                stale,
                config.balance_recheck,
            ),
            jwks: JwksCache::default(),
            single_use: Arc::new(SingleUseTokens::new(
                usize::try_from(config.verification_capacity).unwrap_or(usize::MAX),
                // A cached verification lives at most this long: a spent token is
                // remembered longer than any verification that could admit it again.
                config.verification_ttl,
            )),
            refused: moka::future::Cache::builder()
                .max_capacity(config.verification_capacity)
                .expire_after(PerVerdictTtl)
                .build(),
            verify_permits: Semaphore::new(config.max_verifications),
            pending: Arc::new(PendingCharges::default()),
            backend,
            config,
        }
    }

    pub(crate) fn route(&self, parts: &Parts) -> Arc<Route> {
        self.routes
            .get(&self.config, &parts.method, parts.uri.path())
    }

    pub(crate) async fn cache_sizes(&self) -> CacheSizes {
        self.refused.run_pending_tasks().await;
        CacheSizes {
            verifications: self.verifications.entry_count().await,
            verification_bytes: self.verifications.weighted_size().await,
            refused_tokens: self.refused.entry_count(),
            balances: self.balances.entry_count().await,
            plans: self.plans.len() as u64,
            routes: self.routes.len() as u64,
            spent_single_use_tokens: self.single_use.spent_count(),
        }
    }

    pub(crate) fn reject<B>(
        &self,
        rejection: Rejection,
        route: &Route,
    ) -> Response<PaymentBody<B>> {
        rejection.into_response(
            &route.header,
            self.config.mismatch_status,
            self.config.retry_after,
        )
    }

    /// Authenticates the caller and reserves the credits of this request.
    pub(crate) async fn admit(
        &self,
        parts: &Parts,
        route: &Arc<Route>,
    ) -> Result<Admission, Rejection> {
        let key: VerificationKey = tracing::debug_span!("nvm.extract")
            .in_scope(|| credential_key(&parts.headers, &self.config.token_headers))
            .map(|digest| (digest, route.id))?;
        let requested = self.config.credits.for_request(parts);
        let (verified, verify_request_id) = match self.verifications.get(&key).await {
            Some(verified) => (verified, None),
            // Boxed: the rare verification must not weigh on every request's future.
            None => Box::pin(self.verify_once(parts, route, key, requested)).await?,
        };
        let caller = verified.caller;
        let plan = self.credits_config(&caller.plan_id).await?;
        let amount = chargeable(&caller.plan_id, &plan, requested)?;
        let charge_now = self.pending.len() >= self.config.pending_capacity;
        if charge_now && self.config.pending_full == PendingFull::Reject {
            tracing::warn!(
                capacity = self.config.pending_capacity,
                "too many charges in flight: request refused before the handler"
            );
            return Err(Rejection::new(
                RejectionKind::BackendUnavailable,
                "too many charges are waiting for the payment backend; retry later",
            ));
        }
        // Before the balance: a replay is refused without touching the ledger.
        let single_use = match verified.single_use {
            Some(token) => Some(self.claim_single_use(token, &key).await?),
            None => None,
        };
        let reservation = tracing::Instrument::instrument(
            self.balances
                .reserve(&verified.balance_key, amount, &*self.backend),
            tracing::debug_span!("nvm.balance", token = %caller.token_digest),
        )
        .await
        .map_err(balance_rejection)?;
        let request_id = verify_request_id.unwrap_or_else(new_request_id);
        let method = match (self.config.via, &caller.credential) {
            (ChargeVia::Redeem, _) | (_, Credential::Bearer { .. }) => ChargeMethod::Redeem,
            (_, Credential::X402 { .. }) => ChargeMethod::Settle,
        };
        Ok(Admission {
            context: PaymentContext::new(
                caller.clone(),
                request_id,
                amount,
                reservation.balance_seen(),
            ),
            route: route.clone(),
            key,
            caller,
            plan,
            reservation,
            single_use,
            method,
            charge_now,
        })
    }

    /// The one request allowed to spend a single-use token. A spent token's cached
    /// verification is forgotten, so its next replay goes back to the facilitator.
    async fn claim_single_use(
        &self,
        token: crate::types::TokenDigest,
        key: &VerificationKey,
    ) -> Result<SingleUseClaim, Rejection> {
        match self.single_use.claim(token) {
            Ok(claim) => Ok(claim),
            Err(ClaimRefused::Spent) => {
                self.verifications.invalidate(key).await;
                Err(Rejection::new(
                    RejectionKind::InvalidToken,
                    "this single-use (x402 v3) token was already used",
                ))
            }
            Err(ClaimRefused::InFlight) => Err(Rejection::new(
                RejectionKind::InvalidToken,
                "this single-use (x402 v3) token is being used by another request",
            )),
            Err(ClaimRefused::Full) => Err(Rejection::new(
                RejectionKind::BackendUnavailable,
                "too many single-use tokens were spent moments ago; retry later",
            )),
        }
    }

    /// A token not verified yet for this route: verify it once however many requests
    /// ask at the same time, and remember a verdict on the token for a few seconds.
    /// Also answers the verify's `agentRequestId` when this request made the call.
    async fn verify_once(
        &self,
        parts: &Parts,
        route: &Route,
        key: VerificationKey,
        requested: Credits,
    ) -> Result<(Verified, Option<String>), Rejection> {
        if let Some((refused, _)) = self.refused.get(&key).await {
            return Err(refused);
        }
        let mut fresh_id = None;
        let verify = self.verify(&parts.headers, route, key.0, requested, &mut fresh_id);
        let verified = tracing::Instrument::instrument(
            self.verifications.get_or_verify(key, verify),
            tracing::debug_span!("nvm.verify", token = %key.0),
        )
        .await;
        match verified {
            Ok(verified) => Ok((verified, fresh_id)),
            Err(rejection) => {
                // Only verdicts on the token itself: outages and back-pressure pass.
                if let Some(ttl) = self.verdict_ttl(rejection.kind) {
                    self.refused.insert(key, ((*rejection).clone(), ttl)).await;
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
            RejectionKind::InsufficientBalance if !self.config.balance_recheck.is_zero() => {
                Some(self.config.balance_recheck)
            }
            _ => None,
        }
    }

    /// Decodes the credential and verifies it (facilitator or JWKS).
    async fn verify(
        &self,
        headers: &HeaderMap,
        route: &Route,
        digest: TokenDigest,
        requested: Credits,
        fresh_request_id: &mut Option<String>,
    ) -> Result<Verified, Rejection> {
        let credential = token::extract_credential(headers, &self.config.token_headers)
            .map_err(|e| {
                if e.is_malformed() {
                    Rejection::new(
                        RejectionKind::MalformedToken,
                        "the credential does not decode",
                    )
                } else {
                    Rejection::new(RejectionKind::InvalidToken, "the credential is not valid")
                }
            })?
            .ok_or_else(|| {
                Rejection::new(
                    RejectionKind::PaymentRequired,
                    "payment required: no credential",
                )
            })?;
        let (subscriber, plan_id, agent_id, ttl) = match &credential {
            Credential::X402 { token, payload } => {
                let plan_id = &payload.accepted.plan_id;
                self.check_plan_and_agent(plan_id, payload.accepted.agent_id())?;
                let plan = self.credits_config(plan_id).await?;
                let amount = chargeable(plan_id, &plan, requested)?;
                let _permit = self.verify_permits.try_acquire().map_err(|_| {
                    tracing::warn!(
                        limit = self.config.max_verifications,
                        "too many token verifications in flight: request refused"
                    );
                    Rejection::new(
                        RejectionKind::BackendUnavailable,
                        "too many payment verifications in flight; retry later",
                    )
                })?;
                let response = self
                    .backend
                    .verify(&route.payment_required, token, Some(amount))
                    .await
                    .map_err(verify_error)?;
                if !response.is_valid {
                    return Err(invalid_reason(response.invalid_reason.as_deref(), token));
                }
                *fresh_request_id = response
                    .agent_request_id
                    .or_else(|| response.agent_request.map(|r| r.agent_request_id))
                    .filter(|id| !id.is_empty());
                let subscriber = response
                    .payer
                    .unwrap_or_else(|| payload.payload.authorization.from.clone());
                let agent = payload.accepted.agent_id().cloned();
                (
                    subscriber,
                    plan_id.clone(),
                    agent,
                    self.config.verification_ttl,
                )
            }
            Credential::Bearer { token } => {
                if self.config.via == ChargeVia::Settle {
                    return Err(Rejection::new(
                        RejectionKind::InvalidToken,
                        "this route accepts x402 access tokens only (payment-signature header)",
                    ));
                }
                let claims = self.jwks.verify(token, &*self.backend).await?;
                self.check_plan_and_agent(&claims.plan_id, claims.agent_id.as_ref())?;
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let left = Duration::from_secs(claims.exp.saturating_sub(now));
                if left.is_zero() {
                    return Err(Rejection::new(
                        RejectionKind::InvalidToken,
                        "the token has expired",
                    ));
                }
                let ttl = self.config.verification_ttl.min(left);
                (claims.sub, claims.plan_id, claims.agent_id, ttl)
            }
        };
        let agent_id = agent_id.or_else(|| self.config.agent_id.clone());
        let single_use = match &credential {
            Credential::X402 { payload, .. } => single_use_key(payload),
            Credential::Bearer { .. } => None,
        };
        Ok(Verified {
            single_use,
            balance_key: Arc::new(BalanceKey {
                plan_id: plan_id.clone(),
                holder: subscriber.clone(),
            }),
            caller: Arc::new(Caller {
                subscriber,
                plan_id,
                agent_id,
                token_digest: digest,
                credential,
            }),
            ttl,
        })
    }

    fn check_plan_and_agent(
        &self,
        plan_id: &PlanId,
        agent: Option<&AgentId>,
    ) -> Result<(), Rejection> {
        if !self.config.plan_ids.contains(plan_id) {
            return Err(Rejection::new(
                RejectionKind::PlanNotAccepted,
                format!("this route does not accept plan {plan_id}"),
            ));
        }
        if let (Some(ours), Some(theirs)) = (&self.config.agent_id, agent) {
            if ours != theirs {
                return Err(Rejection::new(
                    RejectionKind::WrongAgent,
                    format!("the token is for agent {theirs}, this is agent {ours}"),
                ));
            }
        }
        Ok(())
    }

    async fn credits_config(&self, plan_id: &PlanId) -> Result<Arc<PlanCreditsConfig>, Rejection> {
        if let Some(config) = self.plans.get(plan_id) {
            return Ok(config);
        }
        // Boxed: the rare load must not weigh on every request's future.
        Box::pin(self.plans.load(plan_id, &*self.backend))
            .await
            .map_err(|err| {
                if err.is_transient() {
                    unavailable(&err)
                } else {
                    tracing::error!(plan = %plan_id, error = %err,
                        "cannot read the plan's credits config: requests with this plan cannot be charged");
                    Rejection::misconfigured()
                }
            })
    }

    /// Charges a served request according to the configured timing, or releases its
    /// reservation when the response is not a success.
    pub(crate) async fn finish<B: http_body::Body>(
        &self,
        admission: Admission,
        response: Response<B>,
    ) -> Response<PaymentBody<B>> {
        let (mut parts, body) = response.into_parts();
        if !(self.config.success)(parts.status) {
            tracing::debug!(status = %parts.status, "handler did not succeed: not charged");
            if matches!(
                parts.status,
                StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
            ) {
                // Nothing is sold here: keep neither the route nor its verification.
                self.verifications.invalidate(&admission.key).await;
            }
            return Response::from_parts(parts, PaymentBody::inner(body));
        }
        self.routes.remember(&admission.route);
        let reserved = admission.reservation.amount();
        let credits = match parts.extensions.remove::<ChargeOverride>() {
            None => reserved,
            Some(ChargeOverride(c)) if c.is_zero() => {
                tracing::debug!("handler waived the charge");
                return Response::from_parts(parts, PaymentBody::inner(body));
            }
            Some(ChargeOverride(c)) => admission.plan.redemption_amount(c).min(reserved),
        };
        let pending = PendingCharge {
            charge: Charge {
                backend: self.backend.clone(),
                method: admission.method,
                route: admission.route,
                caller: admission.caller,
                request_id: admission.context.request_id().to_owned(),
                credits,
                retry: self.config.retry,
            },
            reservation: admission.reservation,
            single_use: admission.single_use,
            hook: self.config.on_settle.clone(),
            pending: self.pending.clone(),
        };
        let timing = if admission.charge_now {
            ChargeTiming::BeforeResponse
        } else {
            self.config.timing
        };
        match timing {
            ChargeTiming::BeforeResponse => {
                // A client that hangs up mid-charge cannot cancel it: see run_to_completion.
                if let Some(outcome) = pending.run_to_completion().await {
                    if let Some(value) = outcome.receipt.as_ref().and_then(receipt_header) {
                        parts.headers.insert(PAYMENT_RESPONSE, value);
                    }
                }
                Response::from_parts(parts, PaymentBody::inner(body))
            }
            ChargeTiming::Background => {
                pending.spawn();
                Response::from_parts(parts, PaymentBody::inner(body))
            }
            // A body already at its end (204, empty) is never polled: charge now.
            ChargeTiming::OnBodyEnd if body.is_end_stream() => {
                pending.spawn();
                Response::from_parts(parts, PaymentBody::inner(body))
            }
            ChargeTiming::OnBodyEnd => {
                Response::from_parts(parts, PaymentBody::charging(body, pending))
            }
        }
    }
}

/// A UUID v7 (time-ordered, 74 random bits) from the thread's RNG: no system call.
fn new_request_id() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let random: [u8; 10] = rand::random();
    uuid::Builder::from_unix_timestamp_millis(millis, &random)
        .into_uuid()
        .to_string()
}

/// What the plan will burn for `requested`; a plan that burns nothing cannot be charged.
fn chargeable(
    plan_id: &PlanId,
    plan: &PlanCreditsConfig,
    requested: Credits,
) -> Result<Credits, Rejection> {
    let amount = plan.redemption_amount(requested);
    if amount.is_zero() {
        tracing::error!(plan = %plan_id,
            "the plan's credits config burns 0 credits per request (maxAmount 0): it can never be charged");
        return Err(Rejection::misconfigured());
    }
    Ok(amount)
}

/// The verification key of the request's credential: the canonical digest of the text
/// [`token::extract_credential`] would decode (one scanner, [`token::find_credential`]),
/// found without decoding it. Every base64 spelling of one token gets one key.
fn credential_key(
    headers: &HeaderMap,
    names: &[http::HeaderName],
) -> Result<TokenDigest, Rejection> {
    match token::find_credential(headers, names) {
        Ok(Some(text)) => Ok(token::canonical_digest(text)),
        Ok(None) => Err(Rejection::new(
            RejectionKind::PaymentRequired,
            "payment required: send an x402 access token in the payment-signature header",
        )),
        Err(TokenError::TooLarge { .. }) => Err(Rejection::new(
            RejectionKind::MalformedToken,
            "the credential is too large",
        )),
        Err(_) => Err(Rejection::new(
            RejectionKind::MalformedToken,
            "the credential is not visible ASCII",
        )),
    }
}

fn receipt_header(receipt: &crate::types::SettleResponse) -> Option<HeaderValue> {
    let json = serde_json::to_vec(receipt).ok()?;
    HeaderValue::try_from(STANDARD.encode(json)).ok()
}

fn unavailable(err: &Error) -> Rejection {
    tracing::warn!(error = %err, "payment backend unavailable");
    Rejection::unavailable()
}

/// A verify that answered an error. Only a verdict on the token is `invalid_token`
/// (and remembered as such): an x402 error code, or a 4xx about the request's content.
/// A refusal of the agent's own request (its API key: 401/403 without an x402 code;
/// a body too large: 413) is an outage of the payment path, and a route that does not
/// exist on the backend (404/405) can never verify: both are logged at `error`, since
/// every paying caller is refused until someone fixes them.
fn verify_error(err: Error) -> Rejection {
    let Some(status) = err.status() else {
        return unavailable(&err);
    };
    let code = err.code().unwrap_or("none").to_owned();
    let about_token = code.starts_with("BCK.X402.");
    match status.as_u16() {
        401 | 403 | 413 if !about_token => {
            tracing::error!(status = status.as_u16(), code = %code,
                "the facilitator refused the agent's own verify request (API key, permissions or size): paying callers are refused with 503 until it is fixed");
            Rejection::unavailable()
        }
        404 | 405 if !about_token => {
            tracing::error!(status = status.as_u16(), code = %code,
                "the facilitator has no verify endpoint at this address (backend URL?): paying callers are refused with 500 until it is fixed");
            Rejection::misconfigured()
        }
        429 => unavailable(&err),
        400..=499 => Rejection::new(
            RejectionKind::InvalidToken,
            format!("the facilitator refused the token ({code})"),
        ),
        _ => unavailable(&err),
    }
}

fn invalid_reason(reason: Option<&str>, token: &AccessToken) -> Rejection {
    let reason = reason.unwrap_or("invalid_token");
    let lower = reason.to_ascii_lowercase();
    let kind = if lower.contains("insufficient") || lower.contains("balance") {
        RejectionKind::InsufficientBalance
    } else if lower.contains("invalid_plan") || lower.contains("plan mismatch") {
        RejectionKind::PlanNotAccepted
    } else if lower.contains("invalid_agent") || lower.contains("agent mismatch") {
        RejectionKind::WrongAgent
    } else {
        RejectionKind::InvalidToken
    };
    // The backend's words, unless they are long or echo the token.
    let message = if reason.len() <= 200 && !reason.contains(token.expose()) {
        format!("the facilitator did not accept the token: {reason}")
    } else {
        "the facilitator did not accept the token".to_owned()
    };
    Rejection::new(kind, message)
}

fn balance_rejection(denied: BalanceDenied) -> Rejection {
    match denied {
        BalanceDenied::NotSubscriber => Rejection::new(
            RejectionKind::InsufficientBalance,
            "the caller is not a subscriber of the plan",
        ),
        BalanceDenied::Insufficient { available } => Rejection::new(
            RejectionKind::InsufficientBalance,
            format!("insufficient balance: {available} credits available"),
        ),
        BalanceDenied::Unavailable(why) => {
            tracing::warn!(reason = %why, "cannot learn the balance");
            Rejection::unavailable()
        }
    }
}

/// The bearer verifier built from the backend's JWKS, fetched once and again for an
/// unknown key at most once a minute. One fetch at a time: requests that waited on a
/// fetch take its result, and after a failure every request shares it for a second
/// instead of fetching again.
#[derive(Default)]
struct JwksCache {
    current: RwLock<Option<(Arc<BearerVerifier>, Instant)>>,
    /// When the last fetch failed.
    failed_at: RwLock<Option<Instant>>,
    fetching: tokio::sync::Mutex<()>,
}

impl JwksCache {
    fn snapshot(&self) -> Option<(Arc<BearerVerifier>, Instant)> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_failed_at(&self, at: Option<Instant>) {
        *self.failed_at.write().unwrap_or_else(|p| p.into_inner()) = at;
    }

    /// Fetches the JWKS unless someone else did since `seen` (or within a minute), or
    /// a fetch failed while this request waited or less than a second ago.
    async fn refresh(
        &self,
        seen: Option<Instant>,
        backend: &dyn PaymentBackend,
    ) -> Result<(Arc<BearerVerifier>, Instant), Rejection> {
        let asked = Instant::now();
        let _one_at_a_time = self.fetching.lock().await;
        if let Some((verifier, at)) = self.snapshot() {
            if Some(at) != seen || at.elapsed() < JWKS_REFETCH {
                return Ok((verifier, at));
            }
        }
        let failed_at = *self.failed_at.read().unwrap_or_else(|p| p.into_inner());
        if failed_at.is_some_and(|t| t >= asked || t.elapsed() < JWKS_FAILURE_BACKOFF) {
            return Err(Rejection::new(
                RejectionKind::BackendUnavailable,
                "the token issuer's keys cannot be fetched; retry later",
            ));
        }
        let jwks = match backend.access_token_jwks().await {
            Ok(jwks) => jwks,
            Err(err) => {
                self.set_failed_at(Some(Instant::now()));
                return Err(unavailable(&err));
            }
        };
        let verifier = BearerVerifier::from_jwks(&jwks).map_err(|_| {
            self.set_failed_at(Some(Instant::now()));
            tracing::error!("the backend's JWKS has no usable key");
            Rejection::new(
                RejectionKind::BackendUnavailable,
                "the token issuer's keys are unusable",
            )
        })?;
        self.set_failed_at(None);
        let fresh = (Arc::new(verifier), Instant::now());
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(fresh.clone());
        Ok(fresh)
    }

    async fn verify(
        &self,
        token: &AccessToken,
        backend: &dyn PaymentBackend,
    ) -> Result<crate::types::AccessTokenClaims, Rejection> {
        let (verifier, at) = match self.snapshot() {
            Some(current) => current,
            None => self.refresh(None, backend).await?,
        };
        let mut result = verifier.verify(token.expose());
        // Perhaps signed with a key published after our fetch.
        if matches!(result, Err(TokenError::UnknownKey)) && at.elapsed() >= JWKS_REFETCH {
            let (verifier, _) = self.refresh(Some(at), backend).await?;
            result = verifier.verify(token.expose());
        }
        result.map_err(|err| {
            if err.is_malformed() {
                Rejection::new(
                    RejectionKind::MalformedToken,
                    "the bearer token does not decode",
                )
            } else {
                // TokenError messages never contain the credential.
                Rejection::new(
                    RejectionKind::InvalidToken,
                    format!("the bearer token is not acceptable: {err}"),
                )
            }
        })
    }
}

/// How long each remembered verdict holds.
struct PerVerdictTtl;

impl moka::Expiry<VerificationKey, (Rejection, Duration)> for PerVerdictTtl {
    fn expire_after_create(
        &self,
        _key: &VerificationKey,
        value: &(Rejection, Duration),
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.1)
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn the_key_is_the_digest_of_the_credential_extract_reads_in_any_spelling() {
        let names = token::default_token_headers();
        let jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln";
        for h in [
            headers(&[("authorization", &format!("  bearer   {jwt} "))]),
            headers(&[
                ("payment-signature", "  "),
                ("authorization", &format!("Bearer {jwt}")),
            ]),
            headers(&[
                ("payment-signature", &format!(" {jwt}")),
                ("authorization", "Basic x"),
            ]),
        ] {
            let extracted = token::extract_credential(&h, &names).unwrap().unwrap();
            assert_eq!(credential_key(&h, &names).unwrap(), extracted.digest());
        }
        let padded = headers(&[("payment-signature", "eyJh+/x==")]);
        let url_safe = headers(&[("payment-signature", "eyJh-_x")]);
        assert_eq!(
            credential_key(&padded, &names).unwrap(),
            credential_key(&url_safe, &names).unwrap()
        );
        for h in [
            headers(&[]),
            headers(&[("authorization", "Basic dXNlcg==")]),
            headers(&[("payment-signature", " ")]),
        ] {
            assert!(token::extract_credential(&h, &names).unwrap().is_none());
            let kind = credential_key(&h, &names).unwrap_err().kind;
            assert_eq!(kind, RejectionKind::PaymentRequired);
        }
        let huge = headers(&[("authorization", &format!("Basic {}", "a".repeat(9000)))]);
        assert!(token::extract_credential(&huge, &names).is_err());
        assert_eq!(
            credential_key(&huge, &names).unwrap_err().kind,
            RejectionKind::MalformedToken
        );
    }
}
