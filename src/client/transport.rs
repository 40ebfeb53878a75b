//! One HTTP exchange with the backend: headers, retries of idempotent reads, and the
//! mapping of every failure to [`Error`].

use std::time::Duration;

use http::{HeaderValue, Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{ApiError, Error};
use crate::types::ErrorEnvelope;

/// Whether a call carries the API key (docs/wire-notes.md §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Auth {
    /// `Authorization: Bearer <key>` and `X-Current-Org-Id`.
    Key,
    /// No credentials.
    Public,
}

/// The shared HTTP side of [`Payments`](crate::Payments).
#[derive(Clone)]
pub(crate) struct Transport {
    pub(crate) http: reqwest::Client,
    pub(crate) base_url: String,
    pub(crate) authorization: HeaderValue,
    pub(crate) version: HeaderValue,
    pub(crate) organization: Option<HeaderValue>,
    pub(crate) timeout: Duration,
    pub(crate) max_retries: u32,
}

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(2);

impl Transport {
    /// Sends one call and decodes a 2xx body as `T`.
    ///
    /// Only GETs are retried, and only when nothing useful came back (connect errors,
    /// timeouts, 429, 5xx); anything that moves credits is sent exactly once.
    pub(crate) async fn call<B, T>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        auth: Auth,
    ) -> Result<T, Error>
    where
        B: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        let endpoint = format!("{method} {path}");
        let retries = if method == Method::GET {
            self.max_retries
        } else {
            0
        };
        let mut backoff = BACKOFF_START;
        let mut attempt = 0;
        loop {
            match self.send_once(&method, path, body, auth, &endpoint).await {
                Ok(bytes) => return decode(&endpoint, &bytes),
                Err(err) if attempt < retries && err.is_transient() => {
                    attempt += 1;
                    tracing::debug!(%endpoint, attempt, error = %err, "retrying idempotent call");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_CAP);
                }
                Err(err) => return Err(err),
            }
        }
    }

    async fn send_once<B: Serialize + ?Sized>(
        &self,
        method: &Method,
        path: &str,
        body: Option<&B>,
        auth: Auth,
        endpoint: &str,
    ) -> Result<bytes::Bytes, Error> {
        let url = format!("{}{}", self.base_url, path);
        let mut req = self
            .http
            .request(method.clone(), url)
            .header(http::header::ACCEPT, "application/json")
            // Both SDKs send it on every call, bodyless ones included.
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("nevermined-version", self.version.clone());
        if auth == Auth::Key {
            req = req.header(http::header::AUTHORIZATION, self.authorization.clone());
            if let Some(org) = &self.organization {
                req = req.header("x-current-org-id", org.clone());
            }
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.transport_error(endpoint, e))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error(endpoint, e))?;
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(Error::Api(api_error(endpoint, status, &bytes)))
        }
    }

    fn transport_error(&self, endpoint: &str, e: reqwest::Error) -> Error {
        if e.is_timeout() {
            return Error::Timeout {
                endpoint: endpoint.to_owned(),
                after: self.timeout,
            };
        }
        // reqwest's Display names the URL, which holds no secret (keys travel in
        // headers); the source chain says what failed.
        let connect = e.is_connect();
        let e = e.without_url();
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        Error::Transport {
            endpoint: endpoint.to_owned(),
            message,
            connect,
        }
    }
}

fn decode<T: DeserializeOwned>(endpoint: &str, bytes: &[u8]) -> Result<T, Error> {
    crate::types::serde_util::from_json_body(bytes).map_err(|e| Error::Decode {
        endpoint: endpoint.to_owned(),
        path: e.path().to_string(),
        message: e.into_inner().to_string(),
    })
}

fn api_error(endpoint: &str, status: StatusCode, bytes: &[u8]) -> ApiError {
    let envelope: ErrorEnvelope = serde_json::from_slice(bytes).unwrap_or_default();
    let message = if envelope.message.is_empty() {
        // Not an envelope (a proxy's HTML page, plain text): keep a short, printable head.
        let text = String::from_utf8_lossy(bytes);
        let text: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
        text.trim().to_owned()
    } else {
        envelope.message
    };
    ApiError {
        status,
        code: envelope
            .code
            .unwrap_or_else(|| format!("http_{}", status.as_u16())),
        message,
        hint: envelope.hint,
        endpoint: endpoint.to_owned(),
    }
}
