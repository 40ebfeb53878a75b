//! [`FileJournal`]: the charge journal of one machine, an append-only file of
//! checksummed records written by one thread that group-commits.
//!
//! A request queues its entry (an `Arc` of it, whose [`EntryState`] it waits on) only
//! when its response has to wait for it ([`Released`] pending for the first time) or
//! its charge ends without a final outcome (`keep`): an entry whose charge is final
//! before its response asks costs no lock, no queue and no thread. Encoding, hashing
//! and writing happen on the writer thread, which takes everything
//! queued, encodes it into one buffer, writes it with one `write` and makes it durable
//! with one `fdatasync`; callers wait for that batch only. An entry whose charge became
//! final before the writer took it is skipped (nothing about it is written, not even a
//! `Done` mark): its response no longer waits on it (the module docs of `journal` say
//! why that is safe). Under load a batch carries many entries, so an fsync is shared by
//! many requests ([`JournalStats::fsyncs`]). The writer, once asleep, is woken only by a
//! response that waits for an entry (the first time its [`Released`] future is
//! pending), never by a queued entry or mark: thread wake-ups, not the disk, were the
//! cost of a first version with a channel per operation, and an entry whose charge is
//! final before its response asks (the common case) then costs no wake-up at all.
//! While awake (writing, or yielding twice before it sleeps) it takes whatever is
//! queued, and asleep it flushes what is queued every [`FLUSH_MARKS_AFTER`]. It never
//! waits for more entries once it has one ([`Shared::next_batch`] says why). `Done` marks never wake it and never wait:
//! they ride in the next batch (or a flush within a second), and a mark lost in a
//! crash costs one replay, which the backend answers idempotently.
//!
//! The file is rewritten with only the unfinished entries (and the route records they
//! reference) when it is opened (which also drops a torn tail and converts a version-1
//! JSON journal) and whenever finished records outnumber live ones, so a finished
//! charge's token does not stay on disk for long.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::record::{format_of, header, put_done, put_open, put_route, scan, Format, Record};
use super::{EntryState, JournalEntry, JournalStats, JournalStore};
use crate::types::PaymentRequired;

/// Finished records tolerated before a rewrite (and at least 4 per live one).
const COMPACT_AFTER: u64 = 1_024;
/// How long `Done` marks may wait for an entry to ride with before they are written.
const FLUSH_MARKS_AFTER: Duration = Duration::from_secs(1);
/// Times the writer yields its core, looking for more work, before it sleeps: it lets
/// the requests in flight add their entries to the next batch.
const YIELDS_BEFORE_SLEEP: usize = 2;
/// Queued operations that wake a sleeping writer even if no response waits: entries
/// (with their tokens) of charges long final must not pile up for a whole
/// [`FLUSH_MARKS_AFTER`] under load, and are dropped by the writer in bulk.
const WAKE_AT_QUEUED: usize = 256;

enum Op {
    /// An entry of a charge in flight; skipped if its charge is final when taken.
    Open(Arc<JournalEntry>),
    /// The entry's charge is final and its `Open` record was (being) written.
    Done(Arc<JournalEntry>),
}

/// Resolves once the entry is durable or its charge final. The first time it has to
/// wait, it wakes the writer: an entry nobody waits for (its charge is still running)
/// does not cost a thread wake-up, and is usually final, so never written, by the
/// time its response asks; one final by then costs no waker either.
struct Released {
    entry: Arc<JournalEntry>,
    shared: Arc<Shared>,
    asked: bool,
}

impl Future for Released {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let released = self.entry.state.poll_released(cx);
        if released.is_pending() && !self.asked {
            self.asked = true;
            if !self.entry.state.queue() {
                // Queued already (its charge ended unfinished): the writer is needed now.
                self.shared.wanted();
            } else if self
                .shared
                .push(Op::Open(self.entry.clone()), true)
                .is_err()
            {
                self.entry.state.written(false);
                return self.entry.state.poll_released(cx);
            }
        }
        released
    }
}

/// What the writer has to do, and whether it sleeps.
#[derive(Default)]
struct Queue {
    ops: Vec<Op>,
    /// `Open` operations in `ops`: only those need the writer now.
    opens: usize,
    /// The writer sleeps: a response waiting for an entry must wake it.
    idle: bool,
    /// The journal was dropped: write what is queued and stop.
    closed: bool,
    /// Tests hold the writer to see what happens before a batch is taken.
    #[cfg(test)]
    held: bool,
}

