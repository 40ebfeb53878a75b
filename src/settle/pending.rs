//! The charges in flight of one layer: counted (so the queue of detached charges is
//! bounded) and listed by request id (so a shutdown can wait for them and name those
//! it could not finish).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use super::SettleStatus;

/// What to do with a request when the layer already has its maximum of charges in
/// flight (`PaymentLayerBuilder::pending_charges`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PendingFull {
    /// Charge this request before its response is returned, whatever the configured
    /// timing: the caller waits for the backend, which slows the arrivals down. The
    /// default: no request is refused for it.
    #[default]
    ChargeBeforeResponse,
    /// Refuse the request before the handler runs with 503 `backend_unavailable` and
    /// `Retry-After`: no work is done that might not be charged.
    Reject,
}

/// What [`PaymentLayer::drain`](crate::PaymentLayer::drain) saw: the charges that
/// ended while it waited, and the request ids of those still in flight when its time
/// ran out (each also logged at `error`: reconcile them by request id).
///
/// ```
/// use nvm_payments::settle::DrainReport;
/// let report = DrainReport::default();
/// assert!(report.is_complete());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Charges that ended `Settled` while draining.
    pub settled: u64,
    /// Charges that ended `Failed` (nothing charged) while draining.
    pub failed: u64,
    /// Charges that ended `Unknown` (reconcile by request id) while draining.
    pub unknown: u64,
    /// Request ids of the charges still in flight when the drain timed out.
    pub unfinished: Vec<String>,
}

impl DrainReport {
    /// Whether every charge in flight ended before the timeout.
    pub fn is_complete(&self) -> bool {
        self.unfinished.is_empty()
    }
}

/// The request ids of the charges in flight, in a slab: a charge's key is its slot,
/// so entering and leaving hash nothing and (for the usual UUID) allocate nothing.
#[derive(Default)]
struct Registry {
    slots: Vec<Option<StoredId>>,
    /// Slots free for the next charge.
    free: Vec<usize>,
}

impl Registry {
    fn insert(&mut self, request_id: &str) -> usize {
        let id = Some(StoredId::new(request_id));
        match self.free.pop() {
            Some(key) => {
                self.slots[key] = id;
                key
            }
            None => {
                self.slots.push(id);
                self.slots.len() - 1
            }
        }
    }

    fn remove(&mut self, key: usize) -> bool {
        match self.slots.get_mut(key).and_then(Option::take) {
            Some(_) => {
                self.free.push(key);
                true
            }
            None => false,
        }
    }

    fn is_empty(&self) -> bool {
        self.free.len() == self.slots.len()
    }

    fn request_ids(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().flatten().map(StoredId::as_str)
    }
}

/// A request id kept without an allocation when it is short (a UUID: 36 bytes).
enum StoredId {
    Inline { len: u8, bytes: [u8; INLINE_ID] },
    Heap(String),
}

const INLINE_ID: usize = 40;

impl StoredId {
    fn new(id: &str) -> Self {
        match (u8::try_from(id.len()), id.len() <= INLINE_ID) {
            (Ok(len), true) => {
                let mut bytes = [0u8; INLINE_ID];
                bytes[..id.len()].copy_from_slice(id.as_bytes());
                StoredId::Inline { len, bytes }
            }
            _ => StoredId::Heap(id.to_owned()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // The bytes of a `str`, cut at its own length: always UTF-8.
            StoredId::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            StoredId::Heap(id) => id,
        }
    }
}

/// The registry of charges in flight, shared by every clone of one layer.
#[derive(Default)]
pub(crate) struct PendingCharges {
    registry: Mutex<Registry>,
    /// `registry.in_flight.len()`, read without the lock on every admission.
    count: AtomicUsize,
    /// Woken whenever a charge leaves the registry while a drain waits.
    left: Notify,
    /// Drains waiting now: a charge that leaves wakes them only if there are any (a
    /// `notify_waiters` takes a lock, on every charge otherwise).
    draining: AtomicUsize,
    settled: AtomicU64,
    failed: AtomicU64,
    unknown: AtomicU64,
    pub(crate) metrics: crate::metrics::ChargeMetrics,
}

impl PendingCharges {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A map of strings, consistent after every statement.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Charges in flight now.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Registers a charge that starts now; it leaves the registry when the guard
    /// is finished or dropped.
    pub(crate) fn enter(self: &std::sync::Arc<Self>, request_id: &str) -> InFlight {
        let key = self.lock().insert(request_id);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.metrics.entered();
        InFlight {
            charges: self.clone(),
            key,
        }
    }

