//! x402 wire types (docs/wire-notes.md §6): the access-token envelope, `PaymentRequired`,
//! permissions, verify and settle.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::serde_util::{lenient, null_as_default};
use super::{AccessToken, Address, AgentId, Credits, PlanBalance, PlanId};

/// The x402 protocol version this crate speaks.
pub const X402_VERSION: u32 = 2;
/// The crypto-credits scheme.
pub const SCHEME_ERC4337: &str = "nvm:erc4337";
/// The fiat card-delegation scheme.
pub const SCHEME_CARD_DELEGATION: &str = "nvm:card-delegation";
/// Base Sepolia, the default network outside `live`.
pub const NETWORK_BASE_SEPOLIA: &str = "eip155:84532";
/// Base mainnet, the default network on `live`.
pub const NETWORK_BASE_MAINNET: &str = "eip155:8453";

/// `extra` of a scheme entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemeExtra {
    /// Always `"1"` from the builders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The agent the token or route is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
    /// Upper-case HTTP verb of the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_verb: Option<String>,
}

/// One accepted way to pay (`accepts[]` of `PaymentRequired`, `accepted` of a token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentScheme {
    /// `nvm:erc4337` or `nvm:card-delegation`.
    pub scheme: String,
    /// `eip155:84532`, `stripe`, …
    #[serde(default, deserialize_with = "null_as_default")]
    pub network: String,
    /// The plan paid with.
    pub plan_id: PlanId,
    /// Agent, verb and version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<SchemeExtra>,
}

impl DelegationConfig {
    /// Spend through an existing delegation (the preferred form).
    pub fn existing(delegation_id: impl Into<String>) -> Self {
        DelegationConfig {
            delegation_id: Some(delegation_id.into()),
            other: Map::new(),
        }
    }
}

impl PaymentScheme {
    /// The agent named in `extra`, if any.
    pub fn agent_id(&self) -> Option<&AgentId> {
        self.extra.as_ref().and_then(|e| e.agent_id.as_ref())
    }
}

/// The resource a payment is for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentResource {
    /// Endpoint path or URL (`""` when unknown).
    #[serde(default, deserialize_with = "null_as_default")]
    pub url: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// MIME type of the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
}

/// `PaymentRequired` (docs/wire-notes.md §6.4): what a 402 asks for, in the `payment-required`
/// header (standard base64 of this JSON) and in verify/settle bodies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequired {
    /// Always 2.
    pub x402_version: u32,
    /// Error text (the builders never set it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The resource.
    #[serde(default, deserialize_with = "null_as_default")]
    pub resource: PaymentResource,
    /// Accepted plans.
    #[serde(default, deserialize_with = "null_as_default")]
    pub accepts: Vec<PaymentScheme>,
    /// Extensions (empty).
    #[serde(default, deserialize_with = "null_as_default")]
    pub extensions: Map<String, Value>,
}

/// `payload.authorization` of an x402 token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenAuthorization {
    /// The subscriber (payer).
    pub from: Address,
    /// Session keys provider (`zerodev`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_keys_provider: Option<String>,
    /// Session keys.
    #[serde(default, deserialize_with = "null_as_default")]
    pub session_keys: Vec<Value>,
    /// Single-use nonce of v3 tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// `payload` of an x402 token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenPayload {
    /// Signature over the authorization and plan, `0x…`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub signature: String,
    /// Who authorised the payment.
    pub authorization: TokenAuthorization,
}

/// The decoded x402 access token: base64 of this JSON "PaymentPayload" (docs/wire-notes.md §6.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X402TokenPayload {
    /// Always 2.
    pub x402_version: u32,
    /// The scheme and plan the token pays with.
    pub accepted: PaymentScheme,
    /// Signature and authorization.
    pub payload: TokenPayload,
    /// Extensions (empty).
    #[serde(default, deserialize_with = "null_as_default")]
    pub extensions: Map<String, Value>,
    /// v3 tokens: the resource they are bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<PaymentResource>,
}

