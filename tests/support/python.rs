//! One Python venv for every test that drives a stock Python client: the official SDK
//! (payments-py), coinbase's `x402` models and the official `mcp` client, all from
//! PyPI, under `target/py-sdk-venv` (reused when every package imports). `.ci/run`
//! needs only `python3` with `venv`; a machine without it fails these tests, it does
//! not skip them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// What the venv holds: pip's requirement and the module each one provides.
const REQUIREMENTS: &[(&str, &str)] = &[
    ("payments-py~=1.18.0", "payments_py"),
    ("x402~=2.25", "x402"),
    // payments-py 1.18 depends on the 1.x line.
    ("mcp>=1.20,<2", "mcp"),
];

/// Tests of one binary run in parallel: one of them builds the venv, the others wait.
static VENV: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The venv's interpreter, creating the venv and installing [`REQUIREMENTS`] first
/// when a module is missing. Panics with the reason when that cannot be done.
pub fn python() -> PathBuf {
    let mut venv = VENV.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(python) = venv.as_ref() {
        return python.clone();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = ensure_venv(&root.join("target").join("py-sdk-venv"))
        .unwrap_or_else(|reason| panic!("no Python venv for the stock clients: {reason}"));
    *venv = Some(python.clone());
    python
}

fn ensure_venv(dir: &Path) -> Result<PathBuf, String> {
    let python = dir.join("bin").join("python");
    let imports = REQUIREMENTS
        .iter()
        .map(|(_, module)| format!("import {module}"))
        .collect::<Vec<_>>()
        .join("; ");
    let installed = python.exists()
        && Command::new(&python)
            .args(["-c", &imports])
            .status()
            .is_ok_and(|s| s.success());
    if installed {
        return Ok(python);
    }
    if !python.exists() {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(dir)
            .status()
            .map_err(|e| format!("python3 -m venv (is python3 installed?): {e}"))?;
        if !status.success() {
            return Err(format!("python3 -m venv failed: {status}"));
        }
    }
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(REQUIREMENTS.iter().map(|(requirement, _)| requirement))
        .status()
        .map_err(|e| format!("pip install: {e}"))?;
    if !status.success() {
        return Err(format!("pip install failed: {status}"));
    }
    Ok(python)
}
