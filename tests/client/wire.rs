//! The client's requests against the wire spec: every operation talks HTTP to a local
//! recording stub, and each JSON body is compared with a golden file in
//! `tests/golden/`. Error paths (BCK envelope, 404, malformed JSON, timeout, refused
//! connection) and the retry policy are tested here too.

use std::time::Duration;

use crate::support::stub::{api_key_for, Answer, Stub};
use nvm_payments::client::{Error, Page, PaymentRequiredOptions};
use nvm_payments::types::*;
use nvm_payments::{
    get_dynamic_credits_config, get_erc20_price_config, get_expirable_duration_config,
    get_fiat_price_config, get_fixed_credits_config, get_free_price_config,
    get_native_token_price_config, PaymentOptions, Payments,
};

const ME: &str = "0x2222222222222222222222222222222222222222";
const RECEIVER: &str = "0x1111111111111111111111111111111111111111";
const USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";

fn addr(s: &str) -> Address {
    s.parse().unwrap()
}

fn plan() -> PlanId {
    "101".parse().unwrap()
}

fn agent() -> AgentId {
    "202".parse().unwrap()
}

fn c(v: u64) -> Credits {
    Credits::from(v)
}

async fn client(stub: &Stub) -> Payments {
    let base = stub.serve().await;
    Payments::new(
        PaymentOptions::new(api_key_for(ME))
            .backend_url(base)
            .timeout(Duration::from_secs(5)),
    )
    .unwrap()
}

