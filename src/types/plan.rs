//! Plan wire types (docs/wire-notes.md §3): price and credits configs, registration, the plan
//! object, balances, and the config helpers that match the official SDKs byte for byte.

use serde::{Deserialize, Serialize};

use super::serde_util::{decimal_u64, lenient, null_as_default};
use super::{Address, Credits, PlanId};

/// How access to a plan is limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLimit {
    /// A balance of credits that requests spend.
    Credits,
    /// Access for a period of time.
    Time,
    /// A value this crate does not know yet.
    #[serde(other)]
    Unknown,
}

/// `PlanPriceConfig` (docs/wire-notes.md §3.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanPriceConfig {
    /// The ERC20 token paid with (zero address: native token or fiat). `None` when a
    /// response leaves it out or it is not an address (listings may); requests built
    /// by the helpers always set it.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub token_address: Option<Address>,
    /// Amounts paid to each receiver, in the token's smallest unit.
    #[serde(default, deserialize_with = "null_as_default")]
    pub amounts: Vec<Credits>,
    /// Who receives each amount.
    #[serde(default, deserialize_with = "null_as_default")]
    pub receivers: Vec<Address>,
    /// Pricing contract (zero address for fixed prices).
    #[serde(default = "Address::zero", deserialize_with = "zero_if_null")]
    pub contract_address: Address,
    /// Fee controller (zero address for the default).
    #[serde(default = "Address::zero", deserialize_with = "zero_if_null")]
    pub fee_controller: Address,
    /// External price oracle (zero address for none).
    #[serde(default = "Address::zero", deserialize_with = "zero_if_null")]
    pub external_price_address: Address,
    /// Payment template (zero address for the default).
    #[serde(default = "Address::zero", deserialize_with = "zero_if_null")]
    pub template_address: Address,
    /// `true` for crypto payments, `false` for fiat.
    #[serde(default, deserialize_with = "null_as_default")]
    pub is_crypto: bool,
    /// Currency code (`USD`, `EUR`, `USDC`, `EURC`, …), when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

fn zero_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Address, D::Error> {
    Ok(Option::<Address>::deserialize(d)?.unwrap_or_else(Address::zero))
}

impl PlanPriceConfig {
    /// The total price: the sum of `amounts` (saturating).
    pub fn total(&self) -> Credits {
        self.amounts
            .iter()
            .fold(Credits::ZERO, |acc, a| acc.saturating_add(*a))
    }

    /// Whether the plan is free (no amounts).
    pub fn is_free(&self) -> bool {
        self.total().is_zero()
    }
}

/// `PlanCreditsConfig` (docs/wire-notes.md §3.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanCreditsConfig {
    /// Whether every redemption burns exactly `maxAmount`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub is_redemption_amount_fixed: bool,
    /// Who may redeem: 0 global role, 1 owner, 2 plan role, 4 subscriber (helpers use 4).
    #[serde(default, deserialize_with = "null_as_default")]
    pub redemption_type: u8,
    /// Whether credits are mirrored on chain.
    #[serde(default, deserialize_with = "null_as_default")]
    pub onchain_mirror: bool,
    /// Seconds of access for time plans; 0 for credits plans.
    #[serde(default, with = "decimal_u64")]
    pub duration_secs: u64,
    /// Credits granted by one order.
    #[serde(default, deserialize_with = "null_as_default")]
    pub amount: Credits,
    /// Least credits one redemption burns.
    #[serde(default, deserialize_with = "null_as_default")]
    pub min_amount: Credits,
    /// Most credits one redemption burns.
    #[serde(default, deserialize_with = "null_as_default")]
    pub max_amount: Credits,
    /// Credits NFT contract, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nft_address: Option<Address>,
}

impl PlanCreditsConfig {
    /// What one redemption that asks for `requested` credits really burns: fixed plans
    /// (`minAmount == maxAmount`) always burn `maxAmount`; others clamp into
    /// `[minAmount, maxAmount]`, and a request of 0 falls back to `maxAmount`
    /// (docs/wire-notes.md §3.4).
    ///
    /// ```
    /// use nvm_payments::{get_dynamic_credits_config, get_fixed_credits_config, Credits};
    /// let fixed = get_fixed_credits_config(Credits::from(100u64), Credits::from(2u64));
    /// assert_eq!(fixed.redemption_amount(Credits::from(7u64)), Credits::from(2u64));
    /// let range = get_dynamic_credits_config(Credits::from(10u64), Credits::from(1u64), Credits::from(3u64));
    /// assert_eq!(range.redemption_amount(Credits::from(2u64)), Credits::from(2u64));
    /// assert_eq!(range.redemption_amount(Credits::from(9u64)), Credits::from(3u64));
    /// assert_eq!(range.redemption_amount(Credits::ZERO), Credits::from(3u64));
    /// ```
    pub fn redemption_amount(&self, requested: Credits) -> Credits {
        if self.min_amount == self.max_amount || requested.is_zero() {
            self.max_amount
        } else {
            requested.clamp_to(self.min_amount, self.max_amount)
        }
    }
}

