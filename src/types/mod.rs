//! Wire types shared by the client, the layer and the devserver.
//!
//! Every struct goes on the wire in camelCase; amounts are [`Credits`] (decimal
//! strings); responses tolerate unknown fields and `null`s.
//!
//! ```
//! use nvm_payments::types::PlanBalance;
//! let b: PlanBalance = serde_json::from_str(r#"{"planId":"1","planName":"p","planType":"credits",
//!   "holderAddress":"0x0000000000000000000000000000000000000001","balance":100,
//!   "creditsContract":null,"isSubscriber":true,"pricePerCredit":0.01,"surprise":1}"#).unwrap();
//! assert_eq!(b.balance.to_string(), "100");
//! ```

mod agent;
mod credits;
mod delegation;
mod ids;
mod plan;
mod result;
mod secret;
pub(crate) mod serde_util;
mod x402;

pub use agent::*;
pub use credits::{Credits, ParseCreditsError};
pub use delegation::*;
pub use ids::{Address, AgentId, ParseIdError, PlanId};
pub use plan::*;
pub use result::*;
pub use secret::{AccessToken, ApiKey, SecretString, TokenDigest};
pub use x402::*;
