//! Settlement: the idempotent charge of a served request, its retries and its outcome.
//!
//! A charge carries the request id as `agentRequestId`, the backend's idempotency key,
//! so a retry after a timeout or a 5xx can never charge twice. Only errors that are
//! safe to retry are retried ([`client::Error::is_transient`](crate::client::Error::is_transient)
//! or [`is_outcome_unknown`](crate::client::Error::is_outcome_unknown)), with capped
//! exponential backoff inside a bounded window ([`RetryPolicy`]). Every charge ends in
//! exactly one [`SettleOutcome`], logged with `tracing` and handed to the
//! [`OnSettle`] hook when one is configured.
//!
//! The charges a layer has in flight are listed by request id: their number is
//! bounded (`PaymentLayerBuilder::pending_charges`, [`PendingFull`] says what happens
//! at the bound), and [`PaymentLayer::drain`](crate::PaymentLayer::drain) waits for
//! them at shutdown and names those it could not finish ([`DrainReport`]).
//!
//! With a charge journal (`PaymentLayerBuilder::charge_journal`), the response that
//! makes a charge due is released only once the charge is durable or final, and
//! what a crash left unfinished is replayed with the same request id at start-up and
//! periodically ([`JournalStats`] counts it).
//!
//! ```
//! use nvm_payments::settle::{SettleOutcome, SettleStatus};
//! let hook = |outcome: &SettleOutcome| {
//!     if outcome.status == SettleStatus::Unknown {
//!         eprintln!("reconcile request {}", outcome.request_id);
//!     }
//! };
//! let _layer_option = hook; // PaymentLayer::builder(..).on_settle(hook)
//! ```

mod charge;
mod journal;
mod meter;
mod outcome;
mod pending;

pub use charge::RetryPolicy;
pub(crate) use charge::{
    finish_on_a_task, Charge, ChargeMethod, DetachOnDrop, PendingCharge, Started,
};
pub use journal::JournalStats;
pub(crate) use journal::{
    ChargeJournal, OpenError as JournalOpenError, ReplayContext, DEFAULT_REPLAY_INTERVAL,
};
#[cfg(feature = "redis")]
pub(crate) use journal::{EntryState, JournalEntry, JournalStore};
pub use meter::{Meter, MeterRule};
pub use outcome::{OnSettle, SettleOutcome, SettleStatus};
pub use pending::{DrainReport, PendingFull};
pub(crate) use pending::{InFlight, PendingCharges};
