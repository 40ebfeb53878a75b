//! The `nvm-payments` command-line tool.
//!
//! ```text
//! nvm-payments dev-server [--host 127.0.0.1] [--port 3001]
//! nvm-payments accounts create [--name N]
//! nvm-payments plans register-credits|register-time|get|balance|order|order-fiat|mint|mint-expirable|burn …
//! nvm-payments agents register|get …
//! nvm-payments token x402|jwt …
//! ```
//!
//! One module per command group; this file holds the argument tree, the global
//! options, the `dev-server` command and the exit-code policy: 0 on success, 1 when a
//! command failed, 2 when the command line itself was wrong (nothing was sent then).

mod accounts;
mod agents;
mod failure;
mod output;
mod plans;
mod session;
mod token;

use std::net::IpAddr;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use failure::Failure;
use session::Session;

const EXAMPLES: &str = "\
Examples:
  nvm-payments dev-server                                  # a local backend on :3001
  export NVM_BACKEND_URL=http://127.0.0.1:3001
  nvm-payments accounts create --name builder              # prints an API key
  export NVM_API_KEY='local:eyJ…'
  nvm-payments plans register-credits --name Pro --credits 100 --per-request 1 --free
  nvm-payments plans order 4242…                           # as a subscriber
  nvm-payments plans balance 4242…
  nvm-payments token x402 4242… --agent 7777…              # the payment-signature header
  nvm-payments plans get 4242… --json | jq .registry.credits";

/// Tools for selling AI agents through Nevermined payment plans: a local backend, and
/// the client side of the Payments API (accounts, plans, agents, access tokens).
#[derive(Debug, Parser)]
#[command(
    name = "nvm-payments",
    version,
    arg_required_else_help = true,
    after_help = EXAMPLES
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

const GLOBAL: &str = "Global options";

/// Options every client command understands; flags override the environment.
#[derive(Debug, Args)]
struct GlobalArgs {
    /// Nevermined API key, `<prefix>:<JWT>`. Prefer the environment variable: a flag
    /// is visible in shell history and to `ps`.
    #[arg(
        long,
        env = "NVM_API_KEY",
        hide_env_values = true,
        global = true,
        help_heading = GLOBAL,
        value_name = "KEY"
    )]
    api_key: Option<nvm_payments::ApiKey>,
    /// Backend base URL. Default: the one the key's prefix names (`sandbox:`, `live:`),
    /// else http://localhost:3001.
    #[arg(
        long,
        env = "NVM_BACKEND_URL",
        global = true,
        value_name = "URL",
        help_heading = GLOBAL
    )]
    backend_url: Option<String>,
    /// Print the result as JSON on stdout instead of `key: value` lines.
    #[arg(long, global = true, help_heading = GLOBAL)]
    json: bool,
    /// Give up on a backend call after this many seconds.
    #[arg(
        long,
        global = true,
        help_heading = GLOBAL,
        value_name = "SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    timeout_secs: u64,
}

/// One variant per subcommand; each runs through its own `run` function.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the local, wire-compatible Nevermined backend until Ctrl-C or SIGTERM.
    DevServer(DevServerArgs),
    /// Dev accounts on a local devserver.
    #[command(subcommand, arg_required_else_help = true)]
    Accounts(accounts::AccountsCommand),
    /// Register, inspect, buy, mint and burn payment plans.
    #[command(subcommand, arg_required_else_help = true)]
    Plans(Box<plans::PlansCommand>),
    /// Register and inspect agents.
    #[command(subcommand, arg_required_else_help = true)]
    Agents(agents::AgentsCommand),
    /// Get access tokens that pay for calls to an agent.
    #[command(subcommand, arg_required_else_help = true)]
    Token(token::TokenCommand),
}

#[derive(Debug, Args)]
struct DevServerArgs {
    /// Address to listen on.
    #[arg(long, env = "NVM_DEVSERVER_HOST", default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "NVM_DEVSERVER_PORT", default_value_t = 3001)]
    port: u16,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let is_server = matches!(cli.command, Command::DevServer(_));
    // Client commands keep stderr for the one-line error; the server logs requests.
    init_tracing(if is_server { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.one_line());
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let session = Session::new(
        cli.global.api_key,
        cli.global.backend_url,
        cli.global.timeout_secs,
        cli.global.json,
    );
    match cli.command {
        Command::DevServer(args) => run_dev_server(args)
            .await
            .map_err(|e| Failure::new(e.to_string())),
        Command::Accounts(cmd) => accounts::run(cmd, &session).await,
        Command::Plans(cmd) => plans::run(*cmd, &session).await,
        Command::Agents(cmd) => agents::run(cmd, &session).await,
        Command::Token(cmd) => token::run(cmd, &session).await,
    }
}

/// Help and version go out as clap prints them; every other command-line error is
/// squeezed onto one `error: …` line (it already names the flag and the bad value).
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
        }
        _ => {
            eprintln!("{} (see --help)", first_paragraph(&e.render().to_string()));
            ExitCode::from(2)
        }
    }
}

/// `error: the following required arguments were not provided:\n  --name <NAME>\n\nUsage…`
/// becomes `error: the following required arguments were not provided: --name <NAME>`.
fn first_paragraph(rendered: &str) -> String {
    let mut lines = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty());
    let head = lines
        .next()
        .unwrap_or("error: invalid command line")
        .to_owned();
    let rest: Vec<&str> = lines.collect();
    if rest.is_empty() {
        head
    } else {
        format!("{head} {}", rest.join(", "))
    }
}

/// Logs to stderr; `RUST_LOG` overrides `default`.
fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn run_dev_server(args: DevServerArgs) -> Result<(), Box<dyn std::error::Error>> {
    // Listen for signals before announcing the URL, so a supervisor that signals as
    // soon as it reads it still gets a clean shutdown.
    let stop = ShutdownSignal::install()?;
    let server = nvm_payments::devserver::DevServer::bind((args.host, args.port))
        .await
        .map_err(|e| format!("cannot listen on {}:{}: {e}", args.host, args.port))?;
    announce(&server.base_url());
    stop.recv().await;
    tracing::info!("shutting down");
    server.shutdown().await?;
    Ok(())
}

/// Prints the base URL. Write errors are ignored: a supervisor that read the first
/// line and closed the pipe must not bring the server down.
fn announce(base_url: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "nvm-payments devserver listening on {base_url}");
    let _ = writeln!(
        out,
        "create an account: curl -s -X POST {base_url}/dev/accounts"
    );
    let _ = out.flush();
}

/// Ctrl-C or SIGTERM, registered up front.
struct ShutdownSignal {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    #[cfg(unix)]
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignal {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    #[cfg(not(unix))]
    fn install() -> std::io::Result<Self> {
        Ok(ShutdownSignal {})
    }

    #[cfg(unix)]
    async fn recv(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {},
            _ = self.terminate.recv() => {},
        }
    }

    #[cfg(not(unix))]
    async fn recv(self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_argument_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn usage_errors_fit_on_one_line() {
        let rendered = "error: the following required arguments were not provided:\n  --name <NAME>\n  --credits <CREDITS>\n\nUsage: x\n";
        assert_eq!(
            first_paragraph(rendered),
            "error: the following required arguments were not provided: --name <NAME>, --credits <CREDITS>"
        );
        assert_eq!(
            first_paragraph("error: invalid value 'x' for '<PLAN>': bad\n\nFor more information, try '--help'.\n"),
            "error: invalid value 'x' for '<PLAN>': bad"
        );
    }
}
