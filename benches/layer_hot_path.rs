//! What the layer adds to a request on the hot path: cached verification, cached
//! balance, an in-process charge sink (no network anywhere).
//!
//! `cargo bench --bench layer_hot_path` prints the time per request of the bare inner
//! service and of the same service behind `PaymentLayer`, for each charge timing; the
//! difference is the layer's cost, and both are measured in the same run.

use std::convert::Infallible;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::future::BoxFuture;
use http::{Request, Response};
use http_body_util::Full;
use jsonwebtoken::jwk::JwkSet;
use nvm_payments::client::Error;
use nvm_payments::types::*;
use nvm_payments::{ChargeTiming, Environment, PaymentBackend, PaymentLayer};
use tower::{Layer, Service, ServiceExt};

const SUBSCRIBER: &str = "0x1111111111111111111111111111111111111111";

/// Answers every call at once: verify valid, a huge balance, settle succeeds.
struct ChargeSink;

impl PaymentBackend for ChargeSink {
    fn verify<'a>(
        &'a self,
        _: &'a PaymentRequired,
        _: &'a AccessToken,
        _: Option<Credits>,
    ) -> BoxFuture<'a, Result<VerifyResponse, Error>> {
        Box::pin(async {
            Ok(
                serde_json::from_value(serde_json::json!({ "isValid": true, "payer": SUBSCRIBER }))
                    .unwrap(),
            )
        })
    }
    fn settle<'a>(
        &'a self,
        _: &'a PaymentRequired,
        _: &'a AccessToken,
        max_amount: Option<Credits>,
        _: &'a str,
    ) -> BoxFuture<'a, Result<SettleResponse, Error>> {
        Box::pin(async move {
            Ok(SettleResponse {
                success: true,
                error_reason: None,
                payer: None,
                transaction: "0x".into(),
                network: String::new(),
                credits_redeemed: max_amount,
                remaining_balance: None,
                order_tx: None,
            })
        })
    }
    fn redeem<'a>(
        &'a self,
        _: &'a str,
        _: &'a PlanId,
        _: &'a Address,
        _: Credits,
    ) -> BoxFuture<'a, Result<NvmApiResult, Error>> {
        Box::pin(async { Ok(NvmApiResult::ok("0x")) })
    }
    fn plan_balance<'a>(
        &'a self,
        plan_id: &'a PlanId,
        holder: &'a Address,
    ) -> BoxFuture<'a, Result<PlanBalance, Error>> {
        Box::pin(async move {
            Ok(PlanBalance {
                plan_id: plan_id.clone(),
                plan_name: String::new(),
                plan_type: AccessLimit::Credits,
                holder_address: holder.clone(),
                balance: Credits::MAX,
                credits_contract: Address::zero(),
                is_subscriber: true,
                price_per_credit: 0.0,
                batch: None,
            })
        })
    }
    fn plan<'a>(&'a self, plan_id: &'a PlanId) -> BoxFuture<'a, Result<Plan, Error>> {
        Box::pin(async move {
            Ok(serde_json::from_value(serde_json::json!({
                "id": plan_id,
                "registry": { "owner": Address::zero(), "price": get_free_price_config(),
                              "credits": get_dynamic_credits_config(Credits::MAX, Credits::from(1u64), Credits::from(10u64)) }
            }))
            .unwrap())
        })
    }
    fn access_token_jwks(&self) -> BoxFuture<'_, Result<JwkSet, Error>> {
        Box::pin(async { Ok(JwkSet { keys: vec![] }) })
    }
}

fn token() -> String {
    let envelope = serde_json::json!({
        "x402Version": 2,
        "accepted": { "scheme": "nvm:erc4337", "network": "eip155:84532", "planId": "1", "extra": { "agentId": "2" } },
        "payload": { "signature": "0x00", "authorization": { "from": SUBSCRIBER, "sessionKeys": [] } },
        "extensions": {}
    });
    URL_SAFE_NO_PAD.encode(envelope.to_string())
}

fn inner() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let token = token();
    let request = || {
        Request::post("/ask")
            .header("payment-signature", token.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let mut group = c.benchmark_group("layer_hot_path");
    let bare = inner();
    group.bench_function("bare_service", |b| {
        b.iter(|| rt.block_on(bare.clone().oneshot(request())).unwrap())
    });
    for (name, timing) in [
        ("before_response", ChargeTiming::BeforeResponse),
        ("background", ChargeTiming::Background),
    ] {
        let layer = PaymentLayer::builder_with_backend(Arc::new(ChargeSink), Environment::Sandbox)
            .plan_id("1".parse().unwrap())
            .agent_id("2".parse().unwrap())
            .charge_timing(timing)
            .build()
            .unwrap();
        let svc = layer.layer(inner());
        // Warm the caches: verification, plan, balance.
        assert_eq!(
            rt.block_on(svc.clone().oneshot(request()))
                .unwrap()
                .status(),
            200
        );
        group.bench_function(format!("layered_{name}"), |b| {
            b.iter(|| rt.block_on(svc.clone().oneshot(request())).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
