//! The charge journal in Redis across a crash: two processes of `examples/agent.rs`
//! share one `redis-server` (`NVM_CHARGE_JOURNAL=redis`). Replica A serves a load with
//! background charges while the devserver holds (burned, reply never sent) or refuses
//! (503, nothing burned) every settle, and is killed with `kill -9`; replica B, never
//! restarted, takes over A's entries once A's lease expires and charges every request
//! A served exactly once (the devserver's spends name each served request id once).

#![cfg(unix)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use nvm_payments::devserver::{DevServer, Fault};
use nvm_payments::Credits;
use tokio::io::{AsyncReadExt, BufReader};
use tokio::process::Child;

use super::agent_example::{agent_command, announced, world, World};
use crate::support::redis::RedisServer;
use crate::support::reliability::assert_served_spent_once;

const SETTLE: &str = "/api/v1/x402/settle";
/// Requests served by A before the kill.
const SERVED_BEFORE_KILL: usize = 16;
/// Client loops sending requests at once.
const CLIENTS: usize = 4;

/// Starts a replica journaling in `redis`; answers it, its base URL and its stderr
/// (read all along, so it never blocks on a full pipe).
async fn start_replica(
    server: &DevServer,
    world: &World,
    redis: &RedisServer,
) -> (Child, String, tokio::task::JoinHandle<String>) {
    let mut child = agent_command(server, world)
        .env("NVM_REDIS_URL", redis.url())
        .env("NVM_REDIS_LEASE_TTL_MS", "1000")
        .env("NVM_CHARGE_JOURNAL", "redis")
        .env("NVM_JOURNAL_REPLAY_MS", "200")
        .env("NVM_CHARGE_TIMING", "background")
        .spawn()
        .expect("start the agent example");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let base = announced(&mut stdout, "agent listening on ").await;
    // Keep reading stdout so the agent never blocks on a full pipe.
    tokio::spawn(async move {
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest).await;
    });
    let mut stderr = child.stderr.take().unwrap();
    let logs = tokio::spawn(async move {
        let mut logs = String::new();
        let _ = stderr.read_to_string(&mut logs).await;
        logs
    });
    (child, base, logs)
}

/// Sends requests to `url` until the replica dies; answers the request ids served.
async fn load_until_killed(
    url: String,
    token: String,
    served: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let http = reqwest::Client::new();
    loop {
        let sent = http
            .post(&url)
            .header("payment-signature", &token)
            .json(&serde_json::json!({"question": "hi"}))
            .send()
            .await;
        let Ok(response) = sent else { return };
        assert_eq!(response.status(), 200);
        let Ok(body) = response.json::<serde_json::Value>().await else {
            return;
        };
        let _ = served.send(body["requestId"].as_str().unwrap().to_owned());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_replica_charges_a_killed_ones_served_requests_once() {
    let redis = RedisServer::start();
    let server = DevServer::start().await.unwrap();
    let world = world(&server).await;
    let plans = world.subscriber.plans();
    plans.order_plan(&world.plan).await.unwrap();
    let initial = plans
        .get_plan_balance(&world.plan, None)
        .await
        .unwrap()
        .balance;
    let token = world
        .subscriber
        .x402()
        .get_x402_access_token(&world.plan, Some(&world.agent))
        .await
        .unwrap()
        .access_token;

    // Charges pend: the first three burn at the backend but their replies never come
    // back; every later one is refused with 503 before anything burns.
    server
        .faults()
        .set(Fault::new(SETTLE).hold_reply_ms(600_000).times(3));
    server
        .faults()
        .set(Fault::new(SETTLE).method("POST").status(503));

    let (mut replica_a, base_a, logs_a) = start_replica(&server, &world, &redis).await;
    let (mut replica_b, _base_b, logs_b) = start_replica(&server, &world, &redis).await;
    let (served_tx, mut served_rx) = tokio::sync::mpsc::unbounded_channel();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let url = format!("{base_a}/ask");
            tokio::spawn(load_until_killed(
                url,
                token.expose().to_owned(),
                served_tx.clone(),
            ))
        })
        .collect();
    drop(served_tx);
    let mut served = Vec::new();
    while served.len() < SERVED_BEFORE_KILL {
        served.push(served_rx.recv().await.expect("replica A serves"));
    }
    let pid = replica_a.id().expect("replica A's pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(
        !replica_a.wait().await.unwrap().success(),
        "killed, not exited"
    );
    for client in clients {
        client.await.unwrap();
    }
    while let Some(id) = served_rx.recv().await {
        served.push(id);
    }
    assert!(
        server.state().spends().len() <= 3,
        "only the held settles burned"
    );

    // The backend is healthy again; B's passes take A's entries once its lease expires.
    server.faults().clear();
    let mut spent = server.state().watch_spends();
    let served_ids: HashSet<&String> = served.iter().collect();
    assert_eq!(served_ids.len(), served.len(), "request ids are unique");
    tokio::time::timeout(
        Duration::from_secs(60),
        spent.wait_for(|_| {
            let spends = server.state().spends();
            let charged: HashSet<_> = spends
                .iter()
                .filter_map(|s| s.request_id.as_ref())
                .collect();
            served_ids.iter().all(|id| charged.contains(id))
        }),
    )
    .await
    .expect("replica B charges every request A served")
    .unwrap();
    // Final entries leave Redis (B's `HDEL`s go in its next write): a bounded poll.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !redis
        .keys("nvm:{journal}:entries:*")
        .iter()
        .all(|key| redis.hlen(key) == 0)
    {
        assert!(Instant::now() < deadline, "entries left in Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let pid = replica_b.id().expect("replica B's pid").to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(replica_b.wait().await.unwrap().success());
    for logs in [logs_a.await.unwrap(), logs_b.await.unwrap()] {
        assert!(
            !logs.contains(token.expose()),
            "the token never reaches the logs"
        );
    }

    let spends = server.state().spends();
    assert_served_spent_once(&spends, &served);
    let balance = plans
        .get_plan_balance(&world.plan, None)
        .await
        .unwrap()
        .balance;
    assert_eq!(
        balance,
        initial
            .checked_sub(Credits::from(spends.len() as u64))
            .unwrap()
    );
}
