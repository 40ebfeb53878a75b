//! Devserver plans over loopback HTTP: accounts and keys, register/get/list, balance,
//! order (crypto, free, fiat, trial, time), mint, mint-expirable, burn, redeem.
#![cfg(feature = "devserver")]

use crate::support::devserver_world::{api_code, c, expect_envelope, http, World};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use nvm_payments::devserver::DEFAULT_TOKEN_BALANCE;
use nvm_payments::types::{AccessLimit, PlanMetadata};
use nvm_payments::{
    get_dynamic_credits_config, get_erc20_price_config, get_expirable_duration_config,
    get_fiat_price_config, get_fixed_credits_config, Address, Credits,
};
use serde_json::{json, Value};

#[tokio::test]
async fn dev_accounts_get_signed_local_keys() {
    let w = World::new().await;
    let resp = http()
        .post(w.url("/dev/accounts"))
        .json(&json!({"name": "carol"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let account: Value = resp.json().await.unwrap();
    let address = account["address"].as_str().unwrap();
    assert!(address.starts_with("0x") && address.len() == 42);
    let key = account["apiKey"].as_str().unwrap();
    let jwt = key.strip_prefix("local:").expect("local: prefix");
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["sub"], address);
    assert!(claims["iss"].as_str().unwrap().starts_with("0x"));
    let jti = claims["jti"].as_str().unwrap();
    assert!(jti.starts_with("0x") && jti.len() == 66);
    assert!(claims["exp"].as_u64().unwrap() > w.server.now());
    assert!(claims["o11y"].as_str().unwrap().starts_with("sk-local-"));

    // An empty body works too.
    let resp = http().post(w.url("/dev/accounts")).send().await.unwrap();
    assert_eq!(resp.status(), 201);
}

#[tokio::test]
async fn authenticated_routes_refuse_missing_and_foreign_keys() {
    let w = World::new().await;
    let body = json!({"planId": "1", "amount": 1, "creditsReceiver": w.builder.address});
    let resp = http()
        .post(w.url("/api/v1/protocol/plans/mint"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let env = expect_envelope(resp, 401, "BCK.APIKEY.0004").await;
    assert_eq!(env["message"], "Invalid Nevermined API Key");

    // A key with the right shape that this server did not sign.
    let other = nvm_payments::devserver::DevServerState::new().create_account(None);
    let resp = http()
        .post(w.url("/api/v1/protocol/plans/mint"))
        .bearer_auth(other.api_key.expose())
        .json(&body)
        .send()
        .await
        .unwrap();
    let env = expect_envelope(resp, 401, "BCK.APIKEY.0004").await;
    assert!(
        !env.to_string().contains(other.api_key.expose()),
        "the key is never echoed"
    );
}

#[tokio::test]
async fn register_get_and_list_plans() {
    let w = World::new().await;
    let plan = w
        .priced_plan(10, get_fixed_credits_config(c(100), c(2)))
        .await;
    assert!(
        plan.as_str().len() >= 70,
        "ids look like the platform's: {plan}"
    );

    let payments = w.server.payments(&w.builder);
    let got = payments.plans().get_plan(&plan).await.unwrap();
    assert_eq!(got.id, plan);
    assert_eq!(got.registry.owner, w.builder.address);
    assert_eq!(got.registry.credits.amount, c(100));
    assert_eq!(got.registry.price.amounts, vec![c(10)]);
    assert_eq!(got.metadata.plan.access_limit, Some(AccessLimit::Credits));

    let raw: Value = http()
        .get(w.url(&format!("/api/v1/protocol/plans/{plan}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        raw["registry"]["credits"]["maxAmount"], "2",
        "uints go out as strings"
    );
    assert_eq!(raw["registry"]["price"]["isCrypto"], true);

    let list = payments
        .plans()
        .get_plans(nvm_payments::client::Page::default())
        .await
        .unwrap();
    assert_eq!(list.total, 1);
    assert_eq!(list.plans[0].id, plan);
    let theirs = w
        .server
        .payments(&w.subscriber)
        .plans()
        .get_plans(nvm_payments::client::Page::default())
        .await
        .unwrap();
    assert_eq!(theirs.total, 0);

    let err = payments
        .plans()
        .get_plan(&"11111".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some((404, "BCK.PROTOCOL.0002".into())));
    let resp = http()
        .get(w.url("/api/v1/protocol/plans/not-a-plan"))
        .send()
        .await
        .unwrap();
    expect_envelope(resp, 404, "BCK.PROTOCOL.0002").await;
}

#[tokio::test]
async fn register_accepts_numbers_strings_nulls_and_unknown_fields() {
    let w = World::new().await;
    let body = json!({
        "metadataAttributes": {"name": "lenient", "isTrialPlan": null, "surprise": 1},
        "priceConfig": {"tokenAddress": "0x0000000000000000000000000000000000000000", "amounts": [5],
            "receivers": [w.builder.address], "contractAddress": null, "isCrypto": true},
        "creditsConfig": {"amount": "10", "minAmount": 1, "maxAmount": "3", "durationSecs": 0,
            "isRedemptionAmountFixed": false, "redemptionType": 4},
        "nonce": "340282366920938463463374607431768211455",
        "accessLimit": null,
        "whatever": {"nested": true}
    });
    let resp = http()
        .post(w.url("/api/v1/protocol/plans"))
        .bearer_auth(w.builder.api_key.expose())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.unwrap();
    let plan = created["planId"].as_str().unwrap().parse().unwrap();
    let got = w
        .server
        .payments(&w.builder)
        .plans()
        .get_plan(&plan)
        .await
        .unwrap();
    assert_eq!(got.registry.credits.max_amount, c(3));

    // Validation errors are 400 envelopes naming the field; bad JSON too.
    let bad = json!({"metadataAttributes": {"name": "x"}, "priceConfig": {"tokenAddress": "nope"}, "creditsConfig": {}});
    let resp = http()
        .post(w.url("/api/v1/protocol/plans"))
        .bearer_auth(w.builder.api_key.expose())
        .json(&bad)
        .send()
        .await
        .unwrap();
    let env = expect_envelope(resp, 400, "BCK.COMMON.0001").await;
    assert!(
        env["message"]
            .as_str()
            .unwrap()
            .contains("priceConfig.tokenAddress"),
        "{env}"
    );
    let resp = http()
        .post(w.url("/api/v1/protocol/plans"))
        .bearer_auth(w.builder.api_key.expose())
        .header("content-type", "application/json")
        .body("{\"metadataAttributes\": ")
        .send()
        .await
        .unwrap();
    expect_envelope(resp, 400, "BCK.COMMON.0001").await;

    // min > max is refused.
    let resp = http()
        .post(w.url("/api/v1/protocol/plans"))
        .bearer_auth(w.builder.api_key.expose())
        .json(&json!({"metadataAttributes": {"name": "x"}, "priceConfig": {"tokenAddress": "0x0000000000000000000000000000000000000000", "isCrypto": true},
            "creditsConfig": {"amount": 1, "minAmount": 5, "maxAmount": 1}}))
        .send()
        .await
        .unwrap();
    expect_envelope(resp, 400, "BCK.COMMON.0002").await;
}

#[tokio::test]
async fn balance_for_any_holder() {
    let w = World::new().await;
    let plan = w.free_plan(get_fixed_credits_config(c(10), c(1))).await;
    let stranger: Address = "0x1111111111111111111111111111111111111111"
        .parse()
        .unwrap();
    let b = w
        .server
        .payments(&w.builder)
        .plans()
        .get_plan_balance(&plan, Some(&stranger))
        .await
        .unwrap();
    assert_eq!(b.balance, Credits::ZERO);
    assert!(!b.is_subscriber);
    assert_eq!(b.holder_address, stranger);
    assert_eq!(b.plan_name, "plan");

    let raw: Value = http()
        .get(w.url(&format!("/api/v1/protocol/plans/{plan}/balance/{stranger}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for field in [
        "planId",
        "planName",
        "planType",
        "holderAddress",
        "balance",
        "creditsContract",
        "isSubscriber",
        "pricePerCredit",
    ] {
        assert!(raw.get(field).is_some(), "{field} missing in {raw}");
    }
    assert_eq!(raw["balance"], "0");
    assert!(raw["pricePerCredit"].is_number());

    let resp = http()
        .get(w.url(&format!("/api/v1/protocol/plans/{plan}/balance/0x12")))
        .send()
        .await
        .unwrap();
    expect_envelope(resp, 400, "BCK.COMMON.0002").await;
    let resp = http()
        .get(w.url(&format!("/api/v1/protocol/plans/999/balance/{stranger}")))
        .send()
        .await
        .unwrap();
    expect_envelope(resp, 404, "BCK.PROTOCOL.0002").await;
}

#[tokio::test]
async fn ordering_moves_the_price_and_grants_credits() {
    let w = World::new().await;
    let token: Address = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
        .parse()
        .unwrap();
    let price = get_erc20_price_config(c(20), token.clone(), w.builder.address.clone());
    let plan = w
        .credits_plan(price, get_dynamic_credits_config(c(100), c(1), c(5)))
        .await;
    let sub = w.server.payments(&w.subscriber);
    let result = sub.plans().order_plan(&plan).await.unwrap();
    assert!(result.success);
    let tx = result.tx_hash.unwrap();
    assert!(tx.starts_with("0x") && tx.len() == 66);
    assert_eq!(w.balance(&plan, &w.subscriber).await, c(100));
    assert!(
        sub.plans()
            .get_plan_balance(&plan, None)
            .await
            .unwrap()
            .is_subscriber
    );
    assert_eq!(
        w.server.token_balance(&w.subscriber.address, &token),
        DEFAULT_TOKEN_BALANCE.checked_sub(c(20)).unwrap()
    );
    assert_eq!(
        w.server.token_balance(&w.builder.address, &token),
        DEFAULT_TOKEN_BALANCE.checked_add(c(20)).unwrap()
    );
    let wallet: Value = http()
        .get(w.url(&format!("/dev/wallets/{}/{token}", w.builder.address)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        wallet["balance"],
        DEFAULT_TOKEN_BALANCE
            .checked_add(c(20))
            .unwrap()
            .to_string()
    );

    // Ordering again adds another 100 credits.
    sub.plans().order_plan(&plan).await.unwrap();
    assert_eq!(w.balance(&plan, &w.subscriber).await, c(200));
}

#[tokio::test]
async fn ordering_fails_clearly_without_funds_for_fiat_plans_and_for_trials_twice() {
    let w = World::new().await;
    let sub = w.server.payments(&w.subscriber);

    // Costs more than any dev wallet holds.
    let too_dear = DEFAULT_TOKEN_BALANCE.checked_mul(c(10)).unwrap();
    let price = nvm_payments::get_native_token_price_config(too_dear, w.builder.address.clone());
    let plan = w
        .credits_plan(price, get_fixed_credits_config(c(1), c(1)))
        .await;
    let err = sub.plans().order_plan(&plan).await.unwrap_err();
    assert_eq!(
        api_code(&err),
        Some((402, "BCK.PROTOCOL.0008".into())),
        "{err}"
    );
    assert_eq!(w.balance(&plan, &w.subscriber).await, Credits::ZERO);

    let fiat = get_fiat_price_config(c(2_000_000), w.builder.address.clone(), "USD");
    let fiat_plan = w
        .credits_plan(fiat, get_fixed_credits_config(c(10), c(1)))
        .await;
    let err = sub.plans().order_plan(&fiat_plan).await.unwrap_err();
    let (status, code) = api_code(&err).unwrap();
    assert_eq!((status, code.as_str()), (400, "BCK.PROTOCOL.0007"));
    assert!(err.to_string().contains("fiat"), "{err}");

    let cheap_fiat = get_fiat_price_config(c(500_000), w.builder.address.clone(), "USD");
    let err = w
        .server
        .payments(&w.builder)
        .plans()
        .register_credits_plan(
            PlanMetadata::named("cheap"),
            cheap_fiat,
            get_fixed_credits_config(c(1), c(1)),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some((400, "BCK.PROTOCOL.0047".into())));

    let trial = w
        .server
        .payments(&w.builder)
        .plans()
        .register_credits_trial_plan(
            PlanMetadata::named("trial"),
            nvm_payments::get_free_price_config(),
            get_fixed_credits_config(c(3), c(1)),
        )
        .await
        .unwrap();
    assert!(
        w.server
            .payments(&w.builder)
            .plans()
            .get_plan(&trial)
            .await
            .unwrap()
            .metadata
            .main
            .is_trial_plan
    );
    sub.plans().order_plan(&trial).await.unwrap();
    let err = sub.plans().order_plan(&trial).await.unwrap_err();
    assert_eq!(api_code(&err), Some((409, "BCK.PROTOCOL.0006".into())));
    assert_eq!(w.balance(&trial, &w.subscriber).await, c(3));
}

#[tokio::test]
async fn fiat_checkout_completes_once() {
    let w = World::new().await;
    let fiat = get_fiat_price_config(c(2_000_000), w.builder.address.clone(), "USD");
    let plan = w
        .credits_plan(fiat, get_fixed_credits_config(c(10), c(1)))
        .await;
    let got = w
        .server
        .payments(&w.builder)
        .plans()
        .get_plan(&plan)
        .await
        .unwrap();
    assert_eq!(
        got.metadata.plan.fiat_payment_provider.as_deref(),
        Some("stripe")
    );

    let sub = w.server.payments(&w.subscriber);
    let checkout = sub.plans().order_fiat_plan(&plan).await.unwrap();
    assert!(checkout.stripe_checkout_session_id.starts_with("cs_test_"));
    assert!(
        checkout.checkout_link.starts_with(&w.server.base_url()),
        "{}",
        checkout.checkout_link
    );
    assert!(checkout.link_expires_at > checkout.link_created_at);
    assert_eq!(
        w.balance(&plan, &w.subscriber).await,
        Credits::ZERO,
        "nothing before paying"
    );

    let page = http().get(&checkout.checkout_link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Payment completed"));
    assert_eq!(w.balance(&plan, &w.subscriber).await, c(10));

    let again: Value = http()
        .get(&checkout.checkout_link)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["alreadyCompleted"], true);
    assert_eq!(
        w.balance(&plan, &w.subscriber).await,
        c(10),
        "a second visit grants nothing"
    );

    // A crypto plan cannot go through the fiat route.
    let crypto = w.priced_plan(1, get_fixed_credits_config(c(1), c(1))).await;
    let err = sub.plans().order_fiat_plan(&crypto).await.unwrap_err();
    assert_eq!(api_code(&err), Some((400, "BCK.PROTOCOL.0010".into())));
    let resp = http()
        .get(w.url("/dev/checkout/cs_test_nope"))
        .send()
        .await
        .unwrap();
    expect_envelope(resp, 404, "BCK.PROTOCOL.0011").await;
}

#[tokio::test]
async fn time_plans_last_for_their_duration_on_the_server_clock() {
    let w = World::new().await;
    let plan = w
        .server
        .payments(&w.builder)
        .plans()
        .register_time_plan(
            PlanMetadata::named("day pass"),
            nvm_payments::get_free_price_config(),
            get_expirable_duration_config(86_400),
        )
        .await
        .unwrap();
    let sub = w.server.payments(&w.subscriber);
    sub.plans().order_plan(&plan).await.unwrap();
    let b = sub.plans().get_plan_balance(&plan, None).await.unwrap();
    assert_eq!(b.plan_type, AccessLimit::Time);
    assert_eq!(b.balance, c(1));
    assert!(b.is_subscriber);

    w.server.advance_clock(86_399);
    assert!(
        sub.plans()
            .get_plan_balance(&plan, None)
            .await
            .unwrap()
            .is_subscriber
    );
    let resp = http()
        .post(w.url("/dev/clock/advance"))
        .json(&json!({"seconds": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let b = sub.plans().get_plan_balance(&plan, None).await.unwrap();
    assert_eq!(b.balance, Credits::ZERO);
    assert!(!b.is_subscriber);
}

#[tokio::test]
async fn mint_mint_expirable_and_burn() {
    let w = World::new().await;
    let plan = w.free_plan(get_fixed_credits_config(c(10), c(1))).await;
    let owner = w.server.payments(&w.builder);
    let sub = w.server.payments(&w.subscriber);

    owner
        .plans()
        .mint_plan_credits(&plan, c(5), &w.subscriber.address)
        .await
        .unwrap();
    assert_eq!(w.balance(&plan, &w.subscriber).await, c(5));
    owner
        .plans()
        .mint_plan_expirable(&plan, c(7), &w.subscriber.address, 100)
        .await
        .unwrap();
    owner
        .plans()
        .mint_plan_expirable(&plan, c(3), &w.subscriber.address, 50)
        .await
        .unwrap();
    assert_eq!(w.balance(&plan, &w.subscriber).await, c(15));

    // Only the owner mints or burns.
    let err = sub
        .plans()
        .mint_plan_credits(&plan, c(5), &w.subscriber.address)
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some((403, "BCK.PROTOCOL.0004".into())));
    let err = sub.plans().burn_credits(&plan, c(1)).await.unwrap_err();
    assert_eq!(api_code(&err), Some((403, "BCK.PROTOCOL.0004".into())));

    // Expired lots stop counting.
    w.server.advance_clock(50);
    assert_eq!(w.balance(&plan, &w.subscriber).await, c(12));
    w.server.advance_clock(50);
    assert_eq!(w.balance(&plan, &w.subscriber).await, c(5));

    // Burn spends from the caller's own balance.
    owner
        .plans()
        .mint_plan_credits(&plan, c(4), &w.builder.address)
        .await
        .unwrap();
    owner.plans().burn_credits(&plan, c(3)).await.unwrap();
    assert_eq!(w.balance(&plan, &w.builder).await, c(1));
    let err = owner.plans().burn_credits(&plan, c(2)).await.unwrap_err();
    assert_eq!(api_code(&err), Some((400, "BCK.PROTOCOL.0009".into())));
    assert_eq!(w.balance(&plan, &w.builder).await, c(1));
}

#[tokio::test]
async fn expirable_credits_are_spent_soonest_expiring_first() {
    let w = World::new().await;
    let plan = w
        .free_plan(get_dynamic_credits_config(c(10), c(1), c(100)))
        .await;
    let owner = w.server.payments(&w.builder);
    owner
        .plans()
        .mint_plan_credits(&plan, c(10), &w.subscriber.address)
        .await
        .unwrap();
    owner
        .plans()
        .mint_plan_expirable(&plan, c(5), &w.subscriber.address, 1_000)
        .await
        .unwrap();
    owner
        .plans()
        .mint_plan_expirable(&plan, c(5), &w.subscriber.address, 10)
        .await
        .unwrap();
    // Redeem 7: 5 from the lot lapsing at +10, 2 from the one at +1000.
    owner
        .plans()
        .redeem_credits("req-1", &plan, &w.subscriber.address, c(7))
        .await
        .unwrap();
    assert_eq!(w.balance(&plan, &w.subscriber).await, c(13));
    w.server.advance_clock(10);
    assert_eq!(
        w.balance(&plan, &w.subscriber).await,
        c(13),
        "the spent lot is the one that lapsed"
    );
    w.server.advance_clock(1_000);
    assert_eq!(w.balance(&plan, &w.subscriber).await, c(10));
}

#[tokio::test]
async fn redeem_is_clamped_owner_only_and_idempotent() {
    let w = World::new().await;
    let plan = w
        .free_plan(get_dynamic_credits_config(c(20), c(2), c(5)))
        .await;
    let sub = w.server.payments(&w.subscriber);
    sub.plans().order_plan(&plan).await.unwrap();
    let owner = w.server.payments(&w.builder);

    let first = owner
        .plans()
        .redeem_credits("arId-1", &plan, &w.subscriber.address, c(9))
        .await
        .unwrap();
    assert!(first.success);
    assert_eq!(
        first.data.as_ref().unwrap()["creditsBurned"],
        "5",
        "clamped to the plan max"
    );
    assert_eq!(w.balance(&plan, &w.subscriber).await, c(15));
    let again = owner
        .plans()
        .redeem_credits("arId-1", &plan, &w.subscriber.address, c(9))
        .await
        .unwrap();
    assert_eq!(again.tx_hash, first.tx_hash, "same id, same result");
    assert_eq!(
        w.balance(&plan, &w.subscriber).await,
        c(15),
        "and no second spend"
    );

    let low = owner
        .plans()
        .redeem_credits("arId-2", &plan, &w.subscriber.address, c(1))
        .await
        .unwrap();
    assert_eq!(
        low.data.unwrap()["creditsBurned"],
        "2",
        "clamped to the plan min"
    );

    // The owner of an agent linked to the plan may redeem; a stranger may not.
    let agent_owner = w.server.create_account(Some("agent-owner"));
    let ao = w.server.payments(&agent_owner);
    let agent = ao
        .agents()
        .register_agent(
            nvm_payments::types::AgentMetadata::named("a"),
            Default::default(),
            vec![plan.clone()],
        )
        .await
        .unwrap();
    ao.plans()
        .redeem_credits("arId-3", &plan, &w.subscriber.address, c(2))
        .await
        .unwrap();
    assert_eq!(w.balance(&plan, &w.subscriber).await, c(11));
    let err = sub
        .plans()
        .redeem_credits("arId-4", &plan, &w.subscriber.address, c(2))
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some((403, "BCK.PROTOCOL.0012".into())));
    ao.agents()
        .remove_plan_from_agent(&plan, &agent)
        .await
        .unwrap();
    let err = ao
        .plans()
        .redeem_credits("arId-5", &plan, &w.subscriber.address, c(2))
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some((403, "BCK.PROTOCOL.0012".into())));

    // Not enough credits: a clear 400, nothing spent.
    let err = owner
        .plans()
        .redeem_credits("arId-6", &plan, &w.builder.address, c(2))
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some((400, "BCK.PROTOCOL.0009".into())));
}
