//! Shared by the benches: an in-process backend (the "charge sink") that answers every
//! call at once and counts it, and makers of x402 and bearer tokens.
//!
//! The sink is what the layer would talk to if the backend cost nothing: what the
//! benches measure on top of it is the layer's own work.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use jsonwebtoken::jwk::JwkSet;
use nvm_payments::client::Error;
use nvm_payments::credential::encode_x402_token;
use nvm_payments::types::{
    AccessLimit, AccessToken, Address, Credits, NvmApiResult, PaymentRequired, PaymentScheme, Plan,
    PlanBalance, PlanId, SchemeExtra, SettleResponse, TokenAuthorization, TokenPayload,
    VerifyResponse, X402TokenPayload,
};
use nvm_payments::{get_dynamic_credits_config, get_free_price_config, AgentId, PaymentBackend};

pub const PLAN: &str =
    "105906633592154016712415751065660953070604027297000423385655551747721326921578";
pub const AGENT: &str = "4242";

pub fn plan() -> PlanId {
    PLAN.parse().unwrap()
}
pub fn agent() -> AgentId {
    AGENT.parse().unwrap()
}

/// The `n`-th distinct holder address.
pub fn holder(n: u64) -> Address {
    format!("0x{n:040x}").parse().unwrap()
}

/// Calls the layer made to the sink.
#[derive(Default, Debug)]
pub struct Calls {
    pub verify: AtomicU64,
    pub settle: AtomicU64,
    pub redeem: AtomicU64,
    pub balance: AtomicU64,
    pub plan: AtomicU64,
    pub jwks: AtomicU64,
}

impl Calls {
    pub fn get(&self) -> [u64; 6] {
        [
            self.verify.load(Ordering::Relaxed),
            self.balance.load(Ordering::Relaxed),
            self.plan.load(Ordering::Relaxed),
            self.settle.load(Ordering::Relaxed),
            self.redeem.load(Ordering::Relaxed),
            self.jwks.load(Ordering::Relaxed),
        ]
    }

    pub fn reset(&self) {
        for c in [
            &self.verify,
            &self.settle,
            &self.redeem,
            &self.balance,
            &self.plan,
            &self.jwks,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// An in-process backend: every token is valid, every holder has a huge balance, every
/// charge succeeds. Lookups (verify, balance, plan, JWKS) yield once to the runtime, as
/// any real backend call would, so concurrent first requests really wait on one call;
/// charges answer without yielding.
pub struct Sink {
    pub calls: Calls,
    jwks: JwkSet,
    /// How long each settle takes (zero: it answers at once), as a hosted settle
    /// would (an HTTP round trip and the backend's own work).
    settle_delay: std::time::Duration,
}

impl Sink {
    pub fn new() -> Arc<Self> {
        Self::with_settle_delay(std::time::Duration::ZERO)
    }

    /// A sink whose settles each take `delay`.
    pub fn with_settle_delay(delay: std::time::Duration) -> Arc<Self> {
        Arc::new(Sink {
            calls: Calls::default(),
            jwks: bearer_jwks(),
            settle_delay: delay,
        })
    }
}

fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl PaymentBackend for Sink {
    fn verify<'a>(
        &'a self,
        _payment_required: &'a PaymentRequired,
        _token: &'a AccessToken,
        _max_amount: Option<Credits>,
    ) -> BoxFuture<'a, Result<VerifyResponse, Error>> {
        Box::pin(async move {
            count(&self.calls.verify);
            tokio::task::yield_now().await;
            Ok(VerifyResponse {
                is_valid: true,
                invalid_reason: None,
                payer: None, // the layer then takes the envelope's `from`
                network: Some("eip155:84532".into()),
                agent_request_id: None,
                url_matching: None,
                agent_request: None,
            })
        })
    }

    fn settle<'a>(
        &'a self,
        _payment_required: &'a PaymentRequired,
        _token: &'a AccessToken,
        max_amount: Option<Credits>,
        _agent_request_id: &'a str,
    ) -> BoxFuture<'a, Result<SettleResponse, Error>> {
        Box::pin(async move {
            count(&self.calls.settle);
            if !self.settle_delay.is_zero() {
                tokio::time::sleep(self.settle_delay).await;
            }
            Ok(SettleResponse {
                success: true,
                error_reason: None,
                payer: None,
                transaction: "0x5e771e".into(),
                network: "eip155:84532".into(),
                credits_redeemed: max_amount,
                remaining_balance: None,
                order_tx: None,
            })
        })
    }

    fn redeem<'a>(
        &'a self,
        _agent_request_id: &'a str,
        _plan_id: &'a PlanId,
        _redeem_from: &'a Address,
        _amount: Credits,
    ) -> BoxFuture<'a, Result<NvmApiResult, Error>> {
        Box::pin(async move {
            count(&self.calls.redeem);
            Ok(NvmApiResult::ok("0x5e771e"))
        })
    }

    fn plan_balance<'a>(
        &'a self,
        plan_id: &'a PlanId,
        holder: &'a Address,
    ) -> BoxFuture<'a, Result<PlanBalance, Error>> {
        Box::pin(async move {
            count(&self.calls.balance);
            tokio::task::yield_now().await;
            Ok(PlanBalance {
                plan_id: plan_id.clone(),
                plan_name: "bench".into(),
                plan_type: AccessLimit::Credits,
                holder_address: holder.clone(),
                balance: Credits::from(u64::MAX),
                credits_contract: Address::zero(),
                is_subscriber: true,
                price_per_credit: 0.0,
                batch: None,
            })
        })
    }

    fn plan<'a>(&'a self, plan_id: &'a PlanId) -> BoxFuture<'a, Result<Plan, Error>> {
        Box::pin(async move {
            count(&self.calls.plan);
            tokio::task::yield_now().await;
            let plan = serde_json::json!({
                "id": plan_id,
                "registry": {
                    "owner": Address::zero(),
                    "price": get_free_price_config(),
                    // A range plan, so metered routes are metered; 1 credit per plain request.
                    "credits": get_dynamic_credits_config(Credits::from(1_000_000u64), Credits::from(1u64), Credits::from(1_000u64)),
                }
            });
            Ok(serde_json::from_value(plan).expect("a plan the crate parses"))
        })
    }

    fn access_token_jwks(&self) -> BoxFuture<'_, Result<JwkSet, Error>> {
        Box::pin(async move {
            count(&self.calls.jwks);
            tokio::task::yield_now().await;
            Ok(self.jwks.clone())
        })
    }
}

