//! Two processes of `examples/agent.rs` over one devserver and one `redis-server`
//! (`NVM_REDIS_URL`): they spend one subscriber's balance together, one is killed with
//! SIGKILL while it holds a lease, and its credits come back to the other.

#![cfg(unix)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nvm_payments::devserver::DevServer;
use nvm_payments::Credits;
use tokio::io::{AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout};

use super::agent_example::{agent_command, announced, world};
use crate::support::redis::RedisServer;

const BALANCE: u64 = 100;

/// An agent process sharing `redis`, and its base URL once it listens.
async fn start_agent(
    server: &DevServer,
    world: &super::agent_example::World,
    redis: &RedisServer,
) -> (Child, BufReader<ChildStdout>, String) {
    let mut child = agent_command(server, world)
        .env("NVM_REDIS_URL", redis.url())
        .env("NVM_REDIS_LEASE_TTL_MS", "1500")
        .spawn()
        .expect("start the agent example");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let base = announced(&mut stdout, "agent listening on ").await;
    (child, stdout, base)
}

/// Asks until refused with 402; counts the 200s.
async fn spend_down(http: reqwest::Client, url: String, token: String, served: Arc<AtomicUsize>) {
    loop {
        let response = http
            .post(&url)
            .header("payment-signature", &token)
            .json(&serde_json::json!({"question": "hi"}))
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => {
                served.fetch_add(1, Ordering::SeqCst);
            }
            402 => return,
            other => panic!("unexpected status {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agent_processes_share_a_balance_and_a_killed_ones_lease_comes_back() {
    let redis = RedisServer::start();
    let server = DevServer::start().await.unwrap();
    let world = world(&server).await;
    world
        .subscriber
        .plans()
        .order_plan(&world.plan)
        .await
        .unwrap();
    let token = world
        .subscriber
        .x402()
        .get_x402_access_token(&world.plan, Some(&world.agent))
        .await
        .unwrap()
        .access_token
        .expose()
        .to_owned();
    let (mut doomed, _doomed_out, doomed_url) = start_agent(&server, &world, &redis).await;
    let (mut survivor, mut survivor_out, survivor_url) = start_agent(&server, &world, &redis).await;
    let http = reqwest::Client::new();
    let ask = |base: &str| {
        http.post(format!("{base}/ask"))
            .header("payment-signature", &token)
            .json(&serde_json::json!({"question": "hi"}))
            .send()
    };

    // Both serve at once (two clients each), so both hold leases; then the first grows
    // its lease alone.
    let mut phase: Vec<_> = Vec::new();
    for base in [&doomed_url, &survivor_url, &doomed_url, &survivor_url] {
        let (http, url, token) = (http.clone(), format!("{base}/ask"), token.clone());
        phase.push(tokio::spawn(async move {
            for _ in 0..8 {
                let response = http
                    .post(&url)
                    .header("payment-signature", &token)
                    .json(&serde_json::json!({"question": "hi"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }
        }));
    }
    for task in phase {
        task.await.unwrap();
    }
    let mut served = 32u64;
    for _ in 0..10 {
        assert_eq!(ask(&doomed_url).await.unwrap().status(), 200);
        served += 1;
    }
    // SIGKILL: no chance to give its lease back.
    let pid = doomed.id().expect("agent pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    doomed.wait().await.unwrap();

    // The survivor spends what Redis lets it: everything but the dead replica's lease.
    let counted = Arc::new(AtomicUsize::new(0));
    let url = format!("{survivor_url}/ask");
    let workers: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(spend_down(
                http.clone(),
                url.clone(),
                token.clone(),
                counted.clone(),
            ))
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    // Once the dead replica's lease has expired in Redis (its TTL, 1.5 s), its
    // credits are the survivor's. Nothing signals an expiry: ask again until served,
    // with a client's pause between tries, for at most ten TTLs.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = ask(&survivor_url).await.unwrap().status();
        if status == 200 {
            counted.fetch_add(1, Ordering::SeqCst);
            break;
        }
        assert_eq!(status, 402);
        assert!(
            Instant::now() < deadline,
            "the dead replica's credits never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let workers: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(spend_down(
                http.clone(),
                url.clone(),
                token.clone(),
                counted.clone(),
            ))
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    served += counted.load(Ordering::SeqCst) as u64;

    let left = world
        .subscriber
        .plans()
        .get_plan_balance(&world.plan, None)
        .await
        .unwrap()
        .balance;
    assert!(served <= BALANCE, "admitted {served} > {BALANCE}");
    assert_eq!(left, Credits::from(BALANCE - served), "balance − served");
    assert!(served * 100 >= BALANCE * 95, "only {served} credits used");

    // The survivor's charges were all accepted by the backend.
    let pid = survivor.id().expect("agent pid").to_string();
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(stopped.success());
    survivor.wait().await.unwrap();
    let mut rest = String::new();
    survivor_out.read_to_string(&mut rest).await.unwrap();
    assert!(rest.contains("all charges settled"), "{rest}");
}
