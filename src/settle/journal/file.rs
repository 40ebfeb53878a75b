//! [`FileJournal`]: the charge journal of one machine, an append-only file of
//! checksummed records written by one thread that group-commits.
//!
//! Every charge that must survive a crash is put on a queue for the writer thread,
//! which takes everything queued, writes it in one `write` and makes it durable with
//! one `fdatasync`; callers wait for that batch only. Under load a batch carries many
//! entries, so an fsync is shared by many requests ([`JournalStats::fsyncs`]). The
//! writer is woken only when it sleeps, and only by an entry: thread wake-ups, not the
//! disk, were the cost of a first version with a channel per operation (a profile of
//! the load bench showed a third of the time in futex wake and wait). `Done` marks
//! never wake it and never wait: they ride in the next batch (or a flush within a
//! second), and a mark lost in a crash costs one replay, which the backend answers
//! idempotently.
//!
//! The file is rewritten with only the unfinished entries when it is opened (which
//! also drops a torn tail) and whenever finished records outnumber live ones, so a
//! finished charge's token does not stay on disk for long.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::oneshot;

use super::record::{frame, scan, Record, RecordRef, MAGIC};
use super::{JournalEntry, JournalStats, JournalStore};

/// Finished records tolerated before a rewrite (and at least 4 per live one).
const COMPACT_AFTER: u64 = 1_024;
/// How long `Done` marks may wait for an entry to ride with before they are written.
const FLUSH_MARKS_AFTER: Duration = Duration::from_secs(1);
/// Times the writer yields its core, looking for more work, before it sleeps: it lets
/// the requests in flight add their entries to the next batch.
const YIELDS_BEFORE_SLEEP: usize = 2;

enum Op {
    Open {
        request_id: String,
        frame: Vec<u8>,
        durable: oneshot::Sender<io::Result<()>>,
    },
    Done(String),
}

/// What the writer has to do, and whether it sleeps.
#[derive(Default)]
struct Queue {
    ops: Vec<Op>,
    /// `Open` operations in `ops`: only those need the writer now.
    opens: usize,
    /// The writer sleeps: the next `Open` must wake it.
    idle: bool,
    /// The journal was dropped: write what is queued and stop.
    closed: bool,
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

    /// Queues `op`; wakes the writer only for an `Open` while it sleeps.
    fn push(&self, op: Op) -> Result<(), Op> {
        let is_open = matches!(op, Op::Open { .. });
        let mut queue = self.lock();
        if queue.closed {
            return Err(op);
        }
        queue.ops.push(op);
        queue.opens += usize::from(is_open);
        let wake = is_open && queue.idle;
        if wake {
            queue.idle = false;
        }
        drop(queue);
        if wake {
            self.work.notify_one();
        }
        Ok(())
    }

