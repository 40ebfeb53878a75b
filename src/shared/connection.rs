//! One connection to Redis for everything the crate keeps there: every call bounded by
//! a timeout and counted (the round trips per request in BENCHMARKS.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, ScriptInvocation};

/// A reconnecting connection (redis' `ConnectionManager`) with a timeout per call.
/// Crate-wide, so other shared state (a charge journal) can use the same connection.
pub(crate) struct RedisConnection {
    manager: ConnectionManager,
    timeout: Duration,
    round_trips: AtomicU64,
}

impl RedisConnection {
    pub(crate) async fn open(url: &str, timeout: Duration) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| describe(&e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Reconnection happens in the background; a call meanwhile fails fast and
            // the caller's own policy applies (serve from the lease, or 503).
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let manager = tokio::time::timeout(
            timeout * 4,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| "timed out connecting to redis".to_owned())?
        .map_err(|e| describe(&e))?;
        Ok(RedisConnection {
            manager,
            timeout,
            round_trips: AtomicU64::new(0),
        })
    }

    /// Calls made to Redis so far.
    pub(crate) fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// Runs a script (loaded on first use), within the timeout.
    pub(crate) async fn script<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, String> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.manager.clone();
        match tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn)).await {
            Ok(result) => result.map_err(|e| describe(&e)),
            Err(_) => Err("redis call timed out".to_owned()),
        }
    }

    /// Sends a pipeline (one round trip), within the timeout.
    pub(crate) async fn pipeline<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, String> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.manager.clone();
        match tokio::time::timeout(self.timeout, pipe.query_async(&mut conn)).await {
            Ok(result) => result.map_err(|e| describe(&e)),
            Err(_) => Err("redis call timed out".to_owned()),
        }
    }

    /// Runs one command, within the timeout.
    pub(crate) async fn command<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, String> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.manager.clone();
        match tokio::time::timeout(self.timeout, cmd.query_async(&mut conn)).await {
            Ok(result) => result.map_err(|e| describe(&e)),
            Err(_) => Err("redis call timed out".to_owned()),
        }
    }
}

/// An error's category, and the server's own words for a server error: never the
/// client's detail, which may quote the URL (and its password).
fn describe(err: &redis::RedisError) -> String {
    match (err.kind(), err.detail()) {
        (redis::ErrorKind::Server(_), Some(detail)) => {
            format!("redis {}: {detail}", err.category())
        }
        _ => format!("redis {}", err.category()),
    }
}
