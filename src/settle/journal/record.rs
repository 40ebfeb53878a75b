//! The journal's bytes: a header, then framed records, each checksummed so that a
//! torn or corrupt tail is recognised and everything before it is kept.
//!
//! ```text
//! file   = MAGIC record*
//! record = len: u32 LE | check: 8 bytes | payload: len bytes (JSON of `Record`)
//! check  = the first 8 bytes of SHA-256(len ‖ payload)
//! ```
//!
//! SHA-256 rather than a CRC: the crate already links it (with SHA-NI on x86 it costs
//! about a microsecond for a 2 KiB record, next to a millisecond fsync), so the
//! journal needs no new dependency, and covering `len` means a garbage length is
//! caught by the check before it is trusted.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::JournalEntry;

/// The first bytes of every journal file (format version 1).
pub(super) const MAGIC: &[u8; 8] = b"NVMJRNL1";
const FRAME_HEAD: usize = 4 + 8;
/// No honest record comes near this: a longer length is garbage.
const MAX_PAYLOAD: usize = 1 << 20;

/// One record of the journal, as read back.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) enum Record {
    /// A charge that is due (or about to be): replay it until it is done.
    Open(Box<JournalEntry>),
    /// The charge with this request id reached a final outcome.
    Done(String),
}

/// One record, as written (the same JSON as [`Record`], without copying the entry).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) enum RecordRef<'a> {
    Open(&'a JournalEntry),
    Done(&'a str),
}

/// The framed bytes of `record`.
pub(super) fn frame(record: &RecordRef<'_>) -> Vec<u8> {
    // Serialising plain strings and numbers into a Vec cannot fail.
    let payload = serde_json::to_vec(record).unwrap_or_default();
    let len = u32::try_from(payload.len())
        .unwrap_or(u32::MAX)
        .to_le_bytes();
    let mut out = Vec::with_capacity(FRAME_HEAD + payload.len());
    out.extend_from_slice(&len);
    out.extend_from_slice(&check(&len, &payload));
    out.extend_from_slice(&payload);
    out
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
/// incomplete or fails its check. `bytes` must start with [`MAGIC`].
pub(super) fn scan(bytes: &[u8]) -> Scan {
    let mut records = Vec::new();
    let mut at = MAGIC.len().min(bytes.len());
    while let Some((record, next)) = read_one(bytes, at) {
        records.push(record);
        at = next;
    }
    Scan {
        records,
        skipped: bytes.len() - at,
    }
}

fn read_one(bytes: &[u8], at: usize) -> Option<(Record, usize)> {
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
    let record = serde_json::from_slice(payload).ok()?;
    Some((record, start + size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settle::journal::test_entry;

    fn journal_of(records: &[RecordRef<'_>]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        for r in records {
            bytes.extend(frame(r));
        }
        bytes
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
    fn every_complete_record_is_read_back() {
        let bytes = journal_of(&[
            RecordRef::Open(&test_entry("a")),
            RecordRef::Open(&test_entry("b")),
            RecordRef::Done("a"),
        ]);
        let scan = scan(&bytes);
        assert_eq!(ids(&scan), ["open a", "open b", "done a"]);
        assert_eq!(scan.skipped, 0);
    }

    #[test]
    fn a_truncated_last_record_is_skipped_and_the_rest_kept() {
        let whole = journal_of(&[
            RecordRef::Open(&test_entry("a")),
            RecordRef::Open(&test_entry("b")),
        ]);
        let last = frame(&RecordRef::Open(&test_entry("b"))).len();
        // Every cut inside the last record: a write torn at any byte.
        for cut in 1..last {
            let torn = &whole[..whole.len() - cut];
            let scan = scan(torn);
            assert_eq!(ids(&scan), ["open a"], "cut {cut} bytes");
            assert_eq!(scan.skipped, last - cut);
        }
    }

    #[test]
    fn garbage_after_the_records_is_skipped() {
        let mut bytes = journal_of(&[
            RecordRef::Open(&test_entry("a")),
            RecordRef::Open(&test_entry("b")),
        ]);
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
            RecordRef::Open(&test_entry("a")),
            RecordRef::Open(&test_entry("b")),
            RecordRef::Open(&test_entry("c")),
        ]);
        let first = MAGIC.len() + frame(&RecordRef::Open(&test_entry("a"))).len();
        bytes[first + 30] ^= 0x01;
        assert_eq!(ids(&scan(&bytes)), ["open a"]);
    }
}
