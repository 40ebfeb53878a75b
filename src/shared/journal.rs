//! The charge journal on Redis
//! ([`PaymentLayerBuilder::charge_journal_in`](crate::PaymentLayerBuilder::charge_journal_in)):
//! the same entries as the file journal, kept where every replica can read them, so a
//! replica that survives replays the charges of one that died.
//!
//! Keys (all under the store's prefix, one hash slot):
//!
//! | key | holds | lives |
//! |---|---|---|
//! | `P:{journal}:lease:R` | `1`: replica `R` is alive | its TTL (the store's `lease_ttl`), renewed by `R` at a third of it and by every write |
//! | `P:{journal}:entries:R` | request id → the entry (JSON, **the access token included**) | until the charge is final (or taken over by another replica) |
//! | `P:{journal}:owners` | the replica ids with entries | an id leaves when its entries are taken over |
//!
//! A replay pass runs one script ([`TAKE_OVER`]) that, atomically, moves the entries of
//! every replica whose lease has expired into the caller's own hash, under the caller's
//! lease: two survivors never take the same dead replica's entries, and a replica
//! whose lease is alive is never taken from.
//!
//! Group commit: appends and finishes go through one channel to one writer task, which
//! sends whatever has queued as one pipeline (one round trip) while the previous one is
//! in flight, so concurrent charges share round trips. As in the file journal, an entry
//! whose charge is final by the time the writer takes it is not written (nor its
//! `HDEL`): its response no longer waits for it (`settle::journal`'s module docs say
//! why that is safe), and under load most charges end before their batch is sent.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use super::StoreShared;
use crate::settle::{EntryState, JournalEntry, JournalStats, JournalStore};

/// Operations sent in one pipeline at most: bounds a round trip's size.
const MAX_BATCH: usize = 512;

