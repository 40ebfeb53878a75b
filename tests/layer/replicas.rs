//! Several replicas, one balance: layers sharing one devserver and one `redis-server`
//! (`support::redis`) spend one subscriber down concurrently, lose Redis mid-run, and
//! race one single-use token.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use nvm_payments::client::X402TokenOptions;
use nvm_payments::shared::RedisStore;
use nvm_payments::{Credits, PaymentContext, SettleStatus};
use tokio::sync::Notify;
use tower::ServiceExt;

use crate::support::redis::RedisServer;
use crate::support::reliability::{app, ask, world, World};

/// What the replicas did together.
#[derive(Default)]
struct Tally {
    served: AtomicUsize,
    unavailable: AtomicUsize,
}

async fn store(redis: &RedisServer, lease_ttl: Duration) -> RedisStore {
    RedisStore::builder(redis.url())
        .prefix("replicas-test")
        .lease_ttl(lease_ttl)
        .connect()
        .await
        .expect("redis reachable")
}

/// `n` replicas of one agent over one Redis; the receiver sees every charge outcome.
async fn replicas(
    world: &World,
    redis: &RedisServer,
    n: usize,
    lease_ttl: Duration,
) -> (
    Vec<Router>,
    Vec<RedisStore>,
    tokio::sync::mpsc::UnboundedReceiver<nvm_payments::SettleOutcome>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut apps = Vec::new();
    let mut stores = Vec::new();
    for _ in 0..n {
        let store = store(redis, lease_ttl).await;
        let tx = tx.clone();
        let layer = world
            .layer(Duration::from_secs(5))
            .shared(store.clone())
            .on_settle(move |o: &nvm_payments::SettleOutcome| {
                let _ = tx.send(o.clone());
            })
            .build()
            .unwrap();
        apps.push(app(layer, Arc::new(AtomicUsize::new(0))));
        stores.push(store);
    }
    (apps, stores, rx)
}