/// Plan metadata (`metadataAttributes`, docs/wire-notes.md §3.2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanMetadata {
    /// Plan name (required by the backend).
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// License.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Integration name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integration: Option<String>,
    /// Link to a sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_link: Option<String>,
    /// API description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_description: Option<String>,
    /// ISO creation date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_created: Option<String>,
    /// Whether this is a trial plan (orderable once per subscriber).
    #[serde(default, deserialize_with = "null_as_default")]
    pub is_trial_plan: bool,
}

impl PlanMetadata {
    /// Metadata with just a name.
    pub fn named(name: impl Into<String>) -> Self {
        PlanMetadata {
            name: name.into(),
            ..Default::default()
        }
    }
}

/// Body of `POST /api/v1/protocol/plans` (docs/wire-notes.md §3.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterPlanRequest {
    /// Plan metadata.
    pub metadata_attributes: PlanMetadata,
    /// Price.
    pub price_config: PlanPriceConfig,
    /// Credits.
    pub credits_config: PlanCreditsConfig,
    /// A random 128-bit nonce, as a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<Credits>,
    /// Top-level copy of `metadataAttributes.isTrialPlan`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub is_trial_plan: bool,
    /// `credits` or `time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_limit: Option<AccessLimit>,
    /// Copied from `priceConfig.currency` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

/// Response of plan registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterPlanResponse {
    /// The new plan's id.
    pub plan_id: PlanId,
}

/// `metadata.main` of a plan object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanMainMetadata {
    /// Plan name.
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whether this is a trial plan.
    #[serde(default, deserialize_with = "null_as_default")]
    pub is_trial_plan: bool,
}

/// `metadata.plan` of a plan object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanLimitMetadata {
    /// `credits` or `time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_limit: Option<AccessLimit>,
    /// Currency, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Fiat provider (`stripe`, …), when the plan is paid in fiat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fiat_payment_provider: Option<String>,
}

/// `metadata` of a plan object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanObjectMetadata {
    /// Name and description.
    #[serde(default, deserialize_with = "null_as_default")]
    pub main: PlanMainMetadata,
    /// Access limit and currency.
    #[serde(default, deserialize_with = "null_as_default")]
    pub plan: PlanLimitMetadata,
}

/// `registry` of a plan object: what is recorded on chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanRegistry {
    /// Plan owner (the zero address until indexed).
    #[serde(default = "Address::zero", deserialize_with = "zero_if_null")]
    pub owner: Address,
    /// Price config.
    pub price: PlanPriceConfig,
    /// Credits config.
    pub credits: PlanCreditsConfig,
}

/// The plan object of `GET /api/v1/protocol/plans/{planId}` (docs/wire-notes.md §3.5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Plan id.
    #[serde(alias = "planId")]
    pub id: PlanId,
    /// Names and limits.
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: PlanObjectMetadata,
    /// Owner, price and credits.
    pub registry: PlanRegistry,
}

/// One plan of a listing. Listings may leave out what the plan object of
/// [`get_plan`](crate::client::Plans::get_plan) carries, so `registry` is optional
/// (and `None` when it cannot be read): fetch the plan for its price and credits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedPlan {
    /// Plan id (`id` or `planId` on the wire).
    #[serde(alias = "planId")]
    pub id: PlanId,
    /// Names and limits.
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: PlanObjectMetadata,
    /// Owner, price and credits, when the listing carries them.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub registry: Option<PlanRegistry>,
}

impl From<Plan> for ListedPlan {
    fn from(plan: Plan) -> Self {
        ListedPlan {
            id: plan.id,
            metadata: plan.metadata,
            registry: Some(plan.registry),
        }
    }
}

/// A page of plans (`GET /api/v1/protocol/plans`, `GET …/agents/{id}/plans`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanList {
    /// Total matching plans.
    #[serde(default, deserialize_with = "null_as_default")]
    pub total: u64,
    /// Page number (1-based).
    #[serde(default, deserialize_with = "null_as_default")]
    pub page: u64,
    /// Page size.
    #[serde(default, deserialize_with = "null_as_default")]
    pub offset: u64,
    /// The plans.
    #[serde(default, deserialize_with = "null_as_default")]
    pub plans: Vec<ListedPlan>,
}

