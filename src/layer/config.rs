//! [`PaymentLayerBuilder`]: every option of the layer, checked once by `build()`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderName, Method, StatusCode};

use super::PaymentLayer;
use crate::backend::PaymentBackend;
use crate::client::Environment;
use crate::credential;
use crate::settle::{
    ChargeJournal, JournalOpenError, MeterRule, OnSettle, PendingFull, RetryPolicy,
};
use crate::types::{AgentId, Credits, PlanId};
use crate::Payments;

/// When the layer charges a successful request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChargeTiming {
    /// Charge before the response head is returned; the receipt goes in a
    /// `payment-response` header (standard base64 of the settle JSON). The default.
    #[default]
    BeforeResponse,
    /// Charge when the response body has delivered its last frame (streams, SSE).
    /// A body dropped before its end (the client went away) is not charged.
    OnBodyEnd,
    /// Charge as soon as the response head is ready, without making the response wait
    /// for the backend: the charge is sent from the request's task and, if the backend
    /// does not answer at once, completes on a task of its own.
    Background,
}

/// Which backend call charges a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChargeVia {
    /// Accept only what the configured backend can charge. x402 tokens are settled
    /// (`POST /api/v1/x402/settle`). Bearer JWTs are redeemed on a custom backend (the
    /// devserver, a self-hosted one) and refused with `invalid_token` on the hosted
    /// environments (sandbox, live, staging), which no longer mount redeem
    /// (docs/wire-notes.md §3.7): a bearer caller is never served and then left
    /// uncharged. The default.
    #[default]
    Auto,
    /// Settle only: bearer tokens are refused with `invalid_token` whatever the backend.
    Settle,
    /// x402 tokens settled and bearer tokens redeemed whatever the backend: the legacy
    /// path, for a hosted backend that still mounts redeem.
    SettleOrRedeem,
    /// Redeem every request from the payer's balance (legacy backends, the devserver).
    Redeem,
}

/// What to do when the backend cannot be reached to decide about a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendUnavailable {
    /// Refuse with 503 `backend_unavailable` and a `Retry-After` header. The default.
    #[default]
    FailClosed,
    /// Decide from the last balance fetched for the caller when it is at most
    /// `max_age` old (the local ledger still counts every charge and reservation);
    /// otherwise refuse with 503.
    ServeStale {
        /// How old the last successful balance fetch may be.
        max_age: Duration,
    },
}

/// A `build()` option that cannot work, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid PaymentLayer option `{field}`: {reason}")]
pub struct ConfigError {
    /// The builder method / option at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn bad(field: &'static str, reason: &'static str) -> ConfigError {
    ConfigError { field, reason }
}

/// Default bound of the charges in flight.
const DEFAULT_PENDING_CHARGES: usize = 4_096;
/// Memory for cached verifications: ≈ 120 000 entries of a typical 700-byte token.
const DEFAULT_VERIFICATION_BYTES: u64 = 256 * 1024 * 1024;
/// Facilitator `verify` calls in flight at once.
const DEFAULT_CONCURRENT_VERIFICATIONS: usize = 64;

type CreditsFn = dyn Fn(&Parts) -> Credits + Send + Sync;
type SuccessFn = dyn Fn(StatusCode) -> bool + Send + Sync;

/// How many credits a request asks for before the plan's clamp (docs/wire-notes.md §3.4).
#[derive(Clone)]
pub(crate) enum CreditsPerRequest {
    Fixed(Credits),
    Computed(Arc<CreditsFn>),
}

impl CreditsPerRequest {
    pub(crate) fn for_request(&self, parts: &Parts) -> Credits {
        match self {
            CreditsPerRequest::Fixed(c) => *c,
            CreditsPerRequest::Computed(f) => f(parts),
        }
    }
}

/// The checked configuration the layer runs with.
impl LayerConfig {
    /// Whether bearer credentials can be charged (redeemed) on this backend.
    pub(crate) fn redeems_bearer(&self) -> bool {
        match self.via {
            ChargeVia::Settle => false,
            ChargeVia::SettleOrRedeem | ChargeVia::Redeem => true,
            ChargeVia::Auto => self.environment == Environment::Custom,
        }
    }
}

