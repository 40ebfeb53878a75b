//! The charge journal: a served request's charge written to durable storage before
//! the response that makes it due is released, unless its outcome is already final by
//! then, marked done when its outcome is final, and replayed with the **same request
//! id** (the backend's idempotency key) at start-up and periodically, so a served
//! request is charged once even when the process is killed (`kill -9`, an
//! out-of-memory kill, a failed deploy).
//!
//! Enabled with `PaymentLayerBuilder::charge_journal(path)` (or `charge_journal_in`,
//! in Redis). The rule, for every timing: **a response is released only once its
//! charge is durable or final**, whichever comes first. The entry is handed to the
//! journal when the handler has succeeded, and the charge is sent without waiting for
//! the store; the file's writer writes it as soon as a response waits for it (or with
//! the batch it is writing anyway), the Redis store writes every entry and resolves
//! once it is written:
//!
//! | timing | the charge is sent | the response is released |
//! |---|---|---|
//! | `BeforeResponse` | at once, with no entry | when the charge is final; when it is not (outcome unknown, backend unreachable, after its retries), the entry is made then and the response released once it is durable |
//! | `Background` | at once, while the entry is written | when the entry is durable or the charge final, whichever is first |
//! | `OnBodyEnd` | at the body's end | the head, once the entry is durable; a body the client drops before its end marks it done uncharged, a process killed mid-stream charges it at replay |
//!
//! Why a final charge need not reach the disk (and, under load, almost none does: the
//! writer finds it final when it takes its batch and writes nothing about it): the
//! journal exists to charge, after a crash, a request that was *served*. A request
//! whose response was released has a charge that was durable or final at that moment:
//! durable, a crash replays it; final, there is nothing left to do. A crash before
//! either leaves a request whose response was never released (the client got an error
//! or a reset, no work was delivered): its settle may have been sent and burned at the
//! backend, which is also true with the stricter rule of writing before the first
//! attempt (the entry would be replayed and charge an unserved request the same way).
//! So no served request is left uncharged by a crash, and the disk is needed only by
//! charges that are not final when their response asks. This relaxes on purpose the
//! first rule, "before the first settle attempt" for `BeforeResponse`: the attempt
//! no longer waits for the disk, and the entry is made only if the charge ends
//! without a final outcome, so a final charge costs the journal nothing.
//!
//! A charge is final when the backend answered it (settled, or refused): its entry is
//! marked done. Done marks are never fsynced on their own and never wait: they ride
//! with the next batch (or a flush within a second), because a mark lost in a crash
//! only makes the next start-up replay a charge that was final, which the backend
//! answers idempotently (the same request id gets the first answer, nothing more is
//! burned). A charge whose outcome is unknown, or that could not reach the backend
//! within its retry window, stays in the journal and is replayed on the next pass
//! (every `journal_replay_interval`, 30 s by default) and at the next start-up.
//! A replay never runs beside a charge of the same request id in this process (the
//! ids being charged are claimed in memory); across processes the backend's
//! idempotency by `agentRequestId` makes a second charge answer the first.
//!
//! What an entry holds is what a settle or a redeem needs: the request id, the method,
//! the route's `paymentRequired` (written once per file and referenced by a small id:
//! [`record`]), **the subscriber's access token**, the plan, the subscriber and the
//! credits. The token is a secret at rest: the file is created
//! `0600`, entries never reach logs or `Debug` output, and the file is rewritten
//! without finished entries when it is opened and whenever finished records outnumber
//! live ones by four to one (after at least 1 024): a token stays on disk while its
//! charge is unfinished, plus at most that many finished charges later.
//!
//! Why an append-only log rather than an embedded store (`redb`, `fjall`): the journal
//! is write-mostly (one append per charge, one mark when it ends), read only at
//! start-up, and small (only unfinished charges matter), which is exactly what a log
//! does well; it needs no new dependency (the checksum is the SHA-256 the crate already
//! links), and group commit is a loop over a queue, so the cost per request is what
//! the load bench measures, one `fdatasync` shared by a batch (and none for a charge
//! final before its batch). A B-tree store would
//! add a dependency with its own write amplification and fsync policy for a table
//! that never holds more than the charges in flight.
//!
//! The store is behind a small internal trait ([`JournalStore`]): the local file
//! ([`FileJournal`], an append-only log with checksummed records and group commit),
//! or Redis (`shared::journal`, feature `redis`,
//! `PaymentLayerBuilder::charge_journal_in`), where each replica's entries live under
//! a liveness lease and a replay pass first takes over ([`JournalStore::replayable`])
//! those of replicas whose lease expired, so a surviving replica replays a dead one's
//! charges.
//!
//! ```
//! use nvm_payments::settle::JournalStats;
//! let stats = JournalStats::default();
//! // Charges handed to the journal: written, or final before their batch (elided).
//! let charges = stats.appended + stats.elided;
//! // fsyncs per charge: one fsync is shared by a whole batch under load.
//! let per_charge = stats.fsyncs as f64 / charges.max(1) as f64;
//! assert_eq!(per_charge, 0.0);
//! ```