/// `delegationConfig` of a permissions request. Only `delegationId` is typed; other
/// keys pass through unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DelegationConfig {
    /// An existing delegation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation_id: Option<String>,
    /// Other keys (`spendingLimitCents`, `durationSecs`, …).
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// Body of `POST /api/v1/x402/permissions` (docs/wire-notes.md §6.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PermissionsRequest {
    /// Scheme, network, plan and agent.
    pub accepted: PaymentScheme,
    /// Delegation to spend through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation_config: Option<DelegationConfig>,
    /// The resource a v3 token is bound to (`{"url": …}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<PaymentResource>,
    /// `2` or `3`; the backend mints v2 when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_version: Option<u8>,
}

/// Response of `POST /api/v1/x402/permissions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PermissionsResponse {
    /// The x402 access token (base64 JSON).
    pub access_token: AccessToken,
}

/// Body of `POST /api/v1/x402/verify` (docs/wire-notes.md §6.5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyRequest {
    /// What the route asks for.
    pub payment_required: PaymentRequired,
    /// The subscriber's token.
    pub x402_access_token: AccessToken,
    /// Credits the request would burn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_amount: Option<Credits>,
}

/// Body of `POST /api/v1/x402/settle` (docs/wire-notes.md §6.6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettleRequest {
    /// What the route asked for.
    pub payment_required: PaymentRequired,
    /// The subscriber's token.
    pub x402_access_token: AccessToken,
    /// Credits to burn (clamped by the plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_amount: Option<Credits>,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_request_id: Option<String>,
    /// Batch flag (TS only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<bool>,
    /// Margin (TS only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin_percent: Option<f64>,
}

/// The old flow's `StartAgentRequest`, nested in verify responses (docs/wire-notes.md §7.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartAgentRequest {
    /// Request id.
    #[serde(default, deserialize_with = "null_as_default")]
    pub agent_request_id: String,
    /// Agent name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_name: Option<String>,
    /// Agent id (`None` when absent or not a decimal id).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub agent_id: Option<AgentId>,
    /// The subscriber's balance (`None` when absent or unreadable, e.g. a plan id that
    /// is not decimal).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub balance: Option<PlanBalance>,
    /// Matched endpoint pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_matching: Option<String>,
    /// Matched verb.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verb_matching: Option<String>,
    /// Batch flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<bool>,
}

/// Response of verify.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResponse {
    /// Whether the token may pay for the request. Required: an answer without it
    /// (`{}`, an empty body) decides nothing and is a decode error, not a refusal.
    pub is_valid: bool,
    /// Why not (`invalid_token`, `expired_token`, `insufficient_balance`,
    /// `invalid_plan`, `invalid_agent`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    /// The subscriber (`None` when absent or not an address).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub payer: Option<Address>,
    /// Network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Request id for settle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_request_id: Option<String>,
    /// Matched endpoint pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_matching: Option<String>,
    /// Request details with the balance (`None` when absent or unreadable).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub agent_request: Option<StartAgentRequest>,
}

/// Response of settle; also the `payment-response` receipt (base64 JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettleResponse {
    /// Whether the credits were burned. Required: an answer without it leaves the
    /// charge's outcome unknown, so it is a decode error, never "not charged".
    pub success: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    /// The subscriber (`None` when absent or not an address).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub payer: Option<Address>,
    /// Transaction hash (`""` on failure).
    #[serde(default, deserialize_with = "null_as_default")]
    pub transaction: String,
    /// Network (`""` when unknown).
    #[serde(default, deserialize_with = "null_as_default")]
    pub network: String,
    /// Credits burned (`None` when absent or not a uint).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub credits_redeemed: Option<Credits>,
    /// Balance left (`None` when absent or not a uint).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub remaining_balance: Option<Credits>,
    /// Transaction of an automatic top-up order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_tx: Option<String>,
}
