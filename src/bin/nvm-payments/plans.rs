//! `plans …`: register credits and time plans, read a plan and a balance, order (crypto
//! or fiat), mint, mint-expirable and burn.

use clap::{ArgGroup, Args, Subcommand};
use nvm_payments::types::{AccessLimit, Plan, PlanMetadata, PlanPriceConfig};
use nvm_payments::{
    get_dynamic_credits_config, get_erc20_price_config, get_expirable_duration_config,
    get_fiat_price_config, get_fixed_credits_config, get_free_price_config,
    get_native_token_price_config, Address, Credits, PlanId,
};
use serde_json::json;

use crate::failure::Failure;
use crate::output::{yes_no, Fields};
use crate::session::{Api, Session};

#[derive(Debug, Subcommand)]
pub(crate) enum PlansCommand {
    /// Register a plan that sells credits: each order grants --credits, each request
    /// burns --per-request (or between --per-request and --max-per-request).
    #[command(after_help = "\
Examples:
  nvm-payments plans register-credits --name Pro --credits 100 --per-request 1 --free
  nvm-payments plans register-credits --name Pro --credits 100 --per-request 1 \\
      --price 20 --token 0x036CbD53842c5426634e7929541eC2318f3dCF7e
  nvm-payments plans register-credits --name Chat --credits 1000 --per-request 1 \\
      --max-per-request 10 --fiat-price 5000000 --currency USD      # $5.00, dynamic
  nvm-payments plans register-credits --name Taste --credits 10 --free --trial")]
    RegisterCredits(RegisterCreditsArgs),
    /// Register a plan that sells access for a period of time.
    #[command(after_help = "\
Examples:
  nvm-payments plans register-time --name Day --duration-secs 86400 --native-price 1000
  nvm-payments plans register-time --name Trial --duration-secs 3600 --free --trial")]
    RegisterTime(RegisterTimeArgs),
    /// Show a plan: owner, price, credits, limits.
    #[command(after_help = "Example:\n  nvm-payments plans get 4242… --json | jq .registry")]
    Get(PlanArg),
    /// Show the credits a holder has of a plan (yours by default).
    #[command(after_help = "\
Examples:
  nvm-payments plans balance 4242…
  nvm-payments plans balance 4242… --holder 0x71e6F7f8C68e7e2E96B3c90655c2D2cA376Bc3fd")]
    Balance(BalanceArgs),
    /// Buy a plan with crypto from your own wallet (its credits go to you).
    #[command(after_help = "Example:\n  nvm-payments plans order 4242…")]
    Order(PlanArg),
    /// Start a fiat (card) checkout for a plan; prints the checkout link to open.
    #[command(after_help = "Example:\n  nvm-payments plans order-fiat 4242…")]
    OrderFiat(PlanArg),
    /// Give credits of your plan to someone (plan owner only).
    #[command(
        after_help = "Example:\n  nvm-payments plans mint 4242… --amount 50 --to 0x71e6…3fd"
    )]
    Mint(MintArgs),
    /// Give credits of your plan that lapse after --duration-secs (plan owner only).
    #[command(after_help = "\
Example:\n  nvm-payments plans mint-expirable 4242… --amount 50 --to 0x71e6…3fd --duration-secs 86400")]
    MintExpirable(MintExpirableArgs),
    /// Burn credits of a plan you own from your own balance of it.
    #[command(after_help = "Example:\n  nvm-payments plans burn 4242… --amount 5")]
    Burn(BurnArgs),
}

#[derive(Debug, Args)]
pub(crate) struct PlanArg {
    /// Plan id (a decimal integer).
    #[arg(value_name = "PLAN")]
    plan: PlanId,
}

