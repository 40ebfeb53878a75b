//! End to end: the examples, the CLI and its `dev-server` command, the official Python
//! SDK against the devserver, the agent example as a process (and killed with `kill -9` over a charge journal), the layer under backend
//! faults (reliability) and the soak.
//!
//! One test binary per part of the crate: `cargo test --test e2e [filter]`, e.g.
//! `cargo test --test e2e soak`.
#![allow(unreachable_pub)] // helpers shared between test and bench binaries by path

#[path = "../support/mod.rs"]
mod support;

mod agent_example;
mod cli;
mod dev_server_cli;
mod examples;
mod journal_kill;
mod journal_replicas;
mod mcp;
mod python_sdk;
mod reliability_auth;
mod reliability_charge;
mod replicas;
mod soak;
