//! The decisions of the layer, independent of tower: the steps of a request in order
//! (credential → authentication → balance → handler → settlement), each delegated to
//! its own module. `admit` (or, when nothing needs waiting for, `admit_now`) runs the
//! steps before the handler, `finish_now` the charge.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use super::body::{MeteredCharge, PaymentBody, ReceiptAt};
use super::config::{ChargeTiming, ChargeVia, LayerConfig};
use super::context::{ChargeOverride, PaymentContext};
use super::receipt::receipt_header;
use super::rejection::{into_response, PAYMENT_RESPONSE};
use super::route::{self, Route, RouteCache};
use crate::auth::{
    single_use_key, AuthConfig, Authenticator, Caller, Lookup, Payer, SingleUseClaim, Validity,
    VerificationKey, Verified,
};
use crate::backend::PaymentBackend;
use crate::balance::{chargeable, BalanceCache, PlanCache, Reservation};
use crate::credential::{self, Credential, TokenError};
use crate::metrics::GateMetrics;
use crate::rejection::Rejection;
use crate::settle::{
    Charge, ChargeJournal, ChargeMethod, DetachOnDrop, Meter, PendingCharge, PendingCharges,
    PendingFull, ReplayContext, Started,
};
use crate::types::{Credits, PlanCreditsConfig, PlanId};

/// Routes kept with a prebuilt `PaymentRequired` (paths come from callers: bounded).
const ROUTE_CAPACITY: usize = 4_096;
/// Plans kept with their credits config.
const PLAN_CAPACITY: u64 = 1_024;

pub(crate) struct Gate {
    pub(crate) config: LayerConfig,
    backend: Arc<dyn PaymentBackend>,
    routes: RouteCache,
    auth: Authenticator,
    plans: PlanCache,
    balances: BalanceCache,
    /// Charges in flight, for the bound and for `drain`.
    pub(crate) pending: Arc<PendingCharges>,
    /// Where charges are written before they are due (`charge_journal`).
    pub(crate) journal: Option<Arc<ChargeJournal>>,
    metrics: GateMetrics,
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
    /// Charged by usage: what the handler counts (the rule is the route's).
    meter: Option<Meter>,
}

/// What a verified caller is admitted for: the credits to reserve and how.
struct Terms {
    caller: Arc<Caller>,
    plan: Arc<PlanCreditsConfig>,
    amount: Credits,
    meter: Option<Meter>,
    /// Admitted while the pending-charge bound was reached: charge before responding.
    charge_now: bool,
}

impl Admission {
    /// The caller it was admitted for (its plan and subscriber outlive the charge).
    #[cfg(feature = "mcp")]
    pub(crate) fn caller(&self) -> &Arc<Caller> {
        &self.caller
    }
}

/// The entry counts of a layer's caches ([`PaymentLayer::cache_sizes`](super::PaymentLayer::cache_sizes)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheSizes {
    /// Positive token verifications (capped by `verification_cache`).
    pub verifications: u64,
    /// Bytes those verifications hold, as weighed (capped by `verification_cache_bytes`).
    pub verification_bytes: u64,
    /// Tokens just refused, remembered for a few seconds (same cap).
    pub refused_tokens: u64,
    /// Balance ledgers, one per `(plan, holder)` (capped by `balance_cache`).
    pub balances: u64,
    /// Plans' credits configs (accepted plans only).
    pub plans: u64,
    /// Routes with a prebuilt `payment-required`, kept once a request to them was
    /// served (capped at 4 096).
    pub routes: u64,
    /// Single-use (x402 v3) tokens already spent (same cap as verifications; kept a day,
    /// or at least the verification TTL when the cap is reached).
    pub spent_single_use_tokens: u64,
}