/// Name and description: what both plan kinds are shown with.
#[derive(Debug, Args)]
pub(crate) struct PlanCommon {
    /// Plan name, shown to buyers.
    #[arg(long, value_name = "NAME")]
    name: String,
    /// Plan description.
    #[arg(long, value_name = "TEXT")]
    description: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct RegisterCreditsArgs {
    #[command(flatten)]
    common: PlanCommon,
    /// Credits one order grants.
    #[arg(long, value_name = "CREDITS", allow_negative_numbers = true)]
    credits: Credits,
    /// Credits one request burns (the least, with --max-per-request).
    #[arg(
        long,
        value_name = "CREDITS",
        default_value = "1",
        allow_negative_numbers = true
    )]
    per_request: Credits,
    /// Makes the charge dynamic: a request burns between --per-request and this.
    #[arg(long, value_name = "CREDITS", allow_negative_numbers = true)]
    max_per_request: Option<Credits>,
    /// A trial plan: each subscriber can order it once.
    #[arg(long)]
    trial: bool,
    #[command(flatten, next_help_heading = "Price (pick one)")]
    price: PriceArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RegisterTimeArgs {
    #[command(flatten)]
    common: PlanCommon,
    /// Seconds of access one order grants.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    duration_secs: u64,
    /// A trial plan: each subscriber can order it once.
    #[arg(long)]
    trial: bool,
    #[command(flatten, next_help_heading = "Price (pick one)")]
    price: PriceArgs,
}

/// Exactly one way to price the plan.
#[derive(Debug, Args)]
#[group(skip)]
#[command(group(
    ArgGroup::new("pricing")
        .required(true)
        .args(["price", "native_price", "fiat_price", "free"])
))]
pub(crate) struct PriceArgs {
    /// Price in an ERC20 token, in its smallest unit (needs --token).
    #[arg(
        long,
        value_name = "AMOUNT",
        requires = "token",
        allow_negative_numbers = true
    )]
    price: Option<Credits>,
    /// The ERC20 token contract for --price.
    #[arg(long, value_name = "ADDR", requires = "price")]
    token: Option<Address>,
    /// Price in the chain's native token, in its smallest unit (wei).
    #[arg(long, value_name = "AMOUNT", allow_negative_numbers = true)]
    native_price: Option<Credits>,
    /// Price in fiat, in 6-decimal units: 2000000 is 2.00 (at least 1000000).
    #[arg(long, value_name = "AMOUNT", allow_negative_numbers = true)]
    fiat_price: Option<Credits>,
    /// Currency of --fiat-price [default: USD].
    #[arg(long, value_name = "CODE", requires = "fiat_price")]
    currency: Option<String>,
    /// A free plan.
    #[arg(long)]
    free: bool,
    /// Who is paid [default: your own address].
    #[arg(long, value_name = "ADDR", conflicts_with = "free")]
    receiver: Option<Address>,
}

