//! Several replicas, one balance: a store on Redis that the replicas of an agent share
//! (feature `redis`). Give it to the layer with
//! [`PaymentLayerBuilder::shared`](crate::PaymentLayerBuilder::shared).
//!
//! What is shared: each payer's balance (fetched from the backend by one replica per
//! balance TTL), what was charged since, the credit leases each replica holds, and the
//! single-use (x402 v3) tokens claimed. What is not: verifications, plans and routes,
//! each replica's own caches.
//!
//! A replica takes a block of a payer's credits in one atomic step (a Lua script),
//! serves requests from it with no network call, and renews it when it is spent or
//! half its TTL old, reporting what it charged. The block follows the payer's recent
//! rate and shrinks to exactly one request near the end of the balance. A lease left
//! by a replica that died is ignored once its TTL has passed.
//!
//! When Redis cannot be reached, a replica serves what is left of its lease until the
//! lease would have expired in Redis, then refuses with 503 `backend_unavailable`;
//! single-use tokens are refused with 503 at once. After Redis lost its data (a
//! restart without persistence), no lease is granted for one lease TTL, since leases
//! granted before may still be served.
//!
//! The charge journal can live here too
//! ([`PaymentLayerBuilder::charge_journal_in`](crate::PaymentLayerBuilder::charge_journal_in)):
//! each replica's unfinished charges under a liveness lease, taken over and replayed
//! by a surviving replica when that lease expires.
//!
//! Keys start with the prefix (default `nvm`). The balance, lease and claim keys hold
//! digests and numbers, never a token; the journal's entries hold access tokens until
//! their charges are final (README, "Charge journal");
//! every call has a timeout (default 500 ms).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use nvm_payments::{shared::RedisStore, PaymentLayer, Payments, PaymentOptions};
//!
//! let store = RedisStore::builder("redis://127.0.0.1:6379/")
//!     .prefix("my-agent")
//!     .lease_ttl(Duration::from_secs(15))
//!     .connect()
//!     .await?;
//! let payments = Payments::new(PaymentOptions::new("sandbox:eyJ...".to_owned()))?;
//! let layer = PaymentLayer::builder(payments)
//!     .plan_id("1234".parse()?)
//!     .shared(store)
//!     .build()?;
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```

mod claims;
mod connection;
mod journal;
mod lease;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::types::Credits;

pub(crate) use connection::RedisConnection;

/// Why the shared store could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SharedStoreError {
    /// An option cannot work (the field is named).
    #[error("invalid RedisStore option `{field}`: {reason}")]
    Config {
        /// The builder method at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Redis did not answer (the message never quotes the URL, which may hold a
    /// password).
    #[error("cannot reach redis: {0}")]
    Connect(String),
}

/// What every handle of one store shares.
pub(crate) struct StoreShared {
    pub(crate) conn: RedisConnection,
    pub(crate) prefix: String,
    pub(crate) lease_ttl: Duration,
    pub(crate) max_extra: Credits,
    pub(crate) lease_script: redis::Script,
    pub(crate) claim_script: redis::Script,
}

/// A connection to the Redis every replica of an agent shares; cheap to clone.
///
/// Build it with [`RedisStore::builder`] (or [`RedisStore::connect`] for the defaults)
/// and hand it to [`PaymentLayerBuilder::shared`](crate::PaymentLayerBuilder::shared).
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<StoreShared>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the URL: it may hold a password.
        f.debug_struct("RedisStore")
            .field("prefix", &self.shared.prefix)
            .field("lease_ttl", &self.shared.lease_ttl)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Options for a store at `url` (`redis://[:password@]host:port/[db]`).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            prefix: "nvm".to_owned(),
            timeout: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(15),
            max_lease: Credits::from(1_000u64),
        }
    }

    /// Connects with the default options.
    pub async fn connect(url: impl Into<String>) -> Result<RedisStore, SharedStoreError> {
        Self::builder(url).connect().await
    }

    /// Calls made to Redis through this store so far (all its layers): the round
    /// trips per request of BENCHMARKS.md.
    pub fn round_trips(&self) -> u64 {
        self.shared.conn.round_trips()
    }

    /// The leases of one more replica (one layer): its own id in Redis.
    pub(crate) fn replica_leases(&self) -> Arc<dyn crate::balance::LeaseStore> {
        Arc::new(lease::ReplicaLeases {
            store: self.shared.clone(),
            replica: uuid::Uuid::new_v4().simple().to_string(),
        })
    }

    /// The charge journal of one more replica (one layer), with its own id and lease.
    pub(crate) fn charge_journal(&self) -> Arc<dyn crate::settle::JournalStore> {
        Arc::new(journal::RedisJournal::new(self.shared.clone()))
    }

    /// Single-use token claims in this store.
    pub(crate) fn claims(&self) -> Arc<dyn crate::auth::SharedClaims> {
        Arc::new(claims::RedisClaims {
            store: self.shared.clone(),
        })
    }
}

/// Options of a [`RedisStore`]; start from [`RedisStore::builder`].
#[must_use]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    timeout: Duration,
    lease_ttl: Duration,
    max_lease: Credits,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("lease_ttl", &self.lease_ttl)
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    /// Every key starts with `prefix:` (default `nvm`): agents sharing one Redis use
    /// one prefix each.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The timeout of every Redis call (default 500 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long a lease lives in Redis unless renewed (default 15 s): credits leased by
    /// a replica that died come back after it. It must exceed the longest request a
    /// replica serves (handler and charge), since a request's credits are counted in
    /// Redis through its replica's lease; a busy replica renews at half of it.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// The most credits one lease holds beyond the request that asks (default 1 000);
    /// the lease follows the payer's rate up to it.
    pub fn max_lease(mut self, credits: impl Into<Credits>) -> Self {
        self.max_lease = credits.into();
        self
    }

    /// Checks the options and connects.
    pub async fn connect(self) -> Result<RedisStore, SharedStoreError> {
        let bad = |field, reason| SharedStoreError::Config { field, reason };
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err(bad("prefix", "must be non-empty, without braces"));
        }
        if self.timeout.is_zero() {
            return Err(bad("timeout", "must be greater than zero"));
        }
        if self.lease_ttl < Duration::from_millis(100) {
            return Err(bad("lease_ttl", "must be at least 100 ms"));
        }
        let conn = RedisConnection::open(&self.url, self.timeout)
            .await
            .map_err(SharedStoreError::Connect)?;
        // The epoch marks the store's data as known: a replica that finds it missing
        // later knows Redis lost its leases (lease.lua). Set here, at a start, so a
        // fresh Redis serves at once.
        let mut epoch = redis::cmd("SET");
        epoch.arg(format!("{}:epoch", self.prefix)).arg(0).arg("NX");
        conn.command::<Option<String>>(&epoch)
            .await
            .map_err(SharedStoreError::Connect)?;
        Ok(RedisStore {
            shared: Arc::new(StoreShared {
                conn,
                prefix: self.prefix,
                lease_ttl: self.lease_ttl,
                max_extra: self.max_lease,
                lease_script: redis::Script::new(include_str!("lease.lua")),
                claim_script: claims::claim_script(),
            }),
        })
    }
}
