//! What every client command starts from: the key, the backend, the timeout and the
//! output mode, and the [`Api`] client built from them.

use std::time::Duration;

use nvm_payments::client::Error as ClientError;
use nvm_payments::{ApiKey, Environment, PaymentOptions, Payments};

use crate::failure::Failure;
use crate::output::Output;

/// The backend a key with no recognised prefix talks to when no URL is given.
pub(crate) const LOCAL_BACKEND: &str = "http://localhost:3001";

/// The global options, resolved.
#[derive(Debug)]
pub(crate) struct Session {
    api_key: Option<ApiKey>,
    backend_url: Option<String>,
    timeout: Duration,
    pub(crate) output: Output,
}

/// A client; its backend URL is what error messages name.
#[derive(Debug)]
pub(crate) struct Api {
    pub(crate) payments: Payments,
}

impl Api {
    /// The mapper for this client's errors: `.map_err(api.fail())`.
    pub(crate) fn fail(&self) -> impl Fn(ClientError) -> Failure + '_ {
        move |e| Failure::client(e, self.payments.backend_url())
    }
}

impl Session {
    pub(crate) fn new(
        api_key: Option<ApiKey>,
        backend_url: Option<String>,
        timeout_secs: u64,
        json: bool,
    ) -> Self {
        Session {
            api_key: api_key.filter(|k| !k.expose().trim().is_empty()),
            backend_url: backend_url.filter(|u| !u.trim().is_empty()),
            timeout: Duration::from_secs(timeout_secs),
            output: Output { json },
        }
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The URL calls without a key go to: the explicit one, else the local default.
    pub(crate) fn keyless_backend(&self) -> &str {
        self.backend_url.as_deref().unwrap_or(LOCAL_BACKEND)
    }

    /// A client acting as the key's account; `what` says what needs the key.
    pub(crate) fn authenticated(&self, what: &str) -> Result<Api, Failure> {
        let key = self.api_key.clone().ok_or_else(|| {
            Failure::new(format!(
                "{what} needs an API key: pass --api-key or set NVM_API_KEY \
                 (a local key: `nvm-payments accounts create`)"
            ))
        })?;
        self.build(key)
    }

    /// A client for public reads (plans, agents, a given holder's balance), which send
    /// no key. `Payments` always wants one, so without a key it gets a placeholder whose
    /// account is the zero address; public calls never put it on the wire.
    pub(crate) fn public(&self) -> Result<Api, Failure> {
        match &self.api_key {
            Some(key) => self.build(key.clone()),
            None => self.build(ApiKey::new(PUBLIC_PLACEHOLDER_KEY)),
        }
    }

    fn build(&self, key: ApiKey) -> Result<Api, Failure> {
        let recognised = Environment::from_key_prefix(key.expose().trim()).is_some();
        let mut options = PaymentOptions::new(key)
            .timeout(self.timeout)
            .connect_timeout(self.timeout.min(Duration::from_secs(10)));
        // Without a URL, a `sandbox:`/`live:` key picks its hosted backend; any other
        // key would fall back to the client's NVM_BACKEND_URL lookup, which clap has
        // already read into `backend_url`, so the local default is all that is left.
        options = match (&self.backend_url, recognised) {
            (Some(url), _) => options.backend_url(url.clone()),
            (None, false) => options.backend_url(LOCAL_BACKEND),
            (None, true) => options,
        };
        let payments = Payments::new(options).map_err(|e| {
            Failure::client(e, self.backend_url.as_deref().unwrap_or(LOCAL_BACKEND))
        })?;
        Ok(Api { payments })
    }
}

/// `local:` + a JWT whose only claim is `sub` = the zero address (no signature).
const PUBLIC_PLACEHOLDER_KEY: &str = "local:eyJhbGciOiJub25lIn0.eyJzdWIiOiIweDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAifQ.x";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_reads_work_without_a_key() {
        let session = Session::new(None, Some("http://127.0.0.1:9".into()), 5, false);
        let api = session
            .public()
            .expect("the placeholder key is well formed");
        assert!(api.payments.account_address().is_zero());
        assert_eq!(api.payments.backend_url(), "http://127.0.0.1:9");
        assert!(session.authenticated("`plans order`").is_err());
    }
}
