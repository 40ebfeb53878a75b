//! The layer's caches: token verifications, plan credits configs, and balances with a
//! local ledger of reservations.
//!
//! All three are [moka](https://docs.rs/moka) caches with a size cap and a time to
//! live; concurrent misses of one key wait on a single backend call. Keys are digests
//! and ids, never raw tokens. These types are internal to
//! [`PaymentLayer`](crate::PaymentLayer); its builder sets their limits.
//!
//! The balance ledger is what makes concurrent admission exact: for each
//! `(plan, holder)`, `available = fetched - settled_since_fetch - reserved_in_flight`,
//! and a request is admitted only while `available >= credits`, holding a
//! reservation that is released when its charge completes or the request ends
//! without one (including when its future is dropped).

mod balance;
mod plan;
mod single_use;
mod verification;

pub(crate) use balance::{BalanceCache, BalanceDenied, BalanceKey, Reservation};
pub(crate) use plan::PlanCache;
pub(crate) use single_use::{single_use_key, ClaimRefused, SingleUseClaim, SingleUseTokens};
pub(crate) use verification::{VerificationCache, VerificationKey, Verified};
