//! [`PaymentOptions`] and [`Environment`].

use std::time::Duration;

use super::Error;
use crate::types::ApiKey;

/// A Nevermined deployment (docs/wire-notes.md §1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Environment {
    /// `https://api.sandbox.nevermined.app`
    Sandbox,
    /// `https://api.live.nevermined.app`
    Live,
    /// `https://api.sandbox.nevermined.dev`
    StagingSandbox,
    /// `https://api.live.nevermined.dev`
    StagingLive,
    /// `NVM_BACKEND_URL`, or an explicit backend URL, or `http://localhost:3001`.
    Custom,
}

impl Environment {
    /// The environment named by an API key's prefix (the text before the first `:`),
    /// as both official SDKs derive it. `None` for any other prefix (`local`, `nvm`, …).
    ///
    /// ```
    /// use nvm_payments::Environment;
    /// assert_eq!(Environment::from_key_prefix("SANDBOX:eyJ.x.y"), Some(Environment::Sandbox));
    /// assert_eq!(Environment::from_key_prefix("sandbox-staging:eyJ.x.y"), Some(Environment::StagingSandbox));
    /// assert_eq!(Environment::from_key_prefix("local:eyJ.x.y"), None);
    /// ```
    pub fn from_key_prefix(api_key: &str) -> Option<Environment> {
        let (prefix, _) = api_key.split_once(':')?;
        match prefix.to_ascii_lowercase().as_str() {
            "sandbox-staging" => Some(Environment::StagingSandbox),
            "live-staging" => Some(Environment::StagingLive),
            "sandbox" => Some(Environment::Sandbox),
            "live" => Some(Environment::Live),
            _ => None,
        }
    }

    /// The backend base URL (no trailing `/`). `Custom` answers `http://localhost:3001`;
    /// the URL actually used for it comes from [`PaymentOptions::backend_url`].
    pub fn backend_url(self) -> &'static str {
        match self {
            Environment::Sandbox => "https://api.sandbox.nevermined.app",
            Environment::Live => "https://api.live.nevermined.app",
            Environment::StagingSandbox => "https://api.sandbox.nevermined.dev",
            Environment::StagingLive => "https://api.live.nevermined.dev",
            Environment::Custom => "http://localhost:3001",
        }
    }

    /// The SDKs' name for it (`sandbox`, `staging_live`, `custom`, …).
    pub fn name(self) -> &'static str {
        match self {
            Environment::Sandbox => "sandbox",
            Environment::Live => "live",
            Environment::StagingSandbox => "staging_sandbox",
            Environment::StagingLive => "staging_live",
            Environment::Custom => "custom",
        }
    }

    /// The default x402 network for the `nvm:erc4337` scheme (docs/wire-notes.md §6.1).
    pub fn default_network(self) -> &'static str {
        match self {
            Environment::Live | Environment::StagingLive => crate::types::NETWORK_BASE_MAINNET,
            _ => crate::types::NETWORK_BASE_SEPOLIA,
        }
    }
}

/// How to reach the backend and as whom.
///
/// The environment comes from the key's prefix (`sandbox:`, `live:`, …). Keys with any
/// other prefix (the devserver's `local:`) use the custom environment: set
/// [`backend_url`](Self::backend_url) or `NVM_BACKEND_URL`.
///
/// ```
/// use std::time::Duration;
/// use nvm_payments::PaymentOptions;
/// let opts = PaymentOptions::new("local:eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIweDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDEifQ.c2ln")
///     .backend_url("http://127.0.0.1:3001")
///     .timeout(Duration::from_secs(5));
/// # let _ = opts;
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct PaymentOptions {
    pub(crate) api_key: ApiKey,
    pub(crate) backend_url: Option<String>,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_retries: u32,
    pub(crate) api_version: String,
    pub(crate) organization_id: Option<String>,
}

impl PaymentOptions {
    /// Options for this API key with the defaults: 30 s per request, 10 s to connect,
    /// 2 retries of idempotent reads, API version `1.1`.
    pub fn new(api_key: impl Into<ApiKey>) -> Self {
        PaymentOptions {
            api_key: api_key.into(),
            backend_url: None,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_retries: 2,
            api_version: "1.1".to_owned(),
            organization_id: None,
        }
    }

    /// Reads `NVM_API_KEY` (required) and `NVM_BACKEND_URL` (optional).
    pub fn from_env() -> Result<Self, Error> {
        let key = std::env::var("NVM_API_KEY")
            .map_err(|_| Error::InvalidApiKey("NVM_API_KEY is not set".to_owned()))?;
        let mut opts = PaymentOptions::new(key);
        if let Ok(url) = std::env::var("NVM_BACKEND_URL") {
            if !url.trim().is_empty() {
                opts = opts.backend_url(url);
            }
        }
        Ok(opts)
    }

    /// Talk to this backend instead of the one the key's prefix names (a local
    /// devserver, a proxy, a self-hosted backend). A path prefix is kept.
    pub fn backend_url(mut self, url: impl Into<String>) -> Self {
        self.backend_url = Some(url.into());
        self
    }

    /// Whole-request timeout (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connect timeout (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How many times an idempotent GET is retried on connect errors, 429 and 5xx
    /// (default 2). Calls that move credits are never retried by the client.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// The `Nevermined-Version` header, `MAJOR.MINOR` (default `1.1`).
    pub fn api_version(mut self, version: impl Into<String>) -> Self {
        self.api_version = version.into();
        self
    }

    /// Sends `X-Current-Org-Id` on authenticated calls.
    pub fn organization_id(mut self, org: impl Into<String>) -> Self {
        self.organization_id = Some(org.into());
        self
    }
}
