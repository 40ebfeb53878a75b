//! `nvm-payments dev-server`: prints its base URL, serves, logs one line per request,
//! and exits cleanly on SIGTERM.
#![cfg(all(unix, feature = "cli"))]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[tokio::test]
async fn dev_server_subcommand_serves_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nvm-payments"))
        .args(["dev-server", "--host", "127.0.0.1", "--port", "0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("a first line");
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no URL in {first:?}"))
        .to_owned();

    let resp = reqwest::Client::new()
        .post(format!("{url}/dev/accounts"))
        .send()
        .await
        .expect("the server answers");
    assert_eq!(resp.status(), 201);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let output = child.wait_with_output().expect("the server exits");
    assert!(output.status.success(), "exit status {:?}", output.status);
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(
        logs.lines()
            .any(|l| l.contains("POST /dev/accounts 201") && l.contains("ms")),
        "one log line per request:\n{logs}"
    );
    assert!(!logs.contains("local:ey"), "API keys never reach the logs");
}
