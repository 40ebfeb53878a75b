//! Credit leases on Redis: [`LeaseStore`] for one replica, one Lua script per call
//! (`lease.lua`), so taking, renewing and giving back a block of credits is atomic.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};

use super::StoreShared;
use crate::auth::Payer;
use crate::balance::{Fetched, LeaseAnswer, LeaseRequest, LeaseStatus, LeaseStore};
use crate::types::Credits;

/// Lua numbers are doubles: credits are exact below 2^53.
const EXACT_MAX: u64 = (1 << 53) - 1;

/// The leases of one replica (one layer): its id names its lease in every payer's hash.
pub(crate) struct ReplicaLeases {
    pub(crate) store: Arc<StoreShared>,
    pub(crate) replica: String,
}

impl LeaseStore for ReplicaLeases {
    fn lease<'a>(
        &'a self,
        request: LeaseRequest<'a>,
    ) -> BoxFuture<'a, Result<LeaseAnswer, String>> {
        Box::pin(self.call(request))
    }

    fn lease_ttl(&self) -> Duration {
        self.store.lease_ttl
    }

    fn max_extra(&self) -> Credits {
        self.store.max_extra
    }
}

impl ReplicaLeases {
    async fn call(&self, r: LeaseRequest<'_>) -> Result<LeaseAnswer, String> {
        let payer = payer_tag(r.payer);
        let prefix = &self.store.prefix;
        let (mode, balance, is_subscriber, mark) = match r.fetched {
            Fetched::No => ("no", Credits::ZERO, false, Credits::ZERO),
            Fetched::Yes {
                balance,
                is_subscriber,
                mark,
            } => ("yes", balance, is_subscriber, mark),
            Fetched::Failed => ("failed", Credits::ZERO, false, Credits::ZERO),
        };
        let stale = r
            .stale_max_age
            .map_or(-1, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let mut invocation = self.store.lease_script.prepare_invoke();
        invocation
            .key(format!("{prefix}:{{{payer}}}:balance"))
            .key(format!("{prefix}:{{{payer}}}:leases"))
            .key(format!("{prefix}:epoch"))
            .arg(&self.replica)
            .arg(whole(r.report))
            .arg(whole(r.reserved))
            .arg(whole(r.amount))
            .arg(whole(r.extra))
            .arg(mode)
            // A balance past 2^53 is read as 2^53: fewer credits, never more.
            .arg(whole(balance))
            .arg(u8::from(is_subscriber))
            .arg(whole(mark))
            .arg(u8::from(r.force_fetch))
            .arg(millis(r.balance_ttl))
            .arg(millis(r.recheck_after))
            .arg(stale)
            .arg(millis(self.store.lease_ttl))
            .arg(millis(KEEP_KEYS));
        let answer: Vec<String> = self.store.conn.script(&invocation).await?;
        parse(&answer).ok_or_else(|| "unexpected answer from the lease script".to_owned())
    }
}

/// A payer's keys outlive its last lease by a day: a balance nobody asks about goes.
const KEEP_KEYS: Duration = Duration::from_secs(24 * 3600);

fn parse(answer: &[String]) -> Option<LeaseAnswer> {
    let [status, held, third] = answer else {
        return None;
    };
    let held = Credits::from(held.parse::<u64>().ok()?);
    let third = Credits::from(third.parse::<u64>().ok()?);
    let (status, available) = match status.as_str() {
        "granted" => (LeaseStatus::Granted, third),
        "insufficient" => (LeaseStatus::Insufficient, third),
        "not_subscriber" => (LeaseStatus::NotSubscriber, Credits::ZERO),
        "fetch" => (LeaseStatus::Fetch { mark: third }, Credits::ZERO),
        "unavailable" => (LeaseStatus::Unavailable, Credits::ZERO),
        "recovering" => (LeaseStatus::Recovering, Credits::ZERO),
        _ => return None,
    };
    Some(LeaseAnswer {
        status,
        held,
        available,
    })
}

/// Credits as the script's whole number (saturated at 2^53).
fn whole(c: Credits) -> u64 {
    c.to_u64().map_or(EXACT_MAX, |v| v.min(EXACT_MAX))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The payer's part of its keys: a digest of `(plan, holder)` (addresses compared
/// case-insensitively), in braces so a payer's keys share a cluster slot.
fn payer_tag(payer: &Payer) -> String {
    let mut h = Sha256::new();
    h.update(payer.plan_id.as_str().as_bytes());
    h.update([0]);
    h.update(payer.holder.as_str().to_ascii_lowercase().as_bytes());
    hex(&h.finalize()[..16])
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_and_garbage_does_not() {
        let ok = |v: &[&str]| parse(&v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        let granted = ok(&["granted", "12", "100"]).unwrap();
        assert_eq!(granted.status, LeaseStatus::Granted);
        assert_eq!(granted.held, Credits::from(12u64));
        assert_eq!(granted.available, Credits::from(100u64));
        assert_eq!(
            ok(&["fetch", "3", "7"]).unwrap().status,
            LeaseStatus::Fetch {
                mark: Credits::from(7u64)
            }
        );
        assert!(ok(&["granted", "-1", "0"]).is_none());
        assert!(ok(&["granted", "1"]).is_none());
        assert!(ok(&["other", "1", "1"]).is_none());
    }

    #[test]
    fn huge_amounts_saturate_below_the_scripts_precision() {
        assert_eq!(whole(Credits::from(u128::MAX)), EXACT_MAX);
        assert_eq!(whole(Credits::from(5u64)), 5);
    }
}
