//! The official Python SDK (payments-py, 1.18 line from PyPI) must work against the
//! devserver unchanged: this test installs it in a venv under `target/py-sdk-venv`
//! (reused when present) and runs `tests/py/sdk_compat.py` against an in-process
//! devserver. Without `python3` it prints `SKIPPED` and passes.
#![cfg(feature = "devserver")]

use std::path::{Path, PathBuf};
use std::process::Command;

use nvm_payments::devserver::DevServer;
use nvm_payments::{Credits, PlanId};

const SDK_REQUIREMENT: &str = "payments-py~=1.18.0";

fn venv_python(venv: &Path) -> PathBuf {
    venv.join("bin").join("python")
}

/// Creates the venv and installs the SDK unless it is already there.
fn ensure_venv(root: &Path) -> Result<PathBuf, String> {
    let venv = root.join("target").join("py-sdk-venv");
    let python = venv_python(&venv);
    let installed = python.exists()
        && Command::new(&python)
            .args(["-c", "import payments_py"])
            .status()
            .is_ok_and(|s| s.success());
    if installed {
        return Ok(python);
    }
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .map_err(|e| format!("python3 -m venv: {e}"))?;
    if !status.success() {
        return Err(format!("python3 -m venv failed: {status}"));
    }
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg(SDK_REQUIREMENT)
        .status()
        .map_err(|e| format!("pip install: {e}"))?;
    if !status.success() {
        return Err(format!("pip install {SDK_REQUIREMENT} failed: {status}"));
    }
    Ok(python)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_works_unchanged() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("SKIPPED: python3 not found; the Python SDK compatibility test did not run");
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = ensure_venv(&root).expect("a venv with payments-py");

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
