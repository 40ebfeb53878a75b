//! The `Payments` client: requests against golden wire bodies, the price and credits
//! helpers, malformed answers (property tests and the devserver's faults).
//!
//! One test binary per part of the crate: `cargo test --test client [filter]`.
#![allow(unreachable_pub)] // helpers shared between test and bench binaries by path

#[path = "../support/mod.rs"]
mod support;

mod config_helpers;
mod faults;
mod lenient;
mod props;
mod wire;
