//! The charge journal: a served request's charge written to durable storage before
//! the response that makes it due is released, unless its outcome is already final by
//! then, marked done when its outcome is final, and replayed with the **same request
//! id** (the backend's idempotency key) at start-up and periodically, so a served
//! request is charged once even when the process is killed (`kill -9`, an
//! out-of-memory kill, a failed deploy).
//!
//! Enabled with `PaymentLayerBuilder::charge_journal(path)` (or `charge_journal_in`,
//! in Redis). The rule, for every timing: **a response is released only once its
//! charge is durable or final**, whichever comes first. The entry is made when the
//! handler has succeeded (one allocation: it shares the caller's token), and the
//! charge is sent without waiting for the store; the entry reaches the store's writer
//! (the file's thread, the Redis writer task) only when its response has to wait for
//! it, or when its charge ends without a final outcome, and either writer skips an
//! entry whose charge is final by the time it takes its batch:
//!
//! | timing | the charge is sent | the response is released |
//! |---|---|---|
//! | `BeforeResponse` | at once, with no entry | when the charge is final; when it is not (outcome unknown, backend unreachable, after its retries), the entry is made then and the response released once it is durable |
//! | `Background` | at once, from the request's task (moved to its own task only if it waits for the backend), while the entry is written | when the entry is durable or the charge final, whichever is first: an instant backend makes it final before the response asks, and the entry never reaches the store |
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
//! A replay never runs beside a charge of the same request id in this process: a
//! charge in flight is in no table a replay reads (its ticket holds its entry until it
//! ends), and the ids replays are sending are claimed in memory; across processes the
//! backend's idempotency by `agentRequestId` makes a second charge answer the first.
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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use futures_util::task::AtomicWaker;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
///
/// One allocation per charge: the token is the caller's own (shared, not copied) and
/// where the entry stands ([`EntryState`], what its response waits on) lives inside.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JournalEntry {
    pub(crate) request_id: String,
    pub(crate) method: ChargeMethod,
    /// Shared with the route (and, read back, with every entry of the same route).
    pub(crate) payment_required: Arc<PaymentRequired>,
    pub(crate) token: EntryToken,
    pub(crate) plan_id: PlanId,
    pub(crate) subscriber: Address,
    pub(crate) credits: Credits,
    /// Unix seconds when it was written, for operators reading a journal's age.
    pub(crate) written_at: u64,
    /// In memory only: a new entry starts anew.
    #[serde(skip)]
    pub(crate) state: EntryState,
}

impl Clone for JournalEntry {
    /// A new entry with the same contents (its state starts anew).
    fn clone(&self) -> Self {
        JournalEntry {
            request_id: self.request_id.clone(),
            method: self.method,
            payment_required: self.payment_required.clone(),
            token: self.token.clone(),
            plan_id: self.plan_id.clone(),
            subscriber: self.subscriber.clone(),
            credits: self.credits,
            written_at: self.written_at,
            state: EntryState::default(),
        }
    }
}

impl fmt::Debug for JournalEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JournalEntry")
            .field("request_id", &self.request_id)
            .field("method", &self.method)
            .field("token", &TokenDigest::of(self.token.as_str().as_bytes()))
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
            token: EntryToken::Caller(charge.caller.clone()),
            plan_id: charge.caller.plan_id.clone(),
            subscriber: charge.caller.subscriber.clone(),
            credits: charge.credits,
            written_at: unix_seconds(),
            state: EntryState::default(),
        }
    }
}

/// The access token of a journaled charge: for a charge of this process, the caller's
/// own (the verification already holds it in an `Arc`: sharing it saves copying a
/// token of about a kilobyte per charge, most of which never reach the store); read
/// back from a store, its own copy. Serialised as the plain string.
#[derive(Clone)]
pub(crate) enum EntryToken {
    Caller(Arc<Caller>),
    Stored(Box<str>),
}

impl EntryToken {
    /// The secret itself, for the store and the replayed charge only.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            EntryToken::Caller(caller) => caller.credential.token().expose(),
            EntryToken::Stored(token) => token,
        }
    }
}

impl From<String> for EntryToken {
    fn from(token: String) -> Self {
        EntryToken::Stored(token.into_boxed_str())
    }
}

impl Serialize for EntryToken {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EntryToken {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(EntryToken::from)
    }
}

