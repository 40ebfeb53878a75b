//! Devserver x402 over loopback HTTP: permissions (token minting), verify (every
//! invalidReason), settle (clamping, insufficient balance, idempotency, concurrency),
//! forged tokens, and legacy EdDSA access tokens verified with the JWKS.
#![cfg(feature = "devserver")]

use std::collections::HashMap;

use crate::support::devserver_world::{api_code, c, expect_envelope, http, World};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use nvm_payments::client::{build_payment_required, Environment, PaymentRequiredOptions};
use nvm_payments::types::{
    AccessTokenClaims, AgentMetadata, DelegationConfig, PaymentRequired, PaymentScheme,
    PermissionsRequest, SchemeExtra,
};
use nvm_payments::{
    get_dynamic_credits_config, get_fixed_credits_config, AccessToken, AgentId, Credits, PlanId,
};
use serde_json::{json, Value};

fn required(plan: &PlanId, agent: Option<&AgentId>) -> PaymentRequired {
    build_payment_required(
        std::slice::from_ref(plan),
        Environment::Custom,
        &PaymentRequiredOptions {
            endpoint: Some("/ask".into()),
            agent_id: agent.cloned(),
            http_verb: Some("POST".into()),
            ..Default::default()
        },
    )
}

/// A world with a dynamic plan (min 1, max 3) linked to an agent.
async fn setup(amount: u64) -> (World, PlanId, AgentId) {
    let w = World::new().await;
    let plan = w
        .free_plan(get_dynamic_credits_config(c(amount), c(1), c(3)))
        .await;
    let agent = w
        .server
        .payments(&w.builder)
        .agents()
        .register_agent(
            AgentMetadata::named("agent"),
            Default::default(),
            vec![plan.clone()],
        )
        .await
        .unwrap();
    (w, plan, agent)
}

async fn token(w: &World, plan: &PlanId, agent: Option<&AgentId>) -> AccessToken {
    w.server
        .payments(&w.subscriber)
        .x402()
        .get_x402_access_token(plan, agent)
        .await
        .unwrap()
        .access_token
}

#[tokio::test]
async fn permissions_mint_an_official_envelope() {
    let (w, plan, agent) = setup(10).await;
    let tok = token(&w, &plan, Some(&agent)).await;
    let raw = STANDARD
        .decode(tok.expose())
        .expect("standard, padded base64");
    let text = String::from_utf8(raw).unwrap();
    assert!(!text.contains(": "), "compact JSON");
    let env: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(env["x402Version"], 2);
    assert_eq!(env["accepted"]["scheme"], "nvm:erc4337");
    assert_eq!(env["accepted"]["network"], "eip155:84532");
    assert_eq!(env["accepted"]["planId"], plan.as_str());
    assert_eq!(
        env["accepted"]["extra"],
        json!({"version": "1", "agentId": agent.as_str()})
    );
    assert_eq!(
        env["payload"]["authorization"]["from"],
        w.subscriber.address.as_str()
    );
    assert_eq!(
        env["payload"]["authorization"]["sessionKeysProvider"],
        "zerodev"
    );
    assert_eq!(env["payload"]["authorization"]["sessionKeys"], json!([]));
    assert_eq!(env["extensions"], json!({}));
    let sig = env["payload"]["signature"].as_str().unwrap();
    assert!(sig.starts_with("0x") && sig.len() == 66);

    // With a delegationConfig (as TS sends) and with no agent.
    let req = PermissionsRequest {
        accepted: PaymentScheme {
            scheme: "nvm:erc4337".into(),
            network: "eip155:84532".into(),
            plan_id: plan.clone(),
            extra: Some(SchemeExtra::default()),
        },
        delegation_config: Some(DelegationConfig {
            delegation_id: Some("3f1c0a52-0000-4000-8000-000000000000".into()),
            other: Default::default(),
        }),
        resource: None,
        token_version: None,
    };
    let sub = w.server.payments(&w.subscriber);
    let tok = sub
        .x402()
        .get_x402_access_token_with(&req)
        .await
        .unwrap()
        .access_token;
    let env: Value = serde_json::from_slice(&STANDARD.decode(tok.expose()).unwrap()).unwrap();
    assert_eq!(env["accepted"]["extra"], json!({"version": "1"}));

    let err = sub
        .x402()
        .get_x402_access_token(&"5".parse().unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some((404, "BCK.X402.0002".into())));
    let resp = http()
        .post(w.url("/api/v1/x402/permissions"))
        .json(&json!({"accepted": {"scheme": "nvm:erc4337", "network": "eip155:84532", "planId": plan}}))
        .send()
        .await
        .unwrap();
    expect_envelope(resp, 401, "BCK.APIKEY.0004").await;
}

