//! A local, wire-compatible Nevermined backend: the embedded default for the
//! quickstart, the examples, the tests and the benches.
//!
//! [`DevServer`] is a real axum HTTP server that speaks the backend's wire format
//! (plans, agents, x402 permissions/verify/settle, legacy access tokens, JWKS) over a
//! ledger that behaves like the platform: ordering grants a plan's credits and moves
//! its price between dev wallets, mint-expirable credits lapse on the server clock,
//! verify never spends, settle and redeem are idempotent by `agentRequestId`, and
//! tokens it did not sign are refused. The official SDKs work against it unchanged
//! (give them a `local:` key and `NVM_BACKEND_URL`).
//!
//! Test hooks: dev accounts ([`DevServer::create_account`], `POST /dev/accounts`),
//! fault injection ([`DevServer::faults`], `POST /dev/faults`), a movable clock
//! ([`DevServer::advance_clock`], `POST /dev/clock/advance`) and per-route request
//! counters ([`DevServer::stats`], `GET /dev/stats`), the ledger's record of every
//! charge ([`DevServerState::spends`], `GET /dev/ledger/spends`), and a crash-like stop
//! that keeps the state so the same ledger can be served again on the same address
//! ([`DevServer::stop`], [`DevServer::restart`]).
//!
//! ```
//! use nvm_payments::devserver::DevServer;
//! use nvm_payments::{get_fixed_credits_config, get_free_price_config, Credits};
//! use nvm_payments::types::PlanMetadata;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let server = DevServer::start().await?;
//!     let builder = server.create_account(Some("builder"));
//!     let subscriber = server.create_account(Some("subscriber"));
//!
//!     let plan = server
//!         .payments(&builder)
//!         .plans()
//!         .register_credits_plan(
//!             PlanMetadata::named("Pro"),
//!             get_free_price_config(),
//!             get_fixed_credits_config(Credits::from(100u64), Credits::from(1u64)),
//!         )
//!         .await?;
//!
//!     let payments = server.payments(&subscriber);
//!     payments.plans().order_plan(&plan).await?;
//!     let balance = payments.plans().get_plan_balance(&plan, None).await?;
//!     assert_eq!(balance.balance, Credits::from(100u64));
//!
//!     server.shutdown().await?;
//!     Ok(())
//! }
//! ```

mod accounts;
mod clock;
mod error;
mod faults;
mod handlers;
mod hex;
mod ids;
mod keys;
mod ledger;
mod resource_check;
mod router;
mod state;
mod stats;
mod x402_token;

use std::net::SocketAddr;

use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub use clock::Clock;
pub use faults::{Fault, Faults};
pub use ledger::{Spend, DEFAULT_TOKEN_BALANCE};
pub use state::DevServerState;
pub use stats::StatsSnapshot;

use crate::client::{PaymentOptions, Payments};
use crate::types::{AccessToken, Address, AgentId, Credits, DevAccount, PlanId};

