//! Who and what exists: dev accounts, plans and agents, in registration order.

use std::collections::{BTreeMap, HashMap};

use http::StatusCode;

use super::forbidden;
use crate::devserver::error::ApiError;
use crate::devserver::ids::{new_address, new_agent_id, new_plan_id};
use crate::types::{
    AccessLimit, Address, Agent, AgentApiAttributes, AgentId, AgentMetadata, AgentObjectMetadata,
    AgentRegistry, Credits, Plan, PlanCreditsConfig, PlanId, PlanLimitMetadata, PlanMainMetadata,
    PlanMetadata, PlanObjectMetadata, PlanPriceConfig, PlanRegistry,
};

/// Fiat prices below $1.00 (6-decimal units) are refused, as on the platform.
const MIN_FIAT_AMOUNT: u64 = 1_000_000;

/// A registered plan.
#[derive(Debug, Clone)]
pub(crate) struct PlanRecord {
    pub(crate) id: PlanId,
    pub(crate) owner: Address,
    pub(crate) metadata: PlanMetadata,
    pub(crate) price: PlanPriceConfig,
    pub(crate) credits: PlanCreditsConfig,
    pub(crate) access_limit: AccessLimit,
    pub(crate) is_trial: bool,
    pub(crate) credits_contract: Address,
}

impl PlanRecord {
    pub(crate) fn is_time(&self) -> bool {
        self.access_limit == AccessLimit::Time
    }

    /// Paid in fiat: must be ordered through the (fake) Stripe checkout.
    pub(crate) fn is_fiat(&self) -> bool {
        !self.price.is_crypto && !self.price.is_free()
    }

    /// The plan object of `GET /api/v1/protocol/plans/{planId}`.
    pub(crate) fn to_wire(&self) -> Plan {
        Plan {
            id: self.id.clone(),
            metadata: PlanObjectMetadata {
                main: PlanMainMetadata {
                    name: self.metadata.name.clone(),
                    description: self.metadata.description.clone(),
                    is_trial_plan: self.is_trial,
                },
                plan: PlanLimitMetadata {
                    access_limit: Some(self.access_limit),
                    currency: self.price.currency.clone(),
                    fiat_payment_provider: (!self.price.is_crypto).then(|| "stripe".to_owned()),
                },
            },
            registry: PlanRegistry {
                owner: self.owner.clone(),
                price: self.price.clone(),
                credits: self.credits.clone(),
            },
        }
    }

    /// Price of one credit in the token's base units (0 for free or time plans).
    pub(super) fn price_per_credit(&self) -> f64 {
        let total = self.price.total().to_u128().unwrap_or(u128::MAX) as f64;
        match self.credits.amount.to_u128() {
            Some(0) | None => 0.0,
            Some(n) => total / n as f64,
        }
    }
}

/// A registered agent.
#[derive(Debug, Clone)]
pub(crate) struct AgentRecord {
    pub(crate) id: AgentId,
    pub(crate) owner: Address,
    pub(crate) metadata: AgentMetadata,
    pub(crate) api: AgentApiAttributes,
    pub(crate) plans: Vec<PlanId>,
}

impl AgentRecord {
    /// The agent object; credentials of the agent's own API are left out.
    pub(crate) fn to_wire(&self) -> Agent {
        Agent {
            id: self.id.clone(),
            metadata: AgentObjectMetadata {
                main: self.metadata.clone(),
                agent: Some(AgentApiAttributes {
                    password: None,
                    token: None,
                    ..self.api.clone()
                }),
            },
            registry: AgentRegistry {
                owner: self.owner.clone(),
                plans: self.plans.clone(),
            },
        }
    }
}

/// Dev accounts, plans and agents.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    accounts: BTreeMap<Address, Option<String>>,
    plans: HashMap<PlanId, PlanRecord>,
    plan_order: Vec<PlanId>,
    agents: HashMap<AgentId, AgentRecord>,
    agent_order: Vec<AgentId>,
}

impl Registry {
    pub(crate) fn add_account(&mut self, address: Address, name: Option<String>) {
        self.accounts.insert(address, name);
    }

    pub(crate) fn plan(&self, id: &PlanId) -> Result<&PlanRecord, ApiError> {
        self.plans.get(id).ok_or_else(ApiError::plan_not_found)
    }

    pub(crate) fn agent(&self, id: &AgentId) -> Result<&AgentRecord, ApiError> {
        self.agents.get(id).ok_or_else(ApiError::agent_not_found)
    }

    /// The plan if `caller` owns it; 403 otherwise.
    pub(super) fn owned_plan(
        &self,
        caller: &Address,
        plan_id: &PlanId,
    ) -> Result<&PlanRecord, ApiError> {
        let plan = self.plan(plan_id)?;
        if &plan.owner != caller {
            return Err(forbidden(
                "BCK.PROTOCOL.0004",
                "Only the owner of the plan can do this",
            ));
        }
        Ok(plan)
    }

    /// Whether `caller` owns an agent sold through `plan`.
    pub(super) fn owns_an_agent_of(&self, caller: &Address, plan: &PlanId) -> bool {
        self.agents
            .values()
            .any(|a| &a.owner == caller && a.plans.contains(plan))
    }

