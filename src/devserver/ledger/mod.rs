//! The ledger: registry (accounts, plans, agents), holdings (credits, dev wallets,
//! trials), fiat checkouts, delegations and charges (idempotency store, spends).
//!
//! Plain data behind one lock (held by the caller, never across an `await`), so every
//! check-and-spend is atomic: concurrent settles can neither overdraw a balance nor
//! lose an update. Each concern is a field with its own type and file; operations
//! that span concerns (an order reads the registry and moves holdings, a settle
//! checks all three and records the spend) are `Ledger` methods in the file of the
//! concern they change.

use http::StatusCode;

use super::error::ApiError;

mod charges;
mod checkout;
mod delegations;
mod holdings;
mod registry;

pub use charges::Spend;
pub(crate) use charges::{Charge, ChargeLog, InvalidReason};
pub(crate) use checkout::Checkouts;
pub(crate) use delegations::{Delegation, Delegations};
pub(crate) use holdings::Holdings;
pub use holdings::DEFAULT_TOKEN_BALANCE;
pub(crate) use registry::{PlanRecord, Registry};

/// The whole ledger.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    pub(crate) registry: Registry,
    pub(crate) holdings: Holdings,
    pub(crate) checkouts: Checkouts,
    pub(crate) delegations: Delegations,
    pub(crate) charges: ChargeLog,
}

fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{
        get_native_token_price_config, Address, Credits, PlanCreditsConfig, PlanId, PlanMetadata,
    };

    pub(super) fn addr(n: u8) -> Address {
        format!("0x{:040x}", n).parse().unwrap()
    }

    pub(super) fn c(n: u64) -> Credits {
        Credits::from(n)
    }

    /// A credits plan priced 10 of the native token, paid to its owner.
    pub(super) fn credits_plan(l: &mut Ledger, owner: &Address, cfg: PlanCreditsConfig) -> PlanId {
        l.registry
            .register_plan(
                owner,
                PlanMetadata::named("p"),
                get_native_token_price_config(c(10), owner.clone()),
                cfg,
                None,
                false,
            )
            .unwrap()
    }
}
