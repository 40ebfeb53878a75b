//! `token …`: access tokens a subscriber sends to an agent. These commands print the
//! token they were asked for, alone on stdout, so `$(nvm-payments token x402 …)` works.

use clap::{Args, Subcommand};
use nvm_payments::{AgentId, PlanId};

use crate::failure::Failure;
use crate::output::Fields;
use crate::session::Session;

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// An x402 access token paying with PLAN; send it in the `payment-signature` header.
    #[command(after_help = "\
Examples:
  TOKEN=$(nvm-payments token x402 4242… --agent 7777…)
  curl -H \"payment-signature: $TOKEN\" -d '{\"q\":\"hi\"}' https://agent.example/api/ask")]
    X402(X402Args),
    /// A legacy bearer access token (a JWT) for PLAN and AGENT; send it as
    /// `Authorization: Bearer …`.
    #[command(after_help = "\
Example:
  curl -H \"Authorization: Bearer $(nvm-payments token jwt 4242… 7777…)\" https://agent.example/api/ask")]
    Jwt(JwtArgs),
}

#[derive(Debug, Args)]
pub(crate) struct X402Args {
    /// Plan id that pays.
    #[arg(value_name = "PLAN")]
    plan: PlanId,
    /// Bind the token to this agent.
    #[arg(long, value_name = "AGENT")]
    agent: Option<AgentId>,
}

#[derive(Debug, Args)]
pub(crate) struct JwtArgs {
    /// Plan id that pays.
    #[arg(value_name = "PLAN")]
    plan: PlanId,
    /// Agent id the token is for.
    #[arg(value_name = "AGENT")]
    agent: AgentId,
}

pub(crate) async fn run(cmd: TokenCommand, session: &Session) -> Result<(), Failure> {
    match cmd {
        TokenCommand::X402(args) => x402(args, session).await,
        TokenCommand::Jwt(args) => jwt(args, session).await,
    }
}

async fn x402(args: X402Args, session: &Session) -> Result<(), Failure> {
    let api = session.authenticated("`token x402`")?;
    let permissions = api
        .payments
        .x402()
        .get_x402_access_token(&args.plan, args.agent.as_ref())
        .await
        .map_err(api.fail())?;
    session.output.emit(&permissions, |p| {
        Fields::new().note(p.access_token.expose())
    })
}

async fn jwt(args: JwtArgs, session: &Session) -> Result<(), Failure> {
    let api = session.authenticated("`token jwt`")?;
    let credentials = api
        .payments
        .x402()
        .get_agent_access_token(&args.plan, &args.agent)
        .await
        .map_err(api.fail())?;
    session.output.emit(&credentials, |c| {
        Fields::new().note(c.access_token.expose())
    })
}
