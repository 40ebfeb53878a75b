//! [`DevServerState`]: everything one devserver holds, shared by its handlers.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;

use super::clock::Clock;
use super::faults::Faults;
use super::ids::new_address;
use super::keys::ServerKeys;
use super::ledger::{Ledger, Spend};
use super::stats::{Stats, StatsSnapshot};
use super::x402_token::X402Signer;
use crate::types::{AccessToken, Address, AgentId, Credits, DevAccount, PlanId};

/// The state of one devserver: ledger, keys, clock, faults and counters. Cheap to
/// clone (an `Arc` inside); every clone sees the same ledger.
///
/// Use it to embed the devserver's routes in your own axum app:
///
/// ```
/// use nvm_payments::devserver::DevServerState;
/// let state = DevServerState::new();
/// let app: axum::Router = axum::Router::new().merge(state.router());
/// let account = state.create_account(Some("alice"));
/// assert!(account.api_key.expose().starts_with("local:"));
/// # let _ = app;
/// ```
#[derive(Clone)]
pub struct DevServerState {
    inner: Arc<Shared>,
}

struct Shared {
    ledger: Mutex<Ledger>,
    keys: ServerKeys,
    x402: X402Signer,
    clock: Clock,
    faults: Faults,
    stats: Stats,
    /// How many spends the ledger holds, for tests that wait for a charge to land.
    spend_count: tokio::sync::watch::Sender<usize>,
}

impl fmt::Debug for DevServerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevServerState")
            .field("issuer", self.inner.keys.issuer())
            .field("clock_offset_secs", &self.inner.clock.offset())
            .finish_non_exhaustive()
    }
}

impl Default for DevServerState {
    fn default() -> Self {
        Self::new()
    }
}

impl DevServerState {
    /// A fresh server state: empty ledger, new random keys.
    pub fn new() -> Self {
        DevServerState {
            inner: Arc::new(Shared {
                ledger: Mutex::new(Ledger::default()),
                keys: ServerKeys::generate(),
                x402: X402Signer::generate(),
                clock: Clock::default(),
                faults: Faults::default(),
                stats: Stats::default(),
                spend_count: tokio::sync::watch::Sender::new(0),
            }),
        }
    }

    /// The devserver's routes, ready to serve or to merge into another router.
    pub fn router(&self) -> Router {
        super::router::build(self.clone())
    }

    /// Creates a dev account (what `POST /dev/accounts` does): a random address with
    /// an API key `local:<JWT>` signed by this server, and ample test tokens.
    pub fn create_account(&self, name: Option<&str>) -> DevAccount {
        let address = new_address();
        let api_key = self
            .inner
            .keys
            .issue_api_key(&address, self.inner.clock.now());
        self.ledger()
            .registry
            .add_account(address.clone(), name.map(str::to_owned));
        DevAccount { address, api_key }
    }

    /// The server clock.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// The fault-injection handle.
    pub fn faults(&self) -> Faults {
        self.inner.faults.clone()
    }

    /// The request counters so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Resets the request counters.
    pub fn reset_stats(&self) {
        self.inner.stats.reset();
    }

    /// Every charge that burned credits (settle and redeem), in order: what
    /// `GET /dev/ledger/spends` answers. Count a request id's entries to check it was
    /// charged exactly once.
    pub fn spends(&self) -> Vec<Spend> {
        self.ledger().charges.spends().to_vec()
    }

    /// The number of spends so far, as a watch: `changed()` / `wait_for(|n| ..)` lets a
    /// test wait for a charge to land without polling.
    pub fn watch_spends(&self) -> tokio::sync::watch::Receiver<usize> {
        self.inner.spend_count.subscribe()
    }

    /// Publishes the ledger's spend count to [`watch_spends`](Self::watch_spends).
    pub(crate) fn spends_changed(&self) {
        let count = self.ledger().charges.spends().len();
        self.inner.spend_count.send_replace(count);
    }

    /// The address the server signs as (`iss` of keys and access tokens).
    pub fn issuer(&self) -> &Address {
        self.inner.keys.issuer()
    }

    /// Mints a legacy bearer access token with a chosen expiry (unix seconds on the
    /// server clock), e.g. an already expired one for a test.
    pub fn issue_access_token(
        &self,
        subscriber: &Address,
        plan_id: &PlanId,
        agent_id: &AgentId,
        exp: u64,
    ) -> AccessToken {
        let now = self.inner.clock.now();
        self.inner
            .keys
            .issue_access_token(subscriber, plan_id, agent_id, now.min(exp), exp)
    }

    /// What a dev wallet holds of `token` (the zero address is the native token).
    /// Every wallet starts with [`DEFAULT_TOKEN_BALANCE`](super::DEFAULT_TOKEN_BALANCE)
    /// of every token.
    pub fn token_balance(&self, holder: &Address, token: &Address) -> Credits {
        self.ledger().holdings.token_balance(holder, token)
    }

    /// The ledger; the lock is never held across an `await`.
    pub(crate) fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.inner
            .ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn keys(&self) -> &ServerKeys {
        &self.inner.keys
    }

    pub(crate) fn x402(&self) -> &X402Signer {
        &self.inner.x402
    }

    pub(crate) fn stats_counters(&self) -> &Stats {
        &self.inner.stats
    }

    pub(crate) fn now(&self) -> u64 {
        self.inner.clock.now()
    }
}
