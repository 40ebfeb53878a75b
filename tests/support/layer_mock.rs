//! Shared by the `layer_*` tests: a mock `PaymentBackend` that counts calls and keeps
//! an idempotent ledger, token makers, and an inner service that counts its calls.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::jwk::JwkSet;
use nvm_payments::client::{ApiError, Error};
use nvm_payments::types::*;
use nvm_payments::{Environment, PaymentBackend, PaymentLayer};

pub const PLAN: &str = "1001";
pub const OTHER_PLAN: &str = "2002";
pub const AGENT: &str = "77";
pub const OTHER_AGENT: &str = "88";
pub const SUBSCRIBER: &str = "0x1111111111111111111111111111111111111111";

pub fn plan() -> PlanId {
    PLAN.parse().unwrap()
}
pub fn agent() -> AgentId {
    AGENT.parse().unwrap()
}
pub fn subscriber() -> Address {
    SUBSCRIBER.parse().unwrap()
}

/// What the mock's verify answers.
#[derive(Clone, Debug)]
pub enum VerifyMode {
    /// `isValid` from the token's signature: `0xvalid` passes, `0xexpired` is expired,
    /// anything else is forged.
    BySignature,
    /// A 403 `BCK.X402.0005`.
    Refuse403,
    /// A connect error.
    Down,
    /// An API error with this status and code (e.g. 401 `BCK.APIKEY.0004`).
    Error(u16, &'static str),
}

pub struct MockBackend {
    pub verify_calls: AtomicUsize,
    pub settle_calls: AtomicUsize,
    pub redeem_calls: AtomicUsize,
    pub balance_calls: AtomicUsize,
    pub plan_calls: AtomicUsize,
    pub jwks_calls: AtomicUsize,
    /// Backend truth: the subscriber's balance.
    pub balance: Mutex<Credits>,
    /// Balances of other holders (those not listed use `balance`).
    pub holders: Mutex<HashMap<Address, Credits>>,
    /// Nonces of v3 tokens already settled: a second settle is refused (`BCK.X402.0059`).
    pub spent_nonces: Mutex<std::collections::HashSet<String>>,
    /// Verify calls in flight now, and the most seen at once.
    pub verify_in_flight: AtomicUsize,
    pub verify_peak: AtomicUsize,
    /// When set, every verify call waits for a permit.
    pub verify_permits: Option<Arc<tokio::sync::Semaphore>>,
    /// The JWKS endpoint answers a connect error.
    pub jwks_down: Mutex<bool>,
    pub is_subscriber: Mutex<bool>,
    pub credits_config: Mutex<PlanCreditsConfig>,
    /// Plans priced in fiat, with their fiat payment provider (others are crypto).
    pub fiat_plans: Mutex<HashMap<PlanId, Option<String>>>,
    /// Plans whose `get plan` answers a connect error.
    pub unreadable_plans: Mutex<std::collections::HashSet<PlanId>>,
    /// The `paymentRequired` of the last verify call.
    pub verified_for: Mutex<Option<PaymentRequired>>,
    pub verify_mode: Mutex<VerifyMode>,
    pub balance_down: Mutex<bool>,
    /// Errors returned by the next charge calls (settle or redeem), front first.
    /// `(error, applied)`: whether the charge happened before the error was returned.
    pub charge_failures: Mutex<VecDeque<(Error, bool)>>,
    /// Request id -> credits burned: one entry per id (idempotent).
    pub charged: Mutex<HashMap<String, Credits>>,
    /// Every charge call: (request id, max amount).
    pub charge_log: Mutex<Vec<(String, Credits)>>,
    pub verify_delay: Duration,
    pub balance_delay: Duration,
    pub jwks: Mutex<JwkSet>,
    /// Notified when a charge call (settle or redeem) starts.
    pub charge_entered: tokio::sync::Notify,
    /// When set, charge calls wait for a notification before answering.
    pub charge_hold: Option<tokio::sync::Notify>,
    /// When set, every charge call waits for a permit: tests hold many charges in
    /// flight and release them with `add_permits`.
    pub charge_permits: Option<Arc<tokio::sync::Semaphore>>,
}

pub fn transient() -> Error {
    Error::Api(ApiError {
        status: StatusCode::BAD_GATEWAY,
        code: "http_502".into(),
        message: "bad gateway".into(),
        hint: None,
        endpoint: "POST /api/v1/x402/settle".into(),
    })
}

pub fn connect_refused() -> Error {
    Error::Transport {
        endpoint: "POST /x".into(),
        message: "connection refused".into(),
        connect: true,
    }
}

impl MockBackend {
    pub fn new(balance: u64) -> Arc<Self> {
        Self::with(balance, |_| {})
    }

