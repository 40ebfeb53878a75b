//! Delegation wire types (wire-spec §5.3): card or wallet delegations a subscriber
//! creates before minting x402 tokens for fiat plans, and the payment methods they use.

use serde::{Deserialize, Serialize};

use super::serde_util::{lenient, null_as_default};
use super::PlanId;

/// Body of `POST /api/v1/delegation/create`.
///
/// ```
/// use nvm_payments::types::CreateDelegationRequest;
/// let req = CreateDelegationRequest::new("stripe", 5_000, 86_400, "usd");
/// assert_eq!(serde_json::to_string(&req).unwrap(),
///   r#"{"provider":"stripe","spendingLimitCents":5000,"durationSecs":86400,"currency":"usd"}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateDelegationRequest {
    /// `stripe`, `braintree`, `visa`, `vgs` or `erc4337`.
    pub provider: String,
    /// Most the delegation may spend, in cents.
    pub spending_limit_cents: u64,
    /// How long the delegation lives, in seconds.
    pub duration_secs: u64,
    /// `usd`, `eur`, `usdc` or `eurc` (required by the backend).
    pub currency: String,
    /// The saved card or wallet to charge (see `list_payment_methods`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_payment_method_id: Option<String>,
    /// Restricts the delegation to one plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<PlanId>,
    /// Merchant account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_account_id: Option<String>,
    /// Most transactions the delegation may make.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_transactions: Option<u64>,
    /// API key the delegation is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_id: Option<String>,
}

impl CreateDelegationRequest {
    /// A delegation with the required fields only.
    pub fn new(
        provider: impl Into<String>,
        spending_limit_cents: u64,
        duration_secs: u64,
        currency: impl Into<String>,
    ) -> Self {
        CreateDelegationRequest {
            provider: provider.into(),
            spending_limit_cents,
            duration_secs,
            currency: currency.into(),
            provider_payment_method_id: None,
            plan_id: None,
            merchant_account_id: None,
            max_transactions: None,
            api_key_id: None,
        }
    }
}

/// Response of `POST /api/v1/delegation/create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateDelegationResponse {
    /// The new delegation (a UUID): pass it as `delegationId` when minting tokens.
    pub delegation_id: String,
    /// Delegation token, when the backend issues one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation_token: Option<String>,
}

/// One entry of `GET /api/v1/delegation`. Only `id` is needed; the rest reads as `None`
/// when absent or unreadable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DelegationSummary {
    /// Delegation id.
    pub id: String,
    /// Card used.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub card_id: Option<String>,
    /// Spending limit, in cents.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub spending_limit_cents: Option<u64>,
    /// Spent so far, in cents.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub spent_cents: Option<u64>,
    /// Lifetime, in seconds.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub duration_secs: Option<u64>,
    /// Currency.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub currency: Option<String>,
    /// Status (`active`, …).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub status: Option<String>,
    /// ISO creation time.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub created_at: Option<String>,
    /// ISO expiry time.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<String>,
}

/// One entry of `GET /api/v1/payment-methods`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentMethod {
    /// Payment method id (`providerPaymentMethodId` of a delegation).
    pub id: String,
    /// Kind (`card`, …).
    #[serde(
        default,
        rename = "type",
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub kind: Option<String>,
    /// Card brand.
    #[serde(default, deserialize_with = "null_as_default")]
    pub brand: String,
    /// Last four digits.
    #[serde(default, deserialize_with = "null_as_default")]
    pub last4: String,
    /// Expiry month.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub exp_month: Option<u32>,
    /// Expiry year.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub exp_year: Option<u32>,
    /// Provider.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub provider: Option<String>,
}
