//! The devserver over loopback HTTP: accounts, plans, agents, x402 and the test hooks.
//!
//! One test binary per part of the crate: `cargo test --test devserver [filter]`.
#![allow(unreachable_pub)] // helpers shared between test and bench binaries by path

#[path = "../support/mod.rs"]
mod support;

mod agents;
mod hooks;
mod plans;
mod x402;