    /// The next batch, once there is an entry to write (or marks older than
    /// [`FLUSH_MARKS_AFTER`]); `None` once closed and empty.
    fn next_batch(&self) -> Option<Vec<Op>> {
        let mut yields = 0;
        let mut queue = self.lock();
        loop {
            if queue.opens > 0 || (queue.closed && !queue.ops.is_empty()) {
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
}

#[derive(Default)]
struct Counters {
    appended: AtomicU64,
    fsyncs: AtomicU64,
    compactions: AtomicU64,
}

/// The local file journal (see the module docs).
pub(crate) struct FileJournal {
    /// The writer's queue.
    shared: Arc<Shared>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Unfinished entries, for replay.
    live: Mutex<HashMap<String, Arc<JournalEntry>>>,
    counters: Arc<Counters>,
    path: PathBuf,
}

/// Why a journal could not be opened, for `ConfigError`.
#[derive(Debug)]
pub(crate) enum OpenError {
    Io(io::Error),
    Locked,
    NotAJournal,
}

impl OpenError {
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            OpenError::Locked => "the journal is in use by another process (or another layer)",
            OpenError::NotAJournal => "the file exists and is not a charge journal",
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
    /// rewrites it without finished ones or a torn tail, and starts the writer.
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
        if !bytes.is_empty() && !bytes.starts_with(MAGIC) {
            return Err(OpenError::NotAJournal);
        }
        let found = scan(&bytes);
        if found.skipped > 0 {
            tracing::warn!(
                path = %path.display(), skipped_bytes = found.skipped,
                "charge journal: a torn or corrupt tail was skipped (a crash mid-write); every complete entry before it is kept"
            );
        }
        let mut live: HashMap<String, Arc<JournalEntry>> = HashMap::new();
        for record in found.records {
            match record {
                Record::Open(entry) => {
                    live.insert(entry.request_id.clone(), Arc::from(entry));
                }
                Record::Done(id) => {
                    live.remove(&id);
                }
            }
        }
        let frames: HashMap<String, Vec<u8>> = live
            .iter()
            .map(|(id, e)| (id.clone(), frame(&RecordRef::Open(e))))
            .collect();
        let (file, len) = rewrite(path, frames.values())?;
        if !live.is_empty() {
            tracing::info!(path = %path.display(), unfinished = live.len(),
                "charge journal: unfinished charges found; they will be replayed");
        }
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared::default());
        let queue = shared.clone();
        let writer = Writer {
            path: path.to_owned(),
            file,
            len,
            torn: false,
            frames,
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

    fn live(&self) -> MutexGuard<'_, HashMap<String, Arc<JournalEntry>>> {
        // A map updated in single statements: consistent even after a panic.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, op: Op) -> Result<(), Op> {
        self.shared.push(op)
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
    fn append(&self, entry: Arc<JournalEntry>) -> BoxFuture<'static, io::Result<()>> {
        let frame = frame(&RecordRef::Open(&entry));
        let request_id = entry.request_id.clone();
        self.live().insert(request_id.clone(), entry);
        let (durable, written) = oneshot::channel();
        let sent = self.send(Op::Open {
            request_id,
            frame,
            durable,
        });
        Box::pin(async move {
            if sent.is_err() {
                return Err(io::Error::other("the charge journal's writer has stopped"));
            }
            written.await.unwrap_or_else(|_| {
                Err(io::Error::other("the charge journal's writer has stopped"))
            })
        })
    }

    fn finish(&self, request_id: &str) {
        if self.live().remove(request_id).is_some() {
            let _ = self.send(Op::Done(request_id.to_owned()));
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
            unfinished: self.live().len() as u64,
            replayed: 0,
        }
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
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
    /// The framed `Open` record of every unfinished entry: what a rewrite keeps.
    frames: HashMap<String, Vec<u8>>,
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
        let mut opened = Vec::new();
        // Group commit: everything queued while the last batch was syncing.
        while let Some(batch) = queue.next_batch() {
            buf.clear();
            opened.clear();
            for op in batch {
                match op {
                    Op::Open {
                        request_id,
                        frame,
                        durable,
                    } => {
                        buf.extend_from_slice(&frame);
                        opened.push(request_id.clone());
                        self.frames.insert(request_id, frame);
                        waiting.push(durable);
                    }
                    Op::Done(id) => {
                        buf.extend_from_slice(&frame(&RecordRef::Done(&id)));
                        // The open record and this mark.
                        self.dead += 1 + u64::from(self.frames.remove(&id).is_some());
                    }
                }
            }
            let result = self.write(&buf, !waiting.is_empty());
            if let Err(e) = &result {
                tracing::error!(path = %self.path.display(), error = %e,
                    "charge journal: write failed; these charges are not durable (they are charged before their responses instead)");
                for id in &opened {
                    self.frames.remove(id);
                }
            }
            // Counted before the callers are told: what they read next includes it.
            if result.is_ok() {
                self.counters
                    .appended
                    .fetch_add(waiting.len() as u64, Ordering::Relaxed);
            }
            for durable in waiting.drain(..) {
                let _ = durable.send(match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                });
            }
            if self.dead >= COMPACT_AFTER && self.dead >= 4 * self.frames.len() as u64 {
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

    /// Rewrites the file with the unfinished entries only.
    fn compact(&mut self) {
        match rewrite(&self.path, self.frames.values()) {
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

/// Writes a new journal holding `frames` beside `path`, makes it durable, and renames
/// it over `path` (atomic: a crash leaves the old file or the new one). Returns the new
/// file opened for appending, and its length.
fn rewrite<'a>(path: &Path, frames: impl Iterator<Item = &'a Vec<u8>>) -> io::Result<(File, u64)> {
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
    let mut bytes = MAGIC.to_vec();
    for f in frames {
        bytes.extend_from_slice(f);
    }
    out.write_all(&bytes)?;
    out.sync_data()?;
    drop(out);
    std::fs::rename(&tmp, path)?;
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

    /// A journal file written by hand: `open` records, then `done` marks.
    fn write_journal(path: &Path, open: &[&str], done: &[&str]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        for id in open {
            bytes.extend(frame(&RecordRef::Open(&test_entry(id))));
        }
        for id in done {
            bytes.extend(frame(&RecordRef::Done(id)));
        }
        std::fs::write(path, &bytes).unwrap();
        bytes
    }

    #[tokio::test]
    async fn entries_survive_a_reopen_until_they_are_finished() {
        let dir = TempDir::new("reopen");
        let journal = FileJournal::open(&dir.file()).unwrap();
        for id in ["a", "b", "c"] {
            journal.append(Arc::new(test_entry(id))).await.unwrap();
        }
        journal.finish("b");
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
        let (file, len) = rewrite(&dir.file(), std::iter::empty()).unwrap();
        let mut writer = Writer {
            path: dir.file(),
            file,
            len,
            torn: false,
            frames: HashMap::new(),
            dead: 0,
            counters: Arc::default(),
            _lock: File::open(dir.file()).unwrap(),
        };
        writer
            .write(&frame(&RecordRef::Open(&test_entry("a"))), true)
            .unwrap();
        // A full disk: half of a record reached the file, the write failed.
        let half = frame(&RecordRef::Open(&test_entry("b")));
        writer.file.write_all(&half[..half.len() / 2]).unwrap();
        writer.torn = true;
        writer
            .write(&frame(&RecordRef::Open(&test_entry("c"))), true)
            .unwrap();
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
        let ids_: Vec<String> = (0..COMPACT_AFTER).map(|i| format!("r{i}")).collect();
        let writes = ids_
            .iter()
            .map(|id| journal.append(Arc::new(test_entry(id))));
        for w in futures_util::future::join_all(writes).await {
            w.unwrap();
        }
        for id in &ids_ {
            journal.finish(id);
        }
        // The marks ride with the next durable batch: one more append flushes them.
        journal.append(Arc::new(test_entry("last"))).await.unwrap();
        journal.append(Arc::new(test_entry("after"))).await.unwrap();
        assert!(journal.stats().compactions >= 1, "{:?}", journal.stats());
        let scan = scan(&std::fs::read(dir.file()).unwrap());
        assert!(
            scan.records.len() <= 3,
            "{} records left",
            scan.records.len()
        );
        assert_eq!(ids(&journal), set(&["last", "after"]));
    }
}
