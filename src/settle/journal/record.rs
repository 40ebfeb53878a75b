//! The journal's bytes: a header naming the format version, then framed records, each
//! checksummed so that a torn or corrupt tail is recognised and everything before it
//! is kept.
//!
//! ```text
//! file    = "NVMJRNL" version:u8 record*
//! record  = len: u32 LE | check: 8 bytes | payload: len bytes
//! check   = the first 8 bytes of SHA-256(len ‖ payload)
//!
//! version '2' (written since the binary format), payloads:
//! route   = 'R' | id: u32 LE | the route's `paymentRequired` as JSON
//! open    = 'O' | route id: u32 LE | method: u8 (0 settle, 1 redeem) | written_at: u64 LE
//!               | str request_id | str token | str plan_id | str subscriber | str credits
//! done    = 'D' | request_id bytes
//! str     = len: u32 LE | UTF-8 bytes
//!
//! version '1' (the first format, still read): every payload is the JSON of
//! {"open": entry} or {"done": request id}, the route's paymentRequired in every entry.
//! ```
//!
//! The route's `paymentRequired` (most of a JSON entry's 1.5 KB) is written once per
//! file in a `route` record and referenced by a small id from each entry; a rewrite
//! re-emits the routes that its entries still reference, before them. An entry whose
//! route record is missing is treated like a corrupt record (it cannot be replayed).
//!
//! SHA-256 rather than a CRC: the crate already links it (with SHA-NI on x86 it costs
//! well under a microsecond for a binary entry, next to a millisecond fsync), so the
//! journal needs no new dependency, and covering `len` means a garbage length is
//! caught by the check before it is trusted.

use std::collections::HashMap;
use std::fmt::Display;
use std::io::Write;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{EntryState, JournalEntry};
use crate::settle::ChargeMethod;
use crate::types::PaymentRequired;

/// Every journal file starts with these bytes, then its format version.
const MAGIC: &[u8; 7] = b"NVMJRNL";
/// The format written now (binary records, routes written once).
pub(super) const VERSION: u8 = b'2';
/// The first format (JSON records): read, and rewritten as [`VERSION`] at open.
const VERSION_JSON: u8 = b'1';
pub(super) const HEADER_LEN: usize = MAGIC.len() + 1;
const FRAME_HEAD: usize = 4 + 8;
/// No honest record comes near this: a longer length is garbage.
const MAX_PAYLOAD: usize = 1 << 20;

const TAG_ROUTE: u8 = b'R';
const TAG_OPEN: u8 = b'O';
const TAG_DONE: u8 = b'D';

/// The header of a file in the current format.
pub(super) fn header() -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..MAGIC.len()].copy_from_slice(MAGIC);
    out[MAGIC.len()] = VERSION;
    out
}

/// What a file's first bytes say it is.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Format {
    /// Empty: a new journal.
    Empty,
    Json,
    Binary,
    /// A journal in a format this version does not know (a newer one).
    Unknown(u8),
    NotAJournal,
}

pub(super) fn format_of(bytes: &[u8]) -> Format {
    if bytes.is_empty() {
        return Format::Empty;
    }
    if bytes.len() < HEADER_LEN || !bytes.starts_with(MAGIC) {
        return Format::NotAJournal;
    }
    match bytes[MAGIC.len()] {
        VERSION_JSON => Format::Json,
        VERSION => Format::Binary,
        other => Format::Unknown(other),
    }
}

/// One record of the journal, as read back.
#[derive(Debug)]
pub(super) enum Record {
    /// A charge that is due (or about to be): replay it until it is done.
    Open(JournalEntry),
    /// The charge with this request id reached a final outcome.
    Done(String),
}

/// Appends one framed record to `out`, its payload written by `payload`.
fn framed(out: &mut Vec<u8>, payload: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEAD]);
    payload(out);
    let size = out.len() - at - FRAME_HEAD;
    let len = u32::try_from(size).unwrap_or(u32::MAX).to_le_bytes();
    let check = check(&len, &out[at + FRAME_HEAD..]);
    out[at..at + 4].copy_from_slice(&len);
    out[at + 4..at + FRAME_HEAD].copy_from_slice(&check);
}