pub(crate) struct LayerConfig {
    pub(crate) environment: Environment,
    pub(crate) plan_ids: Vec<PlanId>,
    pub(crate) agent_id: Option<AgentId>,
    pub(crate) credits: CreditsPerRequest,
    pub(crate) timing: ChargeTiming,
    pub(crate) via: ChargeVia,
    pub(crate) verification_ttl: Duration,
    pub(crate) verification_capacity: u64,
    pub(crate) verification_bytes: u64,
    pub(crate) max_verifications: usize,
    pub(crate) collide_token_hashes: bool,
    pub(crate) balance_ttl: Duration,
    pub(crate) balance_capacity: u64,
    pub(crate) balance_recheck: Duration,
    pub(crate) plan_ttl: Duration,
    pub(crate) success: Arc<SuccessFn>,
    pub(crate) unavailable: BackendUnavailable,
    pub(crate) retry_after: Duration,
    pub(crate) token_headers: Vec<HeaderName>,
    pub(crate) on_settle: Option<Arc<dyn OnSettle>>,
    pub(crate) mismatch_status: StatusCode,
    pub(crate) retry: RetryPolicy,
    pub(crate) pending_capacity: usize,
    pub(crate) pending_full: PendingFull,
    pub(crate) description: Option<String>,
    pub(crate) mime_type: Option<String>,
    /// Credit leases and single-use claims shared with other replicas (`shared`).
    pub(crate) leases: Option<Arc<dyn crate::balance::LeaseStore>>,
    pub(crate) claims: Option<Arc<dyn crate::auth::SharedClaims>>,
    pub(crate) journal_path: Option<PathBuf>,
    /// The charge journal in Redis (`charge_journal_in`), instead of a file.
    #[cfg(feature = "redis")]
    pub(crate) journal_redis: Option<crate::shared::RedisStore>,
    pub(crate) journal_replay: Duration,
    /// Opened by `build()`.
    pub(crate) journal: Option<Arc<ChargeJournal>>,
    /// The meter rule of every route without one of its own.
    pub(crate) meter: Option<MeterRule>,
    /// Routes metered with their own rule: `(method, path, rule)`.
    pub(crate) metered_routes: Vec<(Method, String, MeterRule)>,
    /// Metered streams end with their receipt (SSE event or HTTP trailer).
    pub(crate) stream_receipt: bool,
}

impl LayerConfig {
    /// The meter rule of `method` + `path`, if requests to it are metered.
    pub(crate) fn meter_for(&self, method: &Method, path: &str) -> Option<MeterRule> {
        self.metered_routes
            .iter()
            .find(|(m, p, _)| m == method && p == path)
            .map(|(_, _, rule)| rule)
            .or(self.meter.as_ref())
            .cloned()
    }
}

/// Builds a [`PaymentLayer`]; start from [`PaymentLayer::builder`].
///
/// Every method consumes and returns the builder; [`build`](Self::build) checks the
/// whole configuration and names the first bad field.
#[must_use]
pub struct PaymentLayerBuilder {
    backend: Arc<dyn PaymentBackend>,
    config: LayerConfig,
}

impl fmt::Debug for PaymentLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PaymentLayerBuilder")
            .field("plan_ids", &self.config.plan_ids)
            .field("agent_id", &self.config.agent_id)
            .field("timing", &self.config.timing)
            .field("via", &self.config.via)
            .finish_non_exhaustive()
    }
}

impl PaymentLayerBuilder {
    pub(crate) fn new(backend: Arc<dyn PaymentBackend>, environment: Environment) -> Self {
        PaymentLayerBuilder {
            backend,
            config: LayerConfig {
                environment,
                plan_ids: Vec::new(),
                agent_id: None,
                credits: CreditsPerRequest::Fixed(Credits::from(1u64)),
                timing: ChargeTiming::default(),
                via: ChargeVia::default(),
                verification_ttl: Duration::from_secs(60),
                verification_capacity: 100_000,
                verification_bytes: DEFAULT_VERIFICATION_BYTES,
                max_verifications: DEFAULT_CONCURRENT_VERIFICATIONS,
                collide_token_hashes: false,
                balance_ttl: Duration::from_secs(30),
                balance_capacity: 100_000,
                balance_recheck: Duration::from_secs(1),
                plan_ttl: Duration::from_secs(300),
                success: Arc::new(|s: StatusCode| s.is_success()),
                unavailable: BackendUnavailable::default(),
                retry_after: Duration::from_secs(5),
                token_headers: credential::default_token_headers(),
                on_settle: None,
                mismatch_status: StatusCode::PAYMENT_REQUIRED,
                retry: RetryPolicy::default(),
                pending_capacity: DEFAULT_PENDING_CHARGES,
                pending_full: PendingFull::default(),
                description: None,
                mime_type: None,
                leases: None,
                claims: None,
                journal_path: None,
                #[cfg(feature = "redis")]
                journal_redis: None,
                journal_replay: crate::settle::DEFAULT_REPLAY_INTERVAL,
                journal: None,
                meter: None,
                metered_routes: Vec::new(),
                stream_receipt: false,
            },
        }
    }