/// `PlanBalance` (docs/wire-notes.md §8.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanBalance {
    /// Plan id.
    pub plan_id: PlanId,
    /// Plan name.
    #[serde(default, deserialize_with = "null_as_default")]
    pub plan_name: String,
    /// `credits` or `time`.
    pub plan_type: AccessLimit,
    /// Whose balance this is.
    pub holder_address: Address,
    /// Credits held.
    #[serde(default, deserialize_with = "null_as_default")]
    pub balance: Credits,
    /// Credits contract.
    #[serde(default = "Address::zero", deserialize_with = "zero_if_null")]
    pub credits_contract: Address,
    /// Whether the holder may use the plan now.
    #[serde(default, deserialize_with = "null_as_default")]
    pub is_subscriber: bool,
    /// Price of one credit.
    #[serde(default, deserialize_with = "null_as_default")]
    pub price_per_credit: f64,
    /// Batch flag (Python SDK only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<bool>,
}

/// Body of `POST /api/v1/protocol/plans/mint`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MintRequest {
    /// Plan id.
    pub plan_id: PlanId,
    /// Credits to add.
    pub amount: Credits,
    /// Who receives them.
    pub credits_receiver: Address,
}

/// Body of `POST /api/v1/protocol/plans/mintExpirable`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MintExpirableRequest {
    /// Plan id.
    pub plan_id: PlanId,
    /// Credits to add.
    pub credits_amount: Credits,
    /// Who receives them.
    pub credits_receiver: Address,
    /// Seconds until they lapse (0: never).
    #[serde(default, with = "decimal_u64")]
    pub credits_duration: u64,
}

/// Body of `POST /api/v1/protocol/plans/burn`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BurnRequest {
    /// Plan id.
    pub plan_id: PlanId,
    /// Credits to burn from the caller's own balance.
    pub credits_amount: Credits,
}

/// Body of `POST /api/v1/protocol/plans/redeem` (docs/wire-notes.md §7.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedeemRequest {
    /// Idempotency key: one request id never spends twice.
    pub agent_request_id: String,
    /// Plan id.
    pub plan_id: PlanId,
    /// The subscriber whose credits are spent.
    pub redeem_from: Address,
    /// Credits to burn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<Credits>,
    /// Batch flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<bool>,
    /// Margin instead of an amount (legacy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin_percent: Option<f64>,
}

/// Body of `POST /api/v1/fiat/stripe/payment`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FiatPaymentRequest {
    /// Plan id.
    pub plan_id: PlanId,
    /// Checkout kind; the SDKs send `embedded`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub session_type: String,
}

/// A fiat checkout session (docs/wire-notes.md §3.6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StripeCheckoutResult {
    /// Checkout session id.
    pub stripe_checkout_session_id: String,
    /// Where the buyer completes the payment.
    pub checkout_link: String,
    /// Client reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_reference_id: Option<String>,
    /// Payment status, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_status: Option<String>,
    /// Unix ms when the link was made.
    #[serde(default, deserialize_with = "null_as_default")]
    pub link_created_at: u64,
    /// Unix ms when the link expires.
    #[serde(default, deserialize_with = "null_as_default")]
    pub link_expires_at: u64,
}

/// Response of the fiat order: the TS SDK reads it under `result`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FiatPaymentResponse {
    /// The checkout session.
    pub result: StripeCheckoutResult,
}

fn zero() -> Address {
    Address::zero()
}

fn crypto_price(amount: Credits, receiver: Address, token: Address) -> PlanPriceConfig {
    PlanPriceConfig {
        token_address: Some(token),
        amounts: vec![amount],
        receivers: vec![receiver],
        contract_address: zero(),
        fee_controller: zero(),
        external_price_address: zero(),
        template_address: zero(),
        is_crypto: true,
        currency: None,
    }
}

/// A price paid in an ERC20 token (`get_erc20_price_config`).
///
/// ```
/// use nvm_payments::{get_erc20_price_config, Address, Credits};
/// let token: Address = "0x036CbD53842c5426634e7929541eC2318f3dCF7e".parse().unwrap();
/// let recv: Address = "0x71e6F7f8C68e7e2E96B3c90655c2D2cA376Bc3fd".parse().unwrap();
/// let json = serde_json::to_string(&get_erc20_price_config(Credits::from(20u64), token, recv)).unwrap();
/// assert!(json.starts_with(r#"{"tokenAddress":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","amounts":["20"]"#));
/// ```
pub fn get_erc20_price_config(
    amount: Credits,
    token_address: Address,
    receiver: Address,
) -> PlanPriceConfig {
    crypto_price(amount, receiver, token_address)
}

/// A price paid in the chain's native token (`get_native_token_price_config`).
pub fn get_native_token_price_config(amount: Credits, receiver: Address) -> PlanPriceConfig {
    crypto_price(amount, receiver, zero())
}