/// An x402 v2 token as the backend mints it (wire-spec §6.3) for `holder`; `nonce`
/// makes distinct tokens for one holder.
pub fn x402_token(holder: &Address, nonce: Option<u64>) -> String {
    encode_x402_token(&X402TokenPayload {
        x402_version: 2,
        accepted: PaymentScheme {
            scheme: "nvm:erc4337".into(),
            network: "eip155:84532".into(),
            plan_id: plan(),
            extra: Some(SchemeExtra {
                version: Some("1".into()),
                agent_id: Some(agent()),
                http_verb: None,
            }),
        },
        payload: TokenPayload {
            // The length of a real ERC-4337 session signature.
            signature: format!("0x{}", "1b".repeat(65)),
            authorization: TokenAuthorization {
                from: holder.clone(),
                session_keys_provider: Some("zerodev".into()),
                session_keys: vec![],
                nonce: nonce.map(|n| n.to_string()),
            },
        },
        extensions: Default::default(),
        resource: None,
    })
}

/// PKCS#8 v1 prefix of an Ed25519 private key; the 32-byte seed follows (the approach
/// of `src/token/test_support.rs`).
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// The public key of seed `[7; 32]`.
const KEY_7_X: &str = "6kpsY-KcUgq-9VB7Ey7F-ZVHdq6-vnuSQh7qaRRG0iw";

pub fn bearer_jwks() -> JwkSet {
    serde_json::from_value(serde_json::json!({
        "keys": [{ "kty": "OKP", "crv": "Ed25519", "kid": "k1", "alg": "EdDSA", "use": "sig", "x": KEY_7_X }]
    }))
    .unwrap()
}

/// A legacy bearer access token (EdDSA, kid `k1`) for `holder`, valid for an hour.
pub fn bearer_token(holder: &Address) -> String {
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(&[7; 32]);
    let key = jsonwebtoken::EncodingKey::from_ed_der(&der);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("k1".into());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": "0x0", "sub": holder, "planId": PLAN, "agentId": AGENT,
        "exp": now + 3600, "iat": now,
    });
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// The time per iteration of a criterion benchmark measured by this process (ns): the
/// slope estimate criterion prints (the mean when there is no slope), read
/// from criterion's `estimates.json`; `None` when it did not run in this process
/// (filtered out) so stale results are never mixed into a ratio.
pub fn criterion_mean_ns(group: &str, id: &str, since: std::time::SystemTime) -> Option<f64> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            // <target>/release/deps/<bench>-<hash>
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.parent()?.to_path_buf())
        })?;
    let path = target
        .join("criterion")
        .join(group)
        .join(id)
        .join("new/estimates.json");
    let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
    if modified < since {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    json["slope"]["point_estimate"]
        .as_f64()
        .or_else(|| json["mean"]["point_estimate"].as_f64())
}