    pub(crate) fn from_payments(payments: Payments) -> Self {
        let environment = payments.environment();
        Self::new(Arc::new(payments), environment)
    }

    /// Accepts tokens of this plan (call again to accept several; required).
    pub fn plan_id(mut self, plan_id: PlanId) -> Self {
        if !self.config.plan_ids.contains(&plan_id) {
            self.config.plan_ids.push(plan_id);
        }
        self
    }

    /// Accepts tokens of each of these plans.
    pub fn plan_ids(self, plan_ids: impl IntoIterator<Item = PlanId>) -> Self {
        plan_ids.into_iter().fold(self, Self::plan_id)
    }

    /// The agent this service is; tokens bound to another agent are refused with
    /// `wrong_agent`, and the `payment-required` header names it.
    pub fn agent_id(mut self, agent_id: AgentId) -> Self {
        self.config.agent_id = Some(agent_id);
        self
    }

    /// Credits charged per request (default 1). The plan clamps it: what is reserved
    /// and charged is `plan.registry.credits.redemption_amount(credits)`.
    pub fn credits(mut self, credits: impl Into<Credits>) -> Self {
        self.config.credits = CreditsPerRequest::Fixed(credits.into());
        self
    }

    /// Credits computed from each request head (before the plan's clamp). A zero
    /// answer means the plan's maximum, as settle reads it.
    pub fn credits_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> Credits + Send + Sync + 'static,
    {
        self.config.credits = CreditsPerRequest::Computed(Arc::new(f));
        self
    }

    /// When to charge (default [`ChargeTiming::BeforeResponse`]).
    pub fn charge_timing(mut self, timing: ChargeTiming) -> Self {
        self.config.timing = timing;
        self
    }

    /// Which backend call charges (default [`ChargeVia::Auto`]).
    pub fn charge_via(mut self, via: ChargeVia) -> Self {
        self.config.via = via;
        self
    }

    /// How long a positive token verification is reused (default 60 s, never beyond
    /// the token's own expiry) and how many are kept (default 100 000).
    pub fn verification_cache(mut self, ttl: Duration, capacity: u64) -> Self {
        self.config.verification_ttl = ttl;
        self.config.verification_capacity = capacity;
        self
    }

    /// At most `bytes` of memory for cached verifications (default 256 MiB). Each entry
    /// keeps its token to charge with, and tokens come in any size up to 8 KiB, so the
    /// cache is bounded in bytes as well as in entries: long tokens mean fewer entries,
    /// never more memory. The entry cap of [`verification_cache`](Self::verification_cache)
    /// still holds.
    pub fn verification_cache_bytes(mut self, bytes: u64) -> Self {
        self.config.verification_bytes = bytes;
        self
    }

    /// At most `n` calls to the facilitator's `verify` at once (default 64), whoever
    /// sends the tokens: past it, a request with a token not verified yet is refused
    /// with 503 `backend_unavailable` and `Retry-After` (tokens already verified are
    /// served as usual). Forged tokens cost the caller a request each, and the
    /// facilitator at most `n` calls in parallel.
    pub fn max_concurrent_verifications(mut self, n: usize) -> Self {
        self.config.max_verifications = n;
        self
    }

    /// Test hook: gives every token the same verification-cache hash, so tests can
    /// prove that tokens sharing a hash are never confused. Never use it in production:
    /// it turns every request after the first into an uncached verification.
    #[doc(hidden)]
    pub fn collide_token_hashes_for_tests(mut self) -> Self {
        self.config.collide_token_hashes = true;
        self
    }

    /// How long a fetched balance is trusted (default 30 s; the local ledger counts
    /// every charge and reservation in between) and how many are kept (default 100 000).
    /// A ledger also lives as long as a cached verification of one of its payer's
    /// tokens (the hot path finds it there without a lookup) or a reservation holds it.
    pub fn balance_cache(mut self, ttl: Duration, capacity: u64) -> Self {
        self.config.balance_ttl = ttl;
        self.config.balance_capacity = capacity;
        self
    }

