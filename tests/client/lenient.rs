//! Answers the official SDKs accept must decode here too: a field the crate does not
//! need never fails a response. Each unreadable value reads as `None`, never as a
//! made-up value; the fields the crate does need still decode.

use std::time::Duration;

use crate::support::stub::{api_key_for, Stub};
use nvm_payments::client::{Page, PaymentRequiredOptions};
use nvm_payments::types::*;
use nvm_payments::{PaymentOptions, Payments};

const ME: &str = "0x2222222222222222222222222222222222222222";

async fn client(stub: &Stub) -> Payments {
    let base = stub.serve().await;
    Payments::new(
        PaymentOptions::new(api_key_for(ME))
            .backend_url(base)
            .timeout(Duration::from_secs(5)),
    )
    .unwrap()
}

fn plan() -> PlanId {
    "101".parse().unwrap()
}

fn token() -> AccessToken {
    AccessToken::new("dG9rZW4")
}

#[tokio::test]
async fn verify_with_odd_payer_and_agent_request_decodes() {
    let stub = Stub::default();
    stub.json(
        "POST /api/v1/x402/verify",
        200,
        r#"{"isValid":true,"payer":"did:nv:subscriber","network":"eip155:84532",
            "agentRequestId":"arId-7",
            "agentRequest":{"agentRequestId":"arId-7","agentId":"did:nv:agent-1",
              "balance":{"planId":"plan-abc","planName":"p","planType":"credits",
                "holderAddress":"0x2222222222222222222222222222222222222222","balance":"5",
                "isSubscriber":true,"pricePerCredit":0.1},
              "urlMatching":"/ask","verbMatching":"POST"}}"#,
    );
    let p = client(&stub).await;
    let pr = p
        .x402()
        .build_payment_required(&plan(), &PaymentRequiredOptions::default());
    let v = p
        .x402()
        .verify_permissions(&pr, &token(), Some(Credits::from(1u64)))
        .await
        .expect("a verify the SDKs accept decodes");
    assert!(v.is_valid);
    assert_eq!(
        v.payer, None,
        "a payer that is not an address reads as None"
    );
    assert_eq!(v.agent_request_id.as_deref(), Some("arId-7"));
    let request = v.agent_request.expect("the agent request is kept");
    assert_eq!(request.agent_request_id, "arId-7");
    assert_eq!(
        request.agent_id, None,
        "a non-decimal agent id reads as None"
    );
    assert_eq!(
        request.balance, None,
        "a balance with a non-decimal plan id"
    );
    assert_eq!(request.url_matching.as_deref(), Some("/ask"));
}

#[tokio::test]
async fn verify_with_an_unreadable_agent_request_keeps_the_verdict() {
    let stub = Stub::default();
    stub.json(
        "POST /api/v1/x402/verify",
        200,
        r#"{"isValid":false,"invalidReason":"insufficient_balance","agentRequest":"n/a"}"#,
    );
    let p = client(&stub).await;
    let pr = p
        .x402()
        .build_payment_required(&plan(), &PaymentRequiredOptions::default());
    let v = p
        .x402()
        .verify_permissions(&pr, &token(), None)
        .await
        .unwrap();
    assert!(!v.is_valid);
    assert_eq!(v.invalid_reason.as_deref(), Some("insufficient_balance"));
    assert_eq!(v.agent_request, None);
}

#[tokio::test]
async fn settle_with_odd_amounts_decodes() {
    let stub = Stub::default();
    stub.json(
        "POST /api/v1/x402/settle",
        200,
        r#"{"success":true,"payer":"someone","transaction":"0xabc","network":"eip155:84532",
            "creditsRedeemed":"two","remainingBalance":-3}"#,
    );
    let p = client(&stub).await;
    let pr = p
        .x402()
        .build_payment_required(&plan(), &PaymentRequiredOptions::default());
    let s = p
        .x402()
        .settle_permissions(&pr, &token(), Some(Credits::from(2u64)), Some("arId-1"))
        .await
        .expect("a settle the SDKs accept decodes");
    assert!(s.success, "the outcome the crate needs is kept");
    assert_eq!(s.transaction, "0xabc");
    assert_eq!(s.payer, None);
    assert_eq!(s.credits_redeemed, None, "not a uint: None, not 0");
    assert_eq!(s.remaining_balance, None);
}