    pub fn with(balance: u64, tweak: impl FnOnce(&mut MockBackend)) -> Arc<Self> {
        let mut m = MockBackend {
            verify_calls: AtomicUsize::new(0),
            settle_calls: AtomicUsize::new(0),
            redeem_calls: AtomicUsize::new(0),
            balance_calls: AtomicUsize::new(0),
            plan_calls: AtomicUsize::new(0),
            jwks_calls: AtomicUsize::new(0),
            balance: Mutex::new(Credits::from(balance)),
            holders: Mutex::new(HashMap::new()),
            spent_nonces: Mutex::new(Default::default()),
            verify_in_flight: AtomicUsize::new(0),
            verify_peak: AtomicUsize::new(0),
            verify_permits: None,
            jwks_down: Mutex::new(false),
            is_subscriber: Mutex::new(true),
            credits_config: Mutex::new(get_dynamic_credits_config(
                Credits::from(100u64),
                Credits::from(1u64),
                Credits::from(10u64),
            )),
            fiat_plans: Mutex::new(HashMap::new()),
            unreadable_plans: Mutex::new(Default::default()),
            verified_for: Mutex::new(None),
            verify_mode: Mutex::new(VerifyMode::BySignature),
            balance_down: Mutex::new(false),
            charge_failures: Mutex::new(VecDeque::new()),
            charged: Mutex::new(HashMap::new()),
            charge_log: Mutex::new(Vec::new()),
            verify_delay: Duration::from_millis(0),
            balance_delay: Duration::from_millis(0),
            jwks: Mutex::new(bearer_jwks()),
            charge_entered: tokio::sync::Notify::new(),
            charge_hold: None,
            charge_permits: None,
        };
        tweak(&mut m);
        Arc::new(m)
    }

    pub fn verifies(&self) -> usize {
        self.verify_calls.load(Ordering::SeqCst)
    }
    pub fn balances(&self) -> usize {
        self.balance_calls.load(Ordering::SeqCst)
    }
    pub fn charge_calls(&self) -> usize {
        self.settle_calls.load(Ordering::SeqCst) + self.redeem_calls.load(Ordering::SeqCst)
    }
    /// Distinct request ids charged.
    pub fn charged_ids(&self) -> usize {
        self.charged.lock().unwrap().len()
    }
    pub fn total_charged(&self) -> Credits {
        self.charged
            .lock()
            .unwrap()
            .values()
            .fold(Credits::ZERO, |a, c| a.saturating_add(*c))
    }
    pub fn remaining(&self) -> Credits {
        *self.balance.lock().unwrap()
    }

    async fn wait_for_permit(&self) {
        if let Some(permits) = &self.charge_permits {
            permits.acquire().await.unwrap().forget();
        }
    }

    /// The backend's balance of `holder`.
    pub fn balance_of(&self, holder: &Address) -> Credits {
        match self.holders.lock().unwrap().get(holder) {
            Some(b) => *b,
            None => self.remaining(),
        }
    }

    /// Burns `max_amount` (clamped by the plan) once per request id, from the
    /// subscriber's balance.
    fn charge(&self, request_id: &str, max_amount: Credits) -> Result<Option<Credits>, Error> {
        self.charge_from(&subscriber(), request_id, max_amount)
    }