/// Where one entry stands, shared by the response that waits for it, the store's
/// writer and the charge that ends it. Bits rather than one state: "taken by the
/// writer" and "final" are set by two threads in either order, and one `fetch_or`
/// tells each what the other did.
#[derive(Default)]
pub(crate) struct EntryState {
    bits: AtomicU8,
    waker: AtomicWaker,
}

/// The store's writer took the entry: it is (or will be) written.
const TAKEN: u8 = 1;
const DURABLE: u8 = 2;
/// The charge is final: the entry no longer needs to be durable.
const FINISHED: u8 = 4;
const FAILED: u8 = 8;
/// In the store's table of unfinished entries, which replay passes read: recovered at
/// start-up, or its charge ended without a final outcome. An entry of a charge still
/// in flight is in no table (nothing but its charge may end it).
const LISTED: u8 = 16;
/// Handed to the store's writer: only once a response waits for it, or its charge
/// ended without a final outcome. An entry final before either is never queued.
const QUEUED: u8 = 32;

impl EntryState {
    /// An entry recovered from the store: durable, listed.
    pub(crate) fn recovered() -> Self {
        EntryState {
            bits: AtomicU8::new(TAKEN | DURABLE | LISTED | QUEUED),
            waker: AtomicWaker::new(),
        }
    }

    /// The writer takes the entry; false when its charge was final first (then
    /// nothing about it is written: no response waited on it being stored).
    pub(crate) fn take(&self) -> bool {
        self.bits.fetch_or(TAKEN, Ordering::AcqRel) & FINISHED == 0
    }

    /// The charge is final. Answers what it was before: `(taken, listed)`; when taken,
    /// a done mark must follow the entry into the store. Wakes the response only if it
    /// registered a waker (it checks the state before it does).
    pub(crate) fn finish(&self) -> (bool, bool) {
        let before = self.bits.fetch_or(FINISHED, Ordering::AcqRel);
        self.waker.wake();
        (before & TAKEN != 0, before & LISTED != 0)
    }

    /// Marks it listed; false if it was already.
    pub(crate) fn list(&self) -> bool {
        self.bits.fetch_or(LISTED, Ordering::AcqRel) & LISTED == 0
    }

    /// Marks it queued for the writer; false if it was already (queue it only once).
    pub(crate) fn queue(&self) -> bool {
        self.bits.fetch_or(QUEUED, Ordering::AcqRel) & QUEUED == 0
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.bits.load(Ordering::Acquire) & FINISHED != 0
    }