impl Gate {
    pub(crate) fn new(backend: Arc<dyn PaymentBackend>, config: LayerConfig) -> Self {
        let stale = match config.unavailable {
            super::BackendUnavailable::ServeStale { max_age } => Some(max_age),
            super::BackendUnavailable::FailClosed => None,
        };
        let backend = crate::metrics::timed(backend);
        let pending = Arc::new(PendingCharges::default());
        let journal = config.journal.clone();
        if let Some(journal) = &journal {
            journal.attach(ReplayContext {
                backend: backend.clone(),
                retry: config.retry,
                hook: config.on_settle.clone(),
                pending: pending.clone(),
            });
        }
        Gate {
            routes: RouteCache::new(ROUTE_CAPACITY),
            auth: Authenticator::new(AuthConfig {
                plan_ids: config.plan_ids.clone(),
                agent_id: config.agent_id.clone(),
                verification_ttl: config.verification_ttl,
                verification_capacity: config.verification_capacity,
                verification_bytes: config.verification_bytes,
                max_verifications: config.max_verifications,
                no_credits_ttl: config.balance_recheck,
                collide_hashes: config.collide_token_hashes,
                shared_claims: config.claims.clone(),
            }),
            plans: PlanCache::new(config.plan_ttl, PLAN_CAPACITY),
            balances: {
                let cache = BalanceCache::new(
                    config.balance_ttl,
                    config.balance_capacity,
                    stale,
                    config.balance_recheck,
                );
                match &config.leases {
                    Some(leases) => cache.with_shared(leases.clone()),
                    None => cache,
                }
            },
            pending,
            journal,
            metrics: GateMetrics::register(),
            backend,
            config,
        }
    }

    /// The route of the request: the table's (no await), or one built for it from the
    /// accepted plans' terms (read once per plan TTL).
    pub(crate) async fn route(&self, parts: &Parts) -> Arc<Route> {
        match self.routes.get(&parts.method, parts.uri.path()) {
            Ok(route) => route,
            // Boxed: the rare build must not weigh on every request's future.
            Err(id) => Box::pin(self.build_route(&parts.method, parts.uri.path(), id)).await,
        }
    }

    /// The route of a resource that is not an HTTP path (an MCP tool's logical URL).
    #[cfg(feature = "mcp")]
    pub(crate) async fn route_for(&self, method: &http::Method, endpoint: &str) -> Arc<Route> {
        match self.routes.get(method, endpoint) {
            Ok(route) => route,
            Err(id) => Box::pin(self.build_route(method, endpoint, id)).await,
        }
    }

    async fn build_route(&self, method: &http::Method, path: &str, id: u64) -> Arc<Route> {
        let mut plans = Vec::with_capacity(self.config.plan_ids.len());
        for plan_id in &self.config.plan_ids {
            plans.push(self.plans.priced(plan_id, &*self.backend).await);
        }
        Arc::new(route::build(&self.config, &plans, method, path, id))
    }

    pub(crate) async fn cache_sizes(&self) -> CacheSizes {
        let auth = self.auth.sizes().await;
        let sizes = CacheSizes {
            verifications: auth.verifications,
            verification_bytes: auth.verification_bytes,
            refused_tokens: auth.refused_tokens,
            balances: self.balances.entry_count().await,
            plans: self.plans.len() as u64,
            routes: self.routes.len() as u64,
            spent_single_use_tokens: auth.spent_single_use_tokens,
        };
        self.metrics
            .cache_sizes(sizes.verifications, sizes.balances, sizes.plans);
        sizes
    }

    pub(crate) fn reject<B>(
        &self,
        rejection: Rejection,
        route: &Route,
    ) -> Response<PaymentBody<B>> {
        self.metrics.refused(rejection.kind);
        into_response(
            rejection,
            &route.header,
            self.config.mismatch_status,
            self.config.retry_after,
        )
    }

