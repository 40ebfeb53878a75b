//! # nvm-payments
//!
//! Payment-gated request middleware, a typed client and a local wire-compatible
//! devserver for agents sold through [Nevermined](https://nevermined.app) payment plans.

mod auth;
pub mod backend;
mod balance;
pub mod client;
pub mod credential;
#[cfg(feature = "devserver")]
pub mod devserver;
mod hashing;
pub mod layer;
#[cfg(feature = "mcp")]
pub mod mcp;
mod metrics;
mod rejection;
pub mod settle;
#[cfg(feature = "redis")]
pub mod shared;
pub mod types;

pub use backend::PaymentBackend;
pub use client::{Environment, PaymentOptions, Payments};
pub use layer::{
    BackendUnavailable, Caller, ChargeOverride, ChargeTiming, ChargeVia, ConfigError,
    PaymentContext, PaymentLayer, PaymentLayerBuilder, RejectionKind,
};
pub use settle::{
    DrainReport, Meter, MeterRule, OnSettle, PendingFull, RetryPolicy, SettleOutcome, SettleStatus,
};
pub use types::{
    get_dynamic_credits_config, get_erc20_price_config, get_expirable_duration_config,
    get_fiat_price_config, get_fixed_credits_config, get_free_price_config,
    get_native_token_price_config, get_non_expirable_duration_config, AccessToken, Address,
    AgentId, ApiKey, Credits, Endpoint, PlanId,
};
