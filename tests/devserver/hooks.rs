//! Devserver test hooks over loopback HTTP: faults, clock, stats; plus the Nest-style
//! 404, deployment info, and starting/stopping the server.
#![cfg(feature = "devserver")]

use crate::support::devserver_world::{api_code, c, expect_envelope, http, World};
use nvm_payments::client::{build_payment_required, Environment, PaymentRequiredOptions};
use nvm_payments::devserver::{DevServer, DevServerState, Fault, StatsSnapshot};
use nvm_payments::get_fixed_credits_config;
use serde_json::{json, Value};

#[tokio::test]
async fn fault_status_limited_to_n_requests() {
    let w = World::new().await;
    let plan = w.free_plan(get_fixed_credits_config(c(10), c(1))).await;
    w.server.faults().set(
        Fault::new("/api/v1/protocol/plans")
            .method("GET")
            .status(503)
            .times(2),
    );
    let p = w.server.payments(&w.builder);
    // GETs are retried by the client (2 retries): the two faulted answers are absorbed.
    let plan_obj = p.plans().get_plan(&plan).await.expect("third try succeeds");
    assert_eq!(plan_obj.id, plan);
    assert_eq!(
        w.server.stats().get("GET /api/v1/protocol/plans/{planId}"),
        3
    );

    let resp = http()
        .get(w.url(&format!("/api/v1/protocol/plans/{plan}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the fault is used up");

    w.server
        .faults()
        .set(Fault::new("/api/v1/protocol/plans/mint").status(500));
    let err = p
        .plans()
        .mint_plan_credits(&plan, c(1), &w.subscriber.address)
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some((500, "BCK.DEV.0001".into())));
    assert_eq!(
        w.balance(&plan, &w.subscriber).await,
        c(0),
        "the handler did not run"
    );
    w.server.faults().clear();
    p.plans()
        .mint_plan_credits(&plan, c(1), &w.subscriber.address)
        .await
        .unwrap();
}

#[tokio::test]
async fn dropped_connection_before_and_after_the_handler() {
    let w = World::new().await;
    let plan = w.free_plan(get_fixed_credits_config(c(10), c(2))).await;
    w.server
        .payments(&w.subscriber)
        .plans()
        .order_plan(&plan)
        .await
        .unwrap();
    let tok = w
        .server
        .payments(&w.subscriber)
        .x402()
        .get_x402_access_token(&plan, None)
        .await
        .unwrap()
        .access_token;
    let owner = w.server.payments(&w.builder);
    let pr = build_payment_required(
        std::slice::from_ref(&plan),
        Environment::Custom,
        &PaymentRequiredOptions::default(),
    );

    // Dropped before the handler: a transport error, nothing spent.
    w.server
        .faults()
        .set(Fault::new("/api/v1/x402/settle").drop_connection().times(1));
    let err = owner
        .x402()
        .settle_permissions(&pr, &tok, Some(c(2)), Some("req-1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, nvm_payments::client::Error::Transport { .. }),
        "{err:?}"
    );
    assert_eq!(w.balance(&plan, &w.subscriber).await, c(10));

    // Dropped after the handler: the ledger changed, the caller never heard.
    w.server.faults().set(
        Fault::new("/api/v1/x402/settle")
            .drop_connection()
            .after_handler()
            .times(1),
    );
    let err = owner
        .x402()
        .settle_permissions(&pr, &tok, Some(c(2)), Some("req-1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, nvm_payments::client::Error::Transport { .. }),
        "{err:?}"
    );
    assert_eq!(w.balance(&plan, &w.subscriber).await, c(8));
    // The retry with the same request id returns the first result and spends nothing.
    let retry = owner
        .x402()
        .settle_permissions(&pr, &tok, Some(c(2)), Some("req-1"))
        .await
        .unwrap();
    assert!(retry.success);
    assert_eq!(retry.remaining_balance, Some(c(8)));
    assert_eq!(w.balance(&plan, &w.subscriber).await, c(8));
    assert!(
        w.server.faults().list().is_empty(),
        "times: 1 faults are used up"
    );
}

#[tokio::test]
async fn latency_fault_delays_but_answers() {
    let w = World::new().await;
    w.server
        .faults()
        .set(Fault::new("/.well-known").latency_ms(20).times(1));
    let resp = http()
        .get(w.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(w.server.faults().list().is_empty());
}

#[tokio::test]
async fn faults_over_http() {
    let w = World::new().await;
    let resp = http()
        .post(w.url("/dev/faults"))
        .json(&json!({"route": "/api/v1/protocol/plans", "method": "POST", "status": 429, "times": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let listed: Value = http()
        .get(w.url("/dev/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["faults"][0]["status"], 429);
    let err = w
        .server
        .payments(&w.builder)
        .plans()
        .register_credits_plan(
            nvm_payments::types::PlanMetadata::named("x"),
            nvm_payments::get_free_price_config(),
            get_fixed_credits_config(c(1), c(1)),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some((429, "BCK.DEV.0001".into())));

    http()
        .post(w.url("/dev/faults"))
        .json(&json!({"route": "/api", "drop": true}))
        .send()
        .await
        .unwrap();
    // hyper may or may not send the head before the body fails: either way no
    // complete response arrives.
    let outcome = async {
        http()
            .get(w.url("/api/v1/protocol/plans/1"))
            .send()
            .await?
            .bytes()
            .await
    }
    .await;
    assert!(outcome.is_err(), "{outcome:?}");
    let resp = http().delete(w.url("/dev/faults")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "/dev routes are never faulted");
    let resp = http()
        .get(w.url("/api/v1/protocol/plans/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    let resp = http()
        .post(w.url("/dev/faults"))
        .json(&json!({"route": "no-slash"}))
        .send()
        .await
        .unwrap();
    expect_envelope(resp, 400, "BCK.COMMON.0002").await;
    let resp = http()
        .post(w.url("/dev/faults"))
        .json(&json!({"status": 500}))
        .send()
        .await
        .unwrap();
    expect_envelope(resp, 400, "BCK.COMMON.0001").await;
}

#[tokio::test]
async fn a_dropped_connection_is_a_transport_error_for_raw_clients() {
    let w = World::new().await;
    w.server
        .faults()
        .set(Fault::new("/").method("GET").drop_connection());
    let outcome = async {
        let resp = http().get(w.url("/")).send().await?;
        resp.bytes().await
    }
    .await;
    assert!(outcome.is_err(), "no complete response: {outcome:?}");
}

#[tokio::test]
async fn clock_over_http() {
    let w = World::new().await;
    let before: Value = http()
        .get(w.url("/dev/clock"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resp = http()
        .post(w.url("/dev/clock/advance"))
        .json(&json!({"seconds": 3600}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let after: Value = resp.json().await.unwrap();
    assert!(after["now"].as_u64().unwrap() >= before["now"].as_u64().unwrap() + 3600);
    assert_eq!(after["offsetSecs"], 3600);
    w.server.advance_clock(1);
    assert_eq!(w.server.state().clock().offset(), 3601);
    let resp = http()
        .post(w.url("/dev/clock/advance"))
        .json(&json!({"seconds": -5}))
        .send()
        .await
        .unwrap();
    expect_envelope(resp, 400, "BCK.COMMON.0001").await;
}

#[tokio::test]
async fn stats_count_per_route_template() {
    let w = World::new().await;
    let plan = w.free_plan(get_fixed_credits_config(c(10), c(1))).await;
    w.server.reset_stats();
    let sub = w.server.payments(&w.subscriber);
    sub.plans().get_plan_balance(&plan, None).await.unwrap();
    sub.plans()
        .get_plan_balance(&plan, Some(&w.builder.address))
        .await
        .unwrap();
    sub.plans().order_plan(&plan).await.unwrap();
    http().post(w.url("/nowhere")).send().await.unwrap();

    let stats = w.server.stats();
    assert_eq!(
        stats.get("GET /api/v1/protocol/plans/{planId}/balance/{holder}"),
        2
    );
    assert_eq!(stats.get("POST /api/v1/protocol/plans/{planId}/order"), 1);
    assert_eq!(
        stats.total(),
        3,
        "unknown routes are not counted: {stats:?}"
    );

    let over_http: StatsSnapshot = http()
        .get(w.url("/dev/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(over_http, stats, "GET /dev/stats is not itself counted");
    let raw: Value = http()
        .get(w.url("/dev/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        raw["routes"]["POST /api/v1/protocol/plans/{planId}/order"],
        1
    );

    let resp = http().delete(w.url("/dev/stats")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(w.server.stats().total(), 0);
}

#[tokio::test]
async fn unknown_routes_answer_like_nest() {
    let w = World::new().await;
    let resp = http()
        .post(w.url("/api/v1/protocol/plans/redeem/extra"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"message": "Cannot POST /api/v1/protocol/plans/redeem/extra", "error": "Not Found", "statusCode": 404})
    );
    let resp = http()
        .patch(w.url("/api/v1/x402/verify"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "a wrong method is a 404 too");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["message"], "Cannot PATCH /api/v1/x402/verify");
}

#[tokio::test]
async fn deployment_info_lists_the_contracts() {
    let w = World::new().await;
    let info: Value = http()
        .get(w.url("/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let contracts = info["deployment"]["contracts"].as_object().unwrap();
    assert_eq!(contracts.len(), 19);
    for name in [
        "PayAsYouGoTemplate",
        "NFT1155Credits",
        "PaymentsVault",
        "TransferCreditsCondition",
    ] {
        let addr = contracts[name].as_str().unwrap();
        assert!(addr.starts_with("0x") && addr.len() == 42, "{name}: {addr}");
    }
}

#[tokio::test]
async fn shutdown_is_graceful_and_drop_stops_the_server() {
    let server = DevServer::start().await.unwrap();
    let url = server.base_url();
    assert!(url.starts_with("http://127.0.0.1:"));
    assert_eq!(server.addr().ip().to_string(), "127.0.0.1");
    assert_eq!(
        http().get(format!("{url}/")).send().await.unwrap().status(),
        200
    );
    server.shutdown().await.unwrap();
    assert!(reqwest::Client::new()
        .get(format!("{url}/"))
        .send()
        .await
        .is_err());

    let server = DevServer::start().await.unwrap();
    let url = server.base_url();
    drop(server);
    tokio::task::yield_now().await;
    assert!(reqwest::Client::new()
        .get(format!("{url}/"))
        .send()
        .await
        .is_err());
}

#[tokio::test]
async fn the_router_embeds_in_another_app() {
    let state = DevServerState::new();
    let app = axum::Router::new().nest("/nvm", state.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let account = state.create_account(None);
    let payments = nvm_payments::Payments::new(
        nvm_payments::PaymentOptions::new(account.api_key.clone())
            .backend_url(format!("http://{addr}/nvm")),
    )
    .unwrap();
    let plan = payments
        .plans()
        .register_credits_plan(
            nvm_payments::types::PlanMetadata::named("embedded"),
            nvm_payments::get_free_price_config(),
            get_fixed_credits_config(c(3), c(1)),
        )
        .await
        .unwrap();
    payments.plans().order_plan(&plan).await.unwrap();
    assert_eq!(
        payments
            .plans()
            .get_plan_balance(&plan, None)
            .await
            .unwrap()
            .balance,
        c(3)
    );
    server.abort();
}

#[tokio::test]
async fn spends_are_recorded_once_per_request_id_and_survive_a_restart() {
    let w = World::new().await;
    let plan = w.free_plan(get_fixed_credits_config(c(10), c(2))).await;
    let subscriber = w.server.payments(&w.subscriber);
    subscriber.plans().order_plan(&plan).await.unwrap();
    let tok = subscriber
        .x402()
        .get_x402_access_token(&plan, None)
        .await
        .unwrap()
        .access_token;
    let owner = w.server.payments(&w.builder);
    let pr = build_payment_required(
        std::slice::from_ref(&plan),
        Environment::Custom,
        &PaymentRequiredOptions::default(),
    );
    let mut spent = w.server.state().watch_spends();
    for _ in 0..3 {
        owner
            .x402()
            .settle_permissions(&pr, &tok, Some(c(2)), Some("req-1"))
            .await
            .unwrap();
    }
    spent.wait_for(|n| *n == 1).await.unwrap();
    let spends = w.server.state().spends();
    assert_eq!(spends.len(), 1, "a replayed request id spends nothing");
    assert_eq!(spends[0].request_id.as_deref(), Some("req-1"));
    assert_eq!(spends[0].credits, c(2));
    assert_eq!(spends[0].via, "settle");
    assert_eq!(spends[0].holder, w.subscriber.address);

    let over_http: Value = http()
        .get(w.url("/dev/ledger/spends"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(over_http["spends"][0]["requestId"], "req-1");
    assert_eq!(over_http["spends"][0]["credits"], "2");

    // Stopped and served again on the same address: the same ledger and keys.
    let addr = w.server.addr();
    let server = w.server.restart().await.unwrap();
    assert_eq!(server.addr(), addr);
    let again = owner
        .x402()
        .settle_permissions(&pr, &tok, Some(c(2)), Some("req-1"))
        .await
        .unwrap();
    assert!(again.success);
    assert_eq!(again.remaining_balance, Some(c(8)));
    assert_eq!(server.state().spends().len(), 1);
}
