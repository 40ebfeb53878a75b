//! Agent wire types (docs/wire-notes.md §4).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use super::plan::AccessLimit;
use super::serde_util::{lenient, null_as_default};
use super::{
    Address, AgentId, PlanCreditsConfig, PlanId, PlanMetadata, PlanPriceConfig, SecretString,
};

/// One protected endpoint of an agent: an HTTP verb and a URL pattern.
///
/// On the wire it is `{"POST": "https://host/tasks"}` (the backend reads the first entry
/// of the object). The Python SDK's typed `{"verb": …, "url": …}` is read too.
///
/// ```
/// use nvm_payments::Endpoint;
/// let e = Endpoint::new("post", "https://agent.example/ask");
/// assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"POST":"https://agent.example/ask"}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Upper-case HTTP verb.
    pub verb: String,
    /// URL or pattern (`:param` placeholders allowed).
    pub url: String,
}

impl Endpoint {
    /// An endpoint; the verb is upper-cased.
    pub fn new(verb: impl AsRef<str>, url: impl Into<String>) -> Self {
        Endpoint {
            verb: verb.as_ref().to_ascii_uppercase(),
            url: url.into(),
        }
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry(&self.verb, &self.url)?;
        m.end()
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Endpoint;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"an endpoint object such as {"POST": "https://…"}"#)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Endpoint, A::Error> {
                let mut entries = BTreeMap::<String, String>::new();
                while let Some((k, v)) = map.next_entry::<String, Option<String>>()? {
                    if let Some(v) = v {
                        entries.insert(k, v);
                    }
                }
                if let (Some(verb), Some(url)) = (entries.get("verb"), entries.get("url")) {
                    return Ok(Endpoint::new(verb, url.clone()));
                }
                let mut it = entries.into_iter();
                match (it.next(), it.next()) {
                    (Some((verb, url)), None) => Ok(Endpoint::new(verb, url)),
                    _ => Err(de::Error::custom(
                        "an endpoint needs exactly one VERB: url entry",
                    )),
                }
            }
        }
        d.deserialize_map(V)
    }
}

/// How an agent authenticates calls the platform makes to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthType {
    /// No authentication.
    None,
    /// HTTP basic.
    Basic,
    /// OAuth.
    Oauth,
    /// Bearer token.
    Bearer,
    /// A value this crate does not know yet.
    #[serde(other)]
    Unknown,
}

/// Agent metadata (`metadataAttributes`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentMetadata {
    /// Agent name (required by the backend).
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
}

impl AgentMetadata {
    /// Metadata with just a name.
    pub fn named(name: impl Into<String>) -> Self {
        AgentMetadata {
            name: name.into(),
            ..Default::default()
        }
    }
}

/// How the platform reaches the agent (`agentApiAttributes`). Credentials in it are
/// secrets: `Debug` shows only digests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentApiAttributes {
    /// Protected endpoints. Left out of the JSON when empty, as the SDKs do.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub endpoints: Vec<Endpoint>,
    /// Endpoints open to everyone. Left out of the JSON when empty, as the SDKs do.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub open_endpoints: Vec<String>,
    /// URL of the agent's definition (OpenAPI, MCP manifest, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_definition_url: Option<String>,
    /// Authentication kind (`none` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_type: Option<AuthType>,
    /// Basic-auth user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Basic-auth password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretString>,
    /// Bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<SecretString>,
}

impl Default for AgentApiAttributes {
    fn default() -> Self {
        AgentApiAttributes {
            endpoints: vec![],
            open_endpoints: vec![],
            agent_definition_url: None,
            auth_type: Some(AuthType::None),
            username: None,
            password: None,
            token: None,
        }
    }
}

impl AgentApiAttributes {
    /// Attributes with these protected endpoints and no authentication.
    pub fn with_endpoints(endpoints: Vec<Endpoint>) -> Self {
        AgentApiAttributes {
            endpoints,
            ..Default::default()
        }
    }
}

/// Body of `POST /api/v1/protocol/agents`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterAgentRequest {
    /// Agent metadata.
    pub metadata_attributes: AgentMetadata,
    /// How to reach the agent.
    #[serde(default)]
    pub agent_api_attributes: AgentApiAttributes,
    /// Plans that give access to the agent.
    #[serde(default, deserialize_with = "null_as_default")]
    pub plans: Vec<PlanId>,
}

