//! Step 3: may the payer pay. Plan pricing (what a charge really burns), a ledger per
//! payer `(plan, holder)`, and the [`Reservation`] an admitted request holds.
//!
//! The ledger is what makes concurrent admission exact: for each payer,
//! `available = fetched - settled_since_fetch - reserved_in_flight`, and a request is
//! admitted only while `available >= credits`, holding a reservation that is released
//! when its charge completes or the request ends without one (including when its future
//! is dropped). A ledger lives as long as a reservation holds it, whatever the cache
//! does. Keys are ids, never tokens.
//!
//! With a store shared by several replicas (`crate::shared`), the ledger's balance is
//! the credit lease this replica holds (`leased.rs`, `lease.rs`): the same arithmetic,
//! over a block of credits the store counts against this replica.

mod lease;
mod leased;
mod ledger;
mod pricing;
mod reservation;

pub(crate) use lease::LeaseStore;
#[cfg(feature = "redis")]
pub(crate) use lease::{Fetched, LeaseAnswer, LeaseRequest, LeaseStatus};
pub(crate) use ledger::BalanceCache;
pub(crate) use pricing::{chargeable, metered_charge, PlanCache, PricedPlan};
pub(crate) use reservation::Reservation;

use crate::rejection::Rejection;
use crate::types::Credits;

/// Why a request was not admitted.
#[derive(Debug, Clone)]
pub(crate) enum BalanceDenied {
    NotSubscriber,
    Insufficient { available: Credits },
    Unavailable(String),
}

impl From<BalanceDenied> for Rejection {
    fn from(denied: BalanceDenied) -> Self {
        match denied {
            BalanceDenied::NotSubscriber => Rejection::not_subscriber(),
            BalanceDenied::Insufficient { available } => Rejection::insufficient(available),
            BalanceDenied::Unavailable(why) => {
                tracing::warn!(reason = %why, "cannot learn the balance");
                Rejection::unavailable()
            }
        }
    }
}
