//! The charge: exactly once, only for success, retried safely, clamped, reported.
#![cfg(feature = "devserver")]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::support::layer_mock::*;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use nvm_payments::{ChargeOverride, ChargeTiming, ChargeVia, Credits, SettleStatus};
use tower::{Layer, ServiceExt};

fn c(v: u64) -> Credits {
    Credits::from(v)
}

#[tokio::test]
async fn a_success_is_charged_once_with_a_receipt() {
    let backend = MockBackend::new(100);
    let (hook, mut outcomes) = outcomes();
    let layer = builder(backend.clone()).on_settle(hook).build().unwrap();
    let response = layer
        .layer(Inner::ok().service())
        .oneshot(x402_request(valid_x402()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let receipt = decode_header_json(&response.headers()["payment-response"]);
    assert_eq!(receipt["success"], true);
    assert_eq!(receipt["creditsRedeemed"], "2");
    assert_eq!(backend.settle_calls.load(Ordering::SeqCst), 1);
    assert_eq!(backend.charged_ids(), 1);
    assert_eq!(backend.remaining(), c(98));
    let outcome = outcomes.recv().await.unwrap();
    assert_eq!(outcome.status, SettleStatus::Settled);
    assert_eq!(outcome.credits, c(2));
    // The x402 request id is the verify's agentRequestId (this request made the call).
    assert!(
        outcome.request_id.starts_with("arid-"),
        "{}",
        outcome.request_id
    );
    let (id, _) = backend.charge_log.lock().unwrap()[0].clone();
    assert_eq!(id, outcome.request_id);
}

#[tokio::test]
async fn cached_requests_get_fresh_uuid_v7_request_ids() {
    let backend = MockBackend::new(100);
    let (hook, mut outcomes) = outcomes();
    let layer = builder(backend.clone()).on_settle(hook).build().unwrap();
    let svc = layer.layer(Inner::ok().service());
    for _ in 0..3 {
        assert_eq!(
            svc.clone()
                .oneshot(x402_request(valid_x402()))
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let ids: Vec<String> = (0..3)
        .map(|_| outcomes.try_recv().unwrap().request_id)
        .collect();
    assert!(ids[0].starts_with("arid-"));
    for id in &ids[1..] {
        assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
    }
    assert_ne!(ids[1], ids[2]);
    assert_eq!(backend.verifies(), 1);
    assert_eq!(backend.charged_ids(), 3);
}

#[tokio::test]
async fn non_success_statuses_are_not_charged() {
    for status in [
        StatusCode::BAD_REQUEST,
        StatusCode::NOT_FOUND,
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::SERVICE_UNAVAILABLE,
    ] {
        let backend = MockBackend::new(2);
        let layer = builder(backend.clone()).build().unwrap();
        let inner = Inner::status(status);
        let svc = layer.layer(inner.service());
        let response = svc
            .clone()
            .oneshot(bearer_request(bearer(PLAN, Some(AGENT))))
            .await
            .unwrap();
        assert_eq!(response.status(), status);
        assert!(!response.headers().contains_key("payment-response"));
        assert_eq!(inner.calls(), 1);
        assert_eq!(backend.charge_calls(), 0, "{status}");
        // The reservation was released: the whole balance is still usable.
        let again = svc
            .oneshot(bearer_request(bearer(PLAN, Some(AGENT))))
            .await
            .unwrap();
        assert_eq!(
            again.status(),
            status,
            "admitted again with balance 2 and charge 2"
        );
    }
}

#[tokio::test]
async fn the_success_predicate_is_configurable() {
    let backend = MockBackend::new(100);
    let layer = builder(backend.clone())
        .success_when(|s| s.is_success() || s == StatusCode::NOT_FOUND)
        .build()
        .unwrap();
    let svc = layer.layer(Inner::status(StatusCode::NOT_FOUND).service());
    assert_eq!(
        svc.oneshot(bearer_request(bearer(PLAN, Some(AGENT))))
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(backend.charged_ids(), 1);
}

#[tokio::test]
async fn handler_errors_and_panics_are_not_charged_and_release_the_reservation() {
    let backend = MockBackend::new(2);
    let layer = builder(backend.clone()).build().unwrap();

    let failing = layer.layer(tower::service_fn(|_req: http::Request<TestBody>| async {
        Err::<Response<TestBody>, &'static str>("handler failed")
    }));
    let err = failing
        .oneshot(bearer_request(bearer(PLAN, Some(AGENT))))
        .await
        .unwrap_err();
    assert_eq!(
        err, "handler failed",
        "the service error passes through untouched"
    );

    let panicking = layer.layer(tower::service_fn(|_req: http::Request<TestBody>| async {
        if true {
            panic!("handler panicked");
        }
        Ok::<Response<TestBody>, Infallible>(Response::new(Full::new(Bytes::new())))
    }));
    let joined = tokio::spawn(panicking.oneshot(bearer_request(bearer(PLAN, Some(AGENT))))).await;
    assert!(joined.unwrap_err().is_panic());
    assert_eq!(backend.charge_calls(), 0);

    // Balance 2, charge 2: admitted only if both reservations were released.
    let inner = Inner::ok();
    let ok = layer
        .layer(inner.service())
        .oneshot(bearer_request(bearer(PLAN, Some(AGENT))))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(backend.charged_ids(), 1);
}

#[tokio::test]
async fn a_client_that_aborts_during_the_handler_is_not_charged() {
    let backend = MockBackend::new(2);
    let layer = builder(backend.clone()).build().unwrap();
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let slow = layer.layer(tower::service_fn(move |_req: http::Request<TestBody>| {
        let started = started_tx.clone();
        async move {
            let _ = started.send(());
            std::future::pending::<()>().await;
            Ok::<Response<TestBody>, Infallible>(Response::new(Full::new(Bytes::new())))
        }
    }));
    let task = tokio::spawn(slow.oneshot(bearer_request(bearer(PLAN, Some(AGENT)))));
    started_rx.recv().await.unwrap();
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(backend.charge_calls(), 0);
    let ok = layer
        .layer(Inner::ok().service())
        .oneshot(bearer_request(bearer(PLAN, Some(AGENT))))
        .await
        .unwrap();
    assert_eq!(
        ok.status(),
        200,
        "the aborted request's reservation was released"
    );
}

#[tokio::test]
async fn a_transient_charge_failure_is_retried_with_the_same_request_id() {
    // Not applied (502 before the burn) then success: two calls, one charge.
    let backend = MockBackend::new(100);
    backend
        .charge_failures
        .lock()
        .unwrap()
        .push_back((transient(), false));
    let (hook, mut outcomes) = outcomes();
    let layer = builder(backend.clone()).on_settle(hook).build().unwrap();
    let r = layer
        .layer(Inner::ok().service())
        .oneshot(x402_request(valid_x402()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("payment-response"));
    let log = backend.charge_log.lock().unwrap().clone();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].0, log[1].0, "the retry reuses the agentRequestId");
    assert_eq!(backend.charged_ids(), 1);
    assert_eq!(backend.remaining(), c(98));
    let outcome = outcomes.recv().await.unwrap();
    assert_eq!(
        (outcome.status, outcome.attempts),
        (SettleStatus::Settled, 2)
    );
}

#[tokio::test]
async fn a_charge_applied_before_the_connection_dropped_is_not_charged_twice() {
    // The backend burns, then the answer is lost (outcome unknown): the retry with the
    // same id is answered from the backend's idempotency record.
    let backend = MockBackend::new(100);
    backend.charge_failures.lock().unwrap().push_back((
        nvm_payments::client::Error::Transport {
            endpoint: "POST /api/v1/x402/settle".into(),
            message: "connection reset".into(),
            connect: false,
        },
        true,
    ));
    let layer = builder(backend.clone()).build().unwrap();
    let r = layer
        .layer(Inner::ok().service())
        .oneshot(bearer_request(bearer(PLAN, Some(AGENT))))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(backend.redeem_calls.load(Ordering::SeqCst), 2);
    assert_eq!(backend.charged_ids(), 1);
    assert_eq!(backend.remaining(), c(98), "one spend for one request id");
}

#[tokio::test]
async fn a_charge_that_stays_unknown_is_reported_unknown() {
    let backend = MockBackend::new(100);
    for _ in 0..10 {
        backend
            .charge_failures
            .lock()
            .unwrap()
            .push_back((transient(), false));
    }
    let (hook, mut outcomes) = outcomes();
    let layer = builder(backend.clone()).on_settle(hook).build().unwrap();
    let r = layer
        .layer(Inner::ok().service())
        .oneshot(x402_request(valid_x402()))
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "the work is done: the response is returned"
    );
    assert!(!r.headers().contains_key("payment-response"));
    let outcome = outcomes.recv().await.unwrap();
    assert_eq!(outcome.status, SettleStatus::Unknown);
    assert_eq!(outcome.attempts, 6, "the default policy's max_attempts");
    assert!(outcome.reason.unwrap().contains("502"));
}

#[tokio::test]
async fn a_refused_charge_still_returns_the_response_and_reports_failed() {
    // The backend's balance was spent elsewhere after our fetch: settle refuses.
    let backend = MockBackend::new(100);
    let (hook, mut outcomes) = outcomes();
    let layer = builder(backend.clone()).on_settle(hook).build().unwrap();
    let svc = layer.layer(Inner::ok().service());
    assert_eq!(
        svc.clone()
            .oneshot(bearer_request(bearer(PLAN, Some(AGENT))))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(outcomes.recv().await.unwrap().status, SettleStatus::Settled);
    *backend.balance.lock().unwrap() = c(0);
    let r = svc
        .clone()
        .oneshot(bearer_request(bearer(PLAN, Some(AGENT))))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let receipt = decode_header_json(&r.headers()["payment-response"]);
    assert_eq!(receipt["success"], false);
    assert_eq!(outcomes.recv().await.unwrap().status, SettleStatus::Failed);
    // A failed charge makes the ledger fetch again: now it knows the balance is 0.
    let r = svc
        .oneshot(bearer_request(bearer(PLAN, Some(AGENT))))
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    assert_eq!(backend.balances(), 2);
}

fn overriding(
    amount: Option<Credits>,
) -> impl tower::Service<
    http::Request<TestBody>,
    Response = Response<TestBody>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |req: http::Request<TestBody>| async move {
        let ctx = req
            .extensions()
            .get::<nvm_payments::PaymentContext>()
            .cloned()
            .unwrap();
        assert_eq!(
            ctx.credits(),
            Credits::from(10u64),
            "reserved: the configured credits, clamped by the plan"
        );
        let mut res = Response::new(Full::new(Bytes::from_static(b"ok")));
        if let Some(a) = amount {
            res.extensions_mut().insert(ChargeOverride(a));
        }
        Ok(res)
    })
}

#[tokio::test]
async fn the_handler_sets_the_final_charge_clamped_to_what_was_reserved() {
    // Dynamic plan 1..10; the layer reserves 10.
    for (set, charged) in [
        (Some(3u64), Some(3u64)),
        (Some(50), Some(10)),
        (None, Some(10)),
        (Some(0), None),
    ] {
        let backend = MockBackend::new(100);
        let layer = builder(backend.clone()).credits(10u64).build().unwrap();
        let r = layer
            .layer(overriding(set.map(Credits::from)))
            .oneshot(x402_request(valid_x402()))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        match charged {
            Some(v) => {
                assert_eq!(
                    backend.charge_log.lock().unwrap()[0].1,
                    c(v),
                    "max_amount sent for {set:?}"
                );
                assert_eq!(backend.total_charged(), c(v));
            }
            None => assert_eq!(
                backend.charge_calls(),
                0,
                "ChargeOverride(0) waives the charge"
            ),
        }
    }
}

#[tokio::test]
async fn a_fixed_plan_reserves_and_charges_its_fixed_amount() {
    let backend = MockBackend::with(100, |m| {
        *m.credits_config.get_mut().unwrap() = nvm_payments::get_fixed_credits_config(c(100), c(5));
    });
    let (hook, mut outcomes) = outcomes();
    let layer = builder(backend.clone())
        .credits(1u64)
        .on_settle(hook)
        .build()
        .unwrap();
    let r = layer
        .layer(Inner::ok().service())
        .oneshot(x402_request(valid_x402()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(outcomes.recv().await.unwrap().credits, c(5));
    assert_eq!(backend.remaining(), c(95));
}

#[tokio::test]
async fn background_charges_after_the_head_and_reports() {
    let backend = MockBackend::new(100);
    let (hook, mut outcomes) = outcomes();
    let layer = builder(backend.clone())
        .charge_timing(ChargeTiming::Background)
        .on_settle(hook)
        .build()
        .unwrap();
    let r = layer
        .layer(Inner::ok().service())
        .oneshot(x402_request(valid_x402()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!r.headers().contains_key("payment-response"));
    assert_eq!(outcomes.recv().await.unwrap().status, SettleStatus::Settled);
    assert_eq!(backend.charged_ids(), 1);
}

#[tokio::test]
async fn charge_via_picks_the_backend_call() {
    let backend = MockBackend::new(100);
    let layer = builder(backend.clone())
        .charge_via(ChargeVia::Redeem)
        .build()
        .unwrap();
    layer
        .layer(Inner::ok().service())
        .oneshot(x402_request(valid_x402()))
        .await
        .unwrap();
    assert_eq!(backend.redeem_calls.load(Ordering::SeqCst), 1);
    assert_eq!(backend.settle_calls.load(Ordering::SeqCst), 0);

    let backend = MockBackend::new(100);
    let layer = builder(backend.clone())
        .charge_via(ChargeVia::Settle)
        .build()
        .unwrap();
    let inner = Inner::ok();
    let r = layer
        .layer(inner.service())
        .oneshot(bearer_request(bearer(PLAN, Some(AGENT))))
        .await
        .unwrap();
    assert_eq!(r.status(), 402, "settle-only routes refuse bearer tokens");
    assert_eq!(inner.calls(), 0);
}

#[tokio::test]
async fn the_handler_sees_the_payment_context() {
    let backend = MockBackend::new(100);
    let layer = builder(backend.clone()).credits(4u64).build().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let seen2 = seen.clone();
    let svc = layer.layer(tower::service_fn(move |req: http::Request<TestBody>| {
        let seen = seen2.clone();
        async move {
            let ctx = req
                .extensions()
                .get::<nvm_payments::PaymentContext>()
                .unwrap();
            assert_eq!(ctx.subscriber(), &subscriber());
            assert_eq!(ctx.plan_id(), &plan());
            assert_eq!(ctx.agent_id(), Some(&agent()));
            assert_eq!(ctx.credits(), Credits::from(4u64));
            assert_eq!(ctx.balance_seen(), Credits::from(100u64));
            assert!(!format!("{ctx:?}").contains("0xvalid"));
            seen.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }
    }));
    svc.oneshot(x402_request(valid_x402())).await.unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_use_v3_token_pays_for_one_request_only() {
    let backend = MockBackend::new(100);
    let layer = builder(backend.clone()).build().unwrap();
    let inner = Inner::ok();
    let svc = layer.layer(inner.service());
    let token = x402_v3("aa11");
    let statuses = futures_util::future::join_all((0..10).map(|_| {
        let svc = svc.clone();
        let token = token.clone();
        tokio::spawn(async move {
            svc.oneshot(x402_request(token))
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    }))
    .await;
    let admitted = statuses
        .iter()
        .filter(|s| *s.as_ref().unwrap() == 200)
        .count();
    assert_eq!(admitted, 1, "{statuses:?}");
    assert_eq!(inner.calls(), 1);
    let again = svc.clone().oneshot(x402_request(token)).await.unwrap();
    assert_eq!(again.status(), 402);
    assert_eq!(body_json(again.into_body()).await["error"], "invalid_token");
    assert_eq!(backend.charged_ids(), 1);
}

#[tokio::test]
async fn a_single_use_token_not_charged_can_be_used_again() {
    let backend = MockBackend::new(100);
    let layer = builder(backend.clone()).build().unwrap();
    let token = x402_v3("bb22");
    let failed = layer
        .layer(Inner::status(StatusCode::INTERNAL_SERVER_ERROR).service())
        .oneshot(x402_request(token.clone()))
        .await
        .unwrap();
    assert_eq!(failed.status(), 500);
    let ok = layer
        .layer(Inner::ok().service())
        .oneshot(x402_request(token))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(backend.charged_ids(), 1);
}

#[tokio::test]
async fn a_client_that_hangs_up_during_the_charge_does_not_cancel_it() {
    hang_up_during_the_charge(0).await;
}

/// A caller served lately is admitted in `call` and its request's state kept in the
/// response future (no boxed future): hanging up during its charge must not cancel it.
#[tokio::test]
async fn a_warm_request_whose_client_hangs_up_during_the_charge_is_still_charged_once() {
    // Two requests first: the verification is cached, then this thread knows the token.
    hang_up_during_the_charge(2).await;
}

/// Serves `served_before` requests, then hangs up during the charge of the next one:
/// that charge still completes, once.
async fn hang_up_during_the_charge(served_before: usize) {
    let backend = MockBackend::with(100, |m| m.charge_hold = Some(tokio::sync::Notify::new()));
    let (hook, mut outcomes) = outcomes();
    let layer = builder(backend.clone()).on_settle(hook).build().unwrap();
    let svc = layer.layer(Inner::ok().service());
    let hold = backend.charge_hold.as_ref().unwrap();
    for _ in 0..served_before {
        let served = tokio::spawn(svc.clone().oneshot(x402_request(valid_x402())));
        backend.charge_entered.notified().await;
        hold.notify_one();
        assert_eq!(served.await.unwrap().unwrap().status(), 200);
        outcomes.recv().await.unwrap();
    }
    let task = tokio::spawn(svc.oneshot(x402_request(valid_x402())));
    backend.charge_entered.notified().await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    // The settle call is still in flight; let the backend answer it.
    hold.notify_one();
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), outcomes.recv())
        .await
        .expect("the charge was cancelled with the request")
        .unwrap();
    assert_eq!(outcome.status, SettleStatus::Settled);
    let charged = served_before + 1;
    assert_eq!(backend.charged_ids(), charged);
    assert_eq!(backend.settle_calls.load(Ordering::SeqCst), charged);
}

/// A warm request holds its credits from `call` on: dropped before it is polled, it
/// frees them, and its handler never runs.
#[tokio::test]
async fn a_warm_request_dropped_before_it_is_polled_runs_nothing_and_frees_its_credits() {
    use tower::Service;
    // 6 credits, 2 a request: two served leave room for exactly one more.
    let backend = MockBackend::new(6);
    let inner = Inner::ok();
    let layer = builder(backend.clone()).build().unwrap();
    let mut svc = layer.layer(inner.service());
    let serve = |svc: &_| tower::ServiceExt::oneshot(Clone::clone(svc), x402_request(valid_x402()));
    for _ in 0..2 {
        assert_eq!(serve(&svc).await.unwrap().status(), 200);
    }
    let admitted = svc.ready().await.unwrap().call(x402_request(valid_x402()));
    drop(admitted);
    assert_eq!(inner.calls(), 2, "the dropped request's handler ran");
    let served = serve(&svc).await.unwrap();
    assert_eq!(served.status(), 200, "its credits stayed held");
    assert_eq!(backend.charged_ids(), 3);
    assert_eq!(serve(&svc).await.unwrap().status(), 402);
    assert_eq!(inner.calls(), 3);
}

/// The default accepts only what the backend can charge: the hosted backends no longer
/// mount redeem, so a bearer caller there is refused before the handler instead of
/// being served and never charged.
#[tokio::test]
async fn by_default_bearer_tokens_are_refused_where_redeem_does_not_exist() {
    let on = |env: nvm_payments::Environment, via: Option<ChargeVia>| {
        let backend = MockBackend::new(100);
        let mut b = nvm_payments::PaymentLayer::builder_with_backend(backend.clone(), env)
            .plan_id(plan())
            .agent_id(agent())
            .credits(2u64);
        if let Some(via) = via {
            b = b.charge_via(via);
        }
        (backend, b.build().unwrap())
    };
    let hosted = nvm_payments::Environment::Sandbox;
    let (backend, layer) = on(hosted, None);
    let inner = Inner::ok();
    let r = layer
        .layer(inner.service())
        .oneshot(bearer_request(bearer(PLAN, Some(AGENT))))
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    assert_eq!(body_json(r.into_body()).await["error"], "invalid_token");
    assert_eq!((inner.calls(), backend.charge_calls()), (0, 0));

    // Opting in to the legacy path, or a custom backend (the devserver): redeemed.
    for (env, via) in [
        (hosted, Some(ChargeVia::SettleOrRedeem)),
        (nvm_payments::Environment::Custom, None),
    ] {
        let (backend, layer) = on(env, via);
        let r = layer
            .layer(Inner::ok().service())
            .oneshot(bearer_request(bearer(PLAN, Some(AGENT))))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{env:?} {via:?}");
        assert_eq!(backend.redeem_calls.load(Ordering::SeqCst), 1);
    }
}
