//! Generic results, the backend error envelope, legacy access tokens and dev accounts.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::serde_util::null_as_default;
use super::{AccessToken, Address, AgentId, ApiKey, PlanId};

fn yes() -> bool {
    true
}

/// `NvmAPIResult` (docs/wire-notes.md §8.2): the answer of order, mint, burn, redeem, link and
/// unlink. `success` defaults to `true` when absent, as the SDKs read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NvmApiResult {
    /// Whether the operation succeeded.
    #[serde(default = "yes")]
    pub success: bool,
    /// Message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Transaction hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_hash: Option<String>,
    /// HTTP status echoed by the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// Extra data (e.g. `{"creditsBurned": "7"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// ISO timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
}

impl NvmApiResult {
    /// A successful result with a transaction hash.
    pub fn ok(tx_hash: impl Into<String>) -> Self {
        NvmApiResult {
            success: true,
            message: None,
            tx_hash: Some(tx_hash.into()),
            http_status: None,
            data: None,
            when: None,
        }
    }
}

/// The backend's error envelope (`NVMException`, docs/wire-notes.md §10.2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorEnvelope {
    /// Error instance id (`e-<uuid>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// `BCK.<AREA>.<NNNN>`; some services send it as `errorCode`.
    #[serde(default, alias = "errorCode", skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Human message.
    #[serde(default, deserialize_with = "message_text")]
    pub message: String,
    /// HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// What to do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
    /// ISO timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
}

/// Nest's validation errors send `message` as an array of strings.
fn message_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect::<Vec<_>>()
            .join("; "),
        Some(other) => other.to_string(),
    })
}

/// Response of the legacy `GET /api/v1/protocol/token/{planId}/{agentId}` (docs/wire-notes.md §5.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentAccessCredentials {
    /// The bearer JWT.
    pub access_token: AccessToken,
    /// Proxies that accept it.
    #[serde(default, deserialize_with = "null_as_default")]
    pub proxies: Vec<String>,
}

/// Claims of a legacy bearer access token (docs/wire-notes.md §7.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessTokenClaims {
    /// Issuer.
    #[serde(default, deserialize_with = "null_as_default")]
    pub iss: String,
    /// The subscriber.
    pub sub: Address,
    /// The plan.
    pub plan_id: PlanId,
    /// The agent, when the token is bound to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Issued at, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// A devserver account: `POST /dev/accounts` answers this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DevAccount {
    /// The account's address (the `sub` of its key).
    pub address: Address,
    /// Its API key, `local:<JWT>`.
    pub api_key: ApiKey,
}