    /// Steps 1–3: finds the credential, authenticates it, and reserves the credits of
    /// this request.
    ///
    /// Not an `async fn` itself: a wrapper future would copy the whole admission future
    /// into its own state once more on every request.
    pub(crate) fn admit<'a>(
        &'a self,
        parts: &'a Parts,
        route: &'a Arc<Route>,
    ) -> impl std::future::Future<Output = Result<Admission, Rejection>> + Send + 'a {
        let requested = self.requested(parts, route);
        self.admit_priced(parts, route, requested)
    }

    /// [`admit`](Self::admit) with the price decided by the caller (the MCP server
    /// prices each tool, not each HTTP request).
    pub(crate) async fn admit_priced(
        &self,
        parts: &Parts,
        route: &Arc<Route>,
        requested: Credits,
    ) -> Result<Admission, Rejection> {
        match self.admit_route_now(parts, route, requested) {
            Some(admitted) => admitted,
            // Boxed: a step waits, and its future must not weigh on every call's.
            None => Box::pin(self.admit_waiting(parts, route, requested)).await,
        }
    }

    /// [`admit_priced`](Self::admit_priced) when a step must wait.
    async fn admit_waiting(
        &self,
        parts: &Parts,
        route: &Arc<Route>,
        requested: Credits,
    ) -> Result<Admission, Rejection> {
        // A token this thread served lately is recognised by its raw bytes: equal to a
        // token validated before, they need no validation of their own.
        let recent = credential::credential_bytes(&parts.headers, &self.config.token_headers)
            .and_then(|raw| self.auth.recent(raw, route.id));
        let (key, verified, verify_request_id) = match recent {
            Some((key, verified)) => (key, verified, None),
            // Boxed: moka's lookup (and the rare verification) must not weigh on every
            // request's future; a caller this thread served lately never gets here.
            None => {
                let text = tracing::debug_span!("nvm.extract")
                    .in_scope(|| credential_text(&parts.headers, &self.config.token_headers))?;
                let key = self.auth.key(text, route.id);
                let (verified, request_id) =
                    Box::pin(self.lookup_or_verify(parts, route, key, text, requested)).await?;
                (key, verified, request_id)
            }
        };
        let caller = verified.caller;
        let plan = self.credits_config(&caller.plan_id).await?;
        let terms = self.terms(route, caller, plan, requested)?;
        // Before the balance: a replay is refused without touching the ledger.
        let single_use = match verified.single_use {
            // Boxed: only x402 v3 tokens claim, and its future would double this one's size.
            Some(token) => {
                Some(Box::pin(self.auth.claim_single_use(token, &key, &terms.caller)).await?)
            }
            None => None,
        };
        let reservation = tracing::Instrument::instrument(
            self.balances
                .reserve(&verified.payer, terms.amount, &*self.backend),
            tracing::debug_span!("nvm.balance", token = %terms.caller.token_digest),
        )
        .await?;
        Ok(self.admission(
            route,
            key,
            terms,
            reservation,
            single_use,
            verify_request_id,
        ))
    }

    /// [`admit`](Self::admit) when nothing needs waiting for, which is every request
    /// of a caller this thread served lately whose balance is fresh: the route known,
    /// the token recognised, the plan's config cached, the credits reserved at once.
    /// `None`: a step must wait (or claim a single-use token); ask `admit`, which
    /// redoes the steps, since none of them has an effect until the reservation.
    ///
    /// Synchronous, so that the layer keeps such a request's state in its response
    /// future, with no boxed future moving it from step to step.
    pub(crate) fn admit_now(
        &self,
        parts: &Parts,
    ) -> Option<(Arc<Route>, Result<Admission, Rejection>)> {
        let route = self.routes.get(&parts.method, parts.uri.path()).ok()?;
        let requested = self.requested(parts, &route);
        let admitted = self.admit_route_now(parts, &route, requested);
        admitted.map(|admitted| (route, admitted))
    }

    fn admit_route_now(
        &self,
        parts: &Parts,
        route: &Arc<Route>,
        requested: Credits,
    ) -> Option<Result<Admission, Rejection>> {
        let recent = credential::credential_bytes(&parts.headers, &self.config.token_headers)
            .and_then(|raw| self.auth.recent(raw, route.id));
        let Some((key, verified)) = recent else {
            // No token, or one to look up: a request without a usable one is refused
            // here; any other waits for the verification cache.
            return match credential_text(&parts.headers, &self.config.token_headers) {
                Err(rejection) => Some(Err(rejection)),
                Ok(_) => None,
            };
        };
        if verified.single_use.is_some() {
            return None;
        }
        let plan = self.plans.get(&verified.caller.plan_id)?;
        let terms = match self.terms(route, verified.caller, plan, requested) {
            Ok(terms) => terms,
            Err(rejection) => return Some(Err(rejection)),
        };
        let reserved = tracing::debug_span!("nvm.balance", token = %terms.caller.token_digest)
            .in_scope(|| self.balances.reserve_now(&verified.payer, terms.amount))?;
        Some(match reserved {
            Ok(reservation) => Ok(self.admission(route, key, terms, reservation, None, None)),
            Err(denied) => Err(denied.into()),
        })
    }

    /// What a request asks to reserve: a metered one the most it may cost (its cap, or
    /// the plan's maximum: 0 is read as the maximum).
    fn requested(&self, parts: &Parts, route: &Route) -> Credits {
        match &route.meter {
            Some(rule) => rule.cap().unwrap_or(Credits::ZERO),
            None => self.config.credits.for_request(parts),
        }
    }

    /// What a verified caller is admitted for, before anything is reserved.
    fn terms(
        &self,
        route: &Route,
        caller: Arc<Caller>,
        plan: Arc<PlanCreditsConfig>,
        requested: Credits,
    ) -> Result<Terms, Rejection> {
        let amount = chargeable(&caller.plan_id, &plan, requested)?;
        // A fixed-credits plan burns its fixed amount whatever is asked: nothing to meter.
        let meter =
            (route.meter.is_some() && plan.min_amount != plan.max_amount).then(Meter::detached);
        let charge_now = self.pending.len() >= self.config.pending_capacity;
        if charge_now && self.config.pending_full == PendingFull::Reject {
            tracing::warn!(
                capacity = self.config.pending_capacity,
                "too many charges in flight: request refused before the handler"
            );
            return Err(Rejection::too_many_charges());
        }
        Ok(Terms {
            caller,
            plan,
            amount,
            meter,
            charge_now,
        })
    }

    /// The admission of a caller whose credits are reserved.
    fn admission(
        &self,
        route: &Arc<Route>,
        key: VerificationKey,
        terms: Terms,
        reservation: Reservation,
        single_use: Option<SingleUseClaim>,
        verify_request_id: Option<String>,
    ) -> Admission {
        let Terms {
            caller,
            plan,
            amount,
            meter,
            charge_now,
        } = terms;
        let request_id = verify_request_id.unwrap_or_else(new_request_id);
        let method = match (self.config.via, &caller.credential) {
            (ChargeVia::Redeem, _) | (_, Credential::Bearer { .. }) => ChargeMethod::Redeem,
            (_, Credential::X402 { .. }) => ChargeMethod::Settle,
        };
        self.metrics.admitted();
        Admission {
            context: PaymentContext::new(
                caller.clone(),
                request_id,
                amount,
                reservation.balance_seen(),
                meter.clone(),
            ),
            route: route.clone(),
            key,
            caller,
            plan,
            reservation,
            single_use,
            method,
            charge_now,
            meter,
        }
    }

    /// The verification cache's answer for a token this thread has not served lately,
    /// or a verification.
    async fn lookup_or_verify(
        &self,
        parts: &Parts,
        route: &Route,
        key: VerificationKey,
        text: &str,
        requested: Credits,
    ) -> Result<(Verified, Option<String>), Rejection> {
        match self.auth.cached(&key, text).await {
            Lookup::Hit(verified) => Ok((verified, None)),
            Lookup::Miss => {
                let verified = Box::pin(self.verify_once(parts, route, key, text, requested)).await;
                // The caches grow on this path: a cheap moment to report their sizes.
                #[cfg(feature = "metrics")]
                Box::pin(self.cache_sizes()).await;
                verified
            }
            Lookup::Collision => Box::pin(self.verify_uncached(parts, route, requested)).await,
        }
    }

    /// A token not verified yet for this route, verified once however many requests
    /// ask at the same time. Also answers the verify's `agentRequestId` when this
    /// request is the one that made the call.
    async fn verify_once(
        &self,
        parts: &Parts,
        route: &Route,
        key: VerificationKey,
        text: &str,
        requested: Credits,
    ) -> Result<(Verified, Option<String>), Rejection> {
        let mut fresh_id = None;
        let verify = self.authenticate(&parts.headers, route, requested, &mut fresh_id);
        let verified = tracing::Instrument::instrument(
            self.auth.verify_once(key, text, verify),
            tracing::debug_span!("nvm.verify"),
        )
        .await?;
        match verified {
            Some(verified) => Ok((verified, fresh_id)),
            None => self.verify_uncached(parts, route, requested).await,
        }
    }

    /// A token whose cache hash another token holds: verified for this request alone.
    /// (Only a forced hash collision gets here; it costs a verify, never a mix-up.)
    async fn verify_uncached(
        &self,
        parts: &Parts,
        route: &Route,
        requested: Credits,
    ) -> Result<(Verified, Option<String>), Rejection> {
        let mut fresh_id = None;
        let verified = self
            .authenticate(&parts.headers, route, requested, &mut fresh_id)
            .await?;
        Ok((verified, fresh_id))
    }

    /// Decodes the credential and authenticates it (facilitator or JWKS).
    async fn authenticate(
        &self,
        headers: &HeaderMap,
        route: &Route,
        requested: Credits,
        fresh_request_id: &mut Option<String>,
    ) -> Result<Verified, Rejection> {
        let credential = credential::extract_credential(headers, &self.config.token_headers)
            .map_err(|e| {
                if e.is_malformed() {
                    Rejection::credential_malformed()
                } else {
                    Rejection::credential_invalid()
                }
            })?
            .ok_or_else(Rejection::no_credential)?;
        let (subscriber, plan_id, agent_id, ttl) = match &credential {
            Credential::X402 { token, payload } => {
                let plan_id = &payload.accepted.plan_id;
                self.auth
                    .check_plan_and_agent(plan_id, payload.accepted.agent_id())?;
                // What the facilitator is asked to allow is what the plan will burn.
                let plan = self.credits_config(plan_id).await?;
                let amount = chargeable(plan_id, &plan, requested)?;
                let verdict = self
                    .auth
                    .facilitator_verify(&*self.backend, &route.payment_required, token, amount)
                    .await?;
                *fresh_request_id = verdict.request_id;
                let subscriber = verdict
                    .payer
                    .unwrap_or_else(|| payload.payload.authorization.from.clone());
                let agent = payload.accepted.agent_id().cloned();
                (
                    subscriber,
                    plan_id.clone(),
                    agent,
                    self.auth.verification_ttl(),
                )
            }
            Credential::Bearer { token } => {
                if !self.config.redeems_bearer() {
                    return Err(Rejection::x402_only());
                }
                let (claims, ttl) = self.auth.bearer(&*self.backend, token).await?;
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
            payer: Arc::new(Payer::new(plan_id.clone(), subscriber.clone())),
            caller: Arc::new(Caller {
                subscriber,
                plan_id,
                agent_id,
                // The one SHA-256 of the token: computed once per verification.
                token_digest: credential.digest(),
                credential,
                validity: Validity::for_ttl(ttl),
            }),
            ttl,
        })
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
                    Rejection::backend_failed(&err)
                } else {
                    tracing::error!(plan = %plan_id, error = %err,
                        "cannot read the plan's credits config: requests with this plan cannot be charged");
                    Rejection::misconfigured()
                }
            })
    }

    /// Charges a served request according to the configured timing, or releases its
    /// reservation when the response is not a success, as far as it goes without
    /// waiting: the response, or what it waits for.
    pub(crate) fn finish_now<B>(
        self: &Arc<Self>,
        admission: Admission,
        response: Response<B>,
    ) -> Finish<B>
    where
        B: http_body::Body + Send + 'static,
    {
        let (mut parts, body) = response.into_parts();
        if !(self.config.success)(parts.status) {
            tracing::debug!(status = %parts.status, "handler did not succeed: not charged");
            if matches!(
                parts.status,
                StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
            ) {
                // Nothing is sold here: keep neither the route nor its verification.
                let gate = self.clone();
                return Finish::Boxed(Box::pin(async move {
                    gate.auth.forget(&admission.key, &admission.caller).await;
                    Response::from_parts(parts, PaymentBody::inner(body))
                }));
            }
            return Finish::Ready(Response::from_parts(parts, PaymentBody::inner(body)));
        }
        self.routes.remember(&admission.route);
        let route = admission.route.clone();
        let reserved = admission.reservation.amount();
        let credits = match parts.extensions.remove::<ChargeOverride>() {
            None => reserved,
            Some(ChargeOverride(c)) if c.is_zero() => {
                tracing::debug!("handler waived the charge");
                return Finish::Ready(Response::from_parts(parts, PaymentBody::inner(body)));
            }
            // The meter decides a metered request's amount; only a waiver overrides it.
            Some(_) if admission.meter.is_some() => reserved,
            Some(ChargeOverride(c)) => admission.plan.redemption_amount(c).min(reserved),
        };
        let charge_now = admission.charge_now;
        let meter = admission.meter.clone();
        let plan = admission.plan.clone();
        let pending = self.pending_charge(admission, credits);
        if let (Some(meter), Some(rule)) = (meter, route.meter.clone()) {
            let receipt_at = self.receipt_at(&mut parts.headers);
            let mut charge = MeteredCharge::new(pending, meter, rule, plan, receipt_at);
            if body.is_end_stream() {
                // Never polled: what the handler metered before its head is all there is.
                charge.fire("empty body");
                return Finish::Ready(Response::from_parts(parts, PaymentBody::inner(body)));
            }
            return Finish::Ready(Response::from_parts(
                parts,
                PaymentBody::metered(body, charge),
            ));
        }
        let timing = if charge_now {
            ChargeTiming::BeforeResponse
        } else {
            self.config.timing
        };
        if let Some(journal) = &self.journal {
            let (gate, journal) = (self.clone(), journal.clone());
            return Finish::Boxed(Box::pin(async move {
                gate.finish_journaled(&journal, pending, timing, route, parts, body)
                    .await
            }));
        }
        match timing {
            // Sent now; a client that hangs up from now on cannot cancel it (see
            // `run_to_completion`).
            ChargeTiming::BeforeResponse => Finish::Charging(ChargedResponse {
                charge: pending.run_to_completion(),
                gate: self.clone(),
                route,
                head: Some((parts, body)),
            }),
            ChargeTiming::OnBodyEnd if !body.is_end_stream() => Finish::Ready(
                Response::from_parts(parts, PaymentBody::charging(body, pending)),
            ),
            // A body already at its end (204, empty) is never polled: charge now.
            ChargeTiming::Background | ChargeTiming::OnBodyEnd => {
                // Sent from here, as far as it goes without waiting: an instant backend
                // ends it before the response leaves, with no task spawned; one over
                // the network continues on its own task.
                let _ = pending.start_here();
                Finish::Ready(Response::from_parts(parts, PaymentBody::inner(body)))
            }
        }
    }

    /// [`finish_now`](Self::finish_now) with a charge journal: the response is released
    /// once its charge is durable or final, whichever comes first; the charge need not
    /// wait for the disk (docs/guarantees.md, the charge journal).
    async fn finish_journaled<B: http_body::Body>(
        &self,
        journal: &Arc<ChargeJournal>,
        mut pending: PendingCharge,
        mut timing: ChargeTiming,
        route: Arc<Route>,
        parts: http::response::Parts,
        body: B,
    ) -> Response<PaymentBody<B>> {
        journal.ensure_replaying();
        let mut released = None;
        // Charged before its response: journaled only if the charge ends without a
        // final outcome, since a crash before then leaves nothing served uncharged
        // (src/settle/journal/mod.rs). A final charge costs the journal nothing.
        let mut unfinished_to_journal = None;
        if timing == ChargeTiming::BeforeResponse {
            unfinished_to_journal = Some((
                pending.charge.method,
                pending.charge.payment_required.clone(),
                pending.charge.caller.clone(),
            ));
        } else {
            let (ticket, durable) = journal.record(&pending.charge);
            pending.journal = Some(ticket);
            released = Some(durable);
        }
        if timing == ChargeTiming::OnBodyEnd && !body.is_end_stream() {
            // Charged after the body: the head waits for the disk.
            if let Some(released) = released.take() {
                if let Err(error) = released.await {
                    tracing::error!(%error, request_id = %pending.charge.request_id,
                    "charge journal unavailable: charging before the response instead");
                    timing = ChargeTiming::BeforeResponse;
                }
            }
        }
        match timing {
            ChargeTiming::BeforeResponse => {
                // Run in place: a client that hangs up from now on cannot cancel the
                // charge, since the response future then detaches this one.
                super::future::charge_sent();
                // What the response needs of the outcome is taken here, and the
                // outcome dropped: it is large, and need not live across the wait below.
                let outcome = pending.run_in_place().await;
                let charged = Charged::of(&outcome);
                if let Some((method, payment_required, caller)) = unfinished_to_journal {
                    if outcome.retry_later {
                        released = Some(journal.record_unfinished(
                            &outcome,
                            method,
                            payment_required,
                            &caller,
                        ));
                    }
                }
                drop(outcome);
                if let Some(released) = released {
                    // At once when the charge is final; otherwise when it is durable.
                    if let Err(error) = released.await {
                        tracing::error!(%error, "charge journal unavailable: this charge's outcome is not final and not durable");
                    }
                }
                self.respond_charged(charged, &route, parts, body)
            }
            ChargeTiming::OnBodyEnd if !body.is_end_stream() => {
                Response::from_parts(parts, PaymentBody::charging(body, pending))
            }
            ChargeTiming::Background | ChargeTiming::OnBodyEnd => {
                // Journaled, the response waits until the charge is durable or final,
                // and a charge final here is not waited for (src/settle/journal/mod.rs).
                let charging = match pending.start_here() {
                    Started::Ended => None,
                    Started::Spawned(charging) => charging,
                };
                if let Some(released) = released {
                    if let Err(error) = released.await {
                        tracing::error!(%error,
                        "charge journal unavailable: charging before the response instead");
                        if let Some(charging) = charging {
                            let _ = charging.await;
                        }
                    }
                }
                Response::from_parts(parts, PaymentBody::inner(body))
            }
        }
    }

    /// The response of a request charged before it: withheld when its single-use token
    /// was spent elsewhere, else with the charge's receipt.
    fn respond_charged<B>(
        &self,
        charged: Charged,
        route: &Route,
        mut parts: http::response::Parts,
        body: B,
    ) -> Response<PaymentBody<B>> {
        if charged.spent {
            return self.reject(Rejection::single_use_spent(), route);
        }
        if let Some(value) = charged.receipt {
            parts.headers.insert(PAYMENT_RESPONSE, value);
        }
        Response::from_parts(parts, PaymentBody::inner(body))
    }
}

