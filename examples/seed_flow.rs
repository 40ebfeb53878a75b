//! The seed's complete client flow, on the embedded devserver by default:
//!
//! 1. the builder registers a credits plan priced with the ERC20 helper, 100 fixed credits;
//! 2. the subscriber checks its balance, orders the plan, checks again;
//! 3. the builder mints 50 more credits to the subscriber;
//! 4. the subscriber sees the updated balance.
//!
//! ```sh
//! cargo run --example seed_flow
//! ```
//!
//! To run it against a real backend instead, set `NVM_BUILDER_API_KEY` and
//! `NVM_SUBSCRIBER_API_KEY` (sandbox keys; the environment comes from their prefix) and
//! `NVM_ERC20_TOKEN` (a token the subscriber holds).

use std::error::Error;
use std::io::Write;

use nvm_payments::types::PlanMetadata;
use nvm_payments::{
    get_erc20_price_config, get_fixed_credits_config, Address, Credits, PaymentOptions, Payments,
};

/// USDC on Base Sepolia; every devserver account holds ample amounts of any ERC20.
const USDC_BASE_SEPOLIA: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    run(&mut std::io::stdout()).await
}

/// The whole flow; the transcript goes to `out`.
pub async fn run(out: &mut impl Write) -> Result<(), Box<dyn Error>> {
    // Keep the devserver alive for the whole flow when it is the backend.
    let (builder, subscriber, token, _devserver) = match (
        std::env::var("NVM_BUILDER_API_KEY"),
        std::env::var("NVM_SUBSCRIBER_API_KEY"),
    ) {
        (Ok(b), Ok(s)) => {
            let token = std::env::var("NVM_ERC20_TOKEN")
                .map_err(|_| "set NVM_ERC20_TOKEN to the ERC20 the plan is priced in")?;
            (
                Payments::new(PaymentOptions::new(b))?,
                Payments::new(PaymentOptions::new(s))?,
                token.parse::<Address>()?,
                None,
            )
        }
        _ => {
            let server = nvm_payments::devserver::DevServer::start().await?;
            writeln!(out, "devserver      {}", server.base_url())?;
            let builder = server.payments(&server.create_account(Some("builder")));
            let subscriber = server.payments(&server.create_account(Some("subscriber")));
            (
                builder,
                subscriber,
                USDC_BASE_SEPOLIA.parse()?,
                Some(server),
            )
        }
    };
    writeln!(out, "builder        {}", builder.account_address())?;
    writeln!(out, "subscriber     {}", subscriber.account_address())?;

    let price = get_erc20_price_config(
        Credits::from(20u64),
        token,
        builder.account_address().clone(),
    );
    let credits = get_fixed_credits_config(Credits::from(100u64), Credits::from(1u64));
    let plan_id = builder
        .plans()
        .register_credits_plan(PlanMetadata::named("Seed plan"), price, credits)
        .await?;
    writeln!(out, "plan           {plan_id}")?;

    let before = subscriber.plans().get_plan_balance(&plan_id, None).await?;
    writeln!(
        out,
        "balance        {} (subscriber: {})",
        before.balance, before.is_subscriber
    )?;

    let order = subscriber.plans().order_plan(&plan_id).await?;
    writeln!(
        out,
        "ordered        tx {}",
        order.tx_hash.as_deref().unwrap_or("-")
    )?;
    let after = subscriber.plans().get_plan_balance(&plan_id, None).await?;
    writeln!(
        out,
        "balance        {} (subscriber: {})",
        after.balance, after.is_subscriber
    )?;

    builder
        .plans()
        .mint_plan_credits(&plan_id, Credits::from(50u64), subscriber.account_address())
        .await?;
    writeln!(out, "minted         50")?;
    let topped = subscriber.plans().get_plan_balance(&plan_id, None).await?;
    writeln!(out, "balance        {}", topped.balance)?;
    Ok(())
}
