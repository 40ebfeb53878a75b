//! The official Python SDK (payments-py, 1.18 line from PyPI) must work against the
//! devserver unchanged: this test runs `tests/py/sdk_compat.py` from the venv of
//! `tests/support/python.rs` against an in-process devserver. Without `python3` it
//! fails.
#![cfg(feature = "devserver")]

use std::path::{Path, PathBuf};
use std::process::Command;

use axum::routing::post;
use axum::Router;
use nvm_payments::devserver::DevServer;
use nvm_payments::types::PlanMetadata;
use nvm_payments::{get_fiat_price_config, get_fixed_credits_config, PaymentLayer};
use nvm_payments::{Credits, PlanId};

/// Runs a Python script with `env` and answers the JSON of its last stdout line; the
/// devserver (and any agent) keep serving on the runtime's workers meanwhile.
async fn run_script(python: &Path, script: &Path, env: &[(&str, String)]) -> serde_json::Value {
    let mut command = Command::new(python);
    command.arg(script).env("PYTHONWARNINGS", "ignore");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the blocking task runs")
        .expect("the script runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        script.display(),
        output.status
    );
    serde_json::from_str(stdout.lines().last().expect("a summary line"))
        .expect("the last line is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_works_unchanged() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = crate::support::python::python();

    let server = DevServer::start().await.expect("devserver starts");
    let builder = server.create_account(Some("py-builder"));
    let subscriber = server.create_account(Some("py-subscriber"));
    let summary = run_script(
        &python,
        &root.join("tests").join("py").join("sdk_compat.py"),
        &[
            ("NVM_API_KEY", builder.api_key.expose().to_owned()),
            (
                "NVM_SUBSCRIBER_API_KEY",
                subscriber.api_key.expose().to_owned(),
            ),
            ("NVM_BACKEND_URL", server.base_url()),
        ],
    )
    .await;
    assert_eq!(summary["finalBalance"], 110);

    // The ledger agrees with what the SDK saw.
    let plan: PlanId = summary["planId"]
        .as_str()
        .expect("planId")
        .parse()
        .expect("a decimal plan id");
    let balance = server
        .payments(&subscriber)
        .plans()
        .get_plan_balance(&plan, None)
        .await
        .expect("balance");
    assert_eq!(balance.balance, Credits::from(110u64));
    assert_eq!(server.stats().get("POST /api/v1/x402/settle"), 2);
    assert_eq!(server.stats().get("POST /api/v1/x402/verify"), 2);
}

/// Coinbase's `x402` models read the layer's real headers, and payments-py pays a fiat
/// plan by card delegation, with a v2 and a v3 token, through the layer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_python_clients_read_our_headers_and_pay_a_fiat_plan_by_card() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = crate::support::python::python();
    let server = DevServer::start().await.expect("devserver starts");
    let builder = server.create_account(Some("fiat-builder"));
    let subscriber = server.create_account(Some("fiat-subscriber"));
    let plan = server
        .payments(&builder)
        .plans()
        .register_credits_plan(
            PlanMetadata::named("fiat plan"),
            get_fiat_price_config(Credits::from(2_000_000u64), builder.address.clone(), "USD"),
            get_fixed_credits_config(Credits::from(10u64), Credits::from(1u64)),
        )
        .await
        .expect("the fiat plan registers");
    let layer = PaymentLayer::builder(server.payments(&builder))
        .plan_id(plan.clone())
        .credits(1u64)
        .build()
        .expect("the layer builds");
    let app = Router::new()
        .route("/ask", post(|| async { "answer" }))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_url = format!("http://{}", listener.local_addr().unwrap());
    let agent = tokio::spawn(async move { axum::serve(listener, app).await });

    let summary = run_script(
        &python,
        &root.join("tests").join("py").join("stock_clients.py"),
        &[
            ("NVM_API_KEY", builder.api_key.expose().to_owned()),
            (
                "NVM_SUBSCRIBER_API_KEY",
                subscriber.api_key.expose().to_owned(),
            ),
            ("NVM_BACKEND_URL", server.base_url()),
            ("NVM_PLAN_ID", plan.to_string()),
            ("AGENT_URL", agent_url),
        ],
    )
    .await;
    agent.abort();
    assert_eq!(
        summary["finalBalance"], 8,
        "two requests served, two credits burned"
    );
    // Each served request settled once; the replay and the facilitator's second try
    // were refused.
    assert_eq!(server.stats().get("POST /api/v1/x402/verify"), 2);
}
