//! The typed client for the Nevermined Payments API.
//!
//! [`Payments`] is built once from [`PaymentOptions`] and cloned freely (it is an
//! `Arc` inside). Resources are reached through handles borrowed from it, named as in
//! the official Python SDK: [`plans()`](Payments::plans), [`agents()`](Payments::agents),
//! [`x402()`](Payments::x402).
//!
//! ```no_run
//! # async fn run() -> Result<(), nvm_payments::client::Error> {
//! use nvm_payments::{Payments, PaymentOptions, PlanId};
//! let payments = Payments::new(PaymentOptions::from_env()?)?;
//! let plan: PlanId = "123".parse().expect("a decimal plan id");
//! let balance = payments.plans().get_plan_balance(&plan, None).await?;
//! println!("{} holds {} credits", balance.holder_address, balance.balance);
//! # Ok(()) }
//! ```

mod agents;
mod api_key;
mod delegations;
mod error;
mod options;
mod plans;
mod transport;
mod x402;

use std::fmt;
use std::sync::Arc;

use http::HeaderValue;

pub use agents::Agents;
pub use delegations::Delegations;
pub use error::{ApiError, Error};
pub use options::{Environment, PaymentOptions};
pub use plans::{ListOptions, Page, Plans, SortOrder};
pub use x402::{build_payment_required, PaymentRequiredOptions, X402TokenOptions, JWKS_PATH, X402};

use crate::types::Address;
use transport::Transport;

/// The Nevermined Payments client. Cheap to clone; `Debug` never shows the key.
#[derive(Clone)]
pub struct Payments {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    transport: Transport,
    account: Address,
    environment: Environment,
}

impl fmt::Debug for Payments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Payments")
            .field("account", &self.inner.account)
            .field("environment", &self.inner.environment)
            .field("backend", &self.inner.transport.base_url)
            .finish_non_exhaustive()
    }
}

impl Payments {
    /// Builds a client. Fails at once, with a message that never repeats the key, when
    /// the key is not `<prefix>:<JWT>` with a `sub` address, or an option is invalid.
    pub fn new(options: PaymentOptions) -> Result<Self, Error> {
        let key = options.api_key.expose().trim();
        let account = api_key::account_address(key)?;
        let environment = Environment::from_key_prefix(key).unwrap_or(Environment::Custom);
        let base_url = match (&options.backend_url, environment) {
            (Some(url), _) => url.clone(),
            (None, Environment::Custom) => std::env::var("NVM_BACKEND_URL")
                .ok()
                .filter(|u| !u.trim().is_empty())
                .unwrap_or_else(|| Environment::Custom.backend_url().to_owned()),
            (None, env) => env.backend_url().to_owned(),
        };
        let base_url = validate_base_url(&base_url)?;
        if !is_version(&options.api_version) {
            return Err(Error::Config {
                field: "api_version",
                reason: "must be MAJOR.MINOR, such as 1.1".to_owned(),
            });
        }
        if options.timeout.is_zero() {
            return Err(Error::Config {
                field: "timeout",
                reason: "must be greater than zero".to_owned(),
            });
        }
        let mut authorization = HeaderValue::try_from(format!("Bearer {key}")).map_err(|_| {
            Error::InvalidApiKey("contains characters not allowed in a header".to_owned())
        })?;
        authorization.set_sensitive(true);
        let organization = match &options.organization_id {
            Some(org) => Some(
                HeaderValue::try_from(org.as_str()).map_err(|_| Error::Config {
                    field: "organization_id",
                    reason: "contains characters not allowed in a header".to_owned(),
                })?,
            ),
            None => None,
        };
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.connect_timeout)
            .user_agent(concat!("nvm-payments-rs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Config {
                field: "http",
                reason: e.to_string(),
            })?;
        Ok(Payments {
            inner: Arc::new(Inner {
                transport: Transport {
                    http,
                    base_url,
                    authorization,
                    version: HeaderValue::try_from(options.api_version.as_str()).map_err(|_| {
                        Error::Config {
                            field: "api_version",
                            reason: "not a header value".to_owned(),
                        }
                    })?,
                    organization,
                    timeout: options.timeout,
                    max_retries: options.max_retries,
                },
                account,
                environment,
            }),
        })
    }

    /// The caller's account: the `sub` claim of the API key.
    pub fn account_address(&self) -> &Address {
        &self.inner.account
    }

    /// The environment the key's prefix names (`Custom` for other prefixes).
    pub fn environment(&self) -> Environment {
        self.inner.environment
    }

    /// The backend base URL calls go to (no trailing `/`).
    pub fn backend_url(&self) -> &str {
        &self.inner.transport.base_url
    }

    /// Plans: balances, orders, mint, burn, redeem, registration.
    pub fn plans(&self) -> Plans<'_> {
        Plans { payments: self }
    }

    /// Agents: registration, lookup, plan links.
    pub fn agents(&self) -> Agents<'_> {
        Agents { payments: self }
    }

    /// Delegations: create and list them, and the saved payment methods they charge.
    pub fn delegations(&self) -> Delegations<'_> {
        Delegations { payments: self }
    }

    /// x402 access tokens and the facilitator (verify, settle), and legacy tokens.
    pub fn x402(&self) -> X402<'_> {
        X402 { payments: self }
    }

    /// A client whose authenticated calls act for organisation `org_id`
    /// (`X-Current-Org-Id`, the one per-call header the SDKs allow); it shares this
    /// client's connections. Fails when `org_id` is empty or not a header value.
    ///
    /// ```no_run
    /// # async fn run(payments: nvm_payments::Payments) -> Result<(), nvm_payments::client::Error> {
    /// use nvm_payments::client::Page;
    /// let org_plans = payments.for_organization("org-42")?.plans().get_plans(Page::default()).await?;
    /// # let _ = org_plans; Ok(()) }
    /// ```
    pub fn for_organization(&self, org_id: &str) -> Result<Payments, Error> {
        let org = org_id.trim();
        let header = HeaderValue::try_from(org)
            .ok()
            .filter(|_| !org.is_empty())
            .ok_or_else(|| Error::InvalidArgument {
                field: "org_id",
                reason: "must be a non-empty header value".to_owned(),
            })?;
        let mut inner = (*self.inner).clone();
        inner.transport.organization = Some(header);
        Ok(Payments {
            inner: Arc::new(inner),
        })
    }

    pub(crate) fn transport(&self) -> &Transport {
        &self.inner.transport
    }
}

