//! `agents …`: register an agent sold through plans, and read one back.

use clap::{Args, Subcommand};
use nvm_payments::types::{Agent, AgentApiAttributes, AgentMetadata, SecretString};
use nvm_payments::{AgentId, Endpoint, PlanId};
use serde_json::json;

use crate::failure::Failure;
use crate::output::Fields;
use crate::session::Session;

#[derive(Debug, Subcommand)]
pub(crate) enum AgentsCommand {
    /// Register an agent: its protected endpoints and the plans that sell access to it.
    #[command(after_help = "\
Examples:
  nvm-payments agents register --name 'Weather agent' \\
      --endpoint 'POST https://agent.example/api/ask' --plan 4242…
  nvm-payments agents register --name Tasks \\
      --endpoint 'POST https://agent.example/tasks/:id' \\
      --endpoint 'GET https://agent.example/tasks/:id' --plan 4242… --plan 4343…")]
    Register(RegisterArgs),
    /// Show an agent: owner, endpoints, plans.
    #[command(after_help = "Example:\n  nvm-payments agents get 7777… --json")]
    Get(GetArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RegisterArgs {
    /// Agent name.
    #[arg(long, value_name = "NAME")]
    name: String,
    /// Agent description.
    #[arg(long, value_name = "TEXT")]
    description: Option<String>,
    /// A protected endpoint, 'VERB URL' (repeatable; `:param` placeholders allowed).
    #[arg(long = "endpoint", value_name = "'VERB URL'", value_parser = parse_endpoint)]
    endpoints: Vec<Endpoint>,
    /// A plan that gives access to the agent (repeatable).
    #[arg(long = "plan", value_name = "PLAN")]
    plans: Vec<PlanId>,
}

#[derive(Debug, Args)]
pub(crate) struct GetArgs {
    /// Agent id (a decimal integer).
    #[arg(value_name = "AGENT")]
    agent: AgentId,
}

const VERBS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// `POST https://host/path` → `{"POST": "https://host/path"}`.
fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    let usage = "expected 'VERB URL', such as 'POST https://agent.example/ask'";
    let (verb, url) = s
        .trim()
        .split_once(char::is_whitespace)
        .ok_or_else(|| usage.to_owned())?;
    let (verb, url) = (verb.to_ascii_uppercase(), url.trim());
    if !VERBS.contains(&verb.as_str()) {
        return Err(format!("`{verb}` is not an HTTP method; {usage}"));
    }
    if url.is_empty() || url.contains(char::is_whitespace) {
        return Err(usage.to_owned());
    }
    Ok(Endpoint::new(verb, url))
}

pub(crate) async fn run(cmd: AgentsCommand, session: &Session) -> Result<(), Failure> {
    match cmd {
        AgentsCommand::Register(args) => register(args, session).await,
        AgentsCommand::Get(args) => get(args, session).await,
    }
}

async fn register(args: RegisterArgs, session: &Session) -> Result<(), Failure> {
    let api = session.authenticated("`agents register`")?;
    let metadata = AgentMetadata {
        description: args.description,
        ..AgentMetadata::named(args.name)
    };
    let agent_id = api
        .payments
        .agents()
        .register_agent(
            metadata,
            AgentApiAttributes::with_endpoints(args.endpoints),
            args.plans,
        )
        .await
        .map_err(api.fail())?;
    session.output.emit(&json!({ "agentId": agent_id }), |_| {
        Fields::new().row("agent id", &agent_id)
    })
}

async fn get(args: GetArgs, session: &Session) -> Result<(), Failure> {
    let api = session.public()?;
    let mut agent = api
        .payments
        .agents()
        .get_agent(&args.agent)
        .await
        .map_err(api.fail())?;
    redact_credentials(&mut agent);
    session.output.emit(&agent, agent_fields)
}

/// The credentials the platform uses to reach the agent are the owner's secrets; a
/// backend that echoes them in this public read must not get them onto a terminal.
fn redact_credentials(agent: &mut Agent) {
    if let Some(api) = agent.metadata.agent.as_mut() {
        for secret in [&mut api.password, &mut api.token].into_iter().flatten() {
            *secret = SecretString::new(REDACTED);
        }
    }
}

const REDACTED: &str = "[redacted]";

fn agent_fields(agent: &Agent) -> Fields {
    let plans = agent
        .registry
        .plans
        .iter()
        .map(PlanId::to_string)
        .collect::<Vec<_>>();
    let mut fields = Fields::new()
        .row("agent id", &agent.id)
        .row("name", &agent.metadata.main.name)
        .row_if("description", agent.metadata.main.description.as_ref())
        .row("owner", &agent.registry.owner)
        .row(
            "plans",
            if plans.is_empty() {
                "none".to_owned()
            } else {
                plans.join(", ")
            },
        );
    let endpoints = agent
        .metadata
        .agent
        .as_ref()
        .map(|api| api.endpoints.as_slice())
        .unwrap_or_default();
    for e in endpoints {
        fields = fields.row("endpoint", format!("{} {}", e.verb, e.url));
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_as_verb_and_url() {
        let e = parse_endpoint("post  https://a.example/x/:id").unwrap();
        assert_eq!(
            (e.verb.as_str(), e.url.as_str()),
            ("POST", "https://a.example/x/:id")
        );
        assert!(parse_endpoint("https://a.example").is_err());
        assert!(parse_endpoint("FETCH https://a.example").is_err());
        assert!(parse_endpoint("GET a b").is_err());
    }

    #[test]
    fn agent_credentials_are_redacted() {
        let mut agent: Agent = serde_json::from_value(serde_json::json!({
            "id": "7",
            "metadata": {
                "main": { "name": "a" },
                "agent": { "endpoints": [], "authType": "bearer", "token": "tok-secret", "password": "pw-secret" }
            },
            "registry": { "owner": "0x71e6F7f8C68e7e2E96B3c90655c2D2cA376Bc3fd", "plans": [] }
        }))
        .unwrap();
        redact_credentials(&mut agent);
        let shown = serde_json::to_string(&agent).unwrap();
        assert!(!shown.contains("-secret"), "{shown}");
        assert!(shown.contains(REDACTED), "{shown}");
    }
}
