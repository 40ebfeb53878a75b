//! The agents handle: registration, lookup, plan links.

use http::Method;

use super::plans::{check_credits_plan, check_time_plan, ListOptions};
use super::transport::Auth;
use super::{Error, Payments};
use crate::types::{
    AccessLimit, Agent, AgentApiAttributes, AgentId, AgentList, AgentMetadata, AgentPlanSpec,
    AgentSpec, NvmApiResult, PlanCreditsConfig, PlanId, PlanList, PlanMetadata, PlanPriceConfig,
    RegisterAgentAndPlanRequest, RegisterAgentAndPlanResponse, RegisterAgentRequest,
    RegisterAgentResponse, UpdateAgentRequest,
};

/// Agent operations, borrowed from [`Payments::agents`].
#[derive(Debug, Clone, Copy)]
pub struct Agents<'a> {
    pub(crate) payments: &'a Payments,
}

impl Agents<'_> {
    fn transport(&self) -> &super::transport::Transport {
        self.payments.transport()
    }

    /// Registers an agent reachable through `api` and sold through `plans`.
    pub async fn register_agent(
        self,
        metadata: AgentMetadata,
        api: AgentApiAttributes,
        plans: Vec<PlanId>,
    ) -> Result<AgentId, Error> {
        let body = RegisterAgentRequest {
            metadata_attributes: metadata,
            agent_api_attributes: api,
            plans,
        };
        let resp: RegisterAgentResponse = self
            .transport()
            .call(
                Method::POST,
                "/api/v1/protocol/agents",
                Some(&body),
                Auth::Key,
            )
            .await?;
        Ok(resp.data.agent_id)
    }

    /// Registers a plan and an agent sold through it in one call. The access limit is
    /// `time` when `credits.duration_secs > 0`, else `credits`.
    pub async fn register_agent_and_plan(
        self,
        agent_metadata: AgentMetadata,
        api: AgentApiAttributes,
        plan_metadata: PlanMetadata,
        price: PlanPriceConfig,
        credits: PlanCreditsConfig,
    ) -> Result<RegisterAgentAndPlanResponse, Error> {
        let access_limit = if credits.duration_secs > 0 {
            check_time_plan(&credits)?;
            AccessLimit::Time
        } else {
            check_credits_plan(&credits)?;
            AccessLimit::Credits
        };
        let body = RegisterAgentAndPlanRequest {
            plan: AgentPlanSpec {
                metadata_attributes: plan_metadata,
                price_config: price,
                credits_config: credits,
                access_limit: Some(access_limit),
            },
            agent: AgentSpec {
                metadata_attributes: agent_metadata,
                agent_api_attributes: api,
            },
        };
        self.transport()
            .call(
                Method::POST,
                "/api/v1/protocol/agents/plans",
                Some(&body),
                Auth::Key,
            )
            .await
    }

    /// The agent object.
    pub async fn get_agent(self, agent_id: &AgentId) -> Result<Agent, Error> {
        let path = format!("/api/v1/protocol/agents/{agent_id}");
        self.transport()
            .call::<(), _>(Method::GET, &path, None, Auth::Public)
            .await
    }

    /// The caller's own agents (or an organisation's, with [`ListOptions::org_id`]).
    /// Takes a [`Page`](super::Page) or [`ListOptions`].
    pub async fn get_agents(self, options: impl Into<ListOptions>) -> Result<AgentList, Error> {
        let path = format!("/api/v1/protocol/agents?{}", options.into().query(true));
        self.transport()
            .call::<(), _>(Method::GET, &path, None, Auth::Key)
            .await
    }

    /// Replaces an agent's metadata and API attributes (agent owner only).
    pub async fn update_agent_metadata(
        self,
        agent_id: &AgentId,
        metadata: AgentMetadata,
        api: AgentApiAttributes,
    ) -> Result<NvmApiResult, Error> {
        let body = UpdateAgentRequest {
            metadata_attributes: metadata,
            agent_api_attributes: api,
        };
        let path = format!("/api/v1/protocol/agents/{agent_id}");
        self.transport()
            .call(Method::PUT, &path, Some(&body), Auth::Key)
            .await
    }

    /// Plans that give access to an agent. Takes a [`Page`](super::Page) or
    /// [`ListOptions`] (`orgId` is not sent here).
    pub async fn get_agent_plans(
        self,
        agent_id: &AgentId,
        options: impl Into<ListOptions>,
    ) -> Result<PlanList, Error> {
        let path = format!(
            "/api/v1/protocol/agents/{agent_id}/plans?{}",
            options.into().query(false)
        );
        self.transport()
            .call::<(), _>(Method::GET, &path, None, Auth::Public)
            .await
    }

    /// Links a plan to an agent (agent owner only).
    pub async fn add_plan_to_agent(
        self,
        plan_id: &PlanId,
        agent_id: &AgentId,
    ) -> Result<NvmApiResult, Error> {
        let path = format!("/api/v1/protocol/agents/{agent_id}/plan/{plan_id}");
        self.transport()
            .call::<(), _>(Method::POST, &path, None, Auth::Key)
            .await
    }

    /// Unlinks a plan from an agent (agent owner only).
    pub async fn remove_plan_from_agent(
        self,
        plan_id: &PlanId,
        agent_id: &AgentId,
    ) -> Result<NvmApiResult, Error> {
        let path = format!("/api/v1/protocol/agents/{agent_id}/plan/{plan_id}");
        self.transport()
            .call::<(), _>(Method::DELETE, &path, None, Auth::Key)
            .await
    }
}
