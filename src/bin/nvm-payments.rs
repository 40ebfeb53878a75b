//! The `nvm-payments` command-line tool.
//!
//! ```text
//! nvm-payments dev-server [--host 127.0.0.1] [--port 3001]
//! ```

use std::net::IpAddr;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Tools for selling AI agents through Nevermined payment plans.
#[derive(Debug, Parser)]
#[command(name = "nvm-payments", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// One variant per subcommand; each runs through its own `run` function.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the local, wire-compatible Nevermined backend until Ctrl-C or SIGTERM.
    DevServer(DevServerArgs),
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
    let cli = Cli::parse();
    init_tracing();
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
    let result = runtime.block_on(async {
        match cli.command {
            Command::DevServer(args) => run_dev_server(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr; `RUST_LOG` overrides the default `info`.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
