//! The decisions of the layer, independent of tower: who is calling (authenticate),
//! may they pay (balance), and the charge once the handler has answered.
//!
//! (A file beyond tower-http's layer/service/future/body split: the service stays a
//! thin adapter and this logic reads top to bottom without tower's generics.)

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::header::AUTHORIZATION;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Response};
use tokio::time::Instant;

use super::body::PaymentBody;
use super::config::{ChargeTiming, ChargeVia, LayerConfig};
use super::context::{Caller, ChargeOverride, PaymentContext};
use super::rejection::{Rejection, RejectionKind, PAYMENT_RESPONSE};
use super::route::{Route, RouteCache};
use super::token::{self, BearerVerifier, Credential, TokenError};
use crate::backend::PaymentBackend;
use crate::cache::{
    BalanceCache, BalanceDenied, BalanceKey, PlanCache, Reservation, SingleUseClaim,
    SingleUseTokens, VerificationCache, VerificationKey, Verified,
};
use crate::client::Error;
use crate::settle::{Charge, ChargeMethod, PendingCharge};
use crate::types::{AccessToken, AgentId, Credits, PlanCreditsConfig, PlanId, TokenDigest};

/// Routes kept with a prebuilt `PaymentRequired` (paths come from callers: bounded).
const ROUTE_CAPACITY: usize = 4_096;
/// Plans kept with their credits config.
const PLAN_CAPACITY: u64 = 1_024;
/// How long a refused token is refused without asking again.
const REFUSAL_TTL: Duration = Duration::from_secs(5);
/// A JWKS is fetched again for an unknown key at most this often.
const JWKS_REFETCH: Duration = Duration::from_secs(60);

pub(crate) struct Gate {
    pub(crate) config: LayerConfig,
    backend: Arc<dyn PaymentBackend>,
    routes: RouteCache,
    verifications: VerificationCache,
    plans: PlanCache,
    balances: BalanceCache,
    jwks: JwksCache,
    single_use: Arc<SingleUseTokens>,
    /// Tokens the facilitator or the JWKS just refused, so a replay costs no call.
    refused: moka::future::Cache<VerificationKey, Rejection>,
}

/// An admitted request: its context, its reservation, how it will be charged.
pub(crate) struct Admission {
    pub(crate) context: PaymentContext,
    route: Arc<Route>,
    caller: Arc<Caller>,
    plan: Arc<PlanCreditsConfig>,
    reservation: Reservation,
    single_use: Option<SingleUseClaim>,
    method: ChargeMethod,
}

impl Gate {
    pub(crate) fn new(backend: Arc<dyn PaymentBackend>, config: LayerConfig) -> Self {
        let stale = match config.unavailable {
            super::BackendUnavailable::ServeStale { max_age } => Some(max_age),
            super::BackendUnavailable::FailClosed => None,
        };
        Gate {
            routes: RouteCache::new(ROUTE_CAPACITY),
            verifications: VerificationCache::new(config.verification_capacity),
            plans: PlanCache::new(config.plan_ttl, PLAN_CAPACITY),
            balances: BalanceCache::new(
                config.balance_ttl,
                config.balance_capacity,
                stale,
                config.balance_recheck,
            ),
            jwks: JwksCache::default(),
            single_use: Arc::new(SingleUseTokens::new(config.verification_capacity)),
            refused: moka::future::Cache::builder()
                .max_capacity(config.verification_capacity)
                .time_to_live(REFUSAL_TTL)
                .build(),
            backend,
            config,
        }
    }