#[tokio::test]
async fn settle_still_requires_success() {
    let stub = Stub::default();
    stub.json(
        "POST /api/v1/x402/settle",
        200,
        r#"{"creditsRedeemed":"2"}"#,
    );
    let p = client(&stub).await;
    let pr = p
        .x402()
        .build_payment_required(&plan(), &PaymentRequiredOptions::default());
    let err = p
        .x402()
        .settle_permissions(&pr, &token(), None, None)
        .await
        .expect_err("without `success` the outcome is unknown");
    assert!(
        matches!(err, nvm_payments::client::Error::Decode { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn plan_listing_without_registry_or_token_decodes() {
    let stub = Stub::default();
    let listing = r#"{"total":3,"page":1,"offset":10,"plans":[
        {"id":"101","metadata":{"main":{"name":"no registry"}}},
        {"planId":"102","metadata":{"main":{"name":"no token"}},
         "registry":{"owner":"0x1111111111111111111111111111111111111111",
           "price":{"amounts":["5"],"receivers":["0x1111111111111111111111111111111111111111"],"isCrypto":false},
           "credits":{"amount":"100","minAmount":"1","maxAmount":"1"}}},
        {"id":"103","registry":{"owner":"0x1111111111111111111111111111111111111111",
           "price":{"tokenAddress":"usdc","isCrypto":true},
           "credits":{"amount":"1","minAmount":"1","maxAmount":"1"}}}]}"#;
    stub.json("GET /api/v1/protocol/plans", 200, listing);
    stub.json("GET /api/v1/protocol/agents/202/plans", 200, listing);
    let p = client(&stub).await;

    let mine = p.plans().get_plans(Page::default()).await.unwrap();
    let agents = p
        .agents()
        .get_agent_plans(&"202".parse().unwrap(), Page::default())
        .await
        .unwrap();
    for list in [mine, agents] {
        assert_eq!(list.plans.len(), 3);
        assert_eq!(list.plans[0].registry, None);
        assert_eq!(list.plans[1].id, "102".parse().unwrap());
        let registry = list.plans[1].registry.as_ref().expect("registry kept");
        assert_eq!(registry.price.token_address, None);
        assert!(!registry.price.is_crypto);
        assert_eq!(registry.credits.amount, Credits::from(100u64));
        let registry = list.plans[2].registry.as_ref().expect("registry kept");
        assert_eq!(registry.price.token_address, None, "not an address: None");
    }
}

#[tokio::test]
async fn agent_listing_without_registry_decodes() {
    let stub = Stub::default();
    let listing = r#"{"total":2,"page":1,"offset":10,"agents":[
        {"id":"301","metadata":{"main":{"name":"no registry"}}},
        {"agentId":"302","metadata":{"main":{"name":"with registry"}},
         "registry":{"owner":"0x1111111111111111111111111111111111111111","plans":["101"]}}]}"#;
    stub.json("GET /api/v1/protocol/agents", 200, listing);
    stub.json("GET /api/v1/protocol/plans/101/agents", 200, listing);
    let p = client(&stub).await;

    let mine = p.agents().get_agents(Page::default()).await.unwrap();
    let of_plan = p
        .plans()
        .get_plan_agents(&plan(), Page::default())
        .await
        .unwrap();
    for list in [mine, of_plan] {
        assert_eq!(list.agents.len(), 2);
        assert_eq!(list.agents[0].registry, None);
        assert_eq!(list.agents[1].id, "302".parse().unwrap());
        let registry = list.agents[1].registry.as_ref().expect("registry kept");
        assert_eq!(registry.plans, vec![plan()]);
    }
}