    /// Burns `max_amount` (clamped by the plan) once per request id, from `holder`.
    fn charge_from(
        &self,
        holder: &Address,
        request_id: &str,
        max_amount: Credits,
    ) -> Result<Option<Credits>, Error> {
        self.charge_log
            .lock()
            .unwrap()
            .push((request_id.to_owned(), max_amount));
        let failure = self.charge_failures.lock().unwrap().pop_front();
        let burn = self
            .credits_config
            .lock()
            .unwrap()
            .redemption_amount(max_amount);
        let mut charged = self.charged.lock().unwrap();
        let apply = |charged: &mut HashMap<String, Credits>| -> Option<Credits> {
            if charged.contains_key(request_id) {
                return charged.get(request_id).copied();
            }
            let mut holders = self.holders.lock().unwrap();
            let mut global = self.balance.lock().unwrap();
            let balance = match holders.get_mut(holder) {
                Some(b) => b,
                None => &mut *global,
            };
            let rest = balance.checked_sub(burn)?;
            *balance = rest;
            charged.insert(request_id.to_owned(), burn);
            Some(burn)
        };
        match failure {
            Some((err, applied)) => {
                if applied {
                    apply(&mut charged);
                }
                Err(err)
            }
            None => Ok(apply(&mut charged)),
        }
    }
}

fn decode_payload(token: &AccessToken) -> Option<X402TokenPayload> {
    let raw = token.expose();
    let bytes = URL_SAFE_NO_PAD
        .decode(raw.trim_end_matches('='))
        .or_else(|_| STANDARD.decode(raw))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

impl PaymentBackend for MockBackend {
    fn verify<'a>(
        &'a self,
        payment_required: &'a PaymentRequired,
        token: &'a AccessToken,
        max_amount: Option<Credits>,
    ) -> BoxFuture<'a, Result<VerifyResponse, Error>> {
        Box::pin(async move {
            self.verify_calls.fetch_add(1, Ordering::SeqCst);
            *self.verified_for.lock().unwrap() = Some(payment_required.clone());
            let now = self.verify_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.verify_peak.fetch_max(now, Ordering::SeqCst);
            let _leave = LeaveOnDrop(&self.verify_in_flight);
            if let Some(permits) = &self.verify_permits {
                permits.acquire().await.unwrap().forget();
            }
            if !self.verify_delay.is_zero() {
                tokio::time::sleep(self.verify_delay).await;
            }
            let mode = self.verify_mode.lock().unwrap().clone();
            match mode {
                VerifyMode::Refuse403 => {
                    return Err(Error::Api(ApiError {
                        status: StatusCode::FORBIDDEN,
                        code: "BCK.X402.0005".into(),
                        message: "signature mismatch".into(),
                        hint: None,
                        endpoint: "POST /api/v1/x402/verify".into(),
                    }))
                }
                VerifyMode::Down => return Err(connect_refused()),
                VerifyMode::Error(status, code) => {
                    return Err(Error::Api(ApiError {
                        status: StatusCode::from_u16(status).unwrap(),
                        code: code.into(),
                        message: "refused".into(),
                        hint: None,
                        endpoint: "POST /api/v1/x402/verify".into(),
                    }))
                }
                VerifyMode::BySignature => {}
            }
            let payload = decode_payload(token);
            let (valid, reason) = match payload.as_ref().map(|p| p.payload.signature.as_str()) {
                Some("0xvalid") => {
                    let bal = payload
                        .as_ref()
                        .map(|p| self.balance_of(&p.payload.authorization.from))
                        .unwrap_or_default();
                    if max_amount.is_some_and(|m| m > bal) {
                        (false, Some("insufficient_balance".to_owned()))
                    } else {
                        (true, None)
                    }
                }
                Some("0xexpired") => (false, Some("expired_token".to_owned())),
                _ => (false, Some("invalid_token".to_owned())),
            };
            Ok(VerifyResponse {
                is_valid: valid,
                invalid_reason: reason,
                payer: payload.map(|p| p.payload.authorization.from),
                network: None,
                agent_request_id: Some(format!("arid-{}", uuid::Uuid::new_v4())),
                url_matching: None,
                agent_request: None,
            })
        })
    }