    pub(crate) fn route(&self, parts: &Parts) -> Arc<Route> {
        self.routes
            .get(&self.config, &parts.method, parts.uri.path())
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
        let digest = tracing::debug_span!("nvm.extract")
            .in_scope(|| credential_digest(&parts.headers, &self.config.token_headers))?;
        let requested = self.config.credits.for_request(parts);
        let key: VerificationKey = (digest, route.id);
        let (verified, verify_request_id) = match self.verifications.get(&key).await {
            Some(verified) => (verified, None),
            // Boxed: the rare verification must not weigh on every request's future.
            None => Box::pin(self.verify_once(parts, route, key, requested)).await?,
        };
        let caller = verified.caller;
        let plan = self.credits_config(&caller.plan_id).await?;
        let amount = chargeable(&caller.plan_id, &plan, requested)?;
        let reservation = tracing::Instrument::instrument(
            self.balances
                .reserve(&verified.balance_key, amount, &*self.backend),
            tracing::debug_span!("nvm.balance", token = %caller.token_digest),
        )
        .await
        .map_err(balance_rejection)?;
        let single_use = if is_single_use(&caller.credential) {
            let claim = self.single_use.claim(caller.token_digest).ok_or_else(|| {
                Rejection::new(
                    RejectionKind::InvalidToken,
                    "this single-use (x402 v3) token was already used",
                )
            })?;
            Some(claim)
        } else {
            None
        };
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
            caller,
            plan,
            reservation,
            single_use,
            method,
        })
    }

    /// A token not verified yet for this route: verify it once however many requests
    /// ask at the same time, and remember a refusal for a few seconds. Also answers the
    /// verify's `agentRequestId` when this request is the one that made the call.
    async fn verify_once(
        &self,
        parts: &Parts,
        route: &Route,
        key: VerificationKey,
        requested: Credits,
    ) -> Result<(Verified, Option<String>), Rejection> {
        if let Some(refused) = self.refused.get(&key).await {
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
                // Only a verdict on the token itself: balances and outages change.
                if rejection.kind == RejectionKind::InvalidToken {
                    self.refused.insert(key, (*rejection).clone()).await;
                }
                Err((*rejection).clone())
            }
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
        Ok(Verified {
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
                    Rejection::new(
                        RejectionKind::Misconfigured,
                        "the payment configuration of this route cannot be charged",
                    )
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
            return Response::from_parts(parts, PaymentBody::inner(body));
        }
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
        };
        match self.config.timing {
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

/// x402 v3 tokens carry a nonce and are consumed by their first settle.
fn is_single_use(credential: &Credential) -> bool {
    matches!(credential, Credential::X402 { payload, .. }
        if payload.payload.authorization.nonce.as_deref().is_some_and(|n| !n.is_empty()))
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
        return Err(Rejection::new(
            RejectionKind::Misconfigured,
            "the payment configuration of this route cannot be charged",
        ));
    }
    Ok(amount)
}

/// The digest of the credential [`token::extract_credential`] would read (the same
/// header, the same text, so it equals `Credential::digest`), found without decoding
/// it: the first configured header that is not blank; `Authorization` only as
/// `Bearer <token>`. Hashed once: the cache key and the only form of the token logged.
fn credential_digest(
    headers: &HeaderMap,
    names: &[http::HeaderName],
) -> Result<TokenDigest, Rejection> {
    let malformed = |message| Rejection::new(RejectionKind::MalformedToken, message);
    for name in names {
        let Some(value) = headers.get(name) else {
            continue;
        };
        if value.len() > token::MAX_CREDENTIAL_BYTES {
            return Err(malformed("the credential is too large"));
        }
        let text = value
            .to_str()
            .map_err(|_| malformed("the credential is not visible ASCII"))?
            .trim();
        let credential = if name == AUTHORIZATION {
            match text.split_once(' ') {
                Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
                _ => continue,
            }
        } else {
            text
        };
        if !credential.is_empty() {
            return Ok(TokenDigest::of(credential.as_bytes()));
        }
    }
    Err(Rejection::new(
        RejectionKind::PaymentRequired,
        "payment required: send an x402 access token in the payment-signature header",
    ))
}

fn receipt_header(receipt: &crate::types::SettleResponse) -> Option<HeaderValue> {
    let json = serde_json::to_vec(receipt).ok()?;
    HeaderValue::try_from(STANDARD.encode(json)).ok()
}

fn unavailable(err: &Error) -> Rejection {
    tracing::warn!(error = %err, "payment backend unavailable");
    Rejection::new(
        RejectionKind::BackendUnavailable,
        "the payment backend is unavailable; retry later",
    )
}

fn verify_error(err: Error) -> Rejection {
    match err.status() {
        Some(status) if status.is_client_error() && status.as_u16() != 429 => {
            let code = err.code().unwrap_or("refused").to_owned();
            Rejection::new(
                RejectionKind::InvalidToken,
                format!("the facilitator refused the token ({code})"),
            )
        }
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
            Rejection::new(
                RejectionKind::BackendUnavailable,
                "the payment backend is unavailable; retry later",
            )
        }
    }
}

/// The bearer verifier built from the backend's JWKS, fetched once and again for an
/// unknown key at most once a minute.
#[derive(Default)]
struct JwksCache {
    current: RwLock<Option<(Arc<BearerVerifier>, Instant)>>,
    fetching: tokio::sync::Mutex<()>,
}

impl JwksCache {
    fn snapshot(&self) -> Option<(Arc<BearerVerifier>, Instant)> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Fetches the JWKS unless someone else did since `seen` (or within a minute).
    async fn refresh(
        &self,
        seen: Option<Instant>,
        backend: &dyn PaymentBackend,
    ) -> Result<(Arc<BearerVerifier>, Instant), Rejection> {
        let _one_at_a_time = self.fetching.lock().await;
        if let Some((verifier, at)) = self.snapshot() {
            if Some(at) != seen || at.elapsed() < JWKS_REFETCH {
                return Ok((verifier, at));
            }
        }
        let jwks = backend
            .access_token_jwks()
            .await
            .map_err(|e| unavailable(&e))?;
        let verifier = BearerVerifier::from_jwks(&jwks).map_err(|_| {
            tracing::error!("the backend's JWKS has no usable key");
            Rejection::new(
                RejectionKind::BackendUnavailable,
                "the token issuer's keys are unusable",
            )
        })?;
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
    fn the_digest_is_the_digest_of_the_credential_extract_reads() {
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
            assert_eq!(credential_digest(&h, &names).unwrap(), extracted.digest());
        }
        for h in [
            headers(&[]),
            headers(&[("authorization", "Basic dXNlcg==")]),
            headers(&[("payment-signature", " ")]),
        ] {
            assert!(token::extract_credential(&h, &names).unwrap().is_none());
            let kind = credential_digest(&h, &names).unwrap_err().kind;
            assert_eq!(kind, RejectionKind::PaymentRequired);
        }
        let huge = headers(&[("authorization", &format!("Basic {}", "a".repeat(9000)))]);
        assert!(token::extract_credential(&huge, &names).is_err());
        assert_eq!(
            credential_digest(&huge, &names).unwrap_err().kind,
            RejectionKind::MalformedToken
        );
    }
}