    /// The writer is done with it.
    pub(crate) fn written(&self, ok: bool) {
        self.bits
            .fetch_or(if ok { DURABLE } else { FAILED }, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Durable or final: its response may go.
    fn outcome(&self) -> Option<io::Result<()>> {
        let bits = self.bits.load(Ordering::Acquire);
        if bits & (DURABLE | FINISHED) != 0 {
            Some(Ok(()))
        } else if bits & FAILED != 0 {
            Some(Err(io::Error::other(
                "the charge journal could not write the entry",
            )))
        } else {
            None
        }
    }

    /// Ready once durable or final. The state is checked before a waker is
    /// registered: a charge already final costs no registration and no wake-up.
    /// `Pending` only after the waker is registered and the state checked again.
    pub(crate) fn poll_released(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(done) = self.outcome() {
            return Poll::Ready(done);
        }
        self.waker.register(cx.waker());
        // Again after registering: a wake in between would otherwise be lost.
        match self.outcome() {
            Some(done) => Poll::Ready(done),
            None => Poll::Pending,
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
///
/// A store lists (in [`unfinished`](Self::unfinished)) only the entries a replay may
/// send: those recovered from it and those [`kept`](Self::keep) after their charge
/// ended without a final outcome. An entry whose charge is in flight is in no table:
/// its ticket holds it, and `finish` or `keep` ends it, so a charge that ends final
/// costs no lookup by request id.
pub(crate) trait JournalStore: Send + Sync + 'static {
    /// Records `entry` (of a charge in flight); the future resolves once it would
    /// survive a crash, or once [`finish`](Self::finish) was called for it (a final
    /// charge needs no journal): then, if the store's writer had not taken it yet,
    /// nothing about it is ever written. The entry reaches the writer only when the
    /// future first has to wait (or [`keep`](Self::keep) is called): until then it
    /// costs the store nothing, no lock, no queue, no thread.
    fn append(&self, entry: Arc<JournalEntry>) -> BoxFuture<'static, io::Result<()>>;
    /// Marks a charge final, and resolves its `append` future if it is still waiting.
    /// Need not be durable: a lost mark costs one replay, which the backend answers
    /// idempotently.
    fn finish(&self, entry: &Arc<JournalEntry>);
    /// The charge of `entry` (appended) ended without a final outcome, or was
    /// abandoned: it is listed for replay passes, and queued for the writer if no
    /// response queued it.
    fn keep(&self, entry: &Arc<JournalEntry>);
    /// Every listed entry not marked final.
    fn unfinished(&self) -> Vec<Arc<JournalEntry>>;
    /// The entries a replay pass should send: by default [`unfinished`](Self::unfinished);
    /// a store shared by replicas first takes over those of replicas that died.
    fn replayable(&self) -> BoxFuture<'static, io::Result<Vec<Arc<JournalEntry>>>> {
        let entries = self.unfinished();
        Box::pin(async move { Ok(entries) })
    }
    /// Counters (`replayed` and the charges in flight are counted by [`ChargeJournal`]).
    fn stats(&self) -> JournalStats;
    /// Where it is, for logs (never an entry).
    fn describe(&self) -> String;
}

/// A layer's journal: the store, plus the request ids replay passes are charging now,
/// so that two passes never send the same entry side by side. (A charge of this
/// process is never replayed while in flight: its entry is in no store table until
/// it ends without a final outcome.)
pub(crate) struct ChargeJournal {
    store: Arc<dyn JournalStore>,
    claimed: Mutex<HashSet<String, crate::hashing::RandomState>>,
    /// Entries of charges in flight (appended, not ended): in no store table.
    in_flight: AtomicU64,
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
            in_flight: AtomicU64::new(0),
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

    /// Claims `request_id` for a replay; false when one runs already.
    fn claim(&self, request_id: &str) -> bool {
        self.claimed().insert(request_id.to_owned())
    }

    fn release(&self, request_id: &str) {
        self.claimed().remove(request_id);
    }

    /// Hands `charge` to the journal. The ticket holds its entry until the charge ends
    /// (or is dropped before it is due); the future resolves once the entry is durable
    /// **or** the charge is final, whichever comes first: the moment its response may
    /// be released (docs/guarantees.md). The charge may be sent before.
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
        caller: &Arc<Caller>,
    ) -> BoxFuture<'static, io::Result<()>> {
        let (ticket, durable) = self.record_entry(JournalEntry {
            request_id: outcome.request_id.clone(),
            method,
            payment_required,
            token: EntryToken::Caller(caller.clone()),
            plan_id: outcome.plan_id.clone(),
            subscriber: outcome.subscriber.clone(),
            credits: outcome.credits,
            written_at: unix_seconds(),
            state: EntryState::default(),
        });
        // Not final: it stays in the journal, listed for replay passes.
        ticket.end(false);
        durable
    }

    fn record_entry(
        self: &Arc<Self>,
        entry: JournalEntry,
    ) -> (JournalTicket, BoxFuture<'static, io::Result<()>>) {
        let entry = Arc::new(entry);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let released = self.store.append(entry.clone());
        let ticket = JournalTicket {
            journal: self.clone(),
            entry,
            state: TicketState::Due,
        };
        (ticket, released)
    }

    pub(crate) fn stats(&self) -> JournalStats {
        let store = self.store.stats();
        JournalStats {
            replayed: self.replayed.load(Ordering::Relaxed),
            unfinished: store.unfinished + self.in_flight.load(Ordering::Relaxed),
            ..store
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
/// dropped before its end: nothing is owed), its entry is marked done; dropped while
/// being sent, it is kept for a replay.
pub(crate) struct JournalTicket {
    journal: Arc<ChargeJournal>,
    entry: Arc<JournalEntry>,
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
        self.close(is_final);
    }

    fn close(&mut self, is_final: bool) {
        if self.state == TicketState::Ended {
            return;
        }
        self.state = TicketState::Ended;
        if is_final {
            self.journal.store.finish(&self.entry);
        } else {
            self.journal.store.keep(&self.entry);
        }
        self.journal.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for JournalTicket {
    fn drop(&mut self) {
        // Due: nothing was sent, nothing is owed. Sending: the runtime is going away
        // mid-charge, the entry stays for the next start-up.
        let is_final = self.state == TicketState::Due;
        self.close(is_final);
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
        token: format!("secret-token-of-{request_id}").into(),
        plan_id: "7".parse().unwrap(),
        subscriber: "0x1111111111111111111111111111111111111111"
            .parse()
            .unwrap(),
        credits: Credits::from(2u64),
        written_at: 0,
        state: EntryState::default(),
    }
}