fn golden(name: &str) -> serde_json::Value {
    let path = format!("{}/tests/golden/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Asserts the body equals the golden file; a `"<nonce>"` there matches any decimal string.
fn assert_golden(seen: &crate::support::stub::Seen, name: &str) {
    let mut body = seen.json();
    if let Some(nonce) = body.get_mut("nonce") {
        let s = nonce.as_str().expect("nonce is a decimal string");
        assert!(
            s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty(),
            "{s}"
        );
        *nonce = "<nonce>".into();
    }
    assert_eq!(
        body,
        golden(name),
        "request body of {} differs from tests/golden/{name}.json",
        seen.path_and_query
    );
}

fn assert_authenticated(seen: &crate::support::stub::Seen) {
    let auth = seen
        .headers
        .get("authorization")
        .expect("Authorization sent");
    assert_eq!(
        auth.to_str().unwrap(),
        format!("Bearer {}", api_key_for(ME))
    );
    assert_eq!(seen.headers.get("nevermined-version").unwrap(), "1.1");
    assert_eq!(seen.headers.get("accept").unwrap(), "application/json");
}

fn assert_public(seen: &crate::support::stub::Seen) {
    assert!(
        seen.headers.get("authorization").is_none(),
        "public call sent credentials"
    );
    assert_eq!(seen.headers.get("nevermined-version").unwrap(), "1.1");
}

const BALANCE: &str = r#"{"planId":"101","planName":"Basic","planType":"credits","holderAddress":"0x2222222222222222222222222222222222222222","balance":"100","creditsContract":"0x3333333333333333333333333333333333333333","isSubscriber":true,"pricePerCredit":0.2}"#;
const OK_TX: &str = r#"{"success":true,"txHash":"0xabc"}"#;

#[tokio::test]
async fn balance_defaults_to_own_address_and_checks_others() {
    let stub = Stub::default();
    stub.json(
        "GET /api/v1/protocol/plans/101/balance/0x2222222222222222222222222222222222222222",
        200,
        BALANCE,
    );
    stub.json("GET /api/v1/protocol/plans/101/balance/0x4444444444444444444444444444444444444444", 200,
        r#"{"planId":"101","planName":"Basic","planType":"credits","holderAddress":"0x4444444444444444444444444444444444444444","balance":0,"creditsContract":null,"isSubscriber":false,"pricePerCredit":0.2,"extra":"ignored"}"#);
    let p = client(&stub).await;

    let mine = p.plans().get_plan_balance(&plan(), None).await.unwrap();
    assert_eq!(mine.balance, c(100));
    assert!(mine.is_subscriber);
    assert_eq!(mine.plan_type, AccessLimit::Credits);
    assert_public(&stub.last());

    let other = addr("0x4444444444444444444444444444444444444444");
    let theirs = p
        .plans()
        .get_plan_balance(&plan(), Some(&other))
        .await
        .unwrap();
    assert_eq!(theirs.balance, Credits::ZERO);
    assert!(!theirs.is_subscriber);
    assert_eq!(theirs.holder_address, other);
}

#[tokio::test]
async fn registers_plans_with_the_official_bodies() {
    let stub = Stub::default();
    stub.json("POST /api/v1/protocol/plans", 201, r#"{"planId":"101"}"#);
    let p = client(&stub).await;

    let meta = PlanMetadata {
        description: Some("100 requests".into()),
        ..PlanMetadata::named("Basic plan")
    };
    let price = get_erc20_price_config(c(20), addr(USDC), addr(RECEIVER));
    let id = p
        .plans()
        .register_credits_plan(meta, price, get_fixed_credits_config(c(100), c(1)))
        .await
        .unwrap();
    assert_eq!(id, plan());
    assert_authenticated(&stub.last());
    assert_golden(&stub.last(), "register_credits_plan");

    p.plans()
        .register_time_trial_plan(
            PlanMetadata::named("Trial day"),
            get_free_price_config(),
            get_expirable_duration_config(86_400),
        )
        .await
        .unwrap();
    assert_golden(&stub.last(), "register_time_trial_plan");

    p.plans()
        .register_credits_plan(
            PlanMetadata::named("Fiat"),
            get_fiat_price_config(c(2_000_000), addr(RECEIVER), "USD"),
            get_dynamic_credits_config(c(10), c(1), c(2)),
        )
        .await
        .unwrap();
    assert_golden(&stub.last(), "register_fiat_plan");

    // Client-side validation happens before anything is sent.
    let before = stub.seen().len();
    let err = p
        .plans()
        .register_time_plan(
            PlanMetadata::named("x"),
            get_free_price_config(),
            get_fixed_credits_config(c(1), c(1)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                field: "credits_config.duration_secs",
                ..
            }
        ),
        "{err}"
    );
    let err = p
        .plans()
        .register_credits_plan(
            PlanMetadata::named("x"),
            get_free_price_config(),
            get_dynamic_credits_config(c(1), c(3), c(2)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                field: "credits_config.min_amount",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(stub.seen().len(), before);
}

#[tokio::test]
async fn moves_credits_with_the_official_bodies() {
    let stub = Stub::default();
    for route in [
        "POST /api/v1/protocol/plans/101/order",
        "POST /api/v1/protocol/plans/mint",
        "POST /api/v1/protocol/plans/mintExpirable",
        "POST /api/v1/protocol/plans/burn",
        "POST /api/v1/protocol/plans/redeem",
    ] {
        stub.json(route, 201, OK_TX);
    }
    stub.json("POST /api/v1/fiat/stripe/payment", 201,
        r#"{"result":{"stripeCheckoutSessionId":"cs_1","checkoutLink":"http://127.0.0.1/dev/checkout/cs_1","linkCreatedAt":1,"linkExpiresAt":2}}"#);
    let p = client(&stub).await;
    let me = addr(ME);

    let order = p.plans().order_plan(&plan()).await.unwrap();
    assert!(order.success);
    assert_eq!(order.tx_hash.as_deref(), Some("0xabc"));
    let seen = stub.last();
    assert_authenticated(&seen);
    assert!(seen.body.is_empty(), "order sends no body");

    let checkout = p.plans().order_fiat_plan(&plan()).await.unwrap();
    assert_eq!(checkout.stripe_checkout_session_id, "cs_1");
    assert_golden(&stub.last(), "order_fiat");

    p.plans()
        .mint_plan_credits(&plan(), c(50), &me)
        .await
        .unwrap();
    assert_golden(&stub.last(), "mint");
    p.plans()
        .mint_plan_expirable(&plan(), c(5), &me, 3600)
        .await
        .unwrap();
    assert_golden(&stub.last(), "mint_expirable");
    p.plans().burn_credits(&plan(), c(3)).await.unwrap();
    assert_golden(&stub.last(), "burn");
    p.plans()
        .redeem_credits("req-1", &plan(), &me, c(2))
        .await
        .unwrap();
    assert_golden(&stub.last(), "redeem");
    for seen in stub.seen() {
        assert_authenticated(&seen);
    }
}

#[tokio::test]
async fn reads_plans_and_agents() {
    let stub = Stub::default();
    let plan_json = r#"{"id":"101","metadata":{"main":{"name":"Basic"},"plan":{"accessLimit":"credits"}},"registry":{"owner":"0x1111111111111111111111111111111111111111","price":{"tokenAddress":"0x0000000000000000000000000000000000000000","amounts":["5"],"receivers":["0x1111111111111111111111111111111111111111"],"isCrypto":true},"credits":{"amount":"100","minAmount":1,"maxAmount":"1","durationSecs":null}}}"#;
    let agent_json = r#"{"id":"202","metadata":{"main":{"name":"Agent"}},"registry":{"owner":"0x1111111111111111111111111111111111111111","plans":["101"]}}"#;
    stub.json("GET /api/v1/protocol/plans/101", 200, plan_json);
    stub.json(
        "GET /api/v1/protocol/plans/101/agents",
        200,
        &format!(r#"{{"total":1,"page":1,"offset":10,"agents":[{agent_json}]}}"#),
    );
    stub.json("GET /api/v1/protocol/agents/202", 200, agent_json);
    stub.json(
        "GET /api/v1/protocol/agents/202/plans",
        200,
        &format!(r#"{{"total":1,"page":1,"offset":10,"plans":[{plan_json}]}}"#),
    );
    stub.json(
        "GET /api/v1/protocol/plans",
        200,
        &format!(r#"{{"total":1,"page":2,"offset":5,"plans":[{plan_json}]}}"#),
    );
    let p = client(&stub).await;

    let got = p.plans().get_plan(&plan()).await.unwrap();
    assert_eq!(got.registry.credits.amount, c(100));
    assert_eq!(got.registry.credits.min_amount, c(1));
    assert_eq!(got.metadata.plan.access_limit, Some(AccessLimit::Credits));
    assert_public(&stub.last());

    let agents = p
        .plans()
        .get_plan_agents(&plan(), Page::default())
        .await
        .unwrap();
    assert_eq!(agents.agents[0].id, agent());
    assert_eq!(
        stub.last().path_and_query,
        "/api/v1/protocol/plans/101/agents?page=1&offset=10&pageSize=10"
    );
    assert_public(&stub.last());

    let a = p.agents().get_agent(&agent()).await.unwrap();
    assert_eq!(a.registry.plans, vec![plan()]);
    assert_public(&stub.last());
    let plans = p
        .agents()
        .get_agent_plans(&agent(), Page::default())
        .await
        .unwrap();
    assert_eq!(plans.plans.len(), 1);
    assert_public(&stub.last());

    let mine = p
        .plans()
        .get_plans(Page { page: 2, size: 5 })
        .await
        .unwrap();
    assert_eq!(mine.page, 2);
    assert_authenticated(&stub.last());
}

#[tokio::test]
async fn registers_agents_with_verb_keyed_endpoints() {
    let stub = Stub::default();
    stub.json(
        "POST /api/v1/protocol/agents",
        201,
        r#"{"data":{"agentId":"202"}}"#,
    );
    stub.json(
        "POST /api/v1/protocol/agents/plans",
        201,
        r#"{"data":{"agentId":"202","planId":"101"},"txHash":"0x1"}"#,
    );
    stub.json("POST /api/v1/protocol/agents/202/plan/101", 201, OK_TX);
    stub.json("DELETE /api/v1/protocol/agents/202/plan/101", 200, r#"{}"#);
    let p = client(&stub).await;

    let api = AgentApiAttributes {
        open_endpoints: vec!["https://agent.example/health".into()],
        ..AgentApiAttributes::with_endpoints(vec![Endpoint::new(
            "post",
            "https://agent.example/api/v1/agents/:agentId/tasks",
        )])
    };
    let meta = AgentMetadata {
        tags: Some(vec!["weather".into()]),
        ..AgentMetadata::named("Weather agent")
    };
    let id = p
        .agents()
        .register_agent(meta, api, vec![plan()])
        .await
        .unwrap();
    assert_eq!(id, agent());
    assert_golden(&stub.last(), "register_agent");

    let both = p
        .agents()
        .register_agent_and_plan(
            AgentMetadata::named("Agent"),
            AgentApiAttributes::with_endpoints(vec![Endpoint::new(
                "GET",
                "https://agent.example/ask",
            )]),
            PlanMetadata::named("Agent plan"),
            get_native_token_price_config(c(5), addr(RECEIVER)),
            get_dynamic_credits_config(c(10), c(1), c(2)),
        )
        .await
        .unwrap();
    assert_eq!(both.data.plan_id, plan());
    assert_eq!(both.tx_hash.as_deref(), Some("0x1"));
    assert_golden(&stub.last(), "register_agent_and_plan");

    p.agents()
        .add_plan_to_agent(&plan(), &agent())
        .await
        .unwrap();
    assert_authenticated(&stub.last());
    // `success` absent reads as true, as the SDKs read it.
    let removed = p
        .agents()
        .remove_plan_from_agent(&plan(), &agent())
        .await
        .unwrap();
    assert!(removed.success);
    assert_eq!(stub.last().method, "DELETE");
}

#[tokio::test]
async fn x402_tokens_verify_and_settle() {
    let stub = Stub::default();
    stub.json(
        "POST /api/v1/x402/permissions",
        201,
        r#"{"accessToken":"dG9rZW4="}"#,
    );
    stub.json("POST /api/v1/x402/verify", 201, r#"{"isValid":true,"payer":"0x2222222222222222222222222222222222222222","agentRequestId":"arId-1","network":"eip155:84532"}"#);
    stub.json("POST /api/v1/x402/settle", 201, r#"{"success":true,"transaction":"0xt","network":"eip155:84532","creditsRedeemed":"2","remainingBalance":98}"#);
    stub.json(
        "GET /api/v1/protocol/token/101/202",
        200,
        r#"{"accessToken":"eyJ.a.b","proxies":null}"#,
    );
    stub.json("GET /.well-known/jwks.json", 200, r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"k1","alg":"EdDSA","use":"sig"}]}"#);
    let p = client(&stub).await;

    let token = p
        .x402()
        .get_x402_access_token(&plan(), Some(&agent()))
        .await
        .unwrap()
        .access_token;
    assert_golden(&stub.last(), "permissions");
    assert_authenticated(&stub.last());
    assert!(
        !format!("{token:?}").contains("dG9rZW4"),
        "token leaked into Debug"
    );

    let pr = p.x402().build_payment_required(
        &plan(),
        &PaymentRequiredOptions {
            endpoint: Some("/ask".into()),
            agent_id: Some(agent()),
            http_verb: Some("post".into()),
            mime_type: Some("application/json".into()),
            ..Default::default()
        },
    );
    let v = p
        .x402()
        .verify_permissions(&pr, &token, Some(c(2)))
        .await
        .unwrap();
    assert!(v.is_valid);
    assert_eq!(v.agent_request_id.as_deref(), Some("arId-1"));
    assert_golden(&stub.last(), "verify");
    assert_authenticated(&stub.last());

    let s = p
        .x402()
        .settle_permissions(&pr, &token, Some(c(2)), Some("arId-1"))
        .await
        .unwrap();
    assert_eq!(s.credits_redeemed, Some(c(2)));
    assert_eq!(s.remaining_balance, Some(c(98)));
    assert_golden(&stub.last(), "settle");

    let legacy = p
        .x402()
        .get_agent_access_token(&plan(), &agent())
        .await
        .unwrap();
    assert_eq!(legacy.access_token.expose(), "eyJ.a.b");
    assert!(legacy.proxies.is_empty());
    assert_authenticated(&stub.last());

    let jwks = p.x402().get_access_token_jwks().await.unwrap();
    assert_eq!(jwks.keys.len(), 1);
    assert_public(&stub.last());
}

#[tokio::test]
async fn backend_errors_arrive_typed() {
    let stub = Stub::default();
    stub.json("POST /api/v1/protocol/plans/101/order", 401,
        r#"{"uuid":"e-1","code":"BCK.APIKEY.0004","message":"Invalid Nevermined API Key","hint":"create a new key","date":"2026-02-02T09:10:59.534Z"}"#);
    stub.json(
        "GET /api/v1/protocol/plans/999",
        404,
        r#"{"message":"Cannot GET /x","error":"Not Found","statusCode":404}"#,
    );
    stub.json(
        "POST /api/v1/protocol/plans/mint",
        400,
        r#"{"errorCode":"BCK.COMMON.0026","message":["amount must be a uint256"]}"#,
    );
    let p = client(&stub).await;

    let err = p.plans().order_plan(&plan()).await.unwrap_err();
    assert_eq!(err.code(), Some("BCK.APIKEY.0004"));
    assert_eq!(err.status().map(|s| s.as_u16()), Some(401));
    let text = err.to_string();
    assert!(
        text.contains("Invalid Nevermined API Key") && text.contains("create a new key"),
        "{text}"
    );
    assert!(!text.contains("eyJ"), "error leaks the key: {text}");
    assert!(!err.is_transient());

    let err = p
        .plans()
        .get_plan(&"999".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("http_404"));
    let err = p
        .plans()
        .mint_plan_credits(&plan(), c(1), &addr(ME))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("BCK.COMMON.0026"));
    assert!(err.to_string().contains("amount must be a uint256"));
}

#[tokio::test]
async fn malformed_answers_name_the_field() {
    let stub = Stub::default();
    stub.json("GET /api/v1/protocol/plans/101/balance/0x2222222222222222222222222222222222222222", 200,
        r#"{"planId":"101","planName":"p","planType":"credits","holderAddress":"0x2222222222222222222222222222222222222222","balance":"-5","isSubscriber":true,"pricePerCredit":1}"#);
    stub.json(
        "GET /api/v1/protocol/plans/101",
        200,
        "<html>not json</html>",
    );
    let p = client(&stub).await;

    match p.plans().get_plan_balance(&plan(), None).await.unwrap_err() {
        Error::Decode { path, endpoint, .. } => {
            assert_eq!(path, "balance");
            assert!(endpoint.starts_with("GET /api/v1/protocol/plans/101/balance/"));
        }
        other => panic!("expected a decode error, got {other}"),
    }
    assert!(matches!(
        p.plans().get_plan(&plan()).await.unwrap_err(),
        Error::Decode { .. }
    ));
}

#[tokio::test]
async fn timeouts_and_refused_connections_are_distinct() {
    let stub = Stub::default();
    stub.answer("POST /api/v1/protocol/plans/101/order", Answer::Hang);
    let base = stub.serve().await;
    let p = Payments::new(
        PaymentOptions::new(api_key_for(ME))
            .backend_url(base)
            .timeout(Duration::from_millis(300)),
    )
    .unwrap();
    let err = p.plans().order_plan(&plan()).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(
        err.is_outcome_unknown(),
        "a timed-out order may have happened"
    );

    // A port that nobody listens on: bind, read the port, close.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let p = Payments::new(
        PaymentOptions::new(api_key_for(ME))
            .backend_url(format!("http://127.0.0.1:{port}"))
            .max_retries(0),
    )
    .unwrap();
    let err = p.plans().order_plan(&plan()).await.unwrap_err();
    match &err {
        Error::Transport { connect, .. } => assert!(*connect, "{err}"),
        other => panic!("expected a transport error, got {other}"),
    }
    assert!(!err.is_outcome_unknown(), "nothing reached the backend");
}

#[tokio::test]
async fn only_idempotent_reads_are_retried() {
    let stub = Stub::default();
    let route = "GET /api/v1/protocol/plans/101/balance/0x2222222222222222222222222222222222222222";
    stub.json(route, 503, r#"{"code":"BCK.COMMON.0001","message":"busy"}"#);
    stub.json(route, 429, r#"{"message":"slow down"}"#);
    stub.json(route, 200, BALANCE);
    stub.json(
        "POST /api/v1/protocol/plans/101/order",
        503,
        r#"{"message":"busy"}"#,
    );
    let p = client(&stub).await;

    let b = p.plans().get_plan_balance(&plan(), None).await.unwrap();
    assert_eq!(b.balance, c(100));
    assert_eq!(stub.seen().len(), 3, "two retries then success");

    let err = p.plans().order_plan(&plan()).await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(503));
    let orders = stub.seen().iter().filter(|s| s.method == "POST").count();
    assert_eq!(orders, 1, "an order is never retried blindly");
}

#[test]
fn invalid_keys_fail_at_construction() {
    for key in ["", "sandbox:not-a-jwt", "local:a.b"] {
        let err = Payments::new(PaymentOptions::new(key)).unwrap_err();
        assert!(matches!(err, Error::InvalidApiKey(_)), "{err}");
    }
}

#[tokio::test]
async fn every_request_says_its_content_type() {
    let stub = Stub::default();
    stub.json(
        "GET /api/v1/protocol/plans/101/balance/0x2222222222222222222222222222222222222222",
        200,
        BALANCE,
    );
    stub.json("POST /api/v1/protocol/plans/101/order", 201, OK_TX);
    stub.json("DELETE /api/v1/protocol/agents/202/plan/101", 200, "{}");
    stub.json("POST /api/v1/protocol/plans/burn", 201, OK_TX);
    let p = client(&stub).await;
    p.plans().get_plan_balance(&plan(), None).await.unwrap();
    p.plans().order_plan(&plan()).await.unwrap();
    p.agents()
        .remove_plan_from_agent(&plan(), &agent())
        .await
        .unwrap();
    p.plans().burn_credits(&plan(), c(1)).await.unwrap();
    let seen = stub.seen();
    assert_eq!(seen.len(), 4);
    for s in seen {
        assert_eq!(
            s.headers.get("content-type").map(|v| v.to_str().unwrap()),
            Some("application/json"),
            "{}",
            s.path_and_query
        );
    }
}

#[tokio::test]
async fn listings_take_sort_and_organisation_options() {
    use nvm_payments::client::{ListOptions, SortOrder};
    let stub = Stub::default();
    let empty_plans = r#"{"total":0,"page":1,"offset":10,"plans":[]}"#;
    let agent_json = r#"{"id":"202","metadata":{"main":{"name":"Agent"}},"registry":{"owner":"0x2222222222222222222222222222222222222222","plans":["101"]}}"#;
    stub.json("GET /api/v1/protocol/plans", 200, empty_plans);
    stub.json(
        "GET /api/v1/protocol/agents",
        200,
        &format!(r#"{{"total":1,"page":1,"offset":100,"agents":[{agent_json}]}}"#),
    );
    stub.json("GET /api/v1/protocol/agents/202/plans", 200, empty_plans);
    stub.json(
        "GET /api/v1/protocol/plans/101/agents",
        200,
        r#"{"total":0,"agents":[]}"#,
    );
    let p = client(&stub).await;
    let opts = ListOptions::from(Page { page: 2, size: 20 })
        .sort_by("created at")
        .sort_order(SortOrder::Asc)
        .org_id("org/1");

    p.plans().get_plans(opts.clone()).await.unwrap();
    assert_eq!(
        stub.last().path_and_query,
        "/api/v1/protocol/plans?page=2&offset=20&pageSize=20&sortBy=created%20at&sortOrder=asc&orgId=org%2F1"
    );
    assert_authenticated(&stub.last());

    // "List my agents": the caller's own, authenticated.
    let mine = p.agents().get_agents(opts.clone()).await.unwrap();
    assert_eq!(mine.agents[0].id, agent());
    assert_eq!(
        stub.last().path_and_query,
        "/api/v1/protocol/agents?page=2&offset=20&pageSize=20&sortBy=created%20at&sortOrder=asc&orgId=org%2F1"
    );
    assert_authenticated(&stub.last());
    p.agents().get_agents(Page::default()).await.unwrap();
    assert_eq!(
        stub.last().path_and_query,
        "/api/v1/protocol/agents?page=1&offset=10&pageSize=10"
    );

    // The public listings sort too, but carry no orgId (the SDKs send none there).
    p.agents()
        .get_agent_plans(&agent(), opts.clone())
        .await
        .unwrap();
    assert_eq!(
        stub.last().path_and_query,
        "/api/v1/protocol/agents/202/plans?page=2&offset=20&pageSize=20&sortBy=created%20at&sortOrder=asc"
    );
    assert_public(&stub.last());
    p.plans().get_plan_agents(&plan(), opts).await.unwrap();
    assert_eq!(
        stub.last().path_and_query,
        "/api/v1/protocol/plans/101/agents?page=2&offset=20&pageSize=20&sortBy=created%20at&sortOrder=asc"
    );
}

#[tokio::test]
async fn updates_agent_metadata_and_omits_empty_endpoints() {
    let stub = Stub::default();
    stub.json(
        "PUT /api/v1/protocol/agents/202",
        200,
        r#"{"success":true}"#,
    );
    stub.json(
        "POST /api/v1/protocol/agents",
        201,
        r#"{"data":{"agentId":"202"}}"#,
    );
    let p = client(&stub).await;
    let meta = AgentMetadata {
        description: Some("now with rain".into()),
        ..AgentMetadata::named("Weather agent v2")
    };
    let api = AgentApiAttributes::with_endpoints(vec![Endpoint::new(
        "post",
        "https://agent.example/ask",
    )]);
    let done = p
        .agents()
        .update_agent_metadata(&agent(), meta, api)
        .await
        .unwrap();
    assert!(done.success);
    assert_eq!(stub.last().method, "PUT");
    assert_golden(&stub.last(), "update_agent");
    assert_authenticated(&stub.last());

    p.agents()
        .register_agent(
            AgentMetadata::named("Open agent"),
            AgentApiAttributes::default(),
            vec![plan()],
        )
        .await
        .unwrap();
    assert_golden(&stub.last(), "register_agent_no_endpoints");
    assert!(stub.last().json()["agentApiAttributes"]
        .get("endpoints")
        .is_none());
}

#[tokio::test]
async fn per_call_organisation_header() {
    let stub = Stub::default();
    stub.json("GET /api/v1/protocol/plans", 200, r#"{"plans":[]}"#);
    stub.json(
        "GET /api/v1/protocol/plans/101/balance/0x2222222222222222222222222222222222222222",
        200,
        BALANCE,
    );
    let p = client(&stub).await;
    p.plans().get_plans(Page::default()).await.unwrap();
    assert!(stub.last().headers.get("x-current-org-id").is_none());

    let org = p.for_organization("org-42").unwrap();
    org.plans().get_plans(Page::default()).await.unwrap();
    assert_eq!(
        stub.last().headers.get("x-current-org-id").unwrap(),
        "org-42"
    );
    assert_authenticated(&stub.last());
    // Public calls carry no organisation, like no key.
    org.plans().get_plan_balance(&plan(), None).await.unwrap();
    assert!(stub.last().headers.get("x-current-org-id").is_none());
    // The original client is unchanged.
    p.plans().get_plans(Page::default()).await.unwrap();
    assert!(stub.last().headers.get("x-current-org-id").is_none());

    assert!(p.for_organization("  ").is_err());
    assert!(p.for_organization("bad\nvalue").is_err());
}

#[tokio::test]
async fn delegations_and_payment_methods() {
    let stub = Stub::default();
    stub.json(
        "POST /api/v1/delegation/create",
        201,
        r#"{"delegationId":"3f1c0a52-0000-4000-8000-000000000000"}"#,
    );
    stub.json(
        "GET /api/v1/delegation",
        200,
        r#"[{"id":"d-1","spendingLimitCents":5000,"spentCents":"n/a","currency":"usd","status":"active"}]"#,
    );
    stub.json(
        "GET /api/v1/payment-methods",
        200,
        r#"[{"id":"pm_123","type":"card","brand":"visa","last4":"4242","expMonth":12,"expYear":2030,"provider":"stripe"}]"#,
    );
    let p = client(&stub).await;
    let mut req = CreateDelegationRequest::new("stripe", 5_000, 86_400, "usd");
    req.provider_payment_method_id = Some("pm_123".into());
    req.plan_id = Some(plan());
    let created = p.delegations().create_delegation(&req).await.unwrap();
    assert_eq!(
        created.delegation_id,
        "3f1c0a52-0000-4000-8000-000000000000"
    );
    assert_golden(&stub.last(), "create_delegation");
    assert_authenticated(&stub.last());

    let list = p.delegations().list_delegations().await.unwrap();
    assert_eq!(list[0].id, "d-1");
    assert_eq!(list[0].spending_limit_cents, Some(5000));
    assert_eq!(list[0].spent_cents, None, "unreadable reads as None");
    assert_eq!(stub.last().path_and_query, "/api/v1/delegation");
    assert_authenticated(&stub.last());

    let methods = p
        .delegations()
        .list_payment_methods(Some("stripe"))
        .await
        .unwrap();
    assert_eq!(methods[0].last4, "4242");
    assert_eq!(methods[0].kind.as_deref(), Some("card"));
    assert_eq!(
        stub.last().path_and_query,
        "/api/v1/payment-methods?provider=stripe"
    );
    assert_authenticated(&stub.last());

    let blank = CreateDelegationRequest::new("stripe", 1, 1, " ");
    assert!(matches!(
        p.delegations().create_delegation(&blank).await,
        Err(Error::InvalidArgument {
            field: "currency",
            ..
        })
    ));
}

#[tokio::test]
async fn token_request_carries_delegation_version_resource_and_verb() {
    use nvm_payments::client::X402TokenOptions;
    let stub = Stub::default();
    stub.json(
        "POST /api/v1/x402/permissions",
        201,
        r#"{"accessToken":"dG9rZW4"}"#,
    );
    let p = client(&stub).await;
    let opts = X402TokenOptions {
        agent_id: Some(agent()),
        scheme: Some(SCHEME_CARD_DELEGATION.into()),
        delegation: Some(DelegationConfig::existing(
            "3f1c0a52-0000-4000-8000-000000000000",
        )),
        token_version: Some(3),
        resource_url: Some("https://agent.example/ask".into()),
        http_verb: Some("post".into()),
        ..Default::default()
    };
    p.x402()
        .get_x402_access_token_for(&plan(), opts.clone())
        .await
        .unwrap();
    assert_golden(&stub.last(), "permissions_v3_card");
    assert_authenticated(&stub.last());
    let sent = stub.seen().len();

    // Refused locally, before any call: a card token without a delegation, a blank
    // delegation id, a version the backend does not mint.
    for (bad, field) in [
        (
            X402TokenOptions {
                delegation: None,
                ..opts.clone()
            },
            "delegation",
        ),
        (
            X402TokenOptions {
                delegation: Some(DelegationConfig::existing("  ")),
                ..opts.clone()
            },
            "delegation.delegation_id",
        ),
        (
            X402TokenOptions {
                token_version: Some(4),
                ..opts.clone()
            },
            "token_version",
        ),
    ] {
        match p.x402().get_x402_access_token_for(&plan(), bad).await {
            Err(Error::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    assert_eq!(stub.seen().len(), sent, "nothing was sent");

    // A crypto token may go without a delegation (as payments-py allows).
    p.x402()
        .get_x402_access_token_for(&plan(), X402TokenOptions::default())
        .await
        .unwrap();
    let body = stub.last().json();
    assert!(body.get("delegationConfig").is_none());
    assert!(body.get("tokenVersion").is_none());
    assert_eq!(body["accepted"]["scheme"], "nvm:erc4337");
}