mod file;
mod record;
mod replay;

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub(crate) use file::{FileJournal, OpenError};
pub(crate) use replay::ReplayContext;

use super::{Charge, ChargeMethod, SettleOutcome};
use crate::auth::Caller;
use crate::types::{Address, Credits, PaymentRequired, PlanId, TokenDigest};

/// Default pause between two replay passes.
pub(crate) const DEFAULT_REPLAY_INTERVAL: Duration = Duration::from_secs(30);

/// Counters of a layer's charge journal
/// ([`PaymentLayer::journal_stats`](crate::PaymentLayer::journal_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct JournalStats {
    /// Charges written to the journal (made durable) since it was opened.
    pub appended: u64,
    /// `fdatasync` calls made, compactions included: under load one covers many
    /// charges (group commit), so `fsyncs / appended` is below 1. With the journal
    /// in Redis: the write round trips (pipelines), as durable as Redis' persistence.
    pub fsyncs: u64,
    /// Rewrites that dropped finished entries.
    pub compactions: u64,
    /// Charges in the journal not final yet (in flight, or waiting for a replay).
    pub unfinished: u64,
    /// Charges replayed from the journal (start-up and periodic passes).
    pub replayed: u64,
    /// Charges whose outcome was final before their batch was written: nothing about
    /// them reached the disk (see the module docs).
    pub elided: u64,
}

/// One journaled charge: everything a settle or a redeem needs, the access token
/// included (a secret: see the module docs). `Debug` shows only its digest.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JournalEntry {
    pub(crate) request_id: String,
    pub(crate) method: ChargeMethod,
    /// Shared with the route (and, read back, with every entry of the same route).
    pub(crate) payment_required: Arc<PaymentRequired>,
    pub(crate) token: String,
    pub(crate) plan_id: PlanId,
    pub(crate) subscriber: Address,
    pub(crate) credits: Credits,
    /// Unix seconds when it was written, for operators reading a journal's age.
    pub(crate) written_at: u64,
}

impl fmt::Debug for JournalEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JournalEntry")
            .field("request_id", &self.request_id)
            .field("method", &self.method)
            .field("token", &TokenDigest::of(self.token.as_bytes()))
            .field("plan_id", &self.plan_id)
            .field("subscriber", &self.subscriber)
            .field("credits", &self.credits)
            .finish_non_exhaustive()
    }
}

impl JournalEntry {
    fn of(charge: &Charge) -> Self {
        JournalEntry {
            request_id: charge.request_id.clone(),
            method: charge.method,
            payment_required: charge.payment_required.clone(),
            token: charge.caller.credential.token().expose().to_owned(),
            plan_id: charge.caller.plan_id.clone(),
            subscriber: charge.caller.subscriber.clone(),
            credits: charge.credits,
            written_at: unix_seconds(),
        }
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where journal entries are kept: the local file, or Redis shared by replicas
/// (`shared::journal::RedisJournal`, feature `redis`).
pub(crate) trait JournalStore: Send + Sync + 'static {
    /// Records `entry`; the future resolves once it would survive a crash. A store may
    /// also resolve it once [`finish`](Self::finish) was called for it, and then never
    /// write it (a final charge needs no journal): the file store does, the Redis store
    /// resolves when its write is done.
    fn append(&self, entry: Arc<JournalEntry>) -> BoxFuture<'static, io::Result<()>>;
    /// Marks a charge final, and resolves its `append` future if it is still waiting.
    /// Need not be durable: a lost mark costs one replay, which the backend answers
    /// idempotently.
    fn finish(&self, request_id: &str);
    /// Every entry not marked final.
    fn unfinished(&self) -> Vec<Arc<JournalEntry>>;
    /// The entries a replay pass should send: by default [`unfinished`](Self::unfinished);
    /// a store shared by replicas first takes over those of replicas that died.
    fn replayable(&self) -> BoxFuture<'static, io::Result<Vec<Arc<JournalEntry>>>> {
        let entries = self.unfinished();
        Box::pin(async move { Ok(entries) })
    }
    /// Counters (`replayed` is counted by [`ChargeJournal`]).
    fn stats(&self) -> JournalStats;
    /// Where it is, for logs (never an entry).
    fn describe(&self) -> String;
}

/// A layer's journal: the store, plus the request ids this process is charging now,
/// so that a replay never runs beside the original charge of the same id.
pub(crate) struct ChargeJournal {
    store: Arc<dyn JournalStore>,
    claimed: Mutex<HashSet<String, crate::hashing::RandomState>>,
    replay_every: Duration,
    replayed: AtomicU64,
    replayer_started: AtomicBool,
    replay_context: Mutex<Option<Arc<ReplayContext>>>,
}

impl ChargeJournal {
    /// Opens the local file journal at `path` (see [`FileJournal::open`]).
    pub(crate) fn open_file(path: &Path, replay_every: Duration) -> Result<Arc<Self>, OpenError> {
        let store = FileJournal::open(path)?;
        Ok(Self::new(Arc::new(store), replay_every))
    }