/// How a served request ends, decided without waiting ([`Gate::finish_now`]).
pub(crate) enum Finish<B> {
    /// Its response, final.
    Ready(Response<PaymentBody<B>>),
    /// Charged before its response: the charge is sent, the response follows its outcome.
    Charging(ChargedResponse<B>),
    /// It waits for the charge journal, or a 404's verification to be forgotten.
    Boxed(BoxFuture<'static, Response<PaymentBody<B>>>),
}

/// What the response of a request charged before it needs of the outcome.
#[derive(Default)]
struct Charged {
    /// The token paid for another request (another replica, a restart).
    spent: bool,
    /// The `payment-response` header.
    receipt: Option<HeaderValue>,
}

impl Charged {
    fn of(outcome: &crate::settle::SettleOutcome) -> Self {
        let spent = spent_elsewhere(outcome);
        if spent {
            // Withhold the work, as payments-py 1.18 does.
            tracing::warn!(request_id = %outcome.request_id,
            "single-use token already spent at the backend: response withheld");
        }
        Charged {
            spent,
            receipt: outcome.receipt.as_ref().and_then(receipt_header),
        }
    }
}

/// The response of a request charged before it, once the charge has ended. Dropped
/// before then (the client hung up), the charge still completes on a task of its own.
pub(crate) struct ChargedResponse<B> {
    charge: DetachOnDrop,
    gate: Arc<Gate>,
    route: Arc<Route>,
    /// The handler's response, until the charge ends.
    head: Option<(http::response::Parts, B)>,
}

// The body is never pinned here: it is only moved into the response.
impl<B> Unpin for ChargedResponse<B> {}

impl<B> Future for ChargedResponse<B> {
    type Output = Response<PaymentBody<B>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let outcome = std::task::ready!(Pin::new(&mut this.charge).poll(cx));
        let Some((parts, body)) = this.head.take() else {
            // Polled again after its output was taken: there is nothing more to give.
            return Poll::Pending;
        };
        let charged = outcome.as_ref().map(Charged::of).unwrap_or_default();
        Poll::Ready(this.gate.respond_charged(charged, &this.route, parts, body))
    }
}