/// Body of `PUT /api/v1/protocol/agents/{agentId}` (update agent metadata).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateAgentRequest {
    /// The new metadata.
    pub metadata_attributes: AgentMetadata,
    /// The new API attributes.
    #[serde(default)]
    pub agent_api_attributes: AgentApiAttributes,
}

/// `data` of the agent registration response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredAgent {
    /// The new agent's id.
    pub agent_id: AgentId,
}

/// Response of `POST /api/v1/protocol/agents`: `{"data": {"agentId": …}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterAgentResponse {
    /// The registered agent.
    pub data: RegisteredAgent,
}

/// The plan half of `POST /api/v1/protocol/agents/plans`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentPlanSpec {
    /// Plan metadata.
    pub metadata_attributes: PlanMetadata,
    /// Price.
    pub price_config: PlanPriceConfig,
    /// Credits.
    pub credits_config: PlanCreditsConfig,
    /// `credits` or `time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_limit: Option<AccessLimit>,
}

/// The agent half of `POST /api/v1/protocol/agents/plans`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// Agent metadata.
    pub metadata_attributes: AgentMetadata,
    /// How to reach the agent.
    #[serde(default)]
    pub agent_api_attributes: AgentApiAttributes,
}

/// Body of `POST /api/v1/protocol/agents/plans`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterAgentAndPlanRequest {
    /// The plan to create.
    pub plan: AgentPlanSpec,
    /// The agent to create.
    pub agent: AgentSpec,
}

/// `data` of the agent+plan registration response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredAgentAndPlan {
    /// The new agent's id.
    pub agent_id: AgentId,
    /// The new plan's id.
    pub plan_id: PlanId,
}

/// Response of `POST /api/v1/protocol/agents/plans`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterAgentAndPlanResponse {
    /// The ids.
    pub data: RegisteredAgentAndPlan,
    /// Registration transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_hash: Option<String>,
}

/// `metadata` of an agent object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentObjectMetadata {
    /// Name and description.
    #[serde(default, deserialize_with = "null_as_default")]
    pub main: AgentMetadata,
    /// How to reach the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentApiAttributes>,
}

/// `registry` of an agent object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRegistry {
    /// Agent owner.
    #[serde(default = "Address::zero")]
    pub owner: Address,
    /// Plans linked to the agent.
    #[serde(default, deserialize_with = "null_as_default")]
    pub plans: Vec<PlanId>,
}

/// The agent object of `GET /api/v1/protocol/agents/{agentId}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    /// Agent id.
    #[serde(alias = "agentId")]
    pub id: AgentId,
    /// Names and API attributes.
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: AgentObjectMetadata,
    /// Owner and linked plans.
    pub registry: AgentRegistry,
}

/// A page of agents (`GET …/plans/{planId}/agents`, `GET /api/v1/protocol/agents`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentList {
    /// Total matching agents.
    #[serde(default, deserialize_with = "null_as_default")]
    pub total: u64,
    /// Page number (1-based).
    #[serde(default, deserialize_with = "null_as_default")]
    pub page: u64,
    /// Page size.
    #[serde(default, deserialize_with = "null_as_default")]
    pub offset: u64,
    /// The agents.
    #[serde(default, deserialize_with = "null_as_default")]
    pub agents: Vec<ListedAgent>,
}

/// An agent in a listing. Listings may carry less than the agent object
/// [`get_agent`](crate::client::Agents::get_agent) answers, so `registry` is optional
/// (and `None` when it cannot be read), as with [`ListedPlan`](super::ListedPlan).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedAgent {
    /// Agent id (`id` or `agentId` on the wire).
    #[serde(alias = "agentId")]
    pub id: AgentId,
    /// Names and API attributes.
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: AgentObjectMetadata,
    /// Owner and linked plans, when the listing carries them.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub registry: Option<AgentRegistry>,
}

impl From<Agent> for ListedAgent {
    fn from(agent: Agent) -> Self {
        ListedAgent {
            id: agent.id,
            metadata: agent.metadata,
            registry: Some(agent.registry),
        }
    }
}
