//! Credit leases: the ledger's side of a store that several replicas share (Redis, in
//! `crate::shared`). A replica's ledger serves from the block of credits it leased and
//! asks the store only when the block is spent or old, so the hot path stays local.
//!
//! The store keeps, per payer, `available = balance fetched − charged since that fetch −
//! leased out`, fetched from the backend by one replica per TTL. The ledger reports what
//! it charged when it next calls, so a report never costs a call of its own.

use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::auth::Payer;
use crate::types::Credits;

/// The part of a ledger's state only a leased ledger has.
#[derive(Debug, Default)]
pub(crate) struct LeaseState {
    /// The lease is served until here, even when the store cannot be reached (the
    /// store forgets it a margin later).
    pub(crate) until: Option<tokio::time::Instant>,
    /// Credits admitted from the lease since it was granted: the rate the next lease
    /// is sized on.
    pub(crate) used: Credits,
    /// What the payer had beyond this lease at its grant (for `balance_seen`).
    pub(crate) beyond: Credits,
}

/// What a replica asks the store, in one atomic step.
// Read by the stores, which exist with the `redis` feature only.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct LeaseRequest<'a> {
    pub(crate) payer: &'a Payer,
    /// Credits charged from this replica's lease since its last call: they leave the
    /// lease and join the store's "charged since the fetch".
    pub(crate) report: Credits,
    /// Credits of requests admitted here and not charged yet: the lease keeps them.
    pub(crate) reserved: Credits,
    /// Credits of the request that asks now.
    pub(crate) amount: Credits,
    /// Credits wished for beyond those, from this replica's recent rate; the store
    /// grants less when little is left (nothing when almost nothing is).
    pub(crate) extra: Credits,
    /// The backend's balance, when the store asked this replica to fetch it.
    pub(crate) fetched: Fetched,
    /// Our view disagreed with the backend (a refused charge): fetch again now.
    pub(crate) force_fetch: bool,
    /// How long a fetched balance is shared before one replica fetches it again.
    pub(crate) balance_ttl: Duration,
    /// A refusal on a balance at least this old asks for a fetch first.
    pub(crate) recheck_after: Duration,
    /// After a failed fetch, how old a balance may still be decided on (`None`: never).
    pub(crate) stale_max_age: Option<Duration>,
}

/// The backend balance a replica fetched for the store, if asked to.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum Fetched {
    /// Not asked.
    No,
    /// Fetched; `mark` is the store's charged total the store answered with the
    /// request to fetch (charges reported after it may be missing from `balance`).
    Yes {
        balance: Credits,
        is_subscriber: bool,
        mark: Credits,
    },
    /// The backend could not be reached.
    Failed,
}

/// What the store decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum LeaseStatus {
    /// The lease covers the reserved credits, the request and maybe more.
    Granted,
    /// Not enough for the request: the lease keeps the reserved credits only.
    Insufficient,
    NotSubscriber,
    /// Nobody fetched the balance recently: fetch it and ask again with this mark.
    Fetch {
        mark: Credits,
    },
    /// The balance could not be learnt (fetch failed, nothing recent enough).
    Unavailable,
    /// The store lost its data moments ago (a restart): leases granted before may still
    /// be served by their replicas, so none is granted until they have expired.
    Recovering,
}

/// The store's answer: the lease this replica now holds and what the payer has left.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseAnswer {
    pub(crate) status: LeaseStatus,
    /// Credits leased to this replica now (reserved + request + extra when granted).
    pub(crate) held: Credits,
    /// What the payer had across replicas, this replica's lease included, at the call.
    pub(crate) available: Credits,
}

/// A store of credit leases shared by replicas.
pub(crate) trait LeaseStore: Send + Sync {
    /// One atomic step: takes the report, renews (or shrinks) this replica's lease.
    fn lease<'a>(&'a self, request: LeaseRequest<'a>)
        -> BoxFuture<'a, Result<LeaseAnswer, String>>;

    /// How long a lease lives in the store unless renewed.
    fn lease_ttl(&self) -> Duration;

    /// The largest block one lease may hold beyond the request.
    fn max_extra(&self) -> Credits;
}
