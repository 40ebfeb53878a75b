//! The one home of test helpers, shared by every test binary (`tests/<part>/main.rs`
//! declares it with `#[path = "../support/mod.rs"] mod support;`).
//!
//! - [`layer_mock`]: a mock `PaymentBackend` that counts calls and keeps an idempotent
//!   ledger, token makers, and an inner service that counts its calls (layer tests);
//! - [`devserver_world`]: a devserver with a builder and a subscriber, and HTTP helpers
//!   (devserver tests);
//! - [`reliability`]: a devserver with an agent sold through a plan, subscribers who
//!   ordered it, a layer over it, and the ledger's spends (faults, reliability, soak);
//! - [`python`]: the venv with the stock Python clients (payments-py, x402, mcp);
//! - [`redis`]: a `redis-server` of the test's own on a free port, restartable;
//! - [`temp_dir`]: a temp directory removed on drop (charge journal files);
//! - [`stub`]: a recording HTTP stub that answers canned JSON (client wire tests);
//! - [`sink`]: an in-process backend that answers every call at once and counts it,
//!   and token makers (the benches: `#[path = "../tests/support/sink.rs"] mod support;`).
//!
//! Each binary uses a part of it; the rest is dead code there.
#![allow(dead_code)]

pub mod devserver_world;
pub mod layer_mock;
pub mod python;
pub mod redis;
pub mod reliability;
pub mod sink;
pub mod stub;
pub mod temp_dir;
