//! Each accepted plan is advertised and verified with its own scheme (card delegation
//! for fiat plans, on the plan's fiat provider), and the `payment-required` header has
//! every field an x402 v2 `accepts[]` entry must have.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::layer_mock::*;
use nvm_payments::{PaymentLayer, PlanId};
use tower::{Layer, ServiceExt};

async fn advertised(layer: &PaymentLayer) -> serde_json::Value {
    let inner = Inner::ok();
    let response = layer
        .layer(inner.service())
        .oneshot(request_with(None))
        .await
        .unwrap();
    assert_eq!(response.status(), 402);
    assert_eq!(inner.calls(), 0, "the handler never runs unpaid");
    decode_header_json(&response.headers()["payment-required"])
}

#[tokio::test]
async fn a_fiat_plan_is_advertised_and_verified_as_card_delegation() {
    let backend = MockBackend::with(100, |m| {
        m.fiat_plans
            .lock()
            .unwrap()
            .insert(plan(), Some("braintree".to_owned()));
    });
    let layer = builder(backend.clone()).build().unwrap();
    let required = advertised(&layer).await;
    let accepted = &required["accepts"][0];
    assert_eq!(accepted["scheme"], "nvm:card-delegation");
    assert_eq!(accepted["network"], "braintree", "the plan's fiat provider");

    let inner = Inner::ok();
    let response = layer
        .layer(inner.service())
        .oneshot(x402_request(valid_x402()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let verified = backend.verified_for.lock().unwrap().clone().unwrap();
    assert_eq!(verified.accepts[0].scheme, "nvm:card-delegation");
    assert_eq!(verified.accepts[0].network, "braintree");
}

#[tokio::test]
async fn plans_of_both_kinds_are_advertised_each_with_its_scheme() {
    let fiat: PlanId = "777".parse().unwrap();
    let backend = MockBackend::with(100, |m| {
        m.fiat_plans.lock().unwrap().insert(fiat.clone(), None);
    });
    let layer = builder(backend.clone())
        .plan_ids([plan(), fiat])
        .build()
        .unwrap();
    let required = advertised(&layer).await;
    assert_eq!(required["accepts"][0]["scheme"], "nvm:erc4337");
    assert_eq!(required["accepts"][0]["network"], "eip155:84532");
    assert_eq!(required["accepts"][1]["planId"], "777");
    assert_eq!(required["accepts"][1]["scheme"], "nvm:card-delegation");
    assert_eq!(
        required["accepts"][1]["network"], "stripe",
        "no provider: stripe"
    );
}

#[tokio::test]
async fn every_accepts_entry_has_the_x402_v2_required_fields() {
    let backend = MockBackend::new(100);
    // The mock's plan burns 1..=10 per request; the layer asks 2.
    let layer = builder(backend.clone()).build().unwrap();
    let required = advertised(&layer).await;
    let accepted = &required["accepts"][0];
    assert_eq!(accepted["amount"], "2", "what one request spends");
    assert_eq!(
        accepted["payTo"],
        "0x00000000000000000000000000000000000000b1"
    );
    assert!(accepted["asset"].is_string(), "{accepted}");
    assert_eq!(accepted["maxTimeoutSeconds"], 300);
    // The verify body keeps the SDKs' shape.
    let inner = Inner::ok();
    let response = layer
        .layer(inner.service())
        .oneshot(x402_request(valid_x402()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let verified = backend.verified_for.lock().unwrap().clone().unwrap();
    let body = serde_json::to_value(&verified).unwrap();
    assert!(body["accepts"][0].get("amount").is_none(), "{body}");
}

#[tokio::test(start_paused = true)]
async fn an_unreadable_plan_falls_back_to_erc4337_asks_again_after_a_second_and_is_not_kept() {
    let fiat: PlanId = "777".parse().unwrap();
    let backend = MockBackend::with(100, |m| {
        m.fiat_plans.lock().unwrap().insert(fiat.clone(), None);
        m.unreadable_plans.lock().unwrap().insert(fiat.clone());
    });
    let layer = builder(backend.clone())
        .plan_ids([plan(), fiat.clone()])
        .build()
        .unwrap();
    let required = advertised(&layer).await;
    assert_eq!(
        required["accepts"][1]["scheme"], "nvm:erc4337",
        "payments-py's fallback"
    );
    let calls = backend.plan_calls.load(Ordering::SeqCst);
    // A flood of unpaid requests during the outage asks the backend no more.
    for _ in 0..20 {
        advertised(&layer).await;
    }
    assert_eq!(backend.plan_calls.load(Ordering::SeqCst), calls);
    // A request paid with the readable plan is served and charged, but the route
    // built with a guessed scheme is not kept for the next requests.
    let inner = Inner::ok();
    let response = layer
        .layer(inner.service())
        .oneshot(x402_request(valid_x402()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(backend.charge_calls(), 1);
    assert_eq!(layer.cache_sizes().await.routes, 0);

    backend.unreadable_plans.lock().unwrap().clear();
    tokio::time::advance(Duration::from_secs(2)).await;
    let required = advertised(&layer).await;
    assert_eq!(
        required["accepts"][1]["scheme"], "nvm:card-delegation",
        "read again once the back-off is over"
    );
}