    pub(crate) fn new(store: Arc<dyn JournalStore>, replay_every: Duration) -> Arc<Self> {
        Arc::new(ChargeJournal {
            store,
            claimed: Mutex::default(),
            replay_every,
            replayed: AtomicU64::new(0),
            replayer_started: AtomicBool::new(false),
            replay_context: Mutex::default(),
        })
    }

    fn claimed(&self) -> MutexGuard<'_, HashSet<String, crate::hashing::RandomState>> {
        // A set of strings, consistent after every statement.
        self.claimed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `request_id` for a charge in this process; false when one runs already.
    fn claim(&self, request_id: &str) -> bool {
        self.claimed().insert(request_id.to_owned())
    }

    fn release(&self, request_id: &str) {
        self.claimed().remove(request_id);
    }

    /// Hands `charge` to the journal. The ticket keeps its request id claimed until the
    /// charge ends (or is dropped before it is due); the future resolves once the entry
    /// is durable **or** the charge is final, whichever comes first: the moment its
    /// response may be released (docs/guarantees.md). The charge may be sent before.
    pub(crate) fn record(
        self: &Arc<Self>,
        charge: &Charge,
    ) -> (JournalTicket, BoxFuture<'static, io::Result<()>>) {
        self.record_entry(JournalEntry::of(charge))
    }

    /// Journals a charge that has ended without a final outcome (`BeforeResponse`: its
    /// retries are over, the response is about to be released): the future resolves
    /// once the entry is durable, and a replay pass may take it from then on.
    pub(crate) fn record_unfinished(
        self: &Arc<Self>,
        outcome: &SettleOutcome,
        method: ChargeMethod,
        payment_required: Arc<PaymentRequired>,
        caller: &Caller,
    ) -> BoxFuture<'static, io::Result<()>> {
        let (ticket, durable) = self.record_entry(JournalEntry {
            request_id: outcome.request_id.clone(),
            method,
            payment_required,
            token: caller.credential.token().expose().to_owned(),
            plan_id: outcome.plan_id.clone(),
            subscriber: outcome.subscriber.clone(),
            credits: outcome.credits,
            written_at: unix_seconds(),
        });
        // Not final: it stays in the journal; the claim goes with the ticket.
        ticket.end(false);
        durable
    }

    fn record_entry(
        self: &Arc<Self>,
        entry: JournalEntry,
    ) -> (JournalTicket, BoxFuture<'static, io::Result<()>>) {
        let entry = Arc::new(entry);
        let request_id = entry.request_id.clone();
        // Claimed before it is visible to a replay pass.
        self.claim(&request_id);
        let released = self.store.append(entry);
        let ticket = JournalTicket {
            journal: self.clone(),
            request_id,
            state: TicketState::Due,
        };
        (ticket, released)
    }

    pub(crate) fn stats(&self) -> JournalStats {
        JournalStats {
            replayed: self.replayed.load(Ordering::Relaxed),
            ..self.store.stats()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TicketState {
    /// Journaled; the charge has not been sent (an `OnBodyEnd` body still streaming).
    Due,
    /// Being sent: dropped now (the runtime is shutting down), it stays unfinished.
    Sending,
    Ended,
}

/// A journaled charge of this process. Dropped while `Due` (the response body was
/// dropped before its end: nothing is owed), its entry is marked done.
pub(crate) struct JournalTicket {
    journal: Arc<ChargeJournal>,
    request_id: String,
    state: TicketState,
}

impl JournalTicket {
    /// The charge is about to be sent.
    pub(crate) fn sending(&mut self) {
        self.state = TicketState::Sending;
    }

    /// The charge ended; `is_final` when the backend answered it, otherwise the entry
    /// stays for a replay pass.
    pub(crate) fn end(mut self, is_final: bool) {
        if is_final {
            self.journal.store.finish(&self.request_id);
        }
        self.state = TicketState::Ended;
    }
}

impl Drop for JournalTicket {
    fn drop(&mut self) {
        if self.state == TicketState::Due {
            self.journal.store.finish(&self.request_id);
        }
        // After `finish`: a replay pass must not see it unfinished and unclaimed.
        self.journal.release(&self.request_id);
    }
}

#[cfg(test)]
pub(crate) fn test_entry(request_id: &str) -> JournalEntry {
    let payment_required: PaymentRequired = serde_json::from_value(serde_json::json!({
        "x402Version": 2,
        "resource": {"url": "/ask"},
        "accepts": [],
        "extensions": {}
    }))
    .unwrap();
    JournalEntry {
        request_id: request_id.to_owned(),
        method: ChargeMethod::Settle,
        payment_required: Arc::new(payment_required),
        token: format!("secret-token-of-{request_id}"),
        plan_id: "7".parse().unwrap(),
        subscriber: "0x1111111111111111111111111111111111111111"
            .parse()
            .unwrap(),
        credits: Credits::from(2u64),
        written_at: 0,
    }
}
