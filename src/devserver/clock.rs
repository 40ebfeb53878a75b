//! [`Clock`]: the server's notion of "now", which tests can move forward.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The devserver's clock: wall-clock unix seconds plus an offset that only grows.
///
/// Expirable credits, time plans and access-token expiry all read this clock, so a
/// test can make a day pass with [`Clock::advance`] instead of sleeping.
///
/// ```
/// use nvm_payments::devserver::Clock;
/// let clock = Clock::default();
/// let before = clock.now();
/// clock.advance(3600);
/// assert!(clock.now() >= before + 3600);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_secs: Arc<AtomicU64>,
}

impl Clock {
    /// Unix seconds on the server clock.
    pub fn now(&self) -> u64 {
        wall_clock_secs().saturating_add(self.offset_secs.load(Ordering::Relaxed))
    }

    /// Moves the clock forward by `secs` seconds.
    pub fn advance(&self, secs: u64) {
        self.offset_secs.fetch_add(secs, Ordering::Relaxed);
    }

    /// How far the clock has been moved forward, in seconds.
    pub fn offset(&self) -> u64 {
        self.offset_secs.load(Ordering::Relaxed)
    }
}

fn wall_clock_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Wall-clock unix milliseconds (for the `date` of error envelopes and checkout links).
pub(crate) fn wall_clock_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Formats unix milliseconds as ISO-8601 UTC, `2026-02-02T09:10:59.534Z`, as Nest does.
pub(crate) fn iso8601(unix_millis: u64) -> String {
    let secs = unix_millis / 1000;
    let millis = unix_millis % 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_iso_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_770_023_459_534), "2026-02-02T09:10:59.534Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn advance_moves_now() {
        let c = Clock::default();
        let a = c.now();
        c.advance(86_400);
        assert!(c.now() >= a + 86_400);
        assert_eq!(c.offset(), 86_400);
    }
}