    fn leave(&self, key: usize) {
        if self.lock().remove(key) {
            self.count.fetch_sub(1, Ordering::Relaxed);
            self.metrics.left();
        }
        // SeqCst with the drain's increment: a drain that registered after this load
        // looks at the registry after this removal (docs of `drain`).
        if self.draining.load(Ordering::SeqCst) > 0 {
            self.left.notify_waiters();
        }
    }

    fn counts(&self) -> (u64, u64, u64) {
        (
            self.settled.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            self.unknown.load(Ordering::SeqCst),
        )
    }

    /// Waits until no charge is in flight or `timeout` has passed.
    pub(crate) async fn drain(&self, timeout: Duration) -> DrainReport {
        let before = self.counts();
        // Counted before the first look: a charge leaving after it sees the drain and
        // wakes it; one that left before it is not in the registry the drain reads.
        let _draining = DrainingGuard::enter(&self.draining);
        let empty = async {
            loop {
                // Register for the wake-up before looking, so none is missed.
                let left = self.left.notified();
                if self.lock().is_empty() {
                    return;
                }
                left.await;
            }
        };
        let _ = tokio::time::timeout(timeout, empty).await;
        let after = self.counts();
        let mut unfinished: Vec<String> = self.lock().request_ids().map(str::to_owned).collect();
        unfinished.sort();
        for request_id in &unfinished {
            tracing::error!(%request_id, "charge still in flight when the drain timed out: reconcile by request id");
        }
        DrainReport {
            settled: after.0 - before.0,
            failed: after.1 - before.1,
            unknown: after.2 - before.2,
            unfinished,
        }
    }
}

/// One charge in the registry.
pub(crate) struct InFlight {
    charges: std::sync::Arc<PendingCharges>,
    key: usize,
}

impl InFlight {
    /// The charge ended with `status`.
    pub(crate) fn finish(self, status: SettleStatus) {
        let counter = match status {
            SettleStatus::Settled => &self.charges.settled,
            SettleStatus::Failed => &self.charges.failed,
            SettleStatus::Unknown => &self.charges.unknown,
        };
        counter.fetch_add(1, Ordering::SeqCst);
        // Drop removes it and wakes the drain.
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.charges.leave(self.key);
    }
}

/// Counts a waiting drain for as long as it waits, even if its future is dropped.
struct DrainingGuard<'a>(&'a AtomicUsize);

impl<'a> DrainingGuard<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        DrainingGuard(count)
    }
}

impl Drop for DrainingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_every_charge_and_names_the_unfinished() {
        let charges = Arc::new(PendingCharges::default());
        let a = charges.enter("a");
        let b = charges.enter("b");
        let c = charges.enter("c");
        assert_eq!(charges.len(), 3);
        a.finish(SettleStatus::Settled);
        let drained = tokio::spawn({
            let charges = charges.clone();
            async move { charges.drain(Duration::from_secs(5)).await }
        });
        tokio::task::yield_now().await;
        b.finish(SettleStatus::Unknown);
        drop(c); // a charge future dropped (runtime shutting down): not counted
        let report = drained.await.unwrap();
        assert_eq!(report.unknown, 1);
        assert_eq!(report.settled, 0, "a ended before the drain started");
        assert!(report.is_complete());

        let _stuck = charges.enter("stuck");
        let report = charges.drain(Duration::from_secs(1)).await;
        assert_eq!(report.unfinished, vec!["stuck".to_owned()]);
    }

    #[tokio::test(start_paused = true)]
    async fn slots_are_reused_and_ids_of_any_length_are_kept() {
        let charges = Arc::new(PendingCharges::default());
        let uuid = "0193a5c2-7b4e-7d2a-9f3e-1c2b3a4d5e6f";
        let long = "agent-request-".repeat(8);
        let a = charges.enter("first");
        let b = charges.enter(uuid);
        drop(a);
        let c = charges.enter(&long);
        assert_eq!(charges.lock().slots.len(), 2, "the freed slot was reused");
        let report = charges.drain(Duration::from_millis(10)).await;
        let mut expected = vec![uuid.to_owned(), long.clone()];
        expected.sort();
        assert_eq!(report.unfinished, expected);
        drop((b, c));
        assert!(charges.lock().is_empty());
        assert_eq!(charges.len(), 0);
    }
}
