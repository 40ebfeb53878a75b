//! `accounts create`: a dev account from the local devserver (`POST /dev/accounts`).
//!
//! The hosted backend has no such route; its keys come from the Nevermined app. This
//! is the one command that prints an API key, because that is what it is for.

use clap::{Args, Subcommand};
use nvm_payments::types::DevAccount;
use serde_json::json;

use crate::failure::{unreachable_backend, Failure};
use crate::output::Fields;
use crate::session::Session;

#[derive(Debug, Subcommand)]
pub(crate) enum AccountsCommand {
    /// Create a dev account (an address and its API key) on a local devserver.
    ///
    /// Prints the API key: keep it like a password.
    #[command(after_help = "\
Examples:
  nvm-payments accounts create --name builder
  nvm-payments accounts create --json | jq -r .apiKey")]
    Create(CreateArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// A label for the account (shown in the devserver's log).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
}

pub(crate) async fn run(cmd: AccountsCommand, session: &Session) -> Result<(), Failure> {
    match cmd {
        AccountsCommand::Create(args) => create(args, session).await,
    }
}

async fn create(args: CreateArgs, session: &Session) -> Result<(), Failure> {
    let backend = session.keyless_backend().trim().trim_end_matches('/');
    check_url(backend)?;
    let account = post_account(backend, args.name.as_deref(), session).await?;
    session.output.emit(&account, |a| {
        Fields::new()
            .row("address", &a.address)
            .row("api key", a.api_key.expose())
            .note(format!(
                "export NVM_API_KEY='{}'\nexport NVM_BACKEND_URL={backend}",
                a.api_key.expose()
            ))
    })
}

async fn post_account(
    backend: &str,
    name: Option<&str>,
    session: &Session,
) -> Result<DevAccount, Failure> {
    let http = reqwest::Client::builder()
        .timeout(session.timeout())
        .build()
        .map_err(|e| Failure::new(format!("cannot build an HTTP client: {e}")))?;
    let body = match name {
        Some(n) => json!({ "name": n }),
        None => json!({}),
    };
    let resp = http
        .post(format!("{backend}/dev/accounts"))
        .json(&body)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                Failure::new(format!(
                    "the backend at {backend} did not answer POST /dev/accounts within {}s (--timeout-secs)",
                    session.timeout().as_secs()
                ))
            } else if e.is_connect() {
                Failure::new(unreachable_backend(backend, &e.without_url().to_string()))
            } else {
                Failure::new(format!("POST {backend}/dev/accounts failed: {}", e.without_url()))
            }
        })?;
    let status = resp.status();
    if status == http::StatusCode::NOT_FOUND {
        return Err(Failure::new(format!(
            "the backend at {backend} has no /dev/accounts: dev accounts come from a local \
             devserver (`nvm-payments dev-server`); hosted keys come from the Nevermined app"
        )));
    }
    if !status.is_success() {
        return Err(Failure::new(format!(
            "POST {backend}/dev/accounts answered {}",
            status.as_u16()
        )));
    }
    resp.json::<DevAccount>().await.map_err(|e| {
        Failure::new(format!(
            "the backend at {backend} answered POST /dev/accounts with a body this tool cannot read: {}",
            e.without_url()
        ))
    })
}

fn check_url(url: &str) -> Result<(), Failure> {
    let ok = url
        .parse::<http::Uri>()
        .ok()
        .is_some_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
    if ok {
        Ok(())
    } else {
        Err(Failure::new(format!(
            "invalid backend URL (--backend-url / NVM_BACKEND_URL): `{url}` must be an http:// or https:// URL with a host"
        )))
    }
}
