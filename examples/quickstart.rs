//! The whole Nevermined flow on one machine, in one process, with no account and no
//! network: an embedded devserver, a builder who sells an agent, and a subscriber who
//! buys credits and spends them.
//!
//! ```sh
//! cargo run --example quickstart
//! ```

use std::error::Error;
use std::io::Write;

use axum::routing::post;
use axum::{Json, Router};
use nvm_payments::devserver::DevServer;
use nvm_payments::types::{AgentApiAttributes, AgentMetadata, PlanMetadata};
use nvm_payments::{
    get_erc20_price_config, get_fixed_credits_config, AccessToken, Credits, Endpoint,
    PaymentContext, PaymentLayer,
};
use serde_json::{json, Value};

/// USDC on Base Sepolia; dev accounts hold ample amounts of any ERC20.
const USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
/// Credits each call to the agent costs.
const CREDITS_PER_CALL: u64 = 10;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    run(&mut std::io::stdout()).await.map(|_| ())
}

/// What a call to the agent answered.
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `error` of a rejection, or the handler's `answer`.
    pub summary: String,
}

/// The whole flow; the transcript goes to `out`. Returns every answer the agent gave,
/// in order, so tests can check the story.
pub async fn run(out: &mut impl Write) -> Result<Vec<Answer>, Box<dyn Error>> {
    let mut answers = Vec::new();

    // 1. The embedded devserver: a wire-compatible Nevermined backend on 127.0.0.1.
    let server = DevServer::start().await?;
    writeln!(
        out,
        "[devserver]  Nevermined backend on {}",
        server.base_url()
    )?;
    let builder = server.payments(&server.create_account(Some("builder")));
    let subscriber = server.payments(&server.create_account(Some("subscriber")));
    writeln!(out, "[builder]    account {}", builder.account_address())?;
    writeln!(out, "[subscriber] account {}", subscriber.account_address())?;

    // 2. The builder registers a credits plan: 100 credits for 20 USDC units.
    let plan = builder
        .plans()
        .register_credits_plan(
            PlanMetadata::named("Quickstart plan"),
            get_erc20_price_config(
                Credits::from(20u64),
                USDC.parse()?,
                builder.account_address().clone(),
            ),
            get_fixed_credits_config(Credits::from(100u64), Credits::from(CREDITS_PER_CALL)),
        )
        .await?;
    writeln!(
        out,
        "[builder]    registered plan {plan} (100 credits, {CREDITS_PER_CALL} per call)"
    )?;

    // 3. The agent: bind first so its URL can be registered.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let agent_url = format!("http://{}/ask", listener.local_addr()?);
    let agent = builder
        .agents()
        .register_agent(
            AgentMetadata::named("Echo agent"),
            AgentApiAttributes::with_endpoints(vec![Endpoint::new("POST", &agent_url)]),
            vec![plan.clone()],
        )
        .await?;
    writeln!(
        out,
        "[builder]    registered agent {agent} at POST {agent_url}"
    )?;

    async fn ask(payment: PaymentContext, Json(body): Json<Value>) -> Json<Value> {
        Json(json!({
            "answer": format!("you said {}", body["question"]),
            "requestId": payment.request_id(),
        }))
    }
    let payment = PaymentLayer::builder(builder.clone())
        .plan_id(plan.clone())
        .agent_id(agent.clone())
        .credits(CREDITS_PER_CALL)
        // The demo tops up and calls again within milliseconds: re-check the balance
        // on every refusal instead of once a second, so the top-up shows at once.
        .recheck_balance_before_refusing(std::time::Duration::ZERO)
        .build()?;
    let app = Router::new().route("/ask", post(ask).layer(payment));
    let agent_task = tokio::spawn(async move { axum::serve(listener, app).await });
    writeln!(
        out,
        "[agent]      serving; POST /ask costs {CREDITS_PER_CALL} credits"
    )?;

    // 4. The subscriber looks before buying.
    let balance = subscriber.plans().get_plan_balance(&plan, None).await?;
    writeln!(
        out,
        "[subscriber] balance {} (subscriber: {})",
        balance.balance, balance.is_subscriber
    )?;
    let http = reqwest::Client::new();
    let call = |token: Option<AccessToken>| {
        let request = http.post(&agent_url).json(&json!({"question": "hello"}));
        let request = match token {
            Some(t) => request.header("payment-signature", t.expose()),
            None => request,
        };
        async move {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let paid = response.headers().contains_key("payment-response");
            let body: Value = response.json().await?;
            let summary = body["answer"]
                .as_str()
                .or(body["error"].as_str())
                .unwrap_or_default()
                .to_owned();
            Ok::<_, reqwest::Error>((Answer { status, summary }, paid))
        }
    };

    let (answer, _) = call(None).await?;
    writeln!(
        out,
        "[subscriber] POST /ask without a token -> {} {}",
        answer.status, answer.summary
    )?;
    answers.push(answer);

    // 5. Buy the plan, get an access token, spend.
    let order = subscriber.plans().order_plan(&plan).await?;
    writeln!(
        out,
        "[subscriber] ordered the plan (tx {})",
        order.tx_hash.unwrap_or_default()
    )?;
    let balance = subscriber.plans().get_plan_balance(&plan, None).await?;
    writeln!(
        out,
        "[subscriber] balance {} (subscriber: {})",
        balance.balance, balance.is_subscriber
    )?;
    let token = subscriber
        .x402()
        .get_x402_access_token(&plan, Some(&agent))
        .await?
        .access_token;
    writeln!(
        out,
        "[subscriber] got an x402 access token (sha256 {})",
        token.digest()
    )?;

    for _ in 0..3 {
        let (answer, paid) = call(Some(token.clone())).await?;
        let balance = subscriber.plans().get_plan_balance(&plan, None).await?;
        writeln!(
            out,
            "[subscriber] POST /ask -> {} {:?}{} balance now {}",
            answer.status,
            answer.summary,
            if paid { " (receipt attached);" } else { ";" },
            balance.balance
        )?;
        answers.push(answer);
    }

    // 6. The builder tops the subscriber up.
    builder
        .plans()
        .mint_plan_credits(&plan, Credits::from(50u64), subscriber.account_address())
        .await?;
    let balance = subscriber.plans().get_plan_balance(&plan, None).await?;
    writeln!(
        out,
        "[builder]    minted 50 credits; subscriber balance {}",
        balance.balance
    )?;

    // 7. Spend until the credits run out.
    loop {
        let (answer, _) = call(Some(token.clone())).await?;
        let done = answer.status != 200;
        if done {
            writeln!(
                out,
                "[subscriber] POST /ask -> {} {}",
                answer.status, answer.summary
            )?;
        }
        answers.push(answer);
        if done || answers.len() > 100 {
            break;
        }
    }
    let balance = subscriber.plans().get_plan_balance(&plan, None).await?;
    let served = answers.iter().filter(|a| a.status == 200).count();
    writeln!(
        out,
        "[subscriber] {served} calls served, balance {}: out of credits",
        balance.balance
    )?;
    agent_task.abort();
    Ok(answers)
}
