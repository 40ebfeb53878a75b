//! [`SettleOutcome`] and the [`OnSettle`] hook.

use crate::types::{Address, Credits, PlanId, SettleResponse};

/// How a charge ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SettleStatus {
    /// The backend confirmed the charge.
    Settled,
    /// The backend refused it, or it never reached the backend: nothing was charged.
    Failed,
    /// It may or may not have been charged (timeouts, dropped connections, 5xx until
    /// the retry window closed). Reconcile by `request_id`: the backend keys charges by it.
    Unknown,
}

/// The outcome of one charge, reported to tracing and to the [`OnSettle`] hook.
///
/// It never carries the access token.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SettleOutcome {
    /// Settled, failed or unknown.
    pub status: SettleStatus,
    /// The `agentRequestId` sent: the idempotency key of the charge.
    pub request_id: String,
    /// The plan charged.
    pub plan_id: PlanId,
    /// The subscriber charged.
    pub subscriber: Address,
    /// Credits asked for (after the plan's clamp and any handler override).
    pub credits: Credits,
    /// Backend calls made (1 when the first one answered).
    pub attempts: u32,
    /// The backend's receipt, when it answered one (settle's JSON; for redeem, a
    /// receipt built from its result).
    pub receipt: Option<SettleResponse>,
    /// Why it failed or is unknown.
    pub reason: Option<String>,
    /// The backend gave no final answer (unknown outcome, or unreachable until the
    /// retry window closed): a journaled charge stays for a replay.
    pub(crate) retry_later: bool,
}

impl SettleOutcome {
    /// Whether the backend confirmed the charge.
    pub fn is_settled(&self) -> bool {
        self.status == SettleStatus::Settled
    }
}

/// Receives every [`SettleOutcome`]. Implemented for any
/// `Fn(&SettleOutcome) + Send + Sync + 'static` closure.
///
/// It runs on the task that made the charge: keep it short, or hand the outcome to a
/// channel.
pub trait OnSettle: Send + Sync + 'static {
    /// Called once per charge.
    fn on_settle(&self, outcome: &SettleOutcome);
}

impl<F> OnSettle for F
where
    F: Fn(&SettleOutcome) + Send + Sync + 'static,
{
    fn on_settle(&self, outcome: &SettleOutcome) {
        self(outcome)
    }
}
