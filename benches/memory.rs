//! Resident memory per cached caller: 100 000 distinct holders through the layer.
//!
//! ```text
//! cargo bench --bench memory
//! NVM_MEMORY_HOLDERS=100000 cargo bench --bench memory
//! ```
//!
//! Each measurement runs in a fresh child process (so memory freed by an earlier one
//! cannot be reused): it builds a `PaymentLayer` over the in-process sink with cache
//! capacities above the fill, warms it with one request, reads the resident set from
//! `/proc/self/statm`, sends one request per token, and reads it again.
//!
//! - `distinct holders`: N tokens of N holders: per caller, one verification entry
//!   and one balance ledger.
//! - `one holder`: N tokens of a single holder: one verification entry per token and a
//!   single balance ledger.
//!
//! The difference of the two is the balance cache's cost per holder. RSS includes the
//! allocator's and moka's overheads (which is what a process pays), and is counted in
//! 4 KiB pages, so expect a few percent of noise.
#![allow(unreachable_pub)] // helpers shared between test and bench binaries by path

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use nvm_payments::{Environment, PaymentLayer};
use tower::{Layer, ServiceExt};

#[path = "../tests/support/sink.rs"]
mod support;
use support::{agent, holder, plan, x402_token, Sink};

const PAGE: u64 = 4096;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm (Linux)");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * PAGE
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(&args[i + 1], args[i + 2].parse().unwrap());
        return;
    }
    let n: u64 = std::env::var("NVM_MEMORY_HOLDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let distinct = run_child("distinct", n);
    let one = run_child("one", n);
    println!("\n| fill ({n} requests) | RSS growth | bytes per entry |");
    println!("|---|---:|---:|");
    println!(
        "| {n} distinct holders (verification + balance) | {:.1} MiB | {:.0} per caller |",
        distinct as f64 / 1048576.0,
        distinct as f64 / n as f64
    );
    println!(
        "| {n} tokens of one holder (verification only) | {:.1} MiB | {:.0} per token |",
        one as f64 / 1048576.0,
        one as f64 / n as f64
    );
    println!(
        "| difference: balance cache | {:.1} MiB | {:.0} per holder |",
        (distinct as f64 - one as f64) / 1048576.0,
        (distinct as f64 - one as f64) / n as f64
    );
}

/// Runs a measurement in a fresh process; returns its RSS growth in bytes.
fn run_child(mode: &str, n: u64) -> u64 {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args(["--child", mode, &n.to_string()])
        .output()
        .expect("run the measuring child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("growth_bytes="))
        .and_then(|v| v.trim().parse().ok())
        .expect("the child reports its growth")
}

fn child(mode: &str, n: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sink = Sink::new();
        let hour = Duration::from_secs(3600);
        let layer = PaymentLayer::builder_with_backend(sink.clone(), Environment::Custom)
            .plan_id(plan())
            .agent_id(agent())
            .credits(1u64)
            .verification_cache(hour, 2 * n)
            .balance_cache(hour, 2 * n)
            .build()
            .unwrap();
        let service = layer.layer(tower::service_fn(|_r: Request<Full<Bytes>>| async {
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }));
        let send = |token: String| {
            let request = Request::post("/ask")
                .header("payment-signature", token)
                .body(Full::new(Bytes::new()))
                .unwrap();
            let call = service.clone().oneshot(request);
            async move {
                let response = call.await.unwrap();
                assert_eq!(response.status(), 200);
                response.into_body().collect().await.unwrap();
            }
        };
        send(x402_token(&holder(u64::MAX), None)).await;
        let before = resident_bytes();
        let started = Instant::now();
        for i in 0..n {
            let token = match mode {
                // Both fills use same-shaped tokens (with a nonce), so they differ only
                // in the number of holders.
                "distinct" => x402_token(&holder(i), Some(i)),
                _ => x402_token(&holder(0), Some(i)),
            };
            send(token).await;
        }
        let after = resident_bytes();
        let [verify, balance, ..] = sink.calls.get();
        println!(
            "{mode}: {n} requests in {:.1} s; verify calls {verify}, balance calls {balance}; RSS {:.1} -> {:.1} MiB",
            started.elapsed().as_secs_f64(),
            before as f64 / 1048576.0,
            after as f64 / 1048576.0
        );
        println!("growth_bytes={}", after.saturating_sub(before));
    });
}