    /// Before refusing a request for lack of credits, fetch the balance again if the one
    /// it was refused on is at least this old (default 1 s; concurrent refusals share
    /// one fetch). A subscriber who just bought more credits is served as soon as the
    /// backend knows, and a caller with none costs at most one balance call per
    /// interval. `Duration::ZERO` re-checks on every refusal.
    pub fn recheck_balance_before_refusing(mut self, after: Duration) -> Self {
        self.config.balance_recheck = after;
        self
    }

    /// How long a plan's credits config is reused (default 5 minutes, as the SDKs).
    pub fn plan_cache_ttl(mut self, ttl: Duration) -> Self {
        self.config.plan_ttl = ttl;
        self
    }

    /// Which handler responses are charged (default: 2xx).
    pub fn success_when<F>(mut self, f: F) -> Self
    where
        F: Fn(StatusCode) -> bool + Send + Sync + 'static,
    {
        self.config.success = Arc::new(f);
        self
    }

    /// What to do when the backend is unreachable (default fail closed).
    pub fn when_backend_unavailable(mut self, policy: BackendUnavailable) -> Self {
        self.config.unavailable = policy;
        self
    }

    /// The `Retry-After` of a 503 (default 5 s; whole seconds are sent).
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.config.retry_after = after;
        self
    }

    /// Headers searched for the credential, in order (default `payment-signature`,
    /// then `Authorization: Bearer`).
    pub fn token_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.config.token_headers = names.into_iter().collect();
        self
    }

    /// Receives every charge outcome (settled, failed, unknown).
    pub fn on_settle(mut self, hook: impl OnSettle) -> Self {
        self.config.on_settle = Some(Arc::new(hook));
        self
    }

    /// Status for `plan_not_accepted` and `wrong_agent`: 402 (default) or 403.
    pub fn reject_mismatch_with(mut self, status: StatusCode) -> Self {
        self.config.mismatch_status = status;
        self
    }

    /// Retries of a charge whose outcome is unknown or whose error is transient.
    pub fn charge_retry(mut self, policy: RetryPolicy) -> Self {
        self.config.retry = policy;
        self
    }

    /// At most `capacity` charges in flight (default 4 096): charges outlive their
    /// request with [`ChargeTiming::Background`] and [`ChargeTiming::OnBodyEnd`], and
    /// pile up while the backend is slow. A request admitted while `capacity` are in
    /// flight is handled by `when_full` ([`PendingFull::ChargeBeforeResponse`] by
    /// default: it is charged before its response, so callers wait for the backend;
    /// [`PendingFull::Reject`]: 503 before the handler). A charge counts from the
    /// moment its response is ready until it ends, so an `OnBodyEnd` stream counts
    /// while it streams. The bound is checked at admission, so it can be passed by the
    /// requests admitted at the same moment.
    pub fn pending_charges(mut self, capacity: usize, when_full: PendingFull) -> Self {
        self.config.pending_capacity = capacity;
        self.config.pending_full = when_full;
        self
    }

    /// `resource.description` of the `payment-required` object.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.config.description = Some(text.into());
        self
    }

    /// `resource.mimeType` of the `payment-required` object.
    pub fn mime_type(mut self, mime: impl Into<String>) -> Self {
        self.config.mime_type = Some(mime.into());
        self
    }

    /// Shares balances and single-use tokens with the other replicas of this agent
    /// through Redis (README, "Running several replicas"): each replica serves from
    /// credit leases, so the hot path makes no network call, and the replicas together
    /// never admit more than the balance. Without it each process decides alone.
    ///
    /// ```no_run
    /// # async fn run(payments: nvm_payments::Payments) -> Result<(), Box<dyn std::error::Error>> {
    /// use nvm_payments::{shared::RedisStore, PaymentLayer};
    /// let store = RedisStore::connect("redis://127.0.0.1:6379/").await?;
    /// let layer = PaymentLayer::builder(payments)
    ///     .plan_id("1234".parse()?)
    ///     .shared(store)
    ///     .build()?;
    /// # let _ = layer;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "redis")]
    pub fn shared(mut self, store: crate::shared::RedisStore) -> Self {
        // One lease id per layer: two layers sharing a store are two replicas.
        self.config.leases = Some(store.replica_leases());
        self.config.claims = Some(store.claims());
        self
    }

    /// Writes every charge to a journal file at `path` and releases the response that
    /// makes it due only once the charge is durable there or already final at the
    /// backend, whichever comes first, and replays unfinished ones with the same request id at
    /// start-up and every [`journal_replay_interval`](Self::journal_replay_interval):
    /// a served request is charged once even if the process is killed. The file holds
    /// subscribers' access tokens until their charges are final (mode `0600`); see the
    /// README's "Charge journal". One layer per file: `build()` fails with
    /// `ConfigError { field: "charge_journal", .. }` when it cannot be opened, created
    /// or locked.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use nvm_payments::{ChargeTiming, PaymentLayer, PaymentOptions, Payments};
    /// # let key = "local:eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIweDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDEifQ.c2ln";
    /// # let dir = std::env::temp_dir().join(format!("nvm-doc-journal-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// let payments = Payments::new(PaymentOptions::new(key).backend_url("http://127.0.0.1:3001"))?;
    /// let layer = PaymentLayer::builder(payments)
    ///     .plan_id("42".parse()?)
    ///     .charge_journal(dir.join("charges.journal"))
    ///     .charge_timing(ChargeTiming::Background)
    ///     .build()?;
    /// assert_eq!(layer.journal_stats().map(|s| s.unfinished), Some(0));
    /// # drop(layer); std::fs::remove_dir_all(&dir)?;
    /// # Ok(()) }
    /// ```
    pub fn charge_journal(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.journal_path = Some(path.into());
        self
    }

    /// Keeps the charge journal in Redis instead of a file: the journal of
    /// [`charge_journal`](Self::charge_journal), readable by every replica, so a
    /// replica that survives replays (same request ids) the charges of one that died,
    /// at its first replay pass after the dead one's liveness lease expired (one
    /// `RedisStoreBuilder::lease_ttl` after its last renewal). Redis
    /// holds each unfinished charge's access token until the charge is final; how
    /// durable an entry is depends on Redis' persistence (`appendonly yes`,
    /// `appendfsync always` for a charge to survive a Redis crash): README, "Charge
    /// journal". `build()` fails with `ConfigError { field: "charge_journal_in", .. }`
    /// when a file journal is set too. Works with or without
    /// [`shared`](Self::shared) balances.
    ///
    /// ```no_run
    /// # async fn run(payments: nvm_payments::Payments) -> Result<(), Box<dyn std::error::Error>> {
    /// use nvm_payments::{shared::RedisStore, ChargeTiming, PaymentLayer};
    /// let store = RedisStore::connect("redis://127.0.0.1:6379/").await?;
    /// let layer = PaymentLayer::builder(payments)
    ///     .plan_id("1234".parse()?)
    ///     .shared(store.clone())
    ///     .charge_journal_in(store)
    ///     .charge_timing(ChargeTiming::Background)
    ///     .build()?;
    /// # let _ = layer;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "redis")]
    pub fn charge_journal_in(mut self, store: crate::shared::RedisStore) -> Self {
        self.config.journal_redis = Some(store);
        self
    }

    /// How often unfinished journal entries are replayed (default 30 s; the first
    /// pass runs at start-up). Only with [`charge_journal`](Self::charge_journal) or
    /// `charge_journal_in`.
    pub fn journal_replay_interval(mut self, every: Duration) -> Self {
        self.config.journal_replay = every;
        self
    }

    /// Charge every request by usage: the handler counts units on
    /// [`PaymentContext::meter`](super::PaymentContext::meter) while it streams, and
    /// `rule` turns them into credits. See "Metered streams" in the [layer
    /// docs](super#metered-streams): the cap is reserved, the body is charged at its end
    /// (or when the client goes away) whatever [`ChargeTiming`] says, clamped to the
    /// plan's minimum and maximum. `credits`/`credits_fn` do not apply to metered
    /// requests; on a fixed-credits plan the meter is ignored.
    pub fn meter(mut self, rule: MeterRule) -> Self {
        self.config.meter = Some(rule);
        self
    }

    /// Charge requests to `method` + `path` (exact match) by usage with `rule`; other
    /// routes keep the per-request credits (or the [`meter`](Self::meter) rule).
    ///
    /// ```
    /// use http::Method;
    /// use nvm_payments::{MeterRule, PaymentLayer, PaymentOptions, Payments};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let key = "local:eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIweDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDEifQ.c2ln";
    /// # let payments = Payments::new(PaymentOptions::new(key).backend_url("http://127.0.0.1:3001"))?;
    /// let layer = PaymentLayer::builder(payments)
    ///     .plan_id("42".parse()?)
    ///     .meter_route(Method::POST, "/stream", MeterRule::per_unit(1u64))
    ///     .build()?;
    /// # let _ = layer; Ok(()) }
    /// ```
    pub fn meter_route(mut self, method: Method, path: impl Into<String>, rule: MeterRule) -> Self {
        self.config.metered_routes.push((method, path.into(), rule));
        self
    }

    /// End each metered stream with its receipt, the `payment-response` value that
    /// cannot go in the head of a stream: a last SSE event named `payment-response`
    /// for `text/event-stream` responses, an HTTP trailer `payment-response` for the
    /// others (HTTP/2, and HTTP/1.1 when the request sent `TE: trailers`). The body's
    /// end then waits for the charge. Off by default.
    pub fn receipt_at_stream_end(mut self) -> Self {
        self.config.stream_receipt = true;
        self
    }

    /// Checks the configuration and builds the layer.
    pub fn build(self) -> Result<PaymentLayer, ConfigError> {
        let (backend, config) = self.checked()?;
        Ok(PaymentLayer::from_parts(backend, config))
    }

    /// The checked configuration, with its journal opened, for a gate that is not a
    /// tower layer (MCP) as well as for [`build`](Self::build).
    pub(crate) fn checked(mut self) -> Result<(Arc<dyn PaymentBackend>, LayerConfig), ConfigError> {
        self.check()?;
        if let Some(path) = &self.config.journal_path {
            let journal = ChargeJournal::open_file(path, self.config.journal_replay)
                .map_err(|e| journal_error(path, e))?;
            self.config.journal = Some(journal);
        }
        #[cfg(feature = "redis")]
        if let Some(store) = &self.config.journal_redis {
            let journal = ChargeJournal::new(store.charge_journal(), self.config.journal_replay);
            self.config.journal = Some(journal);
        }
        Ok((self.backend, self.config))
    }

    fn check(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        if c.plan_ids.is_empty() {
            return Err(bad("plan_id", "at least one accepted plan id is required"));
        }
        if matches!(c.credits, CreditsPerRequest::Fixed(v) if v.is_zero()) {
            return Err(bad(
                "credits",
                "must be at least 1 (settle reads 0 as the plan maximum)",
            ));
        }
        if c.verification_ttl.is_zero() {
            return Err(bad("verification_cache", "ttl must be greater than zero"));
        }
        if c.verification_capacity == 0 {
            return Err(bad(
                "verification_cache",
                "capacity must be greater than zero",
            ));
        }
        if c.verification_bytes == 0 {
            return Err(bad("verification_cache_bytes", "must be greater than zero"));
        }
        if c.max_verifications == 0 {
            return Err(bad("max_concurrent_verifications", "must be at least 1"));
        }
        if c.balance_ttl.is_zero() {
            return Err(bad("balance_cache", "ttl must be greater than zero"));
        }
        if c.balance_capacity == 0 {
            return Err(bad("balance_cache", "capacity must be greater than zero"));
        }
        if c.plan_ttl.is_zero() {
            return Err(bad("plan_cache_ttl", "must be greater than zero"));
        }
        if c.token_headers.is_empty() {
            return Err(bad("token_headers", "at least one header is required"));
        }
        if !matches!(c.mismatch_status.as_u16(), 402 | 403) {
            return Err(bad("reject_mismatch_with", "must be 402 or 403"));
        }
        if matches!(c.unavailable, BackendUnavailable::ServeStale { max_age } if max_age.is_zero())
        {
            return Err(bad(
                "when_backend_unavailable",
                "max_age must be greater than zero",
            ));
        }
        for rule in c
            .meter
            .iter()
            .chain(c.metered_routes.iter().map(|(_, _, rule)| rule))
        {
            rule.check().map_err(|reason| bad("meter", reason))?;
        }
        if c.pending_capacity == 0 {
            return Err(bad("pending_charges", "capacity must be greater than zero"));
        }
        c.retry
            .check()
            .map_err(|reason| bad("charge_retry", reason))?;
        #[cfg(feature = "redis")]
        if c.journal_redis.is_some() && c.journal_path.is_some() {
            return Err(bad(
                "charge_journal_in",
                "one charge journal per layer: a file (`charge_journal`) or Redis, not both",
            ));
        }
        if c.journal_replay.is_zero() {
            return Err(bad("journal_replay_interval", "must be greater than zero"));
        }
        Ok(())
    }
}

/// The journal could not be opened: logged with its cause (the path is not a secret),
/// named by `ConfigError`.
fn journal_error(path: &std::path::Path, error: JournalOpenError) -> ConfigError {
    let reason = error.reason();
    tracing::error!(path = %path.display(), error = ?error, "cannot open the charge journal");
    bad("charge_journal", reason)
}