    fn settle<'a>(
        &'a self,
        _payment_required: &'a PaymentRequired,
        token: &'a AccessToken,
        max_amount: Option<Credits>,
        agent_request_id: &'a str,
    ) -> BoxFuture<'a, Result<SettleResponse, Error>> {
        Box::pin(async move {
            self.settle_calls.fetch_add(1, Ordering::SeqCst);
            self.wait_for_permit().await;
            self.charge_entered.notify_one();
            if let Some(hold) = &self.charge_hold {
                hold.notified().await;
            }
            let payload = decode_payload(token);
            let payer = payload
                .as_ref()
                .map(|p| p.payload.authorization.from.clone())
                .unwrap_or_else(subscriber);
            // A v3 token is consumed by its first settle, as the hosted backend does.
            if let Some(nonce) = payload.and_then(|p| p.payload.authorization.nonce) {
                if !self.spent_nonces.lock().unwrap().insert(nonce) {
                    return Ok(SettleResponse {
                        success: false,
                        error_reason: Some("BCK.X402.0059: token already used".into()),
                        payer: Some(payer),
                        transaction: String::new(),
                        network: "eip155:84532".into(),
                        credits_redeemed: None,
                        remaining_balance: None,
                        order_tx: None,
                    });
                }
            }
            let burned =
                self.charge_from(&payer, agent_request_id, max_amount.unwrap_or_default())?;
            Ok(SettleResponse {
                success: burned.is_some(),
                error_reason: burned.is_none().then(|| "insufficient_balance".to_owned()),
                payer: Some(payer.clone()),
                transaction: if burned.is_some() {
                    "0xtx".into()
                } else {
                    String::new()
                },
                network: "eip155:84532".into(),
                credits_redeemed: burned,
                remaining_balance: Some(self.balance_of(&payer)),
                order_tx: None,
            })
        })
    }

    fn redeem<'a>(
        &'a self,
        agent_request_id: &'a str,
        _plan_id: &'a PlanId,
        _redeem_from: &'a Address,
        amount: Credits,
    ) -> BoxFuture<'a, Result<NvmApiResult, Error>> {
        Box::pin(async move {
            self.redeem_calls.fetch_add(1, Ordering::SeqCst);
            self.wait_for_permit().await;
            let burned = self.charge(agent_request_id, amount)?;
            let mut r = NvmApiResult::ok("0xredeem");
            r.success = burned.is_some();
            Ok(r)
        })
    }

    fn plan_balance<'a>(
        &'a self,
        plan_id: &'a PlanId,
        holder: &'a Address,
    ) -> BoxFuture<'a, Result<PlanBalance, Error>> {
        Box::pin(async move {
            self.balance_calls.fetch_add(1, Ordering::SeqCst);
            if !self.balance_delay.is_zero() {
                tokio::time::sleep(self.balance_delay).await;
            }
            if *self.balance_down.lock().unwrap() {
                return Err(connect_refused());
            }
            Ok(PlanBalance {
                plan_id: plan_id.clone(),
                plan_name: "plan".into(),
                plan_type: AccessLimit::Credits,
                holder_address: holder.clone(),
                balance: self.balance_of(holder),
                credits_contract: Address::zero(),
                is_subscriber: *self.is_subscriber.lock().unwrap(),
                price_per_credit: 0.01,
                batch: None,
            })
        })
    }

    fn plan<'a>(&'a self, plan_id: &'a PlanId) -> BoxFuture<'a, Result<Plan, Error>> {
        Box::pin(async move {
            self.plan_calls.fetch_add(1, Ordering::SeqCst);
            if self.unreadable_plans.lock().unwrap().contains(plan_id) {
                return Err(connect_refused());
            }
            let fiat = self.fiat_plans.lock().unwrap().get(plan_id).cloned();
            let mut price = serde_json::to_value(get_free_price_config()).unwrap();
            price["isCrypto"] = serde_json::Value::Bool(fiat.is_none());
            let plan = serde_json::json!({
                "id": plan_id,
                "metadata": { "plan": { "fiatPaymentProvider": fiat.flatten() } },
                "registry": {
                    "owner": "0x00000000000000000000000000000000000000b1",
                    "price": price,
                    "credits": *self.credits_config.lock().unwrap(),
                }
            });
            Ok(serde_json::from_value(plan).unwrap())
        })
    }

    fn access_token_jwks(&self) -> BoxFuture<'_, Result<JwkSet, Error>> {
        Box::pin(async move {
            self.jwks_calls.fetch_add(1, Ordering::SeqCst);
            if *self.jwks_down.lock().unwrap() {
                return Err(connect_refused());
            }
            Ok(self.jwks.lock().unwrap().clone())
        })
    }
}

