//! `PaymentLayer` with a mock backend (`support::layer_mock`) and against the
//! devserver, and the credential decoder under property tests.
//!
//! One test binary per part of the crate: `cargo test --test layer [filter]`.
#![allow(unreachable_pub)] // helpers shared between test and bench binaries by path

#[path = "../support/mod.rs"]
mod support;

mod attacks;
mod charge;
mod concurrency;
mod devserver;
mod journal;
mod journal_redis;
mod metering;
mod metrics;
mod pending;
mod props;
mod rejections;
mod replicas;
mod schemes;
mod streaming;
mod token_props;
mod topup;
mod wiring;
