//! Replay passes: every unfinished entry not being charged in this process is sent
//! again with its own request id, at start-up and then every `replay_every`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use futures_util::StreamExt;

use super::{ChargeJournal, EntryToken, JournalEntry};
use crate::auth::{Caller, Validity};
use crate::backend::PaymentBackend;
use crate::credential::{decode_x402_token, Credential};
use crate::settle::charge::{log_outcome, Charge, ChargeMethod};
use crate::settle::{OnSettle, PendingCharges, RetryPolicy, SettleOutcome, SettleStatus};
use crate::types::AccessToken;

/// Replays sent at once in one pass.
const REPLAY_CONCURRENCY: usize = 32;

/// What a replay needs from the layer.
pub(crate) struct ReplayContext {
    pub(crate) backend: Arc<dyn PaymentBackend>,
    pub(crate) retry: RetryPolicy,
    pub(crate) hook: Option<Arc<dyn OnSettle>>,
    /// Replays count among the charges in flight, so `drain` waits for them too.
    pub(crate) pending: Arc<PendingCharges>,
}

impl ChargeJournal {
    /// Gives the journal what replays need, and starts the passes if a tokio runtime
    /// is running (otherwise [`ensure_replaying`](Self::ensure_replaying) does, from
    /// the first request).
    pub(crate) fn attach(self: &Arc<Self>, context: ReplayContext) {
        *self
            .replay_context
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(context));
        self.ensure_replaying();
    }

    /// Starts the replay passes once, when a runtime is there to run them.
    pub(crate) fn ensure_replaying(self: &Arc<Self>) {
        if self.replayer_started.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(context) = self
            .replay_context
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return;
        };
        if self.replayer_started.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(passes(Arc::downgrade(self), context));
    }

    /// One pass now; answers how many entries it replayed.
    pub(crate) async fn replay_now(self: &Arc<Self>) -> usize {
        let context = self
            .replay_context
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match context {
            Some(context) => self.pass(&context).await,
            None => 0,
        }
    }

    async fn pass(&self, context: &ReplayContext) -> usize {
        let entries = match self.store.replayable().await {
            Ok(entries) => entries,
            Err(error) => {
                // The next pass tries again; nothing is lost meanwhile.
                tracing::warn!(%error, journal = %self.store.describe(), "charge journal: replay pass skipped");
                return 0;
            }
        };
        let replayed = futures_util::stream::iter(entries)
            .map(|entry| self.replay(entry, context))
            .buffer_unordered(REPLAY_CONCURRENCY)
            .filter(|sent| std::future::ready(*sent))
            .count()
            .await;
        if replayed > 0 {
            tracing::info!(replayed, journal = %self.store.describe(), "charge journal: replay pass done");
        }
        replayed
    }

    /// Replays one entry unless this process is charging it already.
    async fn replay(&self, entry: Arc<JournalEntry>, context: &ReplayContext) -> bool {
        if !self.claim(&entry.request_id) {
            return false;
        }
        let in_flight = context.pending.enter(&entry.request_id);
        let charge = replayed_charge(&entry, context);
        let sent = charge.send(&context.pending.metrics).await;
        if !sent.retry_later {
            self.store.finish(&entry);
        }
        self.release(&entry.request_id);
        self.replayed.fetch_add(1, Ordering::Relaxed);
        let burned = sent
            .receipt
            .as_ref()
            .and_then(|r| r.credits_redeemed)
            .unwrap_or(charge.credits);
        let outcome = SettleOutcome {
            status: sent.status,
            request_id: charge.request_id,
            plan_id: charge.caller.plan_id.clone(),
            subscriber: charge.caller.subscriber.clone(),
            credits: charge.credits,
            attempts: sent.attempts,
            receipt: sent.receipt,
            reason: sent.reason,
            retry_later: sent.retry_later,
        };
        tracing::debug_span!("nvm.replay", token = %charge.caller.token_digest)
            .in_scope(|| log_outcome(&outcome));
        context.pending.metrics.outcome(
            outcome.status,
            (outcome.status == SettleStatus::Settled).then_some(burned),
        );
        in_flight.finish(outcome.status);
        if let Some(hook) = &context.hook {
            hook.on_settle(&outcome);
        }
        true
    }
}

/// Start-up pass, then one every `replay_every`, until the layer is dropped.
async fn passes(journal: Weak<ChargeJournal>, context: Arc<ReplayContext>) {
    loop {
        let Some(strong) = journal.upgrade() else {
            return;
        };
        strong.pass(&context).await;
        let every = strong.replay_every;
        drop(strong);
        tokio::time::sleep(every).await;
    }
}

fn replayed_charge(entry: &JournalEntry, context: &ReplayContext) -> Charge {
    let caller = match &entry.token {
        // Kept by this process: the caller it was verified as.
        EntryToken::Caller(caller) => caller.clone(),
        EntryToken::Stored(stored) => {
            let token = AccessToken::from(&**stored);
            let credential = match entry.method {
                ChargeMethod::Settle => match decode_x402_token(stored) {
                    Ok(payload) => Credential::X402 { token, payload },
                    // Settle sends the token as it is; the envelope is only for logs.
                    Err(_) => Credential::Bearer { token },
                },
                ChargeMethod::Redeem => Credential::Bearer { token },
            };
            Arc::new(Caller {
                subscriber: entry.subscriber.clone(),
                plan_id: entry.plan_id.clone(),
                agent_id: None,
                token_digest: credential.digest(),
                credential,
                validity: Validity::never(),
            })
        }
    };
    Charge {
        backend: context.backend.clone(),
        method: entry.method,
        payment_required: entry.payment_required.clone(),
        caller,
        request_id: entry.request_id.clone(),
        credits: entry.credits,
        retry: context.retry,
    }
}