impl Queue {
    fn has_batch(&self) -> bool {
        #[cfg(test)]
        if self.held && !self.closed {
            return false;
        }
        self.opens > 0 || (self.closed && !self.ops.is_empty())
    }
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    work: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Pushes and takes of whole operations: consistent after a panic.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `op`; wakes a sleeping writer when a response waits for it (`wanted`),
    /// or when [`WAKE_AT_QUEUED`] operations wait.
    fn push(&self, op: Op, wanted: bool) -> Result<(), Op> {
        let is_open = matches!(op, Op::Open(..));
        let mut queue = self.lock();
        if queue.closed {
            return Err(op);
        }
        queue.ops.push(op);
        queue.opens += usize::from(is_open);
        let wake = queue.idle && (wanted || queue.ops.len() >= WAKE_AT_QUEUED);
        if wake {
            queue.idle = false;
        }
        drop(queue);
        if wake {
            self.work.notify_one();
        }
        Ok(())
    }

    /// A response waits for an entry: wakes the writer if it sleeps.
    fn wanted(&self) {
        let mut queue = self.lock();
        let wake = queue.idle;
        queue.idle = false;
        drop(queue);
        if wake {
            self.work.notify_one();
        }
    }

    /// The next batch, once there is an entry to write and the writer is awake (it
    /// sleeps until a response waits for an entry, or for [`FLUSH_MARKS_AFTER`]);
    /// `None` once closed and empty.
    ///
    /// It does not wait for more entries once there is one: the requests a batch
    /// releases come back with new entries while the next fsync runs, so under load
    /// the waiters form groups that overlap the disk with the CPU. (Waiting for them
    /// to gather into one batch was measured slower on this crate's load bench with
    /// the journal on a disk: BENCHMARKS.md, 2026-12-01, the `Background` goal.)
    fn next_batch(&self) -> Option<Vec<Op>> {
        let mut yields = 0;
        let mut queue = self.lock();
        loop {
            if queue.has_batch() {
                break;
            }
            if queue.closed {
                return None;
            }
            if yields < YIELDS_BEFORE_SLEEP {
                yields += 1;
                drop(queue);
                std::thread::yield_now();
                queue = self.lock();
                continue;
            }
            queue.idle = true;
            let (woken, waited) = self
                .work
                .wait_timeout(queue, FLUSH_MARKS_AFTER)
                .unwrap_or_else(|p| p.into_inner());
            queue = woken;
            queue.idle = false;
            #[cfg(test)]
            if queue.held {
                continue;
            }
            if waited.timed_out() && !queue.ops.is_empty() {
                break;
            }
        }
        queue.opens = 0;
        Some(std::mem::take(&mut queue.ops))
    }

    fn close(&self) {
        self.lock().closed = true;
        self.work.notify_one();
    }

    #[cfg(test)]
    fn hold(&self, held: bool) {
        self.lock().held = held;
        self.work.notify_one();
    }
}

#[derive(Default)]
struct Counters {
    appended: AtomicU64,
    fsyncs: AtomicU64,
    compactions: AtomicU64,
    elided: AtomicU64,
}

/// The local file journal (see the module docs).
pub(crate) struct FileJournal {
    /// The writer's queue.
    shared: Arc<Shared>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Listed entries (recovered, or kept after their charge ended without a final
    /// outcome), for replay; an entry of a charge in flight is in no table.
    live: Mutex<crate::hashing::HashMap<String, Arc<JournalEntry>>>,
    counters: Arc<Counters>,
    path: PathBuf,
}

/// Why a journal could not be opened, for `ConfigError`.
#[derive(Debug)]
pub(crate) enum OpenError {
    Io(io::Error),
    Locked,
    NotAJournal,
    /// A journal in a format this version cannot read (written by a newer one).
    UnknownVersion,
}

impl OpenError {
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            OpenError::Locked => "the journal is in use by another process (or another layer)",
            OpenError::NotAJournal => "the file exists and is not a charge journal",
            OpenError::UnknownVersion => "the file is a charge journal in a format this version of nvm-payments cannot read (written by a newer version?); it was left untouched",
            OpenError::Io(e) => match e.kind() {
                io::ErrorKind::NotFound => "its directory does not exist",
                io::ErrorKind::PermissionDenied => "permission denied",
                io::ErrorKind::IsADirectory => "the path is a directory",
                _ => "the journal file cannot be opened, read or written",
            },
        }
    }
}

impl From<io::Error> for OpenError {
    fn from(e: io::Error) -> Self {
        OpenError::Io(e)
    }
}

