//! Why a command failed, as one line a person can act on.
//!
//! Client errors are mapped with the backend URL in hand, so "connection refused"
//! becomes "cannot reach the backend at URL" and a refused key says which setting to
//! fix. No message ever contains an API key or an access token: the client's errors
//! never carry one, and nothing here adds one.

use nvm_payments::client::Error as ClientError;

/// A command's failure, printed as `error: <message>` on stderr with exit code 1.
#[derive(Debug)]
pub(crate) struct Failure {
    message: String,
}

impl Failure {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
        }
    }

    /// The message on one line: a backend message may carry newlines.
    pub(crate) fn one_line(&self) -> String {
        self.message
            .split(|c: char| c.is_control())
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Maps a client error for a call made to `backend`.
    pub(crate) fn client(err: ClientError, backend: &str) -> Self {
        let message = match err {
            ClientError::Api(api) if api.status == http::StatusCode::UNAUTHORIZED => format!(
                "the backend at {backend} refused the API key ({} {}): check --api-key / NVM_API_KEY \
                 (a local key: `nvm-payments accounts create`)",
                api.code, api.message
            ),
            ClientError::Api(api) => {
                let mut m = format!(
                    "{} {} ({} answered {})",
                    api.code,
                    api.message,
                    api.endpoint,
                    api.status.as_u16()
                );
                if let Some(hint) = api.hint {
                    m.push_str(&format!("; hint: {hint}"));
                }
                m
            }
            ClientError::Transport {
                connect: true,
                message,
                ..
            } => unreachable_backend(backend, &message),
            ClientError::Transport {
                endpoint, message, ..
            } => format!(
                "the connection to the backend at {backend} broke during {endpoint} ({message}); \
                 the outcome is unknown: check before retrying (e.g. `nvm-payments plans balance`)"
            ),
            ClientError::Timeout { endpoint, after } => {
                let mut m = format!(
                    "the backend at {backend} did not answer {endpoint} within {}s (--timeout-secs)",
                    after.as_secs()
                );
                if !endpoint.starts_with("GET ") {
                    m.push_str("; the outcome is unknown: check before retrying");
                }
                m
            }
            ClientError::InvalidApiKey(reason) => {
                format!("invalid API key (--api-key / NVM_API_KEY): {reason}")
            }
            ClientError::Config {
                field: "backend_url",
                reason,
            } => format!("invalid backend URL (--backend-url / NVM_BACKEND_URL): {reason}"),
            ClientError::Decode {
                endpoint,
                path,
                message,
            } => format!(
                "the backend at {backend} answered {endpoint} with a body this tool cannot read \
                 (at `{path}`: {message}); is it a Nevermined backend?"
            ),
            other => other.to_string(),
        };
        Failure { message }
    }
}

/// Connection refused, DNS failure, TLS failure: nothing reached the backend.
pub(crate) fn unreachable_backend(backend: &str, detail: &str) -> String {
    if is_local(backend) {
        format!("cannot reach the backend at {backend} (is `nvm-payments dev-server` running?)")
    } else {
        format!("cannot reach the backend at {backend}: {detail}")
    }
}

fn is_local(url: &str) -> bool {
    let host = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', '?'])
        .next()
        .unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    matches!(
        host,
        "localhost" | "127.0.0.1" | "[::1]" | "0.0.0.0" | "host.docker.internal"
    ) || host.starts_with("127.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_hosts_get_the_dev_server_hint() {
        assert!(unreachable_backend("http://127.0.0.1:3001", "x").contains("dev-server"));
        assert!(unreachable_backend("http://localhost", "x").contains("dev-server"));
        assert!(unreachable_backend("http://[::1]:9", "x").contains("dev-server"));
        let hosted = unreachable_backend("https://api.sandbox.nevermined.app", "dns error");
        assert!(!hosted.contains("dev-server") && hosted.ends_with("dns error"));
    }

    #[test]
    fn messages_are_one_line() {
        let f = Failure::new("first\nsecond\r\n third");
        assert_eq!(f.one_line(), "first second third");
    }
}
