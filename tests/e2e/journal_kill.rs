//! The charge journal across a crash: `examples/agent.rs` with background charges and
//! a journal serves a load while the devserver holds (burned, reply never sent) or
//! refuses (503, nothing burned) every settle, is killed with `kill -9` mid-load, and
//! is started again on the same journal. Its start-up replay charges every served
//! request exactly once: the devserver's spends name each served request id once,
//! and the balance is the initial one minus what those spends burned.

#![cfg(unix)]

use std::collections::HashSet;
use std::time::Duration;

use nvm_payments::devserver::{DevServer, Fault};
use nvm_payments::{Credits, PaymentLayer};
use tokio::io::{AsyncReadExt, BufReader};
use tokio::process::Child;

use super::agent_example::{agent_command, announced, world, World};
use crate::support::reliability::assert_served_spent_once;
use crate::support::temp_dir::TempDir;

const SETTLE: &str = "/api/v1/x402/settle";
/// Requests served before the kill.
const SERVED_BEFORE_KILL: usize = 24;
/// Client loops sending requests at once.
const CLIENTS: usize = 4;

/// Starts the agent on `journal` and answers its base URL.
async fn start_agent(server: &DevServer, world: &World, journal: &str) -> (Child, String) {
    let mut child = agent_command(server, world)
        .env("NVM_CHARGE_JOURNAL", journal)
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
    (child, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_charges_every_served_request_once_after_restart() {
    let server = DevServer::start().await.unwrap();
    let world = world(&server).await;
    world
        .subscriber
        .plans()
        .order_plan(&world.plan)
        .await
        .unwrap();
    let initial = world
        .subscriber
        .plans()
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
    let dir = TempDir::new("journal-kill9");
    let journal = dir.join("charges.journal");
    let journal = journal.to_str().unwrap().to_owned();

    // Charges pend: the first three burn at the backend but their replies never come
    // back; every later one is refused with 503 before anything burns.
    server
        .faults()
        .set(Fault::new(SETTLE).hold_reply_ms(600_000).times(3));
    server
        .faults()
        .set(Fault::new(SETTLE).method("POST").status(503));

    let (mut agent, base) = start_agent(&server, &world, &journal).await;
    let (served_tx, mut served_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (cut_tx, mut cut_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let http = reqwest::Client::new();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (http, url, token) = (
                http.clone(),
                format!("{base}/ask"),
                token.expose().to_owned(),
            );
            let (served, cut) = (served_tx.clone(), cut_tx.clone());
            tokio::spawn(async move {
                loop {
                    let sent = http
                        .post(&url)
                        .header("payment-signature", &token)
                        .json(&serde_json::json!({"question": "hi"}))
                        .send()
                        .await;
                    let body = match sent {
                        Ok(r) if r.status() == 200 => r.json::<serde_json::Value>().await,
                        Ok(r) => panic!("unexpected status {}", r.status()),
                        Err(_) => {
                            // Killed with this request in flight: its fate is the journal's.
                            let _ = cut.send(());
                            return;
                        }
                    };
                    match body {
                        Ok(body) => {
                            let id = body["requestId"].as_str().unwrap().to_owned();
                            let _ = served.send(id);
                        }
                        Err(_) => {
                            let _ = cut.send(());
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    drop((served_tx, cut_tx));

    let mut served = Vec::new();
    while served.len() < SERVED_BEFORE_KILL {
        served.push(served_rx.recv().await.expect("the agent serves"));
    }
    let pid = agent.id().expect("agent pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = agent.wait().await.unwrap();
    assert!(!status.success(), "killed, not exited: {status}");
    for client in clients {
        client.await.unwrap();
    }
    while let Some(id) = served_rx.recv().await {
        served.push(id);
    }
    let mut cut_off = 0;
    while cut_rx.recv().await.is_some() {
        cut_off += 1;
    }
    let before_restart = server.state().spends().len();
    assert!(
        before_restart <= 3,
        "only the held settles burned before the kill: {before_restart}"
    );

    // The backend is healthy again; the agent starts on the same journal.
    server.faults().clear();
    let mut spent = server.state().watch_spends();
    let (mut agent, _base) = start_agent(&server, &world, &journal).await;
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
    .expect("every served request is charged after the restart")
    .unwrap();

    // Stop the second agent gracefully: its drain waits for the replays still in flight.
    let pid = agent.id().expect("agent pid").to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(agent.wait().await.unwrap().success());
    let mut stderr = String::new();
    agent
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(
        !stderr.contains(token.expose()),
        "the token never reaches the logs"
    );

    let spends = server.state().spends();
    assert_served_spent_once(&spends, &served);
    // Requests cut off by the kill may have been journaled (their handler ran) and
    // charged; no other request is.
    let extra = spends.len() - served.len();
    assert!(
        extra <= cut_off,
        "{extra} charges beyond the {} served, {cut_off} cut off",
        served.len()
    );
    let balance = world
        .subscriber
        .plans()
        .get_plan_balance(&world.plan, None)
        .await
        .unwrap()
        .balance;
    let burned = Credits::from(spends.len() as u64);
    assert_eq!(balance, initial.checked_sub(burned).unwrap());
    if extra == 0 {
        assert_eq!(
            balance,
            initial
                .checked_sub(Credits::from(served.len() as u64))
                .unwrap(),
            "initial balance − served × credits"
        );
    }

    // Nothing is left to replay: a layer opened on the journal finds it empty.
    let builder_payments = nvm_payments::Payments::new(
        nvm_payments::PaymentOptions::new(world.api_key.expose()).backend_url(server.base_url()),
    )
    .unwrap();
    let layer = PaymentLayer::builder(builder_payments)
        .plan_id(world.plan.clone())
        .charge_journal(&journal)
        .build()
        .unwrap();
    assert_eq!(layer.journal_stats().unwrap().unfinished, 0);
}