impl Gate {
    /// Where a metered response's receipt goes, announcing a trailer in the head.
    fn receipt_at(&self, headers: &mut HeaderMap) -> ReceiptAt {
        if !self.config.stream_receipt {
            return ReceiptAt::Nowhere;
        }
        let sse = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        // The receipt adds bytes or trailers: the length is no longer known.
        headers.remove(header::CONTENT_LENGTH);
        if sse {
            ReceiptAt::SseEvent
        } else {
            // hyper sends HTTP/1.1 trailers only when the head announced them.
            headers.append(
                header::TRAILER,
                HeaderValue::from_static("payment-response"),
            );
            ReceiptAt::Trailer
        }
    }

    fn pending_charge(&self, admission: Admission, credits: Credits) -> PendingCharge {
        PendingCharge {
            charge: Charge {
                backend: self.backend.clone(),
                method: admission.method,
                payment_required: admission.route.payment_required.clone(),
                caller: admission.caller,
                request_id: admission.context.into_request_id(),
                credits,
                retry: self.config.retry,
            },
            reservation: admission.reservation,
            single_use: admission.single_use,
            hook: self.config.on_settle.clone(),
            pending: self.pending.clone(),
            journal: None,
        }
    }

    /// Charges an admitted call now, before its answer is sent (an MCP tool call: the
    /// receipt goes into the result, and a failed charge withholds it). `credits` is
    /// what the call finally costs before the plan's clamp (`None`: what was reserved);
    /// it never exceeds the reservation. Zero waives the charge (`None` returned, the
    /// reservation released); otherwise the charge, sent: it answers the one outcome,
    /// already reported.
    ///
    /// Not `async`: the caller's future then holds the started charge (a pointer), not
    /// a future holding the whole admission twice.
    #[cfg(feature = "mcp")]
    pub(crate) fn charge_now(
        &self,
        admission: Admission,
        credits: Option<Credits>,
    ) -> Option<DetachOnDrop> {
        let reserved = admission.reservation.amount();
        let credits = match credits {
            None => reserved,
            Some(c) if c.is_zero() => return None,
            Some(c) => admission.plan.redemption_amount(c).min(reserved),
        };
        self.routes.remember(&admission.route);
        // A client that hangs up mid-charge cannot cancel it: see run_to_completion.
        Some(self.pending_charge(admission, credits).run_to_completion())
    }
}