impl FileJournal {
    /// Opens (or creates) the journal at `path`, recovers its unfinished entries,
    /// rewrites it in the current format without finished ones or a torn tail, and
    /// starts the writer.
    pub(crate) fn open(path: &Path) -> Result<Self, OpenError> {
        let lock = private_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(lock_path(path))?;
        lock.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => OpenError::Locked,
            std::fs::TryLockError::Error(e) => OpenError::Io(e),
        })?;
        let bytes = read_existing(path)?;
        match format_of(&bytes) {
            Format::NotAJournal => return Err(OpenError::NotAJournal),
            Format::Unknown(version) => {
                tracing::error!(path = %path.display(), version = %char::from(version),
                    "charge journal: unknown format version; the file is left untouched");
                return Err(OpenError::UnknownVersion);
            }
            Format::Empty | Format::Json | Format::Binary => {}
        }
        let found = scan(&bytes);
        if found.skipped > 0 {
            tracing::warn!(
                path = %path.display(), skipped_bytes = found.skipped,
                "charge journal: a torn or corrupt tail was skipped (a crash mid-write); every complete entry before it is kept"
            );
        }
        let mut entries: HashMap<String, Arc<JournalEntry>> = HashMap::new();
        for record in found.records {
            match record {
                Record::Open(mut entry) => {
                    entry.state = EntryState::recovered();
                    entries.insert(entry.request_id.clone(), Arc::new(entry));
                }
                Record::Done(id) => {
                    entries.remove(&id);
                }
            }
        }
        let mut routes = Routes::default();
        // `Written` hashes and compares the request id only, which never changes (the
        // entry's state, beside it, does).
        #[allow(clippy::mutable_key_type)]
        let mut written = HashSet::new();
        for entry in entries.values() {
            let route = routes.id_of(&entry.payment_required, &mut Vec::new(), &mut Vec::new());
            written.insert(Written(route, entry.clone()));
        }
        let (file, len) = rewrite(path, &mut routes, &written)?;
        if !entries.is_empty() {
            tracing::info!(path = %path.display(), unfinished = entries.len(),
                "charge journal: unfinished charges found; they will be replayed");
        }
        let live = entries.into_iter().collect();
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared::default());
        let queue = shared.clone();
        let writer = Writer {
            path: path.to_owned(),
            file,
            len,
            torn: false,
            routes,
            written,
            dead: 0,
            counters: counters.clone(),
            _lock: lock,
        };
        let writer = std::thread::Builder::new()
            .name("nvm-charge-journal".into())
            .spawn(move || writer.run(&queue))?;
        Ok(FileJournal {
            shared,
            writer: Some(writer),
            live: Mutex::new(live),
            counters,
            path: path.to_owned(),
        })
    }

    fn live(&self) -> MutexGuard<'_, crate::hashing::HashMap<String, Arc<JournalEntry>>> {
        // A map updated in single statements: consistent even after a panic.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for FileJournal {
    /// Waits for the writer to write what is queued and let go of the lock, so the
    /// journal can be opened again as soon as its layer is gone.
    fn drop(&mut self) {
        self.shared.close();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl JournalStore for FileJournal {
    /// Encoding, hashing and writing happen on the writer thread, and only for entries
    /// whose charge is not final by the time their batch is taken.
    fn append(&self, entry: Arc<JournalEntry>) -> BoxFuture<'static, io::Result<()>> {
        Box::pin(Released {
            entry,
            shared: self.shared.clone(),
            asked: false,
        })
    }

    fn finish(&self, entry: &Arc<JournalEntry>) {
        let (taken, listed) = entry.state.finish();
        if listed {
            self.live().remove(&entry.request_id);
        }
        if taken {
            // Never wakes the writer: it rides with the next batch (module docs).
            let _ = self.shared.push(Op::Done(entry.clone()), false);
        } else {
            // Never queued, or queued and skipped when its batch is taken.
            self.counters.elided.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn keep(&self, entry: &Arc<JournalEntry>) {
        if entry.state.list() && !entry.state.is_finished() {
            self.live().insert(entry.request_id.clone(), entry.clone());
        }
        // On disk for the next start-up, whether or not a response waits for it.
        if entry.state.queue() && self.shared.push(Op::Open(entry.clone()), false).is_err() {
            tracing::error!(path = %self.path.display(),
                "charge journal: closed; a charge without a final outcome is not written");
        }
    }

    fn unfinished(&self) -> Vec<Arc<JournalEntry>> {
        self.live().values().cloned().collect()
    }

    fn stats(&self) -> JournalStats {
        JournalStats {
            appended: self.counters.appended.load(Ordering::Relaxed),
            fsyncs: self.counters.fsyncs.load(Ordering::Relaxed),
            compactions: self.counters.compactions.load(Ordering::Relaxed),
            elided: self.counters.elided.load(Ordering::Relaxed),
            unfinished: self.live().len() as u64,
            replayed: 0,
        }
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

/// An entry whose `Open` record is in the file, with the id of its route record;
/// found by request id.
struct Written(u32, Arc<JournalEntry>);

impl PartialEq for Written {
    fn eq(&self, other: &Self) -> bool {
        self.1.request_id == other.1.request_id
    }
}
impl Eq for Written {}
impl Hash for Written {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes: `Borrow<str>` requires the same hash.
        self.1.request_id.as_str().hash(state);
    }
}
impl Borrow<str> for Written {
    fn borrow(&self) -> &str {
        &self.1.request_id
    }
}

/// The route records in the file, so each route's `paymentRequired` is written once.
#[derive(Default)]
struct Routes {
    /// By the address of the route's shared `paymentRequired` (held, so the address
    /// is not reused): the common case, no hashing of the route.
    by_address: HashMap<usize, (Arc<PaymentRequired>, u32)>,
    /// By content: another `Arc` of a route already written (a replayed entry).
    by_json: HashMap<Vec<u8>, u32>,
    /// Each route's framed record, for rewrites.
    frames: HashMap<u32, Vec<u8>>,
    next: u32,
}

impl Routes {
    /// The id of `route`; a new one's record is appended to `out` (and its id to
    /// `added`, to be forgotten if the write fails).
    fn id_of(
        &mut self,
        route: &Arc<PaymentRequired>,
        out: &mut Vec<u8>,
        added: &mut Vec<u32>,
    ) -> u32 {
        let address = Arc::as_ptr(route) as usize;
        if let Some((_, id)) = self.by_address.get(&address) {
            return *id;
        }
        // Serialising plain strings and numbers into a Vec cannot fail.
        let json = serde_json::to_vec(&**route).unwrap_or_default();
        let id = match self.by_json.get(&json) {
            Some(id) => *id,
            None => {
                let id = self.next;
                self.next = self.next.wrapping_add(1);
                let mut frame = Vec::new();
                put_route(&mut frame, id, &json);
                out.extend_from_slice(&frame);
                self.frames.insert(id, frame);
                self.by_json.insert(json, id);
                added.push(id);
                id
            }
        };
        self.by_address.insert(address, (route.clone(), id));
        id
    }

    /// Keeps only the routes in `ids`: the others are no longer in the file.
    fn keep_only(&mut self, ids: &HashSet<u32>) {
        self.frames.retain(|id, _| ids.contains(id));
        self.by_json.retain(|_, id| ids.contains(id));
        self.by_address.retain(|_, (_, id)| ids.contains(id));
    }

    fn forget(&mut self, ids: &[u32]) {
        if !ids.is_empty() {
            let keep: HashSet<u32> = self
                .frames
                .keys()
                .filter(|id| !ids.contains(id))
                .copied()
                .collect();
            self.keep_only(&keep);
        }
    }
}

/// The thread that owns the file.
struct Writer {
    path: PathBuf,
    file: File,
    /// Bytes of the file up to the end of the last complete write.
    len: u64,
    /// A write failed and its part-record could not be cut off yet.
    torn: bool,
    routes: Routes,
    /// Every unfinished entry in the file: what a rewrite keeps.
    written: HashSet<Written>,
    /// Records in the file that a rewrite would drop.
    dead: u64,
    counters: Arc<Counters>,
    /// Held for the writer's life: one process, one layer per journal.
    _lock: File,
}

impl Writer {
    /// Ends when the journal is dropped, after writing what was queued.
    fn run(mut self, queue: &Shared) {
        let mut buf = Vec::new();
        let mut waiting = Vec::new();
        let mut added = Vec::new();
        // Group commit: everything queued while the last batch was syncing.
        while let Some(batch) = queue.next_batch() {
            buf.clear();
            added.clear();
            for op in batch {
                match op {
                    Op::Open(entry) => {
                        if !entry.state.take() {
                            // Final first: counted as elided by `finish`.
                            continue;
                        }
                        let route =
                            self.routes
                                .id_of(&entry.payment_required, &mut buf, &mut added);
                        put_open(&mut buf, route, &entry);
                        self.written.insert(Written(route, entry.clone()));
                        waiting.push(entry);
                    }
                    Op::Done(entry) => {
                        put_done(&mut buf, &entry.request_id);
                        // The open record and this mark.
                        self.dead += 1 + u64::from(self.written.remove(entry.request_id.as_str()));
                    }
                }
            }
            if buf.is_empty() {
                continue;
            }
            let result = self.write(&buf, !waiting.is_empty());
            if let Err(e) = &result {
                tracing::error!(path = %self.path.display(), error = %e,
                    "charge journal: write failed; these charges are not durable (they are charged before their responses instead)");
                for entry in &waiting {
                    self.written.remove(entry.request_id.as_str());
                }
                self.routes.forget(&added);
            }
            // Counted before the callers are told: what they read next includes it.
            if result.is_ok() {
                self.counters
                    .appended
                    .fetch_add(waiting.len() as u64, Ordering::Relaxed);
            }
            for entry in waiting.drain(..) {
                entry.state.written(result.is_ok());
            }
            if self.dead >= COMPACT_AFTER && self.dead >= 4 * self.written.len() as u64 {
                self.compact();
            }
        }
    }

    fn write(&mut self, buf: &[u8], sync: bool) -> io::Result<()> {
        // A failed write (a full disk) may have left part of a record: cut it off,
        // or every record appended after it would be unreadable at recovery.
        if self.torn {
            self.file.set_len(self.len)?;
            self.torn = false;
        }
        let written = self.file.write_all(buf).and_then(|()| {
            if sync {
                self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        match written {
            Ok(()) => {
                self.len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.torn = self.file.set_len(self.len).is_err();
                Err(e)
            }
        }
    }

    /// Rewrites the file with the unfinished entries only (and their routes).
    fn compact(&mut self) {
        match rewrite(&self.path, &mut self.routes, &self.written) {
            Ok((file, len)) => {
                self.file = file;
                self.len = len;
                self.torn = false;
                self.dead = 0;
                self.counters.compactions.fetch_add(1, Ordering::Relaxed);
                self.counters.fsyncs.fetch_add(2, Ordering::Relaxed);
            }
            Err(e) => tracing::error!(path = %self.path.display(), error = %e,
                "charge journal: compaction failed; the journal keeps growing until it succeeds"),
        }
    }
}

/// `0600` on unix: the journal holds subscribers' access tokens.
fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

fn read_existing(path: &Path) -> io::Result<Vec<u8>> {
    match File::open(path) {
        Ok(mut file) => {
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            Ok(bytes)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Writes a new journal holding the `written` entries, after the route records they
/// reference, beside `path`, makes it durable, and renames it over `path` (atomic: a
/// crash leaves the old file or the new one). `routes` keeps only the routes written.
/// Returns the new file opened for appending, and its length.
// `Written` hashes and compares the request id only, which never changes.
#[allow(clippy::mutable_key_type)]
fn rewrite(
    path: &Path,
    routes: &mut Routes,
    written: &HashSet<Written>,
) -> io::Result<(File, u64)> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    // A leftover of a crash mid-rewrite: `mode` applies only to a file it creates.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut out = private_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    let referenced: HashSet<u32> = written.iter().map(|w| w.0).collect();
    let mut bytes = header().to_vec();
    for id in &referenced {
        if let Some(frame) = routes.frames.get(id) {
            bytes.extend_from_slice(frame);
        }
    }
    for Written(route, entry) in written {
        put_open(&mut bytes, *route, entry);
    }
    out.write_all(&bytes)?;
    out.sync_data()?;
    drop(out);
    std::fs::rename(&tmp, path)?;
    // From here the file holds only these routes, whatever fails next.
    routes.keep_only(&referenced);
    sync_dir(path)?;
    let file = private_options().append(true).open(path)?;
    Ok((file, bytes.len() as u64))
}

/// Makes the rename durable.
fn sync_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::settle::journal::test_entry;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "nvm-journal-{name}-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        fn file(&self) -> PathBuf {
            self.0.join("charges.journal")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn ids(journal: &FileJournal) -> BTreeSet<String> {
        journal
            .unfinished()
            .iter()
            .map(|e| e.request_id.clone())
            .collect()
    }

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn route_record() -> Vec<u8> {
        let json = serde_json::to_vec(&*test_entry("x").payment_required).unwrap();
        let mut out = Vec::new();
        put_route(&mut out, 0, &json);
        out
    }

    fn open_record(id: &str) -> Vec<u8> {
        let mut out = Vec::new();
        put_open(&mut out, 0, &test_entry(id));
        out
    }

    /// A journal file written by hand: a route, `open` records, then `done` marks.
    fn write_journal(path: &Path, open: &[&str], done: &[&str]) -> Vec<u8> {
        let mut bytes = header().to_vec();
        bytes.extend(route_record());
        for id in open {
            bytes.extend(open_record(id));
        }
        for id in done {
            put_done(&mut bytes, id);
        }
        std::fs::write(path, &bytes).unwrap();
        bytes
    }

    #[tokio::test]
    async fn entries_survive_a_reopen_until_they_are_finished() {
        let dir = TempDir::new("reopen");
        let journal = FileJournal::open(&dir.file()).unwrap();
        let entries = ["a", "b", "c"].map(|id| Arc::new(test_entry(id)));
        for entry in &entries {
            journal.append(entry.clone()).await.unwrap();
        }
        journal.finish(&entries[1]);
        drop(journal);
        let journal = FileJournal::open(&dir.file()).unwrap();
        assert_eq!(ids(&journal), set(&["a", "c"]));
        let tokens = String::from_utf8_lossy(&std::fs::read(dir.file()).unwrap()).into_owned();
        assert!(
            !tokens.contains("secret-token-of-b"),
            "the reopen rewrote the file without the finished entry's token"
        );
    }

    #[test]
    fn a_truncated_last_record_is_skipped_and_every_complete_entry_replayed() {
        let dir = TempDir::new("torn");
        let bytes = write_journal(&dir.file(), &["a", "b", "c"], &[]);
        std::fs::write(dir.file(), &bytes[..bytes.len() - 7]).unwrap();
        let journal = FileJournal::open(&dir.file()).unwrap();
        assert_eq!(ids(&journal), set(&["a", "b"]));
        // The torn tail is gone from the file: what is appended next is readable.
        assert_eq!(scan(&std::fs::read(dir.file()).unwrap()).skipped, 0);
    }

    #[test]
    fn garbage_appended_is_skipped_and_every_complete_entry_replayed() {
        let dir = TempDir::new("garbage");
        let mut bytes = write_journal(&dir.file(), &["a", "b", "c"], &["b"]);
        bytes.extend_from_slice(b"\x10\x00\x00\x00not a record at all, just noise");
        std::fs::write(dir.file(), &bytes).unwrap();
        let journal = FileJournal::open(&dir.file()).unwrap();
        assert_eq!(ids(&journal), set(&["a", "c"]));
        assert_eq!(scan(&std::fs::read(dir.file()).unwrap()).skipped, 0);
    }

    #[tokio::test]
    async fn appends_after_a_recovered_tail_are_read_back() {
        let dir = TempDir::new("after-tail");
        let mut bytes = write_journal(&dir.file(), &["a"], &[]);
        bytes.extend_from_slice(&[0xde, 0xad, 0xbe]);
        std::fs::write(dir.file(), &bytes).unwrap();
        let journal = FileJournal::open(&dir.file()).unwrap();
        journal.append(Arc::new(test_entry("d"))).await.unwrap();
        let scan = scan(&std::fs::read(dir.file()).unwrap());
        assert_eq!(scan.records.len(), 2);
        assert_eq!(scan.skipped, 0);
    }

    #[test]
    fn a_write_that_failed_half_way_is_cut_off_before_the_next_one() {
        let dir = TempDir::new("torn-write");
        let mut routes = Routes::default();
        let (file, len) = rewrite(&dir.file(), &mut routes, &HashSet::new()).unwrap();
        let mut writer = Writer {
            path: dir.file(),
            file,
            len,
            torn: false,
            routes,
            written: HashSet::new(),
            dead: 0,
            counters: Arc::default(),
            _lock: File::open(dir.file()).unwrap(),
        };
        let mut first = route_record();
        first.extend(open_record("a"));
        writer.write(&first, true).unwrap();
        // A full disk: half of a record reached the file, the write failed.
        let half = open_record("b");
        writer.file.write_all(&half[..half.len() / 2]).unwrap();
        writer.torn = true;
        writer.write(&open_record("c"), true).unwrap();
        let scan = scan(&std::fs::read(dir.file()).unwrap());
        assert_eq!(scan.records.len(), 2, "a and c, both readable");
        assert_eq!(scan.skipped, 0);
    }

    #[test]
    fn a_second_open_of_the_same_journal_is_refused() {
        let dir = TempDir::new("locked");
        let _first = FileJournal::open(&dir.file()).unwrap();
        assert!(matches!(
            FileJournal::open(&dir.file()),
            Err(OpenError::Locked)
        ));
    }

    #[test]
    fn a_file_that_is_not_a_journal_is_refused_untouched() {
        let dir = TempDir::new("foreign");
        std::fs::write(dir.file(), b"{\"some\": \"config\"}").unwrap();
        assert!(matches!(
            FileJournal::open(&dir.file()),
            Err(OpenError::NotAJournal)
        ));
        assert_eq!(
            std::fs::read(dir.file()).unwrap(),
            b"{\"some\": \"config\"}"
        );
        // A journal of a format version this code does not know: refused, untouched.
        let newer = b"NVMJRNL9 whatever a newer version writes".to_vec();
        std::fs::write(dir.file(), &newer).unwrap();
        let refused = FileJournal::open(&dir.file());
        assert!(matches!(refused, Err(OpenError::UnknownVersion)));
        assert!(refused.err().unwrap().reason().contains("format"));
        assert_eq!(std::fs::read(dir.file()).unwrap(), newer);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_file_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("mode");
        let journal = FileJournal::open(&dir.file()).unwrap();
        journal.append(Arc::new(test_entry("a"))).await.unwrap();
        let mode = std::fs::metadata(dir.file()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_fsyncs() {
        let dir = TempDir::new("group");
        let journal = Arc::new(FileJournal::open(&dir.file()).unwrap());
        let writes: Vec<_> = (0..400)
            .map(|i| journal.append(Arc::new(test_entry(&format!("r{i}")))))
            .collect();
        for w in futures_util::future::join_all(writes).await {
            w.unwrap();
        }
        let stats = journal.stats();
        assert_eq!(stats.appended, 400);
        assert!(
            stats.fsyncs < 400,
            "one fsync per batch, not per entry: {stats:?}"
        );
    }

    #[tokio::test]
    async fn finished_entries_are_compacted_away() {
        let dir = TempDir::new("compact");
        let journal = FileJournal::open(&dir.file()).unwrap();
        let entries: Vec<_> = (0..COMPACT_AFTER)
            .map(|i| Arc::new(test_entry(&format!("r{i}"))))
            .collect();
        let writes = entries.iter().map(|entry| journal.append(entry.clone()));
        for w in futures_util::future::join_all(writes).await {
            w.unwrap();
        }
        for entry in &entries {
            journal.finish(entry);
        }
        // The marks ride with the next durable batch: one more append flushes them.
        let (last, after) = (Arc::new(test_entry("last")), Arc::new(test_entry("after")));
        journal.append(last.clone()).await.unwrap();
        journal.append(after.clone()).await.unwrap();
        // Their charges end without a final outcome: listed for replay passes.
        journal.keep(&last);
        journal.keep(&after);
        assert!(journal.stats().compactions >= 1, "{:?}", journal.stats());
        let scan = scan(&std::fs::read(dir.file()).unwrap());
        assert!(
            scan.records.len() <= 3,
            "{} records left",
            scan.records.len()
        );
        assert_eq!(ids(&journal), set(&["last", "after"]));
    }

    /// An entry of its own route (`url`).
    fn entry_on(request_id: &str, url: &str) -> JournalEntry {
        let mut entry = test_entry(request_id);
        let mut route = serde_json::to_value(&*entry.payment_required).unwrap();
        route["resource"]["url"] = url.into();
        entry.payment_required = Arc::new(serde_json::from_value(route).unwrap());
        entry
    }

    fn url_of(entry: &JournalEntry) -> String {
        serde_json::to_value(&*entry.payment_required).unwrap()["resource"]["url"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[tokio::test]
    async fn a_route_is_written_once_and_kept_across_compaction_while_referenced() {
        let dir = TempDir::new("routes");
        let journal = FileJournal::open(&dir.file()).unwrap();
        let kept = Arc::new(entry_on("kept", "/kept-route"));
        let gone = Arc::new(entry_on("gone-0", "/gone-route"));
        journal.append(kept.clone()).await.unwrap();
        // Many entries on a second route, sharing its `paymentRequired` as requests do.
        let mut writes = Vec::new();
        let mut gone_all = Vec::new();
        for i in 0..COMPACT_AFTER {
            let mut e = JournalEntry::clone(&gone);
            e.request_id = format!("gone-{i}");
            let e = Arc::new(e);
            gone_all.push(e.clone());
            writes.push(journal.append(e));
        }
        for w in futures_util::future::join_all(writes).await {
            w.unwrap();
        }
        let before = std::fs::read(dir.file()).unwrap();
        let count = |bytes: &[u8], what: &str| String::from_utf8_lossy(bytes).matches(what).count();
        assert_eq!(
            count(&before, "/gone-route"),
            1,
            "one route record for all its entries"
        );
        for e in &gone_all {
            journal.finish(e);
        }
        // The marks ride with the next batch, which then compacts.
        journal
            .append(Arc::new(entry_on("late", "/kept-route")))
            .await
            .unwrap();
        journal
            .append(Arc::new(entry_on("later", "/gone-route")))
            .await
            .unwrap();
        assert!(journal.stats().compactions >= 1, "{:?}", journal.stats());
        drop(journal);
        let after = std::fs::read(dir.file()).unwrap();
        assert_eq!(
            count(&after, "/kept-route"),
            1,
            "re-emitted once for its entries"
        );
        assert_eq!(
            count(&after, "/gone-route"),
            1,
            "only for the entry still on it"
        );
        let journal = FileJournal::open(&dir.file()).unwrap();
        let mut urls: Vec<(String, String)> = journal
            .unfinished()
            .iter()
            .map(|e| (e.request_id.clone(), url_of(e)))
            .collect();
        urls.sort();
        assert_eq!(
            urls,
            [
                ("kept".into(), "/kept-route".into()),
                ("late".into(), "/kept-route".into()),
                ("later".into(), "/gone-route".into()),
            ]
        );
    }

    #[tokio::test]
    async fn an_entry_final_before_its_batch_is_taken_never_reaches_the_file() {
        let dir = TempDir::new("elide");
        let journal = FileJournal::open(&dir.file()).unwrap();
        journal.shared.hold(true);
        let (quick_entry, slow_entry) =
            (Arc::new(test_entry("quick")), Arc::new(test_entry("slow")));
        let mut quick = journal.append(quick_entry.clone());
        let mut slow = journal.append(slow_entry.clone());
        assert!(futures_util::FutureExt::now_or_never(&mut quick).is_none());
        // Its charge is final: the response it holds back may go, nothing is written.
        journal.finish(&quick_entry);
        assert!(futures_util::FutureExt::now_or_never(&mut quick)
            .unwrap()
            .is_ok());
        assert!(
            futures_util::FutureExt::now_or_never(&mut slow).is_none(),
            "not final, not durable: its response waits"
        );
        journal.shared.hold(false);
        slow.await.unwrap();
        // Its charge ends without a final outcome: listed for replay passes.
        assert!(journal.unfinished().is_empty(), "in flight: in no table");
        journal.keep(&slow_entry);
        let stats = journal.stats();
        assert_eq!(
            (stats.appended, stats.elided, stats.unfinished),
            (1, 1, 1),
            "{stats:?}"
        );
        drop(journal);
        let bytes = std::fs::read(dir.file()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("secret-token-of-slow"));
        assert!(!text.contains("quick"), "neither its entry nor a done mark");
    }

    #[tokio::test]
    async fn a_charge_final_while_its_entry_is_written_releases_at_once_and_is_marked_done() {
        let dir = TempDir::new("late-finish");
        let journal = FileJournal::open(&dir.file()).unwrap();
        let a = Arc::new(test_entry("a"));
        journal.append(a.clone()).await.unwrap();
        journal.finish(&a);
        journal.append(Arc::new(test_entry("b"))).await.unwrap();
        drop(journal);
        let kinds: Vec<String> = scan(&std::fs::read(dir.file()).unwrap())
            .records
            .iter()
            .map(|r| match r {
                Record::Open(e) => format!("open {}", e.request_id),
                Record::Done(id) => format!("done {id}"),
            })
            .collect();
        assert_eq!(kinds, ["open a", "done a", "open b"]);
        let journal = FileJournal::open(&dir.file()).unwrap();
        assert_eq!(ids(&journal), set(&["b"]));
    }

    #[tokio::test]
    async fn an_entry_final_before_its_response_asks_is_never_queued() {
        let dir = TempDir::new("never-queued");
        let journal = FileJournal::open(&dir.file()).unwrap();
        let entry = Arc::new(test_entry("instant"));
        let mut released = journal.append(entry.clone());
        journal.finish(&entry);
        // Released at the first poll, without a waker, a queue or the writer.
        assert!(futures_util::FutureExt::now_or_never(&mut released)
            .unwrap()
            .is_ok());
        assert!(journal.shared.lock().ops.is_empty(), "nothing queued");
        let stats = journal.stats();
        assert_eq!(
            (stats.appended, stats.elided, stats.fsyncs),
            (0, 1, 0),
            "{stats:?}"
        );
    }

    #[tokio::test]
    async fn only_entries_whose_charge_ended_unfinished_are_listed_and_finish_unlists_them() {
        let dir = TempDir::new("listed");
        let journal = FileJournal::open(&dir.file()).unwrap();
        let (flying, ended) = (
            Arc::new(test_entry("flying")),
            Arc::new(test_entry("ended")),
        );
        journal.append(flying.clone()).await.unwrap();
        journal.append(ended.clone()).await.unwrap();
        // In flight: held by its ticket only, never offered to a replay.
        assert!(ids(&journal).is_empty());
        journal.keep(&ended);
        assert_eq!(ids(&journal), set(&["ended"]));
        // A replay pass charges it: the entry it holds is the one unlisted.
        let listed = journal.unfinished().pop().unwrap();
        journal.finish(&listed);
        assert!(ids(&journal).is_empty());
        assert_eq!(journal.stats().unfinished, 0);
        journal.finish(&flying);
        drop(journal);
        // Both marked done in the file: nothing to replay at the next start-up.
        let journal = FileJournal::open(&dir.file()).unwrap();
        assert!(ids(&journal).is_empty());
    }

    #[test]
    fn a_version_1_json_journal_is_read_and_rewritten_in_the_current_format() {
        use crate::settle::journal::record::tests::json_journal;
        let dir = TempDir::new("v1");
        let old = json_journal(&[
            serde_json::json!({"open": test_entry("a")}),
            serde_json::json!({"open": test_entry("b")}),
            serde_json::json!({"done": "a"}),
        ]);
        std::fs::write(dir.file(), &old).unwrap();
        let journal = FileJournal::open(&dir.file()).unwrap();
        assert_eq!(ids(&journal), set(&["b"]));
        let entry = journal.unfinished().pop().unwrap();
        assert_eq!(entry.token.as_str(), "secret-token-of-b");
        assert_eq!(url_of(&entry), "/ask");
        drop(journal);
        let bytes = std::fs::read(dir.file()).unwrap();
        assert_eq!(format_of(&bytes), Format::Binary);
        assert_eq!(scan(&bytes).records.len(), 1);
    }
}