impl PriceArgs {
    fn config(&self, own: &Address) -> PlanPriceConfig {
        let receiver = self.receiver.clone().unwrap_or_else(|| own.clone());
        if let (Some(amount), Some(token)) = (self.price, &self.token) {
            get_erc20_price_config(amount, token.clone(), receiver)
        } else if let Some(amount) = self.native_price {
            get_native_token_price_config(amount, receiver)
        } else if let Some(amount) = self.fiat_price {
            let currency = self.currency.as_deref().unwrap_or("USD");
            get_fiat_price_config(amount, receiver, currency.to_ascii_uppercase())
        } else {
            get_free_price_config()
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct BalanceArgs {
    /// Plan id.
    #[arg(value_name = "PLAN")]
    plan: PlanId,
    /// Whose balance [default: the API key's account]. Needs no API key.
    #[arg(long, value_name = "ADDR")]
    holder: Option<Address>,
}

#[derive(Debug, Args)]
pub(crate) struct MintArgs {
    /// Plan id.
    #[arg(value_name = "PLAN")]
    plan: PlanId,
    /// Credits to add.
    #[arg(long, value_name = "CREDITS", allow_negative_numbers = true)]
    amount: Credits,
    /// Who receives them.
    #[arg(long, value_name = "ADDR")]
    to: Address,
}

#[derive(Debug, Args)]
pub(crate) struct MintExpirableArgs {
    #[command(flatten)]
    mint: MintArgs,
    /// Seconds until the credits lapse.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    duration_secs: u64,
}

#[derive(Debug, Args)]
pub(crate) struct BurnArgs {
    /// Plan id.
    #[arg(value_name = "PLAN")]
    plan: PlanId,
    /// Credits to burn.
    #[arg(long, value_name = "CREDITS", allow_negative_numbers = true)]
    amount: Credits,
}

pub(crate) async fn run(cmd: PlansCommand, session: &Session) -> Result<(), Failure> {
    match cmd {
        PlansCommand::RegisterCredits(args) => register_credits(args, session).await,
        PlansCommand::RegisterTime(args) => register_time(args, session).await,
        PlansCommand::Get(args) => get(args, session).await,
        PlansCommand::Balance(args) => balance(args, session).await,
        PlansCommand::Order(args) => order(args, session).await,
        PlansCommand::OrderFiat(args) => order_fiat(args, session).await,
        PlansCommand::Mint(args) => mint(args, None, session).await,
        PlansCommand::MintExpirable(args) => {
            mint(args.mint, Some(args.duration_secs), session).await
        }
        PlansCommand::Burn(args) => burn(args, session).await,
    }
}

fn metadata(common: &PlanCommon, trial: bool) -> PlanMetadata {
    PlanMetadata {
        description: common.description.clone(),
        is_trial_plan: trial,
        ..PlanMetadata::named(common.name.clone())
    }
}

/// Refuses settings the backend would take but that can never work, naming the flags.
fn check_credits_args(args: &RegisterCreditsArgs) -> Result<(), Failure> {
    if args.credits.is_zero() {
        return Err(Failure::new("--credits must be greater than 0"));
    }
    if args.per_request.is_zero() {
        return Err(Failure::new("--per-request must be greater than 0"));
    }
    if let Some(max) = args.max_per_request {
        if max < args.per_request {
            return Err(Failure::new(format!(
                "--max-per-request ({max}) must be at least --per-request ({})",
                args.per_request
            )));
        }
    }
    Ok(())
}

async fn register_credits(args: RegisterCreditsArgs, session: &Session) -> Result<(), Failure> {
    check_credits_args(&args)?;
    let api = session.authenticated("`plans register-credits`")?;
    let price = args.price.config(api.payments.account_address());
    let credits = match args.max_per_request {
        Some(max) => get_dynamic_credits_config(args.credits, args.per_request, max),
        None => get_fixed_credits_config(args.credits, args.per_request),
    };
    let plans = api.payments.plans();
    let meta = metadata(&args.common, args.trial);
    let plan_id = plans
        .register_credits_plan(meta, price, credits)
        .await
        .map_err(api.fail())?;
    print_registered(session, &plan_id)
}

async fn register_time(args: RegisterTimeArgs, session: &Session) -> Result<(), Failure> {
    let api = session.authenticated("`plans register-time`")?;
    let price = args.price.config(api.payments.account_address());
    let credits = get_expirable_duration_config(args.duration_secs);
    let plan_id = api
        .payments
        .plans()
        .register_time_plan(metadata(&args.common, args.trial), price, credits)
        .await
        .map_err(api.fail())?;
    print_registered(session, &plan_id)
}

fn print_registered(session: &Session, plan_id: &PlanId) -> Result<(), Failure> {
    session.output.emit(&json!({ "planId": plan_id }), |_| {
        Fields::new().row("plan id", plan_id)
    })
}

async fn get(args: PlanArg, session: &Session) -> Result<(), Failure> {
    let api = session.public()?;
    let plan = api
        .payments
        .plans()
        .get_plan(&args.plan)
        .await
        .map_err(api.fail())?;
    session.output.emit(&plan, plan_fields)
}

fn plan_fields(plan: &Plan) -> Fields {
    let credits = &plan.registry.credits;
    let time =
        credits.duration_secs > 0 || plan.metadata.plan.access_limit == Some(AccessLimit::Time);
    let fields = Fields::new()
        .row("plan id", &plan.id)
        .row("name", &plan.metadata.main.name)
        .row_if("description", plan.metadata.main.description.as_ref())
        .row("owner", &plan.registry.owner)
        .row("access", if time { "time" } else { "credits" })
        .row("price", describe_price(&plan.registry.price))
        .row("trial", yes_no(plan.metadata.main.is_trial_plan));
    if time {
        fields.row("duration", format!("{} s", credits.duration_secs))
    } else {
        let per_request = if credits.min_amount == credits.max_amount {
            credits.max_amount.to_string()
        } else {
            format!("{} to {}", credits.min_amount, credits.max_amount)
        };
        fields
            .row("credits", format!("{} per order", credits.amount))
            .row("per request", per_request)
    }
}

fn describe_price(price: &PlanPriceConfig) -> String {
    if price.is_free() {
        return "free".to_owned();
    }
    let to = price
        .receivers
        .iter()
        .map(Address::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let total = price.total();
    if !price.is_crypto {
        let currency = price.currency.as_deref().unwrap_or("fiat");
        return format!("{total} {currency} (6-decimal units, card) to {to}");
    }
    match &price.token_address {
        Some(token) if token.is_zero() => format!("{total} native (wei) to {to}"),
        Some(token) => format!("{total} of token {token} to {to}"),
        None => format!("{total} of an unnamed token to {to}"),
    }
}

async fn balance(args: BalanceArgs, session: &Session) -> Result<(), Failure> {
    let api = match args.holder {
        Some(_) => session.public()?,
        None => session.authenticated("`plans balance` without --holder")?,
    };
    let balance = api
        .payments
        .plans()
        .get_plan_balance(&args.plan, args.holder.as_ref())
        .await
        .map_err(api.fail())?;
    session.output.emit(&balance, |b| {
        let plan = if b.plan_name.is_empty() {
            b.plan_id.to_string()
        } else {
            format!("{} ({})", b.plan_id, b.plan_name)
        };
        Fields::new()
            .row("plan", plan)
            .row("holder", &b.holder_address)
            .row("balance", b.balance)
            .row("subscriber", yes_no(b.is_subscriber))
    })
}

async fn order(args: PlanArg, session: &Session) -> Result<(), Failure> {
    let api = session.authenticated("`plans order`")?;
    let result = api
        .payments
        .plans()
        .order_plan(&args.plan)
        .await
        .map_err(api.fail())?;
    if !result.success {
        return Err(not_successful("the order", &api, result.message));
    }
    session.output.emit(&result, |r| {
        Fields::new()
            .row("ordered", &args.plan)
            .row_if("tx", r.tx_hash.as_ref())
            .note(format!(
                "check it: nvm-payments plans balance {}",
                args.plan
            ))
    })
}

async fn order_fiat(args: PlanArg, session: &Session) -> Result<(), Failure> {
    let api = session.authenticated("`plans order-fiat`")?;
    let checkout = api
        .payments
        .plans()
        .order_fiat_plan(&args.plan)
        .await
        .map_err(api.fail())?;
    session.output.emit(&checkout, |c| {
        Fields::new()
            .row("checkout", &c.checkout_link)
            .row("session id", &c.stripe_checkout_session_id)
            .row_if("status", c.payment_status.as_ref())
            .note("open the checkout link to pay; the credits arrive once it is paid")
    })
}

async fn mint(args: MintArgs, duration: Option<u64>, session: &Session) -> Result<(), Failure> {
    let what = if duration.is_some() {
        "`plans mint-expirable`"
    } else {
        "`plans mint`"
    };
    let api = session.authenticated(what)?;
    let plans = api.payments.plans();
    let result = match duration {
        Some(secs) => {
            plans
                .mint_plan_expirable(&args.plan, args.amount, &args.to, secs)
                .await
        }
        None => {
            plans
                .mint_plan_credits(&args.plan, args.amount, &args.to)
                .await
        }
    }
    .map_err(api.fail())?;
    if !result.success {
        return Err(not_successful("the mint", &api, result.message));
    }
    session.output.emit(&result, |r| {
        Fields::new()
            .row("minted", args.amount)
            .row("plan", &args.plan)
            .row("to", &args.to)
            .row_if("expires in", duration.map(|s| format!("{s} s")))
            .row_if("tx", r.tx_hash.as_ref())
    })
}

async fn burn(args: BurnArgs, session: &Session) -> Result<(), Failure> {
    let api = session.authenticated("`plans burn`")?;
    let result = api
        .payments
        .plans()
        .burn_credits(&args.plan, args.amount)
        .await
        .map_err(api.fail())?;
    if !result.success {
        return Err(not_successful("the burn", &api, result.message));
    }
    session.output.emit(&result, |r| {
        Fields::new()
            .row("burned", args.amount)
            .row("plan", &args.plan)
            .row_if("tx", r.tx_hash.as_ref())
    })
}

/// A 2xx answer with `success: false`.
fn not_successful(what: &str, api: &Api, message: Option<String>) -> Failure {
    Failure::new(format!(
        "the backend at {} did not accept {what}: {}",
        api.payments.backend_url(),
        message.unwrap_or_else(|| "no reason given".to_owned())
    ))
}