/// A fiat price in 6-decimal units (`2_000_000` = $2.00) (`get_fiat_price_config`).
/// The backend refuses fiat prices below $1.00 (`BCK.PROTOCOL.0047`).
pub fn get_fiat_price_config(
    amount: Credits,
    receiver: Address,
    currency: impl Into<String>,
) -> PlanPriceConfig {
    PlanPriceConfig {
        is_crypto: false,
        currency: Some(currency.into()),
        ..crypto_price(amount, receiver, zero())
    }
}

/// A free plan (`get_free_price_config`).
pub fn get_free_price_config() -> PlanPriceConfig {
    PlanPriceConfig {
        amounts: vec![],
        receivers: vec![],
        ..crypto_price(Credits::ZERO, zero(), zero())
    }
}

fn credits_config(
    fixed: bool,
    duration_secs: u64,
    amount: Credits,
    min: Credits,
    max: Credits,
) -> PlanCreditsConfig {
    PlanCreditsConfig {
        is_redemption_amount_fixed: fixed,
        redemption_type: 4,
        onchain_mirror: false,
        duration_secs,
        amount,
        min_amount: min,
        max_amount: max,
        nft_address: None,
    }
}

/// `amount` credits per order; every request burns `credits_per_request`
/// (`get_fixed_credits_config`).
pub fn get_fixed_credits_config(
    amount: Credits,
    credits_per_request: Credits,
) -> PlanCreditsConfig {
    credits_config(true, 0, amount, credits_per_request, credits_per_request)
}

/// `amount` credits per order; each request burns between `min` and `max`
/// (`get_dynamic_credits_config`).
pub fn get_dynamic_credits_config(
    amount: Credits,
    min: Credits,
    max: Credits,
) -> PlanCreditsConfig {
    credits_config(false, 0, amount, min, max)
}

/// Access for `duration_secs` seconds (`get_expirable_duration_config`).
pub fn get_expirable_duration_config(duration_secs: u64) -> PlanCreditsConfig {
    let one = Credits::from(1u64);
    credits_config(false, duration_secs, one, one, one)
}

/// Access that never expires (`get_non_expirable_duration_config`).
pub fn get_non_expirable_duration_config() -> PlanCreditsConfig {
    get_expirable_duration_config(0)
}

/// One day in seconds.
pub const ONE_DAY_DURATION: u64 = 86_400;
/// One week in seconds.
pub const ONE_WEEK_DURATION: u64 = 604_800;
/// One month (average) in seconds.
pub const ONE_MONTH_DURATION: u64 = 2_629_746;
/// One year (average) in seconds.
pub const ONE_YEAR_DURATION: u64 = 31_557_600;

/// Idiomatic names for the SDK helpers above (same bytes on the wire).
///
/// ```
/// use nvm_payments::types::{PlanCreditsConfig, PlanPriceConfig};
/// use nvm_payments::{get_fixed_credits_config, get_free_price_config, Credits};
/// assert_eq!(PlanPriceConfig::free(), get_free_price_config());
/// assert_eq!(
///     PlanCreditsConfig::fixed(Credits::from(100u64), Credits::from(1u64)),
///     get_fixed_credits_config(Credits::from(100u64), Credits::from(1u64)),
/// );
/// ```
impl PlanPriceConfig {
    /// [`get_erc20_price_config`]: `amount` of the ERC-20 at `token` to `receiver`.
    pub fn erc20(amount: Credits, token: Address, receiver: Address) -> Self {
        get_erc20_price_config(amount, token, receiver)
    }

    /// [`get_native_token_price_config`]: `amount` of the chain's native token.
    pub fn native(amount: Credits, receiver: Address) -> Self {
        get_native_token_price_config(amount, receiver)
    }

    /// [`get_fiat_price_config`]: `amount` in 6-decimal units of `currency`.
    pub fn fiat(amount: Credits, receiver: Address, currency: impl Into<String>) -> Self {
        get_fiat_price_config(amount, receiver, currency)
    }

    /// [`get_free_price_config`]: no payment.
    pub fn free() -> Self {
        get_free_price_config()
    }
}

impl PlanCreditsConfig {
    /// [`get_fixed_credits_config`]: `amount` credits, each request burns `per_request`.
    pub fn fixed(amount: Credits, per_request: Credits) -> Self {
        get_fixed_credits_config(amount, per_request)
    }

    /// [`get_dynamic_credits_config`]: `amount` credits, a request burns `min..=max`.
    pub fn dynamic(amount: Credits, min: Credits, max: Credits) -> Self {
        get_dynamic_credits_config(amount, min, max)
    }

    /// [`get_expirable_duration_config`]: access for `duration_secs` seconds.
    pub fn expirable(duration_secs: u64) -> Self {
        get_expirable_duration_config(duration_secs)
    }

    /// [`get_non_expirable_duration_config`]: access that never expires.
    pub fn non_expirable() -> Self {
        get_non_expirable_duration_config()
    }
}