/// A UUID v7 (time-ordered, 74 random bits) from the thread's RNG: no system call.
fn new_request_id() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let random: [u8; 10] = rand::random();
    let uuid = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
    // Encoded into a stack buffer: `to_string` goes through the formatting machinery.
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid.hyphenated().encode_lower(&mut text).to_owned()
}

/// The credential text of the request, as [`credential::extract_credential`] would
/// decode it (one scanner, [`credential::find_credential`]), found without decoding it.
fn credential_text<'h>(
    headers: &'h HeaderMap,
    names: &[http::HeaderName],
) -> Result<&'h str, Rejection> {
    match credential::find_credential(headers, names) {
        Ok(Some(text)) => Ok(text),
        Ok(None) => Err(Rejection::no_credential()),
        Err(TokenError::TooLarge { .. }) => Err(Rejection::credential_too_large()),
        Err(_) => Err(Rejection::credential_not_ascii()),
    }
}

/// The backend refused the charge because the single-use token was already consumed
/// (`BCK.X402.0059`, in the refusal or the error).
pub(crate) fn spent_elsewhere(outcome: &crate::settle::SettleOutcome) -> bool {
    const SPENT: &str = "BCK.X402.0059";
    outcome.status == crate::settle::SettleStatus::Failed
        && (outcome.reason.as_deref().is_some_and(|r| r.contains(SPENT))
            || outcome
                .receipt
                .as_ref()
                .and_then(|r| r.error_reason.as_deref())
                .is_some_and(|r| r.contains(SPENT)))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::rejection::RejectionKind;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn the_text_is_the_credential_extract_reads() {
        let names = credential::default_token_headers();
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
            let extracted = credential::extract_credential(&h, &names).unwrap().unwrap();
            let text = credential_text(&h, &names).unwrap();
            assert_eq!(credential::canonical_digest(text), extracted.digest());
        }
        for h in [
            headers(&[]),
            headers(&[("authorization", "Basic dXNlcg==")]),
            headers(&[("payment-signature", " ")]),
        ] {
            assert!(credential::extract_credential(&h, &names)
                .unwrap()
                .is_none());
            let kind = credential_text(&h, &names).unwrap_err().kind;
            assert_eq!(kind, RejectionKind::PaymentRequired);
        }
        let huge = headers(&[("authorization", &format!("Basic {}", "a".repeat(9000)))]);
        assert!(credential::extract_credential(&huge, &names).is_err());
        assert_eq!(
            credential_text(&huge, &names).unwrap_err().kind,
            RejectionKind::MalformedToken
        );
    }
}