/// Sends requests with `token` until one is refused for lack of credits; a 503 (Redis
/// away) is retried after a pause, as a client honouring `Retry-After` would.
async fn spend_down(app: Router, token: String, tally: Arc<Tally>) {
    loop {
        let response = app.clone().oneshot(ask(&token)).await.unwrap();
        match response.status().as_u16() {
            200 => {
                tally.served.fetch_add(1, Ordering::SeqCst);
            }
            402 => return,
            503 => {
                tally.unavailable.fetch_add(1, Ordering::SeqCst);
                // A client's pause before retrying, not a wait for a result.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("unexpected status {other}"),
        }
    }
}

/// Every replica's workers at once; answers when all were refused for lack of credits.
async fn all_spend_down(apps: &[Router], token: &str, workers: usize) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for app in apps {
        for _ in 0..workers {
            tasks.push(tokio::spawn(spend_down(
                app.clone(),
                token.to_owned(),
                tally.clone(),
            )));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    tally
}

/// Every charge outcome so far: none may be refused, since no replica admits a
/// request the balance cannot pay.
fn assert_all_settled(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<nvm_payments::SettleOutcome>,
    served: usize,
) {
    let mut settled = 0;
    while let Ok(outcome) = rx.try_recv() {
        assert_eq!(
            outcome.status,
            SettleStatus::Settled,
            "a settle was refused: {:?}",
            outcome.reason
        );
        settled += 1;
    }
    assert_eq!(settled, served, "one settled charge per served request");
}

async fn spend_down_with(n: usize) {
    const BALANCE: u64 = 200;
    let redis = RedisServer::start();
    let world = world(1, BALANCE).await;
    let (apps, _stores, mut rx) = replicas(&world, &redis, n, Duration::from_secs(10)).await;
    let token = world.x402(0).await;

    let tally = all_spend_down(&apps, &token, 3).await;
    let served = tally.served.load(Ordering::SeqCst);
    assert!(served as u64 <= BALANCE, "admitted {served} > balance");
    assert_eq!(
        world.balance(0).await,
        Credits::from(BALANCE - served as u64),
        "the ledger ends at balance − served"
    );
    assert_all_settled(&mut rx, served);
    assert!(
        served as u64 * 100 >= BALANCE * 95,
        "only {served} of {BALANCE} credits used: credits stranded on a replica"
    );
    assert_eq!(tally.unavailable.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_spend_one_balance_down_exactly() {
    spend_down_with(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_spend_one_balance_down_exactly() {
    spend_down_with(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_balance_costs_few_redis_calls() {
    let redis = RedisServer::start();
    let world = world(1, 100_000).await;
    let (apps, stores, _rx) = replicas(&world, &redis, 1, Duration::from_secs(10)).await;
    let token = world.x402(0).await;
    for _ in 0..50 {
        let response = apps[0].clone().oneshot(ask(&token)).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let warm = stores[0].round_trips();
    for _ in 0..500 {
        let response = apps[0].clone().oneshot(ask(&token)).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let calls = stores[0].round_trips() - warm;
    assert!(
        calls * 50 <= 500,
        "{calls} Redis calls for 500 requests: the lease does not grow with the rate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_run_admits_no_more_than_the_balance_and_service_resumes() {
    const BALANCE: u64 = 40;
    let mut redis = RedisServer::start();
    let world = world(1, BALANCE).await;
    let (apps, _stores, mut rx) = replicas(&world, &redis, 2, Duration::from_secs(2)).await;
    let (a, b) = (&apps[0], &apps[1]);
    let token = world.x402(0).await;

    // Both replicas hold leases when Redis loses its data; `a`'s has credits left
    // (leases grow 2, 5, 11: eight requests leave ten).
    for app in [a, a, a, a, a, a, a, a, b, b] {
        assert_eq!(
            app.clone().oneshot(ask(&token)).await.unwrap().status(),
            200
        );
    }
    redis.restart();

    // `b` spends all it can, then `a`: were `b` leased the whole backend balance while
    // `a` still served its old lease, the backend would refuse `a`'s charges.
    let by_b = all_spend_down(std::slice::from_ref(b), &token, 1).await;
    let by_a = all_spend_down(std::slice::from_ref(a), &token, 1).await;
    let after = by_b.served.load(Ordering::SeqCst) + by_a.served.load(Ordering::SeqCst);
    assert!(after > 0, "service resumed");
    let served = 10 + after;
    assert!(served as u64 <= BALANCE, "admitted {served} > balance");
    assert_eq!(
        world.balance(0).await,
        Credits::from(BALANCE - served as u64)
    );
    assert_all_settled(&mut rx, served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v3_token_raced_on_two_replicas_pays_for_one_request() {
    let redis = RedisServer::start();
    let world = world(1, 50).await;
    let release = Arc::new(Notify::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let mut apps = Vec::new();
    for _ in 0..2 {
        let layer = world
            .layer(Duration::from_secs(5))
            .shared(store(&redis, Duration::from_secs(10)).await)
            .build()
            .unwrap();
        let (release, runs) = (release.clone(), runs.clone());
        // The handler holds its request until told: the two requests overlap.
        apps.push(
            Router::new()
                .route(
                    "/ask",
                    post(move |payment: PaymentContext| {
                        let (release, runs) = (release.clone(), runs.clone());
                        async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            release.notified().await;
                            payment.request_id().to_owned()
                        }
                    }),
                )
                .layer(layer),
        );
    }
    let token = world
        .server
        .payments(&world.subscribers[0])
        .x402()
        .get_x402_access_token_for(
            &world.plan,
            X402TokenOptions {
                agent_id: Some(world.agent.clone()),
                token_version: Some(3),
                http_verb: Some("post".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .access_token
        .expose()
        .to_owned();

    let mut first = tokio::spawn(apps[0].clone().oneshot(ask(&token)));
    let mut second = tokio::spawn(apps[1].clone().oneshot(ask(&token)));
    // One of them is refused without reaching a handler; only then is the other let go.
    // (Were both admitted, neither would end: the timeout fails the test.)
    let refused_first = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            r = &mut first => (r.unwrap().unwrap(), true),
            r = &mut second => (r.unwrap().unwrap(), false),
        }
    })
    .await
    .expect("one request is refused while the other holds the token");
    let (refused, first_was_refused) = refused_first;
    assert_ne!(refused.status(), 200, "the token admitted two requests");
    release.notify_one();
    let served = if first_was_refused { second } else { first };
    let served = served.await.unwrap().unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one handler ran");
    assert_eq!(
        world.balance(0).await,
        Credits::from(49u64),
        "one request paid"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_a_replica_serves_only_its_lease_then_answers_503() {
    let mut redis = RedisServer::start();
    let world = world(1, 1_000).await;
    let store = RedisStore::builder(redis.url())
        .prefix("replicas-test")
        .max_lease(4u64)
        .timeout(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    let (on_settle, mut rx) = crate::support::reliability::outcomes();
    let layer = world
        .layer(Duration::from_secs(5))
        .shared(store)
        .on_settle(on_settle)
        .build()
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let app = app(layer, runs.clone());
    let token = world.x402(0).await;
    for _ in 0..20 {
        assert_eq!(
            app.clone().oneshot(ask(&token)).await.unwrap().status(),
            200
        );
    }
    redis.stop();

    // At most the lease: the request that renews it plus `max_lease` more.
    let mut served_after = 0;
    let mut refused = 0;
    while refused < 3 {
        match app
            .clone()
            .oneshot(ask(&token))
            .await
            .unwrap()
            .status()
            .as_u16()
        {
            200 => {
                assert_eq!(refused, 0, "served again after a 503 without Redis");
                served_after += 1;
                assert!(served_after <= 5, "served past the lease without Redis");
            }
            503 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    let served = 20 + served_after;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        served,
        "no handler ran for a 503"
    );
    assert_eq!(world.balance(0).await, Credits::from(1_000 - served as u64));
    assert_all_settled(&mut rx, served);
}

/// A v3 token settled through one replica and replayed to another is answered 402
/// before the second replica's handler runs (issue 13; `BeforeResponse`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v3_token_settled_on_one_replica_is_refused_by_another_without_its_handler() {
    let redis = RedisServer::start();
    let world = world(1, 50).await;
    let runs: Vec<Arc<AtomicUsize>> = (0..2).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let mut apps = Vec::new();
    for runs in &runs {
        let layer = world
            .layer(Duration::from_secs(5))
            .shared(store(&redis, Duration::from_secs(10)).await)
            .build()
            .unwrap();
        apps.push(app(layer, runs.clone()));
    }
    let token = world
        .server
        .payments(&world.subscribers[0])
        .x402()
        .get_x402_access_token_for(
            &world.plan,
            X402TokenOptions {
                agent_id: Some(world.agent.clone()),
                token_version: Some(3),
                http_verb: Some("post".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .access_token
        .expose()
        .to_owned();
    let before = world.balance(0).await;

    let first = apps[0].clone().oneshot(ask(&token)).await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.headers().contains_key("payment-response"), "settled");
    let after_first = world.balance(0).await;
    assert!(after_first < before, "the first request was charged");
    let replay = apps[1].clone().oneshot(ask(&token)).await.unwrap();
    assert_eq!(replay.status(), 402);
    assert_eq!(
        runs[1].load(Ordering::SeqCst),
        0,
        "the second handler never ran"
    );
    assert_eq!(
        world.balance(0).await,
        after_first,
        "the replay charged nothing"
    );
}