#[tokio::test]
async fn verify_is_valid_for_a_subscriber_and_never_spends() {
    let (w, plan, agent) = setup(10).await;
    w.server
        .payments(&w.subscriber)
        .plans()
        .order_plan(&plan)
        .await
        .unwrap();
    let tok = token(&w, &plan, Some(&agent)).await;
    let owner = w.server.payments(&w.builder);
    let pr = required(&plan, Some(&agent));

    let first = owner
        .x402()
        .verify_permissions(&pr, &tok, Some(c(2)))
        .await
        .unwrap();
    assert!(first.is_valid, "{first:?}");
    assert_eq!(first.payer.as_ref(), Some(&w.subscriber.address));
    assert_eq!(first.network.as_deref(), Some("eip155:84532"));
    let request = first.agent_request.as_ref().unwrap();
    assert_eq!(
        Some(&request.agent_request_id),
        first.agent_request_id.as_ref()
    );
    assert_eq!(request.agent_id.as_ref(), Some(&agent));
    assert_eq!(request.agent_name.as_deref(), Some("agent"));
    assert_eq!(request.balance.as_ref().unwrap().balance, c(10));
    assert_eq!(request.url_matching.as_deref(), Some("/ask"));
    assert_eq!(request.verb_matching.as_deref(), Some("POST"));

    let second = owner
        .x402()
        .verify_permissions(&pr, &tok, Some(c(2)))
        .await
        .unwrap();
    assert_ne!(
        second.agent_request_id, first.agent_request_id,
        "a fresh id per verify"
    );
    assert_eq!(
        w.balance(&plan, &w.subscriber).await,
        c(10),
        "verify never spends"
    );

    // Unauthenticated verify is tolerated, as on the platform; a bad key is not.
    let body = json!({"paymentRequired": pr, "x402AccessToken": tok.expose(), "maxAmount": "1"});
    let resp = http()
        .post(w.url("/api/v1/x402/verify"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = http()
        .post(w.url("/api/v1/x402/verify"))
        .bearer_auth("local:x.y.z")
        .json(&body)
        .send()
        .await
        .unwrap();
    expect_envelope(resp, 401, "BCK.APIKEY.0004").await;
}

#[tokio::test]
async fn verify_invalid_reasons() {
    let (w, plan, agent) = setup(2).await;
    let owner = w.server.payments(&w.builder);
    let x = owner.x402();
    let reason = |v: nvm_payments::types::VerifyResponse| {
        assert!(!v.is_valid);
        v.invalid_reason.unwrap()
    };

    // Minted before ordering: a subscriber may, but it is not yet paid.
    let early = token(&w, &plan, Some(&agent)).await;
    let v = x
        .verify_permissions(&required(&plan, Some(&agent)), &early, Some(c(1)))
        .await
        .unwrap();
    assert_eq!(reason(v), "insufficient_balance");
    w.server
        .payments(&w.subscriber)
        .plans()
        .order_plan(&plan)
        .await
        .unwrap();
    let v = x
        .verify_permissions(&required(&plan, Some(&agent)), &early, Some(c(1)))
        .await
        .unwrap();
    assert!(v.is_valid, "the same token works once ordered");

    // Balance 2, a charge of 3 (within the plan's range) is too much.
    let v = x
        .verify_permissions(&required(&plan, Some(&agent)), &early, Some(c(3)))
        .await
        .unwrap();
    assert_eq!(reason(v), "insufficient_balance");
    // maxAmount absent means the plan max (3).
    let v = x
        .verify_permissions(&required(&plan, Some(&agent)), &early, None)
        .await
        .unwrap();
    assert_eq!(reason(v), "insufficient_balance");

    // The route accepts another plan.
    let other = w.free_plan(get_fixed_credits_config(c(5), c(1))).await;
    let v = x
        .verify_permissions(&required(&other, None), &early, Some(c(1)))
        .await
        .unwrap();
    assert_eq!(reason(v), "invalid_plan");
    // Empty accepts: any plan the token names is fine.
    let mut any = required(&plan, None);
    any.accepts.clear();
    let v = x
        .verify_permissions(&any, &early, Some(c(1)))
        .await
        .unwrap();
    assert!(v.is_valid);

    // The route is for another agent.
    let other_agent = owner
        .agents()
        .register_agent(
            AgentMetadata::named("other"),
            Default::default(),
            vec![other.clone()],
        )
        .await
        .unwrap();
    let v = x
        .verify_permissions(&required(&plan, Some(&other_agent)), &early, Some(c(1)))
        .await
        .unwrap();
    assert_eq!(reason(v), "invalid_agent", "token names another agent");
    let no_agent = token(&w, &plan, None).await;
    let v = x
        .verify_permissions(&required(&plan, Some(&other_agent)), &no_agent, Some(c(1)))
        .await
        .unwrap();
    assert_eq!(
        reason(v),
        "invalid_agent",
        "the plan is not linked to the route's agent"
    );
    let v = x
        .verify_permissions(&required(&plan, Some(&agent)), &no_agent, Some(c(1)))
        .await
        .unwrap();
    assert!(
        v.is_valid,
        "a token without agent is fine for a linked agent"
    );
    owner
        .agents()
        .remove_plan_from_agent(&plan, &agent)
        .await
        .unwrap();
    let v = x
        .verify_permissions(&required(&plan, Some(&agent)), &early, Some(c(1)))
        .await
        .unwrap();
    assert_eq!(reason(v), "invalid_agent", "unlinked");
}

#[tokio::test]
async fn forged_and_garbage_tokens_are_refused() {
    let (w, plan, agent) = setup(10).await;
    w.server
        .payments(&w.subscriber)
        .plans()
        .order_plan(&plan)
        .await
        .unwrap();
    let tok = token(&w, &plan, Some(&agent)).await;
    let pr = required(&plan, Some(&agent));
    let post = |token: String| {
        http()
            .post(w.url("/api/v1/x402/verify"))
            .bearer_auth(w.builder.api_key.expose())
            .json(&json!({"paymentRequired": pr, "x402AccessToken": token, "maxAmount": "1"}))
            .send()
    };

    // URL-safe, unpadded: still this server's token.
    let raw = STANDARD.decode(tok.expose()).unwrap();
    let resp = post(URL_SAFE_NO_PAD.encode(&raw)).await.unwrap();
    assert_eq!(resp.status(), 200);

    // Edit the agent, the payer, or the plan: the signature no longer matches.
    let mut env: Value = serde_json::from_slice(&raw).unwrap();
    env["accepted"]["extra"]["agentId"] = json!("1234");
    let resp = post(STANDARD.encode(env.to_string())).await.unwrap();
    expect_envelope(resp, 403, "BCK.X402.0005").await;
    let mut env: Value = serde_json::from_slice(&raw).unwrap();
    env["payload"]["authorization"]["from"] = json!(w.builder.address);
    let resp = post(STANDARD.encode(env.to_string())).await.unwrap();
    expect_envelope(resp, 403, "BCK.X402.0005").await;

    for garbage in ["%%%", "e30", "bm90IGpzb24", ""] {
        let resp = post(garbage.to_owned()).await.unwrap();
        expect_envelope(resp, 400, "BCK.X402.0001").await;
    }

    // Settle refuses a forged token as well, and spends nothing.
    let mut env: Value = serde_json::from_slice(&raw).unwrap();
    env["accepted"]["planId"] = json!("1");
    let forged = AccessToken::new(STANDARD.encode(env.to_string()));
    let err = w
        .server
        .payments(&w.builder)
        .x402()
        .settle_permissions(&pr, &forged, Some(c(1)), Some("r"))
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some((403, "BCK.X402.0005".into())));
    assert_eq!(w.balance(&plan, &w.subscriber).await, c(10));
}

#[tokio::test]
async fn settle_clamps_and_fails_softly_when_short() {
    let (w, plan, agent) = setup(10).await;
    w.server
        .payments(&w.subscriber)
        .plans()
        .order_plan(&plan)
        .await
        .unwrap();
    let tok = token(&w, &plan, Some(&agent)).await;
    let x = w.server.payments(&w.builder);
    let x = x.x402();
    let pr = required(&plan, Some(&agent));

    let s = x
        .settle_permissions(&pr, &tok, Some(c(2)), Some("a"))
        .await
        .unwrap();
    assert!(s.success);
    assert_eq!(s.credits_redeemed, Some(c(2)));
    assert_eq!(s.remaining_balance, Some(c(8)));
    assert_eq!(s.payer.as_ref(), Some(&w.subscriber.address));
    assert_eq!(s.network, "eip155:84532");
    assert!(s.transaction.starts_with("0x") && s.transaction.len() == 66);

    let s = x
        .settle_permissions(&pr, &tok, Some(c(50)), Some("b"))
        .await
        .unwrap();
    assert_eq!(s.credits_redeemed, Some(c(3)), "clamped to max");
    let s = x
        .settle_permissions(&pr, &tok, None, Some("c"))
        .await
        .unwrap();
    assert_eq!(s.credits_redeemed, Some(c(3)), "absent means the plan max");
    // 2 left: a request of 0 means the plan max (3), not the min (1), so it fails.
    let s = x
        .settle_permissions(&pr, &tok, Some(Credits::ZERO), None)
        .await
        .unwrap();
    assert!(!s.success);
    assert_eq!(s.error_reason.as_deref(), Some("insufficient_balance"));
    let s = x
        .settle_permissions(&pr, &tok, Some(c(1)), None)
        .await
        .unwrap();
    assert_eq!(s.remaining_balance, Some(c(1)));
}

#[tokio::test]
async fn settle_on_a_fixed_plan_always_burns_the_fixed_amount() {
    let w = World::new().await;
    let plan = w.free_plan(get_fixed_credits_config(c(10), c(4))).await;
    w.server
        .payments(&w.subscriber)
        .plans()
        .order_plan(&plan)
        .await
        .unwrap();
    let tok = token(&w, &plan, None).await;
    let owner = w.server.payments(&w.builder);
    let pr = required(&plan, None);
    let s = owner
        .x402()
        .settle_permissions(&pr, &tok, Some(c(1)), Some("x"))
        .await
        .unwrap();
    assert_eq!(s.credits_redeemed, Some(c(4)));
    let s = owner
        .x402()
        .settle_permissions(&pr, &tok, Some(c(1)), Some("y"))
        .await
        .unwrap();
    assert_eq!(s.remaining_balance, Some(c(2)));

    // 2 left, 4 needed: a 200 with success false, no top-up, nothing spent.
    let resp = http()
        .post(w.url("/api/v1/x402/settle"))
        .bearer_auth(w.builder.api_key.expose())
        .json(&json!({"paymentRequired": pr, "x402AccessToken": tok.expose(), "maxAmount": 4, "agentRequestId": "z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["success"], false);
    assert_eq!(body["errorReason"], "insufficient_balance");
    assert_eq!(body["transaction"], "");
    assert_eq!(body["network"], "eip155:84532");
    assert_eq!(w.balance(&plan, &w.subscriber).await, c(2));

    // After a top-up the same request id can still settle (failures are not stored).
    w.server
        .payments(&w.subscriber)
        .plans()
        .order_plan(&plan)
        .await
        .unwrap();
    let s = owner
        .x402()
        .settle_permissions(&pr, &tok, Some(c(4)), Some("z"))
        .await
        .unwrap();
    assert!(s.success);
    assert_eq!(s.remaining_balance, Some(c(8)));
}

#[tokio::test]
async fn settle_is_idempotent_by_agent_request_id() {
    let (w, plan, agent) = setup(10).await;
    w.server
        .payments(&w.subscriber)
        .plans()
        .order_plan(&plan)
        .await
        .unwrap();
    let tok = token(&w, &plan, Some(&agent)).await;
    let owner = w.server.payments(&w.builder);
    let pr = required(&plan, Some(&agent));
    let v = owner
        .x402()
        .verify_permissions(&pr, &tok, Some(c(3)))
        .await
        .unwrap();
    let id = v.agent_request_id.unwrap();
    let first = owner
        .x402()
        .settle_permissions(&pr, &tok, Some(c(3)), Some(&id))
        .await
        .unwrap();
    for _ in 0..3 {
        let again = owner
            .x402()
            .settle_permissions(&pr, &tok, Some(c(3)), Some(&id))
            .await
            .unwrap();
        assert_eq!(again, first);
    }
    assert_eq!(w.balance(&plan, &w.subscriber).await, c(7));
    // Without an id every settle spends (v2 tokens are reusable).
    owner
        .x402()
        .settle_permissions(&pr, &tok, Some(c(1)), None)
        .await
        .unwrap();
    owner
        .x402()
        .settle_permissions(&pr, &tok, Some(c(1)), None)
        .await
        .unwrap();
    assert_eq!(w.balance(&plan, &w.subscriber).await, c(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_settles_never_overdraw_nor_double_spend() {
    let w = World::new().await;
    let plan = w.free_plan(get_fixed_credits_config(c(100), c(3))).await;
    w.server
        .payments(&w.subscriber)
        .plans()
        .order_plan(&plan)
        .await
        .unwrap();
    let tok = token(&w, &plan, None).await;
    let owner = w.server.payments(&w.builder);
    let pr = required(&plan, None);

    // 200 settles, 50 distinct ids (each sent 4 times), 3 credits each, balance 100:
    // exactly 33 ids can be paid for.
    let calls = (0..200).map(|i| {
        let (owner, pr, tok) = (owner.clone(), pr.clone(), tok.clone());
        tokio::spawn(async move {
            let id = format!("req-{}", i % 50);
            let s = owner
                .x402()
                .settle_permissions(&pr, &tok, Some(c(3)), Some(&id))
                .await;
            (id, s.expect("settle answers"))
        })
    });
    let results = futures_util::future::join_all(calls).await;
    let mut paid: HashMap<String, String> = HashMap::new();
    for r in results {
        let (id, s) = r.expect("task");
        if s.success {
            assert_eq!(s.credits_redeemed, Some(c(3)));
            let tx = paid.entry(id).or_insert_with(|| s.transaction.clone());
            assert_eq!(tx, &s.transaction, "one id, one transaction");
        } else {
            assert_eq!(s.error_reason.as_deref(), Some("insufficient_balance"));
        }
    }
    assert_eq!(paid.len(), 33);
    assert_eq!(w.balance(&plan, &w.subscriber).await, c(1));
    assert_eq!(w.server.stats().get("POST /api/v1/x402/settle"), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_redeems_never_overdraw_nor_double_spend() {
    let w = World::new().await;
    let plan = w.free_plan(get_fixed_credits_config(c(100), c(3))).await;
    w.server
        .payments(&w.subscriber)
        .plans()
        .order_plan(&plan)
        .await
        .unwrap();
    let owner = w.server.payments(&w.builder);
    let from = w.subscriber.address.clone();
    let calls = (0..200).map(|i| {
        let (owner, plan, from) = (owner.clone(), plan.clone(), from.clone());
        tokio::spawn(async move {
            let id = format!("red-{}", i % 50);
            (
                id.clone(),
                owner.plans().redeem_credits(&id, &plan, &from, c(3)).await,
            )
        })
    });
    let mut paid: HashMap<String, Option<String>> = HashMap::new();
    for r in futures_util::future::join_all(calls).await {
        let (id, result) = r.expect("task");
        if let Ok(ok) = result {
            let tx = paid.entry(id).or_insert_with(|| ok.tx_hash.clone());
            assert_eq!(tx, &ok.tx_hash);
        }
    }
    assert_eq!(paid.len(), 33);
    assert_eq!(w.balance(&plan, &w.subscriber).await, c(1));
}

#[tokio::test]
async fn legacy_access_tokens_verify_with_the_jwks() {
    let (w, plan, agent) = setup(10).await;
    let sub = w.server.payments(&w.subscriber);
    let creds = sub
        .x402()
        .get_agent_access_token(&plan, &agent)
        .await
        .unwrap();
    assert!(creds.proxies.is_empty());
    let jwks = sub.x402().get_access_token_jwks().await.unwrap();
    let jwk = &jwks.keys[0];
    let header = jsonwebtoken::decode_header(creds.access_token.expose()).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(header.kid.as_deref(), jwk.common.key_id.as_deref());
    let key = DecodingKey::from_jwk(jwk).unwrap();
    let claims = jsonwebtoken::decode::<AccessTokenClaims>(
        creds.access_token.expose(),
        &key,
        &Validation::new(Algorithm::EdDSA),
    )
    .unwrap()
    .claims;
    assert_eq!(claims.sub, w.subscriber.address);
    assert_eq!(claims.plan_id, plan);
    assert_eq!(claims.agent_id.as_ref(), Some(&agent));
    assert_eq!(claims.iss, w.server.state().issuer().to_string());
    let iat = claims.iat.unwrap();
    assert_eq!(claims.exp, iat + 3600);
    assert!(claims.jti.unwrap().starts_with("0x"));

    // The raw JWKS document.
    let raw: Value = http()
        .get(w.url(nvm_payments::client::JWKS_PATH))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let k = &raw["keys"][0];
    assert_eq!(
        (
            k["kty"].as_str(),
            k["crv"].as_str(),
            k["alg"].as_str(),
            k["use"].as_str()
        ),
        (Some("OKP"), Some("Ed25519"), Some("EdDSA"), Some("sig"))
    );

    // In-process tokens with a chosen expiry, e.g. already expired.
    let expired =
        w.server
            .issue_access_token(&w.subscriber.address, &plan, &agent, w.server.now() - 10);
    let mut strict = Validation::new(Algorithm::EdDSA);
    strict.leeway = 0;
    let err =
        jsonwebtoken::decode::<AccessTokenClaims>(expired.expose(), &key, &strict).unwrap_err();
    assert!(matches!(
        err.kind(),
        jsonwebtoken::errors::ErrorKind::ExpiredSignature
    ));

    let err = sub
        .x402()
        .get_agent_access_token(&"9".parse().unwrap(), &agent)
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some((404, "BCK.PROTOCOL.0002".into())));
    let err = sub
        .x402()
        .get_agent_access_token(&plan, &"9".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some((404, "BCK.PROTOCOL.0003".into())));
}

#[tokio::test]
async fn delegations_are_recorded_and_listed() {
    let (w, plan, _agent) = setup(10).await;
    let key = w.subscriber.api_key.expose();
    let resp = http()
        .post(w.url("/api/v1/delegation/create"))
        .bearer_auth(key)
        .json(&json!({"provider": "erc4337", "spendingLimitCents": 10000, "durationSecs": 3600, "currency": "usdc"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.unwrap();
    let id = created["delegationId"].as_str().unwrap().to_owned();
    let listed: Value = http()
        .get(w.url("/api/v1/delegation"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["spendingLimitCents"], 10000);
    let others: Value = http()
        .get(w.url("/api/v1/delegation"))
        .bearer_auth(w.builder.api_key.expose())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(others, json!([]));
    let resp = http()
        .post(w.url("/api/v1/delegation/create"))
        .bearer_auth(key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    expect_envelope(resp, 400, "BCK.COMMON.0002").await;

    let resp = http()
        .post(w.url("/api/v1/x402/permissions"))
        .bearer_auth(key)
        .json(&json!({"accepted": {"scheme": "nvm:erc4337", "network": "eip155:84532", "planId": plan, "extra": {}},
            "delegationConfig": {"delegationId": id}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    assert!(body["accessToken"].as_str().is_some_and(|t| !t.is_empty()));
}

#[tokio::test]
async fn client_delegations_round_trip() {
    use nvm_payments::types::CreateDelegationRequest;
    let w = World::new().await;
    let sub = w.server.payments(&w.subscriber);
    let created = sub
        .delegations()
        .create_delegation(&CreateDelegationRequest::new("stripe", 2_500, 3_600, "usd"))
        .await
        .unwrap();
    let list = sub.delegations().list_delegations().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, created.delegation_id);
    assert_eq!(list[0].spending_limit_cents, Some(2_500));
    assert_eq!(list[0].currency.as_deref(), Some("usd"));
    // Another account sees none of them.
    let owner = w.server.payments(&w.builder);
    assert!(owner
        .delegations()
        .list_delegations()
        .await
        .unwrap()
        .is_empty());
    assert!(sub
        .delegations()
        .list_payment_methods(Some("stripe"))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn v3_tokens_carry_a_nonce_and_settle_once() {
    use nvm_payments::client::X402TokenOptions;
    let (w, plan, agent) = setup(10).await;
    let sub = w.server.payments(&w.subscriber);
    sub.plans().order_plan(&plan).await.unwrap();
    let tok = sub
        .x402()
        .get_x402_access_token_for(
            &plan,
            X402TokenOptions {
                agent_id: Some(agent.clone()),
                token_version: Some(3),
                // The resource of `required()`, so verify's resource check passes.
                resource_url: Some("/ask".into()),
                http_verb: Some("post".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .access_token;
    let env: Value = serde_json::from_slice(&STANDARD.decode(tok.expose()).unwrap()).unwrap();
    let nonce = env["payload"]["authorization"]["nonce"].as_str().unwrap();
    assert_eq!(nonce.len(), 64, "32 random bytes, hex: {nonce}");
    assert!(nonce.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(env["accepted"]["extra"]["httpVerb"], "POST");
    assert_eq!(env["resource"]["url"], "/ask");

    // Two v3 tokens never share a nonce.
    let other = token_v3(&sub, &plan).await;
    let other: Value = serde_json::from_slice(&STANDARD.decode(other.expose()).unwrap()).unwrap();
    assert_ne!(other["payload"]["authorization"]["nonce"], nonce);

    let owner = w.server.payments(&w.builder);
    let pr = required(&plan, Some(&agent));
    // Verify never consumes it.
    for _ in 0..2 {
        let v = owner
            .x402()
            .verify_permissions(&pr, &tok, Some(c(1)))
            .await
            .unwrap();
        assert!(v.is_valid);
    }
    let first = owner
        .x402()
        .settle_permissions(&pr, &tok, Some(c(1)), Some("r-1"))
        .await
        .unwrap();
    assert!(first.success);
    // A retry of that settle answers the same; any other settle is refused.
    let retry = owner
        .x402()
        .settle_permissions(&pr, &tok, Some(c(1)), Some("r-1"))
        .await
        .unwrap();
    assert_eq!(retry, first);
    for id in [Some("r-2"), None] {
        let again = owner
            .x402()
            .settle_permissions(&pr, &tok, Some(c(1)), id)
            .await
            .unwrap();
        assert!(!again.success);
        assert!(
            again
                .error_reason
                .as_deref()
                .unwrap_or_default()
                .starts_with("BCK.X402.0059"),
            "{again:?}"
        );
    }
    assert_eq!(w.balance(&plan, &w.subscriber).await, c(9));

    // An edited nonce breaks the signature.
    let mut forged = env.clone();
    forged["payload"]["authorization"]["nonce"] = json!("00".repeat(32));
    let forged = AccessToken::new(STANDARD.encode(serde_json::to_vec(&forged).unwrap()));
    let err = owner
        .x402()
        .settle_permissions(&pr, &forged, Some(c(1)), None)
        .await
        .unwrap_err();
    assert_eq!(
        api_code(&err).map(|(_, code)| code).as_deref(),
        Some("BCK.X402.0005")
    );
}

async fn token_v3(p: &nvm_payments::Payments, plan: &PlanId) -> AccessToken {
    p.x402()
        .get_x402_access_token_for(
            plan,
            nvm_payments::client::X402TokenOptions {
                token_version: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .access_token
}

#[tokio::test]
async fn v3_resource_and_endpoint_allow_list_are_enforced_at_verify() {
    use nvm_payments::client::X402TokenOptions;
    let w = World::new().await;
    let plan = w
        .free_plan(get_dynamic_credits_config(c(10), c(1), c(3)))
        .await;
    let owner = w.server.payments(&w.builder);
    let agent = owner
        .agents()
        .register_agent(
            AgentMetadata::named("strict"),
            nvm_payments::types::AgentApiAttributes::with_endpoints(vec![
                nvm_payments::Endpoint::new("post", "https://agent.example/items/:id"),
            ]),
            vec![plan.clone()],
        )
        .await
        .unwrap();
    let sub = w.server.payments(&w.subscriber);
    sub.plans().order_plan(&plan).await.unwrap();
    let mint = |url: &'static str, verb: &'static str| {
        let sub = sub.clone();
        let plan = plan.clone();
        let agent = agent.clone();
        async move {
            sub.x402()
                .get_x402_access_token_for(
                    &plan,
                    X402TokenOptions {
                        agent_id: Some(agent),
                        token_version: Some(3),
                        resource_url: Some(url.into()),
                        http_verb: Some(verb.into()),
                        ..Default::default()
                    },
                )
                .await
                .unwrap()
                .access_token
        }
    };
    let pr_for = |url: &str| {
        build_payment_required(
            std::slice::from_ref(&plan),
            Environment::Custom,
            &PaymentRequiredOptions {
                endpoint: Some(url.into()),
                agent_id: Some(agent.clone()),
                http_verb: Some("POST".into()),
                ..Default::default()
            },
        )
    };

    // Bound to an allowed endpoint: valid, whatever the route's query string.
    let tok = mint("https://agent.example/items/7", "post").await;
    let v = owner
        .x402()
        .verify_permissions(
            &pr_for("https://agent.example/items/7?page=2"),
            &tok,
            Some(c(1)),
        )
        .await
        .unwrap();
    assert!(v.is_valid);

    // Another resource than the route's: BCK.X402.0013.
    let err = owner
        .x402()
        .verify_permissions(&pr_for("https://agent.example/items/8"), &tok, Some(c(1)))
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some((400, "BCK.X402.0013".to_owned())));

    // A resource outside the agent's endpoints, or the wrong verb: BCK.PROTOCOL.0031.
    for (url, verb) in [
        ("https://agent.example/admin", "post"),
        ("https://agent.example/items/7", "get"),
    ] {
        let tok = mint(url, verb).await;
        let err = owner
            .x402()
            .verify_permissions(&pr_for(url), &tok, Some(c(1)))
            .await
            .unwrap_err();
        assert_eq!(
            api_code(&err),
            Some((400, "BCK.PROTOCOL.0031".to_owned())),
            "{url} {verb}"
        );
    }

    // A v2 token (no resource.url) skips both checks, as on the platform.
    let v2 = token(&w, &plan, Some(&agent)).await;
    let v = owner
        .x402()
        .verify_permissions(&pr_for("https://agent.example/admin"), &v2, Some(c(1)))
        .await
        .unwrap();
    assert!(v.is_valid);
}

#[tokio::test]
async fn malformed_nevermined_version_is_a_400_on_every_route() {
    let w = World::new().await;
    for version in ["v1", "1", "1.x", ""] {
        let resp = http()
            .get(w.url("/"))
            .header("nevermined-version", version)
            .send()
            .await
            .unwrap();
        expect_envelope(resp, 400, "BCK.COMMON.0002").await;
    }
    let resp = http()
        .get(w.url("/"))
        .header("nevermined-version", "1.1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = http().get(w.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "an absent header is fine");
}