/// Appends a `route` record: `json` is the route's `paymentRequired`.
pub(super) fn put_route(out: &mut Vec<u8>, id: u32, json: &[u8]) {
    framed(out, |p| {
        p.push(TAG_ROUTE);
        p.extend_from_slice(&id.to_le_bytes());
        p.extend_from_slice(json);
    });
}

/// Appends an `open` record for `entry`, whose route was written as `route`.
pub(super) fn put_open(out: &mut Vec<u8>, route: u32, entry: &JournalEntry) {
    framed(out, |p| {
        p.push(TAG_OPEN);
        p.extend_from_slice(&route.to_le_bytes());
        p.push(match entry.method {
            ChargeMethod::Settle => 0,
            ChargeMethod::Redeem => 1,
        });
        p.extend_from_slice(&entry.written_at.to_le_bytes());
        put_str(p, &entry.request_id);
        put_str(p, entry.token.as_str());
        put_display(p, &entry.plan_id);
        put_display(p, &entry.subscriber);
        put_display(p, &entry.credits);
    });
}

/// Appends a `done` record.
pub(super) fn put_done(out: &mut Vec<u8>, request_id: &str) {
    framed(out, |p| {
        p.push(TAG_DONE);
        p.extend_from_slice(request_id.as_bytes());
    });
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Formats `value` in place, then writes its length before it: no temporary string.
fn put_display(out: &mut Vec<u8>, value: &dyn Display) {
    let at = out.len();
    out.extend_from_slice(&[0u8; 4]);
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{value}");
    let len = u32::try_from(out.len() - at - 4).unwrap_or(u32::MAX);
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

fn check(len: &[u8; 4], payload: &[u8]) -> [u8; 8] {
    let mut hasher = Sha256::new();
    hasher.update(len);
    hasher.update(payload);
    let digest = hasher.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// What a scan of the journal's bytes found.
#[derive(Debug)]
pub(super) struct Scan {
    /// Every record that decoded, in order.
    pub(super) records: Vec<Record>,
    /// Bytes after the last good record (a torn write, garbage): skipped.
    pub(super) skipped: usize,
}

/// Reads records after the header until the end or the first record that is
/// incomplete, fails its check or cannot be decoded. `bytes` must be of a known
/// [`Format`] (or empty).
pub(super) fn scan(bytes: &[u8]) -> Scan {
    let json = format_of(bytes) == Format::Json;
    let mut routes: HashMap<u32, Arc<PaymentRequired>> = HashMap::new();
    let mut records = Vec::new();
    let mut at = HEADER_LEN.min(bytes.len());
    while let Some((payload, next)) = read_frame(bytes, at) {
        let decoded = if json {
            decode_json(payload).map(Some)
        } else {
            decode_binary(payload, &mut routes)
        };
        match decoded {
            Some(Some(record)) => records.push(record),
            Some(None) => {}
            None => break,
        }
        at = next;
    }
    Scan {
        records,
        skipped: bytes.len() - at,
    }
}

/// The payload of the checked frame at `at`, and where the next one starts.
fn read_frame(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let head = bytes.get(at..at.checked_add(FRAME_HEAD)?)?;
    let len: [u8; 4] = head[..4].try_into().ok()?;
    let size = usize::try_from(u32::from_le_bytes(len)).ok()?;
    if size > MAX_PAYLOAD {
        return None;
    }
    let start = at + FRAME_HEAD;
    let payload = bytes.get(start..start.checked_add(size)?)?;
    if head[4..] != check(&len, payload) {
        return None;
    }
    Some((payload, start + size))
}

/// A version-1 record.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
enum JsonRecord {
    Open(Box<JournalEntry>),
    Done(String),
}

fn decode_json(payload: &[u8]) -> Option<Record> {
    Some(match serde_json::from_slice(payload).ok()? {
        JsonRecord::Open(entry) => Record::Open(*entry),
        JsonRecord::Done(id) => Record::Done(id),
    })
}

/// A record; `Some(None)` for a route (kept in `routes`), `None` when undecodable.
fn decode_binary(
    payload: &[u8],
    routes: &mut HashMap<u32, Arc<PaymentRequired>>,
) -> Option<Option<Record>> {
    let mut r = Reader(payload);
    match r.u8()? {
        TAG_ROUTE => {
            let id = r.u32()?;
            let route = serde_json::from_slice(r.0).ok()?;
            routes.insert(id, Arc::new(route));
            Some(None)
        }
        TAG_OPEN => {
            let payment_required = routes.get(&r.u32()?)?.clone();
            let method = match r.u8()? {
                0 => ChargeMethod::Settle,
                1 => ChargeMethod::Redeem,
                _ => return None,
            };
            let written_at = r.u64()?;
            let entry = JournalEntry {
                request_id: r.str()?.to_owned(),
                token: r.str()?.to_owned().into(),
                plan_id: r.str()?.parse().ok()?,
                subscriber: r.str()?.parse().ok()?,
                credits: r.str()?.parse().ok()?,
                method,
                payment_required,
                written_at,
                state: EntryState::default(),
            };
            Some(Some(Record::Open(entry)))
        }
        TAG_DONE => Some(Some(Record::Done(
            std::str::from_utf8(r.0).ok()?.to_owned(),
        ))),
        _ => None,
    }
}

/// Reads a binary payload front to back; every read checks its bounds.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.u32()?).ok()?;
        std::str::from_utf8(self.take(len)?).ok()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::settle::journal::test_entry;

    /// A version-1 (JSON) record, as the first format wrote it.
    pub(in crate::settle::journal) fn json_frame(record: &serde_json::Value) -> Vec<u8> {
        let mut out = Vec::new();
        framed(&mut out, |p| {
            serde_json::to_writer(p, record).unwrap();
        });
        out
    }

    /// A version-1 file holding `records`.
    pub(in crate::settle::journal) fn json_journal(records: &[serde_json::Value]) -> Vec<u8> {
        let mut bytes = b"NVMJRNL1".to_vec();
        for r in records {
            bytes.extend(json_frame(r));
        }
        bytes
    }

    enum R<'a> {
        Route(u32),
        Open(u32, &'a str),
        Done(&'a str),
    }

    fn journal_of(records: &[R<'_>]) -> Vec<u8> {
        let mut bytes = header().to_vec();
        let route = serde_json::to_vec(&*test_entry("x").payment_required).unwrap();
        for r in records {
            match r {
                R::Route(id) => put_route(&mut bytes, *id, &route),
                R::Open(id, req) => put_open(&mut bytes, *id, &test_entry(req)),
                R::Done(req) => put_done(&mut bytes, req),
            }
        }
        bytes
    }

    fn one(record: R<'_>) -> usize {
        journal_of(&[record]).len() - HEADER_LEN
    }

    fn ids(scan: &Scan) -> Vec<String> {
        scan.records
            .iter()
            .map(|r| match r {
                Record::Open(e) => format!("open {}", e.request_id),
                Record::Done(id) => format!("done {id}"),
            })
            .collect()
    }

    #[test]
    fn every_complete_record_is_read_back_with_its_route() {
        let bytes = journal_of(&[R::Route(3), R::Open(3, "a"), R::Open(3, "b"), R::Done("a")]);
        let scan = scan(&bytes);
        assert_eq!(ids(&scan), ["open a", "open b", "done a"]);
        assert_eq!(scan.skipped, 0);
        let Record::Open(b) = &scan.records[1] else {
            panic!()
        };
        let want = test_entry("b");
        assert_eq!(b.token.as_str(), want.token.as_str());
        assert_eq!(b.plan_id, want.plan_id);
        assert_eq!(b.subscriber, want.subscriber);
        assert_eq!(b.credits, want.credits);
        assert_eq!(b.method, want.method);
        assert_eq!(
            serde_json::to_value(&*b.payment_required).unwrap(),
            serde_json::to_value(&*want.payment_required).unwrap()
        );
        let Record::Open(a) = &scan.records[0] else {
            panic!()
        };
        assert!(
            Arc::ptr_eq(&a.payment_required, &b.payment_required),
            "entries of one route share it"
        );
    }

    #[test]
    fn an_entry_is_smaller_than_its_json_record_even_without_the_route() {
        let binary = one(R::Open(0, "0190a4f2-7f4e-7c1a-9d1e-3c5a2b1f0e9d"));
        let json = json_frame(&serde_json::json!({
            "open": test_entry("0190a4f2-7f4e-7c1a-9d1e-3c5a2b1f0e9d")
        }))
        .len();
        // The test route is tiny; a real one (accepts, extensions) is most of the JSON.
        assert!(binary < json, "binary {binary} bytes, JSON {json}");
    }

    #[test]
    fn a_record_torn_at_any_byte_is_skipped_and_the_rest_kept() {
        let whole = journal_of(&[R::Route(0), R::Open(0, "a"), R::Done("a"), R::Open(0, "b")]);
        let last = one(R::Open(0, "b"));
        for cut in 1..last {
            let torn = &whole[..whole.len() - cut];
            let scan = scan(torn);
            assert_eq!(ids(&scan), ["open a", "done a"], "cut {cut} bytes");
            assert_eq!(scan.skipped, last - cut);
        }
        // Torn inside the route record: nothing after the header is readable.
        let route = one(R::Route(0));
        let only_route = journal_of(&[R::Route(0)]);
        for cut in 1..route {
            let scan = scan(&only_route[..only_route.len() - cut]);
            assert!(scan.records.is_empty());
            assert_eq!(scan.skipped, route - cut);
        }
    }

    #[test]
    fn an_entry_without_its_route_ends_the_readable_part() {
        let bytes = journal_of(&[
            R::Route(0),
            R::Open(0, "a"),
            R::Open(9, "b"),
            R::Open(0, "c"),
        ]);
        let scan = scan(&bytes);
        assert_eq!(ids(&scan), ["open a"]);
        assert!(scan.skipped > 0);
    }

    #[test]
    fn garbage_after_the_records_is_skipped() {
        let mut bytes = journal_of(&[R::Route(0), R::Open(0, "a"), R::Open(0, "b")]);
        let good = bytes.len();
        // A length that fits, then noise; and a length far too large.
        bytes.extend_from_slice(&[40, 0, 0, 0]);
        bytes.extend((0..200u32).map(|i| (i * 37 % 251) as u8));
        let scan_a = scan(&bytes);
        assert_eq!(ids(&scan_a), ["open a", "open b"]);
        assert_eq!(scan_a.skipped, bytes.len() - good);
        bytes.truncate(good);
        bytes.extend_from_slice(&[0xff; 64]);
        assert_eq!(ids(&scan(&bytes)), ["open a", "open b"]);
    }

    #[test]
    fn a_flipped_bit_ends_the_readable_part() {
        let mut bytes = journal_of(&[
            R::Route(0),
            R::Open(0, "a"),
            R::Open(0, "b"),
            R::Open(0, "c"),
        ]);
        let first = HEADER_LEN + one(R::Route(0)) + one(R::Open(0, "a"));
        bytes[first + 30] ^= 0x01;
        assert_eq!(ids(&scan(&bytes)), ["open a"]);
    }

    #[test]
    fn a_version_1_json_journal_is_read() {
        let bytes = json_journal(&[
            serde_json::json!({"open": test_entry("a")}),
            serde_json::json!({"open": test_entry("b")}),
            serde_json::json!({"done": "a"}),
        ]);
        assert_eq!(format_of(&bytes), Format::Json);
        let scan = scan(&bytes);
        assert_eq!(ids(&scan), ["open a", "open b", "done a"]);
        assert_eq!(scan.skipped, 0);
    }

    #[test]
    fn the_header_names_the_version() {
        assert_eq!(format_of(&header()), Format::Binary);
        assert_eq!(format_of(b""), Format::Empty);
        assert_eq!(format_of(b"NVMJRNL7"), Format::Unknown(b'7'));
        assert_eq!(format_of(b"{\"some\": 1}"), Format::NotAJournal);
        assert_eq!(format_of(b"NVMJ"), Format::NotAJournal);
    }
}