/// Moves the entries of every replica whose lease is gone into the caller's hash and
/// answers them (field, value, field, value, …). Keys are built from `ARGV[2]` because
/// the owners are only known inside the script; they share the `{journal}` hash slot.
const TAKE_OVER: &str = r"
redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
redis.call('SADD', KEYS[1], ARGV[1])
local taken = {}
for _, owner in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if owner ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. 'lease:' .. owner) == 0 then
    local from = ARGV[2] .. 'entries:' .. owner
    local fields = redis.call('HGETALL', from)
    for i = 1, #fields, 2 do
      redis.call('HSET', KEYS[3], fields[i], fields[i + 1])
      taken[#taken + 1] = fields[i]
      taken[#taken + 1] = fields[i + 1]
    end
    redis.call('DEL', from)
    redis.call('SREM', KEYS[1], owner)
  end
end
return taken
";

enum Op {
    /// An entry of a charge in flight; skipped if its charge is final when taken.
    Append(Arc<JournalEntry>),
    /// The `HDEL` of an entry that was (being) written.
    Finish(String),
}

/// One replica's journal in Redis (one layer): its id names its lease and its entries.
pub(crate) struct RedisJournal {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<StoreShared>,
    replica: String,
    /// `P:{journal}:`, the start of every key.
    base: String,
    ops: mpsc::UnboundedSender<Op>,
    /// Taken by the writer task when it starts (on the first call in a runtime).
    ops_rx: Mutex<Option<mpsc::UnboundedReceiver<Op>>>,
    started: AtomicBool,
    /// This replica's listed entries (those it took over, and its own whose charge
    /// ended without a final outcome): what a replay pass sends, so a charge finished
    /// here but whose `HDEL` is still queued is not sent again.
    unfinished: Mutex<HashMap<String, Arc<JournalEntry>>>,
    appended: AtomicU64,
    elided: AtomicU64,
    writes: AtomicU64,
    take_over: redis::Script,
}

impl RedisJournal {
    pub(crate) fn new(store: Arc<StoreShared>) -> Self {
        let (ops, ops_rx) = mpsc::unbounded_channel();
        let base = format!("{}:{{journal}}:", store.prefix);
        RedisJournal {
            inner: Arc::new(Inner {
                store,
                replica: uuid::Uuid::new_v4().simple().to_string(),
                base,
                ops,
                ops_rx: Mutex::new(Some(ops_rx)),
                started: AtomicBool::new(false),
                unfinished: Mutex::default(),
                appended: AtomicU64::new(0),
                elided: AtomicU64::new(0),
                writes: AtomicU64::new(0),
                take_over: redis::Script::new(TAKE_OVER),
            }),
        }
    }
}

impl Inner {
    fn unfinished(&self) -> MutexGuard<'_, HashMap<String, Arc<JournalEntry>>> {
        // A map of entries, consistent after every statement.
        self.unfinished.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(&self, what: &str) -> String {
        format!("{}{what}:{}", self.base, self.replica)
    }

    fn ttl_millis(&self) -> u64 {
        u64::try_from(self.store.lease_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Starts the writer and the lease renewal in the current runtime, once.
    fn ensure_started(self: &Arc<Self>) -> io::Result<()> {
        if self.started.load(Ordering::Acquire) {
            return Ok(());
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| io::Error::other("the redis charge journal needs a tokio runtime"))?;
        if self.started.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let Some(rx) = self.ops_rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Ok(());
        };
        runtime.spawn(write_batches(Arc::downgrade(self), rx));
        runtime.spawn(renew_lease(Arc::downgrade(self)));
        Ok(())
    }

    /// One pipeline: the lease first (entries are never visible without a live
    /// lease, or a replay pass elsewhere could take them at once), then `ops` in order.
    async fn write(&self, ops: &[Op]) -> Result<(), String> {
        let entries = self.key("entries");
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.key("lease"))
            .arg(1)
            .arg("PX")
            .arg(self.ttl_millis())
            .ignore();
        pipe.cmd("SADD")
            .arg(format!("{}owners", self.base))
            .arg(&self.replica)
            .ignore();
        for op in ops {
            match op {
                Op::Append(entry) => {
                    let json = serde_json::to_string(&**entry)
                        .map_err(|_| "journal entry not serialisable".to_owned())?;
                    pipe.cmd("HSET")
                        .arg(&entries)
                        .arg(&entry.request_id)
                        .arg(json)
                        .ignore();
                }
                Op::Finish(request_id) => {
                    pipe.cmd("HDEL").arg(&entries).arg(request_id).ignore();
                }
            }
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.store.conn.pipeline::<()>(&pipe).await
    }

    async fn take_over(&self) -> Result<Vec<Arc<JournalEntry>>, String> {
        let mut invocation = self.take_over.prepare_invoke();
        invocation
            .key(format!("{}owners", self.base))
            .key(self.key("lease"))
            .key(self.key("entries"))
            .arg(&self.replica)
            .arg(&self.base)
            .arg(self.ttl_millis());
        let taken: Vec<String> = self.store.conn.script(&invocation).await?;
        let mut count = 0usize;
        {
            let mut unfinished = self.unfinished();
            for pair in taken.chunks_exact(2) {
                let [request_id, json] = pair else { continue };
                match serde_json::from_str::<JournalEntry>(json) {
                    Ok(mut entry) => {
                        entry.state = EntryState::recovered();
                        count += 1;
                        unfinished.insert(request_id.clone(), Arc::new(entry));
                    }
                    // Never the value: it holds a token.
                    Err(_) => {
                        tracing::error!(%request_id, "charge journal: unreadable entry taken over from redis, skipped")
                    }
                }
            }
        }
        if count > 0 {
            tracing::info!(
                taken = count,
                journal = %self.describe(),
                "charge journal: took over the entries of replicas whose lease expired"
            );
        }
        Ok(self.unfinished().values().cloned().collect())
    }

    fn describe(&self) -> String {
        format!("redis {}", self.key("entries"))
    }

    /// Hands an entry to the writer task.
    fn send(self: &Arc<Self>, entry: &Arc<JournalEntry>) -> io::Result<()> {
        self.ensure_started()?;
        self.ops
            .send(Op::Append(entry.clone()))
            .map_err(|_| io::Error::other("the redis charge journal's writer is gone"))
    }
}

/// The group commit loop: everything queued while a write was in flight goes in the
/// next one. Ends when the journal is dropped (its sender goes).
async fn write_batches(inner: Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Op>) {
    let mut batch = Vec::new();
    let mut unsent_finishes = Vec::new();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        batch.splice(0..0, unsent_finishes.drain(..));
        // Taken now: an entry whose charge is final already is not written, and its
        // `finish` sent no `HDEL` (it saw the entry untaken) and counted it elided.
        batch.retain(|op| match op {
            Op::Append(entry) => entry.state.take(),
            Op::Finish(_) => true,
        });
        if batch.is_empty() {
            continue;
        }
        let result = strong.write(&batch).await;
        if let Err(reason) = &result {
            tracing::warn!(%reason, journal = %strong.describe(), "charge journal: redis write failed");
        }
        if result.is_ok() {
            // Counted before the callers are told: what they read next includes it.
            let written = batch
                .iter()
                .filter(|op| matches!(op, Op::Append(_)))
                .count();
            strong.appended.fetch_add(written as u64, Ordering::Relaxed);
        }
        drop(strong);
        for op in batch.drain(..) {
            match op {
                Op::Append(entry) => entry.state.written(result.is_ok()),
                // Sent again with the next write: a lost mark would leave a token in
                // Redis for as long as this replica lives.
                Op::Finish(id) if result.is_err() => unsent_finishes.push(Op::Finish(id)),
                Op::Finish(_) => {}
            }
        }
    }
}

/// Keeps this replica's lease alive while the journal is: at a third of its TTL, so
/// one late renewal does not let it lapse.
async fn renew_lease(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let every = strong.store.lease_ttl / 3;
        let mut set = redis::cmd("SET");
        set.arg(strong.key("lease"))
            .arg(1)
            .arg("PX")
            .arg(strong.ttl_millis());
        if let Err(reason) = strong.store.conn.command::<()>(&set).await {
            tracing::warn!(%reason, journal = %strong.describe(), "charge journal: lease not renewed");
        }
        drop(strong);
        tokio::time::sleep(every.max(Duration::from_millis(10))).await;
    }
}

impl JournalStore for RedisJournal {
    fn append(&self, entry: Arc<JournalEntry>) -> BoxFuture<'static, io::Result<()>> {
        let inner = self.inner.clone();
        let mut asked = false;
        Box::pin(std::future::poll_fn(move |cx| {
            let released = entry.state.poll_released(cx);
            // Sent to the writer only once the response has to wait for it.
            if released.is_pending() && !asked {
                asked = true;
                if entry.state.queue() {
                    if let Err(error) = inner.send(&entry) {
                        entry.state.written(false);
                        tracing::error!(%error, journal = %inner.describe(), "charge journal: entry not written");
                        return entry.state.poll_released(cx);
                    }
                }
            }
            released
        }))
    }

    fn finish(&self, entry: &Arc<JournalEntry>) {
        let (taken, listed) = entry.state.finish();
        if listed {
            self.inner.unfinished().remove(&entry.request_id);
        }
        if taken {
            // Not durable, by the trait's contract: a lost `HDEL` costs one replay.
            let _ = self.inner.ops.send(Op::Finish(entry.request_id.clone()));
        } else {
            // Never sent, or sent and skipped when its batch is taken.
            self.inner.elided.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn keep(&self, entry: &Arc<JournalEntry>) {
        if entry.state.list() && !entry.state.is_finished() {
            self.inner
                .unfinished()
                .insert(entry.request_id.clone(), entry.clone());
        }
        // In Redis for the survivors and the next start-up, whether or not a response
        // waits for it.
        if entry.state.queue() {
            if let Err(error) = self.inner.send(entry) {
                tracing::error!(%error, journal = %self.inner.describe(), "charge journal: a charge without a final outcome is not written");
            }
        }
    }

    fn unfinished(&self) -> Vec<Arc<JournalEntry>> {
        self.inner.unfinished().values().cloned().collect()
    }

    fn replayable(&self) -> BoxFuture<'static, io::Result<Vec<Arc<JournalEntry>>>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            inner.ensure_started()?;
            inner.take_over().await.map_err(io::Error::other)
        })
    }

    fn stats(&self) -> JournalStats {
        JournalStats {
            appended: self.inner.appended.load(Ordering::Relaxed),
            fsyncs: self.inner.writes.load(Ordering::Relaxed),
            elided: self.inner.elided.load(Ordering::Relaxed),
            unfinished: self.inner.unfinished().len() as u64,
            ..JournalStats::default()
        }
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}