/// A running devserver. Dropping it stops the server; [`shutdown`](Self::shutdown)
/// stops it gracefully and waits.
#[derive(Debug)]
pub struct DevServer {
    state: DevServerState,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    /// Set by [`stop`](DevServer::stop): in-flight requests lose their connection.
    kill: watch::Sender<bool>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl DevServer {
    /// Starts a devserver on `127.0.0.1` on a free port.
    pub async fn start() -> std::io::Result<Self> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a devserver on `addr`.
    pub async fn bind(addr: impl ToSocketAddrs) -> std::io::Result<Self> {
        Self::serve(DevServerState::new(), TcpListener::bind(addr).await?)
    }

    /// Serves `state` on an already bound listener.
    pub fn serve(state: DevServerState, listener: TcpListener) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let (kill, killed) = watch::channel(false);
        let app = state
            .router()
            .layer(axum::middleware::from_fn(move |req, next| {
                drop_when_killed(killed.clone(), req, next)
            }));
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
        });
        Ok(DevServer {
            state,
            addr,
            shutdown: Some(tx),
            kill,
            task: Some(task),
        })
    }

    /// Stops like a crash: requests in flight lose their connection (a handler that
    /// already changed the ledger keeps its effect, its reply is lost), the port is
    /// released. The state (ledger, keys, clock, faults) is kept, to be served again
    /// with [`StoppedDevServer::start`].
    pub async fn stop(mut self) -> std::io::Result<StoppedDevServer> {
        self.kill.send_replace(true);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))?;
        }
        Ok(StoppedDevServer {
            state: self.state.clone(),
            addr: self.addr,
        })
    }

    /// [`stop`](Self::stop), then serve the same state on the same address again: a
    /// backend restart in the middle of a run, with its ledger intact.
    pub async fn restart(self) -> std::io::Result<DevServer> {
        self.stop().await?.start().await
    }

    /// The devserver's routes over `state`, for embedding in another axum app (the
    /// same as [`DevServerState::router`]).
    pub fn router(state: DevServerState) -> axum::Router {
        state.router()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, the value for `NVM_BACKEND_URL` or
    /// [`PaymentOptions::backend_url`].
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's state (ledger, keys, clock, faults, counters).
    pub fn state(&self) -> &DevServerState {
        &self.state
    }

    /// Creates a dev account, like `POST /dev/accounts`.
    pub fn create_account(&self, name: Option<&str>) -> DevAccount {
        self.state.create_account(name)
    }

    /// A client acting as `account`, pointed at this server.
    pub fn payments(&self, account: &DevAccount) -> Payments {
        Payments::new(PaymentOptions::new(account.api_key.clone()).backend_url(self.base_url()))
            .expect("a devserver key and URL always make a valid client")
    }

    /// The fault-injection handle.
    pub fn faults(&self) -> Faults {
        self.state.faults()
    }

    /// The request counters so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.state.stats()
    }

    /// Resets the request counters.
    pub fn reset_stats(&self) {
        self.state.reset_stats();
    }

    /// Moves the server clock forward by `secs` seconds.
    pub fn advance_clock(&self, secs: u64) {
        self.state.clock().advance(secs);
    }

    /// Unix seconds on the server clock.
    pub fn now(&self) -> u64 {
        self.state.clock().now()
    }

    /// A legacy bearer access token signed by this server with a chosen expiry.
    pub fn issue_access_token(
        &self,
        subscriber: &Address,
        plan_id: &PlanId,
        agent_id: &AgentId,
        exp: u64,
    ) -> AccessToken {
        self.state
            .issue_access_token(subscriber, plan_id, agent_id, exp)
    }

    /// What a dev wallet holds of `token` (the zero address is the native token).
    pub fn token_balance(&self, holder: &Address, token: &Address) -> Credits {
        self.state.token_balance(holder, token)
    }

    /// Stops accepting connections, lets in-flight requests finish, and waits.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            None => Ok(()),
        }
    }
}

/// A devserver stopped by [`DevServer::stop`]: its state and its address.
#[derive(Debug)]
pub struct StoppedDevServer {
    state: DevServerState,
    addr: SocketAddr,
}

impl StoppedDevServer {
    /// The state it served (still readable: ledger, spends, counters).
    pub fn state(&self) -> &DevServerState {
        &self.state
    }

    /// The address it listened on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves the same state on the same address again.
    pub async fn start(self) -> std::io::Result<DevServer> {
        DevServer::serve(self.state, TcpListener::bind(self.addr).await?)
    }
}

/// Runs the request unless the server is stopped first; then its connection is dropped.
async fn drop_when_killed(
    mut killed: watch::Receiver<bool>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    tokio::select! {
        response = next.run(req) => response,
        _ = async move { let _ = killed.wait_for(|k| *k).await; } => faults::dropped_connection(),
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
