//! The client's error type.

use std::time::Duration;

use http::StatusCode;

/// An error answered by the backend in its envelope (docs/wire-notes.md §10.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status of the answer.
    pub status: StatusCode,
    /// Backend code such as `BCK.APIKEY.0004`, or `http_<status>` when the body had none.
    pub code: String,
    /// Human message from the backend.
    pub message: String,
    /// What to do about it, when the backend said.
    pub hint: Option<String>,
    /// `METHOD /path` of the call.
    pub endpoint: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} answered {} {}",
            self.endpoint,
            self.status.as_u16(),
            self.code
        )?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// Everything a call through [`Payments`](crate::Payments) can fail with.
///
/// No variant ever carries an API key or an access token: messages name the endpoint
/// and the field, never a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The API key could not be used (wrong shape, no `sub` claim, …).
    #[error("invalid Nevermined API key: {0}")]
    InvalidApiKey(String),
    /// An option was out of range (backend URL, timeout, version).
    #[error("invalid client option `{field}`: {reason}")]
    Config {
        /// The option.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An argument was refused before any request was sent.
    #[error("invalid argument `{field}`: {reason}")]
    InvalidArgument {
        /// The argument.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The backend answered with an error status.
    #[error("{0}")]
    Api(ApiError),
    /// The backend did not answer within the configured timeout.
    #[error("{endpoint} timed out after {after:?}")]
    Timeout {
        /// `METHOD /path` of the call.
        endpoint: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// The request could not be sent or its answer could not be read
    /// (connection refused, reset, DNS, TLS).
    #[error("{endpoint} failed: {message}")]
    Transport {
        /// `METHOD /path` of the call.
        endpoint: String,
        /// What went wrong.
        message: String,
        /// Whether the connection was never established (nothing reached the backend).
        connect: bool,
    },
    /// The backend answered 2xx with a body this crate cannot read.
    #[error("{endpoint} answered a body that does not decode at `{path}`: {message}")]
    Decode {
        /// `METHOD /path` of the call.
        endpoint: String,
        /// JSON path of the offending field (`.` for the whole body).
        path: String,
        /// What is wrong with it.
        message: String,
    },
}

impl Error {
    /// The backend's code (`BCK.…`) when this is an API error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api(e) => Some(&e.code),
            _ => None,
        }
    }

    /// The HTTP status when the backend answered with an error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Api(e) => Some(e.status),
            _ => None,
        }
    }

    /// Whether the outcome of the call is unknown: the request may have reached the
    /// backend but no answer came back (timeout, dropped connection, 5xx). A call that
    /// moves credits and ends this way must be retried only with an idempotency key.
    pub fn is_outcome_unknown(&self) -> bool {
        match self {
            Error::Timeout { .. } => true,
            Error::Transport { connect, .. } => !connect,
            Error::Api(e) => e.status.is_server_error(),
            _ => false,
        }
    }

    /// Whether the backend could not be reached or is failing (connect errors,
    /// timeouts, 429 and 5xx): the kind of error worth retrying later.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::Transport { .. } => true,
            Error::Api(e) => {
                e.status.is_server_error() || e.status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }
}