// ---------- tokens ----------

/// An x402 token (base64 JSON envelope) for `plan`, optionally bound to `agent`;
/// `signature` steers the mock's verify (`0xvalid`, `0xexpired`, other = forged).
pub fn x402_token(plan: &str, agent: Option<&str>, signature: &str) -> String {
    x402_token_with_nonce(plan, agent, signature, None)
}

/// An x402 v3 token: it carries a nonce and is single-use at settle.
pub fn x402_v3(nonce: &str) -> String {
    x402_token_with_nonce(PLAN, Some(AGENT), "0xvalid", Some(nonce))
}

/// A valid x402 token's JSON envelope, paid by `from` (v3 when `nonce` is set).
pub fn x402_envelope(from: &str, nonce: Option<&str>) -> serde_json::Value {
    let mut envelope = serde_json::json!({
        "x402Version": 2,
        "accepted": { "scheme": "nvm:erc4337", "network": "eip155:84532", "planId": PLAN, "extra": { "version": "1", "agentId": AGENT } },
        "payload": { "signature": "0xvalid", "authorization": { "from": from, "sessionKeysProvider": "zerodev", "sessionKeys": [] } },
        "extensions": {}
    });
    if let Some(n) = nonce {
        envelope["payload"]["authorization"]["nonce"] = n.into();
    }
    envelope
}

/// A valid x402 token paid by `from`.
pub fn x402_from(from: &str) -> String {
    URL_SAFE_NO_PAD.encode(x402_envelope(from, None).to_string())
}

/// Decrements a counter when dropped (a verify call cancelled or finished).
struct LeaveOnDrop<'a>(&'a AtomicUsize);

impl Drop for LeaveOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn x402_token_with_nonce(
    plan: &str,
    agent: Option<&str>,
    signature: &str,
    nonce: Option<&str>,
) -> String {
    let mut extra = serde_json::json!({ "version": "1" });
    if let Some(a) = agent {
        extra["agentId"] = a.into();
    }
    let envelope = serde_json::json!({
        "x402Version": 2,
        "accepted": { "scheme": "nvm:erc4337", "network": "eip155:84532", "planId": plan, "extra": extra },
        "payload": { "signature": signature, "authorization": { "from": SUBSCRIBER, "sessionKeysProvider": "zerodev", "sessionKeys": [] } },
        "extensions": {}
    });
    let mut envelope = envelope;
    if let Some(n) = nonce {
        envelope["payload"]["authorization"]["nonce"] = n.into();
    }
    URL_SAFE_NO_PAD.encode(envelope.to_string())
}

pub fn valid_x402() -> String {
    x402_token(PLAN, Some(AGENT), "0xvalid")
}

const BEARER_SEED: [u8; 32] = [7; 32];
const FORGER_SEED: [u8; 32] = [9; 32];

fn signing_key(seed: [u8; 32]) -> jsonwebtoken::EncodingKey {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    jsonwebtoken::EncodingKey::from_ed_der(key.to_pkcs8_der().unwrap().as_bytes())
}

pub fn bearer_jwks() -> JwkSet {
    let public = ed25519_dalek::SigningKey::from_bytes(&BEARER_SEED).verifying_key();
    serde_json::from_value(serde_json::json!({
        "keys": [{ "kty": "OKP", "crv": "Ed25519", "kid": "k1", "alg": "EdDSA", "use": "sig",
                   "x": URL_SAFE_NO_PAD.encode(public.as_bytes()) }]
    }))
    .unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign_bearer(seed: [u8; 32], plan: &str, agent: Option<&str>, exp: u64) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("k1".into());
    let mut claims = serde_json::json!({ "iss": "0x0", "sub": SUBSCRIBER, "planId": plan, "exp": exp, "iat": now() });
    if let Some(a) = agent {
        claims["agentId"] = a.into();
    }
    jsonwebtoken::encode(&header, &claims, &signing_key(seed)).unwrap()
}

