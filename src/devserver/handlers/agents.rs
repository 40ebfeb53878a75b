//! Agents (docs/wire-notes.md §4): register, agent+plan, get, update, list, plans of an agent,
//! link and unlink plans.

use axum::extract::{RawQuery, State};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{agent_id, created, plan_id, Paging, Params};
use crate::devserver::accounts::Caller;
use crate::devserver::error::{ApiError, JsonBody};
use crate::devserver::ids::new_tx_hash;
use crate::devserver::DevServerState;
use crate::types::{
    Agent, AgentApiAttributes, AgentList, AgentMetadata, ListedAgent, NvmApiResult, Plan, PlanList,
    RegisterAgentAndPlanRequest, RegisterAgentRequest,
};

pub(crate) async fn register(
    State(state): State<DevServerState>,
    Caller(caller): Caller,
    JsonBody(req): JsonBody<RegisterAgentRequest>,
) -> Result<Response, ApiError> {
    let agent_id = state.ledger().registry.register_agent(
        &caller,
        req.metadata_attributes,
        req.agent_api_attributes,
        req.plans,
    )?;
    Ok(created(json!({
        "data": { "agentId": agent_id },
        "txHash": new_tx_hash(),
    })))
}

/// Registers a plan and an agent linked to it, atomically.
pub(crate) async fn register_with_plan(
    State(state): State<DevServerState>,
    Caller(caller): Caller,
    JsonBody(req): JsonBody<RegisterAgentAndPlanRequest>,
) -> Result<Response, ApiError> {
    let mut ledger = state.ledger();
    if req.agent.metadata_attributes.name.trim().is_empty() {
        return Err(ApiError::validation(
            "agent.metadataAttributes.name is required",
        ));
    }
    let is_trial = req.plan.metadata_attributes.is_trial_plan;
    let plan_id = ledger.registry.register_plan(
        &caller,
        req.plan.metadata_attributes,
        req.plan.price_config,
        req.plan.credits_config,
        req.plan.access_limit,
        is_trial,
    )?;
    let agent_id = ledger.registry.register_agent(
        &caller,
        req.agent.metadata_attributes,
        req.agent.agent_api_attributes,
        vec![plan_id.clone()],
    )?;
    Ok(created(json!({
        "data": { "agentId": agent_id, "planId": plan_id },
        "txHash": new_tx_hash(),
    })))
}

pub(crate) async fn get_agent(
    State(state): State<DevServerState>,
    Params(raw): Params<String>,
) -> Result<Json<Agent>, ApiError> {
    let id = agent_id(&raw)?;
    Ok(Json(state.ledger().registry.agent(&id)?.to_wire()))
}

/// Body of `PUT /api/v1/protocol/agents/{agentId}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UpdateAgentRequest {
    metadata_attributes: AgentMetadata,
    #[serde(default)]
    agent_api_attributes: Option<AgentApiAttributes>,
}

pub(crate) async fn update(
    State(state): State<DevServerState>,
    Caller(caller): Caller,
    Params(raw): Params<String>,
    JsonBody(req): JsonBody<UpdateAgentRequest>,
) -> Result<Json<NvmApiResult>, ApiError> {
    let id = agent_id(&raw)?;
    let mut ledger = state.ledger();
    let api = match req.agent_api_attributes {
        Some(api) => api,
        None => ledger.registry.agent(&id)?.api.clone(),
    };
    ledger
        .registry
        .update_agent(&caller, &id, req.metadata_attributes, api)?;
    Ok(Json(NvmApiResult::ok(new_tx_hash())))
}

pub(crate) async fn list(
    State(state): State<DevServerState>,
    Caller(caller): Caller,
    RawQuery(query): RawQuery,
) -> Json<AgentList> {
    let paging = Paging::from_query(query.as_deref(), 100);
    let ledger = state.ledger();
    let agents: Vec<ListedAgent> = ledger
        .registry
        .agents_owned_by(&caller)
        .into_iter()
        .map(|a| a.to_wire().into())
        .collect();
    Json(AgentList {
        total: agents.len() as u64,
        page: paging.page,
        offset: paging.size,
        agents: paging.slice(&agents),
    })
}

/// `{total, page, offset, plans: [...]}` with the plan objects of `GET plan`.
pub(crate) async fn plans(
    State(state): State<DevServerState>,
    Params(raw): Params<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<PlanList>, ApiError> {
    let id = agent_id(&raw)?;
    let paging = Paging::from_query(query.as_deref(), 10);
    let ledger = state.ledger();
    let agent = ledger.registry.agent(&id)?;
    let plans: Vec<Plan> = agent
        .plans
        .iter()
        .filter_map(|p| ledger.registry.plan(p).ok())
        .map(|p| p.to_wire())
        .collect();
    Ok(Json(PlanList {
        total: plans.len() as u64,
        page: paging.page,
        offset: paging.size,
        plans: paging.slice(&plans).into_iter().map(Into::into).collect(),
    }))
}

pub(crate) async fn link(
    State(state): State<DevServerState>,
    Caller(caller): Caller,
    Params((agent, plan)): Params<(String, String)>,
) -> Result<Response, ApiError> {
    let (agent, plan) = (agent_id(&agent)?, plan_id(&plan)?);
    state
        .ledger()
        .registry
        .link_plan(&caller, &agent, &plan, true)?;
    Ok(created(NvmApiResult::ok(new_tx_hash())))
}

pub(crate) async fn unlink(
    State(state): State<DevServerState>,
    Caller(caller): Caller,
    Params((agent, plan)): Params<(String, String)>,
) -> Result<Json<NvmApiResult>, ApiError> {
    let (agent, plan) = (agent_id(&agent)?, plan_id(&plan)?);
    state
        .ledger()
        .registry
        .link_plan(&caller, &agent, &plan, false)?;
    Ok(Json(NvmApiResult::ok(new_tx_hash())))
}
