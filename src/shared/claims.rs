//! Single-use (x402 v3) tokens claimed in Redis: one claim per token across replicas.
//! The key is the digest of `(plan, payer, nonce)` the layer already uses, never the
//! token.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::lease::hex;
use super::StoreShared;
use crate::auth::{ClaimRefused, SharedClaims};
use crate::types::TokenDigest;

/// Claims the token unless another request holds it or spent it, in one call.
const CLAIM: &str = r"
if redis.call('SET', KEYS[1], 'in_flight', 'NX', 'PX', ARGV[1]) then
  return 'claimed'
end
return redis.call('GET', KEYS[1]) or 'in_flight'
";

/// Releases the claim only if it was not spent meanwhile.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == 'in_flight' then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// A claim whose request never says how it ended (a replica that died) frees its
/// token after this long; longer than any request should take.
const IN_FLIGHT: Duration = Duration::from_secs(300);
/// A spent token is remembered a day, as by a single replica.
const KEEP_SPENT: Duration = Duration::from_secs(24 * 3600);

pub(crate) struct RedisClaims {
    pub(crate) store: Arc<StoreShared>,
}

impl RedisClaims {
    fn key(&self, token: &TokenDigest) -> String {
        format!("{}:v3:{}", self.store.prefix, hex(token.as_bytes()))
    }

    /// Sent without waiting for it: the request's answer does not depend on it.
    fn send(&self, cmd: Sent) {
        let store = self.store.clone();
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        handle.spawn(async move {
            let result = match cmd {
                Sent::Spend(key) => {
                    let mut c = redis::cmd("SET");
                    c.arg(&key)
                        .arg("spent")
                        .arg("PX")
                        .arg(millis(KEEP_SPENT));
                    store.conn.command::<()>(&c).await
                }
                Sent::Release(key) => {
                    let script = redis::Script::new(RELEASE);
                    let mut invocation = script.prepare_invoke();
                    invocation.key(&key);
                    store.conn.script::<i64>(&invocation).await.map(drop)
                }
            };
            if let Err(why) = result {
                tracing::warn!(reason = %why, "single-use claim not updated in the shared store; it expires on its own");
            }
        });
    }
}

enum Sent {
    Spend(String),
    Release(String),
}

impl SharedClaims for RedisClaims {
    fn claim(&self, token: TokenDigest) -> BoxFuture<'_, Result<Result<(), ClaimRefused>, String>> {
        Box::pin(async move {
            let script = &self.store.claim_script;
            let mut invocation = script.prepare_invoke();
            invocation.key(self.key(&token)).arg(millis(IN_FLIGHT));
            let answer: String = self.store.conn.script(&invocation).await?;
            Ok(match answer.as_str() {
                "claimed" => Ok(()),
                "spent" => Err(ClaimRefused::Spent),
                _ => Err(ClaimRefused::InFlight),
            })
        })
    }

    fn spend(&self, token: TokenDigest) {
        self.send(Sent::Spend(self.key(&token)));
    }

    fn release(&self, token: TokenDigest) {
        self.send(Sent::Release(self.key(&token)));
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn claim_script() -> redis::Script {
    redis::Script::new(CLAIM)
}