/// A bearer JWT signed with the issuer's key.
pub fn bearer(plan: &str, agent: Option<&str>) -> String {
    sign_bearer(BEARER_SEED, plan, agent, now() + 3600)
}
/// A valid bearer token that differs from others by its expiry.
pub fn bearer_valid_for(secs: u64) -> String {
    sign_bearer(BEARER_SEED, PLAN, Some(AGENT), now() + secs)
}
/// A key set that does not hold the issuer's key.
pub fn unrelated_jwks() -> JwkSet {
    let public = ed25519_dalek::SigningKey::from_bytes(&FORGER_SEED).verifying_key();
    serde_json::from_value(serde_json::json!({
        "keys": [{ "kty": "OKP", "crv": "Ed25519", "kid": "old", "alg": "EdDSA",
                   "x": URL_SAFE_NO_PAD.encode(public.as_bytes()) }]
    }))
    .unwrap()
}
pub fn bearer_expired() -> String {
    sign_bearer(BEARER_SEED, PLAN, Some(AGENT), now() - 60)
}
pub fn bearer_forged() -> String {
    sign_bearer(FORGER_SEED, PLAN, Some(AGENT), now() + 3600)
}

// ---------- inner service and helpers ----------

pub type TestBody = Full<Bytes>;

/// An inner service that counts calls and answers `status` with a short body.
#[derive(Clone)]
pub struct Inner {
    pub calls: Arc<AtomicUsize>,
    pub status: StatusCode,
}

impl Inner {
    pub fn ok() -> Self {
        Self::status(StatusCode::OK)
    }
    pub fn status(status: StatusCode) -> Self {
        Inner {
            calls: Arc::new(AtomicUsize::new(0)),
            status,
        }
    }
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    pub fn service(
        &self,
    ) -> impl tower::Service<
        Request<TestBody>,
        Response = Response<TestBody>,
        Error = Infallible,
        Future = impl Send + 'static,
    > + Clone
           + Send
           + 'static {
        let calls = self.calls.clone();
        let status = self.status;
        tower::service_fn(move |req: Request<TestBody>| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                assert!(
                    req.extensions()
                        .get::<nvm_payments::PaymentContext>()
                        .is_some(),
                    "the handler runs with a PaymentContext"
                );
                let mut res = Response::new(Full::new(Bytes::from_static(b"served")));
                *res.status_mut() = status;
                Ok::<_, Infallible>(res)
            }
        })
    }
}

pub fn builder(backend: Arc<MockBackend>) -> nvm_payments::layer::PaymentLayerBuilder {
    PaymentLayer::builder_with_backend(backend, Environment::Custom)
        .plan_id(plan())
        .agent_id(agent())
        .credits(2u64)
        .charge_retry(nvm_payments::RetryPolicy {
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            ..Default::default()
        })
}

pub fn request_with(header: Option<(&str, String)>) -> Request<TestBody> {
    let mut b = Request::post("/ask");
    if let Some((name, value)) = header {
        b = b.header(name, value);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

pub fn x402_request(token: String) -> Request<TestBody> {
    request_with(Some(("payment-signature", token)))
}

pub fn bearer_request(token: String) -> Request<TestBody> {
    request_with(Some(("authorization", format!("Bearer {token}"))))
}

pub async fn body_json<B>(body: B) -> serde_json::Value
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let bytes = body.collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

pub fn decode_header_json(value: &http::HeaderValue) -> serde_json::Value {
    serde_json::from_slice(&STANDARD.decode(value.as_bytes()).unwrap()).unwrap()
}

/// An `on_settle` hook that sends every outcome to a channel: tests await the
/// outcome of background charges instead of sleeping.
pub fn outcomes() -> (
    impl nvm_payments::OnSettle,
    tokio::sync::mpsc::UnboundedReceiver<nvm_payments::SettleOutcome>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let hook = move |o: &nvm_payments::SettleOutcome| {
        let _ = tx.send(o.clone());
    };
    (hook, rx)
}
