//! The official Python SDK (payments-py, 1.18 line from PyPI) must work against the
//! devserver unchanged: this test runs `tests/py/sdk_compat.py` from the venv of
//! `tests/support/python.rs` against an in-process devserver. Without `python3` it
//! fails.
#![cfg(feature = "devserver")]

use std::path::PathBuf;
use std::process::Command;

use nvm_payments::devserver::DevServer;
use nvm_payments::{Credits, PlanId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_works_unchanged() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = crate::support::python::python();

    let server = DevServer::start().await.expect("devserver starts");
    let builder = server.create_account(Some("py-builder"));
    let subscriber = server.create_account(Some("py-subscriber"));
    let script = root.join("tests").join("py").join("sdk_compat.py");
    let mut command = Command::new(&python);
    command
        .arg(&script)
        .env("NVM_API_KEY", builder.api_key.expose())
        .env("NVM_SUBSCRIBER_API_KEY", subscriber.api_key.expose())
        .env("NVM_BACKEND_URL", server.base_url())
        .env("PYTHONWARNINGS", "ignore");
    // The server keeps serving on the runtime's workers while the script blocks here.
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the blocking task runs")
        .expect("the script runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "sdk_compat.py failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a summary line"))
            .expect("the last line is JSON");
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