    /// Registers a plan owned by `owner`.
    pub(crate) fn register_plan(
        &mut self,
        owner: &Address,
        metadata: PlanMetadata,
        price: PlanPriceConfig,
        credits: PlanCreditsConfig,
        access_limit: Option<AccessLimit>,
        is_trial: bool,
    ) -> Result<PlanId, ApiError> {
        validate_plan(&metadata, &price, &credits)?;
        let access_limit = match access_limit {
            Some(AccessLimit::Credits) => AccessLimit::Credits,
            Some(AccessLimit::Time) => AccessLimit::Time,
            _ if credits.duration_secs > 0 => AccessLimit::Time,
            _ => AccessLimit::Credits,
        };
        let id = new_plan_id();
        let record = PlanRecord {
            id: id.clone(),
            owner: owner.clone(),
            is_trial: is_trial || metadata.is_trial_plan,
            metadata,
            price,
            credits,
            access_limit,
            credits_contract: new_address(),
        };
        self.plans.insert(id.clone(), record);
        self.plan_order.push(id.clone());
        Ok(id)
    }

    pub(crate) fn plans_owned_by(&self, owner: &Address) -> Vec<&PlanRecord> {
        self.plan_order
            .iter()
            .filter_map(|id| self.plans.get(id))
            .filter(|p| &p.owner == owner)
            .collect()
    }

    /// Registers an agent; every linked plan must exist.
    pub(crate) fn register_agent(
        &mut self,
        owner: &Address,
        metadata: AgentMetadata,
        api: AgentApiAttributes,
        plans: Vec<PlanId>,
    ) -> Result<AgentId, ApiError> {
        if metadata.name.trim().is_empty() {
            return Err(ApiError::validation("metadataAttributes.name is required"));
        }
        for plan in &plans {
            self.plan(plan)?;
        }
        let mut unique = Vec::with_capacity(plans.len());
        for p in plans {
            if !unique.contains(&p) {
                unique.push(p);
            }
        }
        let id = new_agent_id();
        self.agents.insert(
            id.clone(),
            AgentRecord {
                id: id.clone(),
                owner: owner.clone(),
                metadata,
                api,
                plans: unique,
            },
        );
        self.agent_order.push(id.clone());
        Ok(id)
    }

    pub(crate) fn agents_owned_by(&self, owner: &Address) -> Vec<&AgentRecord> {
        self.agent_order
            .iter()
            .filter_map(|id| self.agents.get(id))
            .filter(|a| &a.owner == owner)
            .collect()
    }

    pub(crate) fn agents_of_plan(&self, plan: &PlanId) -> Vec<&AgentRecord> {
        self.agent_order
            .iter()
            .filter_map(|id| self.agents.get(id))
            .filter(|a| a.plans.contains(plan))
            .collect()
    }

    fn owned_agent_mut(
        &mut self,
        caller: &Address,
        id: &AgentId,
    ) -> Result<&mut AgentRecord, ApiError> {
        let agent = self
            .agents
            .get_mut(id)
            .ok_or_else(ApiError::agent_not_found)?;
        if &agent.owner != caller {
            return Err(forbidden(
                "BCK.PROTOCOL.0005",
                "Only the owner of the agent can do this",
            ));
        }
        Ok(agent)
    }

    pub(crate) fn update_agent(
        &mut self,
        caller: &Address,
        id: &AgentId,
        metadata: AgentMetadata,
        api: AgentApiAttributes,
    ) -> Result<(), ApiError> {
        let agent = self.owned_agent_mut(caller, id)?;
        agent.metadata = metadata;
        agent.api = api;
        Ok(())
    }

    pub(crate) fn link_plan(
        &mut self,
        caller: &Address,
        agent: &AgentId,
        plan: &PlanId,
        linked: bool,
    ) -> Result<(), ApiError> {
        self.plan(plan)?;
        let agent = self.owned_agent_mut(caller, agent)?;
        if linked {
            if !agent.plans.contains(plan) {
                agent.plans.push(plan.clone());
            }
        } else {
            agent.plans.retain(|p| p != plan);
        }
        Ok(())
    }
}

fn validate_plan(
    metadata: &PlanMetadata,
    price: &PlanPriceConfig,
    credits: &PlanCreditsConfig,
) -> Result<(), ApiError> {
    if metadata.name.trim().is_empty() {
        return Err(ApiError::validation("metadataAttributes.name is required"));
    }
    if price.token_address.is_none() {
        // The wire type reads a bad address as absent (responses must not fail on it);
        // a registration needs one, as the backend's validation pipe does.
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "BCK.COMMON.0001",
            "invalid field `priceConfig.tokenAddress`: must be a 0x address of 40 hex digits",
        ));
    }
    if price.amounts.len() != price.receivers.len() {
        return Err(ApiError::validation(
            "priceConfig.amounts and priceConfig.receivers must have the same length",
        ));
    }
    if credits.min_amount > credits.max_amount {
        return Err(ApiError::validation(
            "creditsConfig.minAmount must not be greater than creditsConfig.maxAmount",
        ));
    }
    if !price.is_crypto && !price.is_free() && price.total() < Credits::from(MIN_FIAT_AMOUNT) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "BCK.PROTOCOL.0047",
            "The fiat price must be at least 1.00 (1000000 in 6-decimal units)",
        ));
    }
    Ok(())
}