fn is_version(v: &str) -> bool {
    matches!(v.split_once('.'), Some((a, b)) if !a.is_empty() && !b.is_empty()
        && a.bytes().all(|c| c.is_ascii_digit()) && b.bytes().all(|c| c.is_ascii_digit()))
}

fn validate_base_url(url: &str) -> Result<String, Error> {
    let trimmed = url.trim().trim_end_matches('/');
    let parsed: http::Uri = trimmed.parse().map_err(|_| Error::Config {
        field: "backend_url",
        reason: format!("`{trimmed}` is not a URL"),
    })?;
    match parsed.scheme_str() {
        Some("http") | Some("https") if parsed.host().is_some() => Ok(trimmed.to_owned()),
        _ => Err(Error::Config {
            field: "backend_url",
            reason: format!("`{trimmed}` must be an http:// or https:// URL with a host"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "local:eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIweDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDEifQ.c2ln";

    #[test]
    fn builds_and_redacts() {
        let p = Payments::new(PaymentOptions::new(KEY).backend_url("http://127.0.0.1:9/")).unwrap();
        assert_eq!(p.backend_url(), "http://127.0.0.1:9");
        assert_eq!(p.environment(), Environment::Custom);
        let dbg = format!("{p:?}");
        assert!(!dbg.contains("eyJ"), "{dbg}");
    }

    #[test]
    fn refuses_bad_options() {
        let bad_url = Payments::new(PaymentOptions::new(KEY).backend_url("ftp://x")).unwrap_err();
        assert!(matches!(
            bad_url,
            Error::Config {
                field: "backend_url",
                ..
            }
        ));
        let bad_version = Payments::new(
            PaymentOptions::new(KEY)
                .backend_url("http://x")
                .api_version("v1"),
        )
        .unwrap_err();
        assert!(matches!(
            bad_version,
            Error::Config {
                field: "api_version",
                ..
            }
        ));
        assert!(matches!(
            Payments::new(PaymentOptions::new("garbage")).unwrap_err(),
            Error::InvalidApiKey(_)
        ));
    }

    #[test]
    fn key_prefix_picks_the_backend() {
        let key = KEY.replacen("local", "live", 1);
        let p = Payments::new(PaymentOptions::new(key)).unwrap();
        assert_eq!(p.backend_url(), "https://api.live.nevermined.app");
    }
}
