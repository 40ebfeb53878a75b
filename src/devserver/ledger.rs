//! The ledger: plans, agents, credit holdings, dev wallets and the idempotency store.
//!
//! Plain data behind one lock (held by the caller, never across an `await`), so every
//! check-and-spend is atomic: concurrent settles can neither overdraw a balance nor
//! lose an update.

use std::collections::{BTreeMap, HashMap, HashSet};

use http::StatusCode;
use serde_json::json;

use super::error::ApiError;
use super::ids::{new_address, new_agent_id, new_plan_id, new_tx_hash};
use crate::types::{
    AccessLimit, Address, Agent, AgentApiAttributes, AgentId, AgentMetadata, AgentObjectMetadata,
    AgentRegistry, Credits, NvmApiResult, Plan, PlanBalance, PlanCreditsConfig, PlanId,
    PlanLimitMetadata, PlanMainMetadata, PlanMetadata, PlanObjectMetadata, PlanPriceConfig,
    PlanRegistry, SettleResponse,
};

/// What every dev wallet holds of every token until it spends: 10^24 base units.
pub const DEFAULT_TOKEN_BALANCE: Credits = Credits::from_u128(1_000_000_000_000_000_000_000_000);

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
    fn price_per_credit(&self) -> f64 {
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

/// Credits that lapse at `expires_at` (server-clock unix seconds).
#[derive(Debug, Clone, Copy)]
struct ExpirableLot {
    amount: Credits,
    expires_at: u64,
}

/// What one holder has of one plan.
#[derive(Debug, Clone, Default)]
struct Holding {
    /// Credits that never lapse (orders, mint).
    credits: Credits,
    /// Expirable credits (mintExpirable), spent soonest-expiring first.
    lots: Vec<ExpirableLot>,
    /// Time plans: access until this instant (`u64::MAX`: forever).
    access_until: Option<u64>,
}

impl Holding {
    fn credits_at(&self, now: u64) -> Credits {
        self.lots
            .iter()
            .filter(|l| l.expires_at > now)
            .fold(self.credits, |acc, l| acc.saturating_add(l.amount))
    }

    fn time_access(&self, now: u64) -> bool {
        self.access_until.is_some_and(|until| until > now)
    }

    /// Spends `amount`: expirable lots first, soonest-expiring first. All or nothing.
    fn spend(&mut self, amount: Credits, now: u64) -> Result<(), Credits> {
        let available = self.credits_at(now);
        if available < amount {
            return Err(available);
        }
        self.lots.retain(|l| l.expires_at > now);
        self.lots.sort_by_key(|l| l.expires_at);
        let mut left = amount;
        for lot in &mut self.lots {
            let take = lot.amount.min(left);
            lot.amount = lot.amount.saturating_sub(take);
            left = left.saturating_sub(take);
        }
        self.lots.retain(|l| !l.amount.is_zero());
        self.credits = self.credits.saturating_sub(left);
        Ok(())
    }
}

/// A fiat checkout session waiting for its (fake) payment.
#[derive(Debug, Clone)]
pub(crate) struct Checkout {
    pub(crate) plan_id: PlanId,
    pub(crate) buyer: Address,
    pub(crate) completed: bool,
}

/// A spending delegation (`POST /api/v1/delegation/create`). The devserver records it
/// and lists it; it does not enforce its limits.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Delegation {
    pub(crate) id: String,
    #[serde(skip)]
    pub(crate) owner: Address,
    pub(crate) provider: String,
    pub(crate) spending_limit_cents: Option<u64>,
    pub(crate) spent_cents: u64,
    pub(crate) duration_secs: Option<u64>,
    pub(crate) currency: Option<String>,
    pub(crate) status: &'static str,
    pub(crate) created_at: String,
    pub(crate) expires_at: Option<String>,
}

/// Why a payment check failed (the `invalidReason` of verify, `errorReason` of settle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InvalidReason {
    InvalidPlan,
    InvalidAgent,
    InsufficientBalance,
}

impl InvalidReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            InvalidReason::InvalidPlan => "invalid_plan",
            InvalidReason::InvalidAgent => "invalid_agent",
            InvalidReason::InsufficientBalance => "insufficient_balance",
        }
    }
}

/// A charge the ledger may make: who pays, which plan, for which agent, how much.
#[derive(Debug, Clone)]
pub(crate) struct Charge<'a> {
    pub(crate) payer: &'a Address,
    pub(crate) plan_id: &'a PlanId,
    /// The agent the token names, if any.
    pub(crate) token_agent: Option<&'a AgentId>,
    /// The plans the route accepts, each with the agent it requires (empty: any plan).
    pub(crate) accepts: Vec<(PlanId, Option<AgentId>)>,
    /// What the caller asked to burn (clamped by the plan).
    pub(crate) requested: Credits,
}

/// What a successful check found.
#[derive(Debug, Clone)]
pub(crate) struct CheckedCharge {
    pub(crate) amount: Credits,
    pub(crate) agent: Option<AgentId>,
    pub(crate) agent_name: Option<String>,
}

/// The whole ledger.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    accounts: BTreeMap<Address, Option<String>>,
    plans: HashMap<PlanId, PlanRecord>,
    plan_order: Vec<PlanId>,
    agents: HashMap<AgentId, AgentRecord>,
    agent_order: Vec<AgentId>,
    holdings: HashMap<(PlanId, Address), Holding>,
    wallets: HashMap<(Address, Address), Credits>,
    trials_ordered: HashSet<(PlanId, Address)>,
    settlements: HashMap<String, SettleResponse>,
    redemptions: HashMap<String, NvmApiResult>,
    checkouts: HashMap<String, Checkout>,
    delegations: Vec<Delegation>,
}

fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code, message)
}

impl Ledger {
    pub(crate) fn add_account(&mut self, address: Address, name: Option<String>) {
        self.accounts.insert(address, name);
    }

    pub(crate) fn add_delegation(&mut self, delegation: Delegation) {
        self.delegations.push(delegation);
    }

    pub(crate) fn delegations_of(&self, owner: &Address) -> Vec<Delegation> {
        self.delegations
            .iter()
            .filter(|d| &d.owner == owner)
            .cloned()
            .collect()
    }

    pub(crate) fn plan(&self, id: &PlanId) -> Result<&PlanRecord, ApiError> {
        self.plans.get(id).ok_or_else(ApiError::plan_not_found)
    }

    pub(crate) fn agent(&self, id: &AgentId) -> Result<&AgentRecord, ApiError> {
        self.agents.get(id).ok_or_else(ApiError::agent_not_found)
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

    /// The `PlanBalance` of any holder (unknown holders hold nothing).
    pub(crate) fn balance(
        &self,
        plan_id: &PlanId,
        holder: &Address,
        now: u64,
    ) -> Result<PlanBalance, ApiError> {
        let plan = self.plan(plan_id)?;
        let holding = self.holdings.get(&(plan_id.clone(), holder.clone()));
        let credits = holding.map_or(Credits::ZERO, |h| h.credits_at(now));
        let time_access = holding.is_some_and(|h| h.time_access(now));
        let balance = if time_access {
            credits.saturating_add(Credits::from(1u64))
        } else {
            credits
        };
        Ok(PlanBalance {
            plan_id: plan.id.clone(),
            plan_name: plan.metadata.name.clone(),
            plan_type: plan.access_limit,
            holder_address: holder.clone(),
            balance,
            credits_contract: plan.credits_contract.clone(),
            is_subscriber: time_access || !balance.is_zero(),
            price_per_credit: plan.price_per_credit(),
            batch: None,
        })
    }

    /// A dev wallet's balance of `token`.
    pub(crate) fn token_balance(&self, holder: &Address, token: &Address) -> Credits {
        self.wallets
            .get(&(holder.clone(), token.clone()))
            .copied()
            .unwrap_or(DEFAULT_TOKEN_BALANCE)
    }

    /// Orders a crypto (or free) plan: moves the price from the buyer's dev wallet to
    /// the receivers and grants the plan.
    pub(crate) fn order(
        &mut self,
        plan_id: &PlanId,
        buyer: &Address,
        now: u64,
    ) -> Result<NvmApiResult, ApiError> {
        let plan = self.plan(plan_id)?.clone();
        if plan.is_fiat() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "BCK.PROTOCOL.0007",
                "This plan is paid in fiat: order it with POST /api/v1/fiat/stripe/payment",
            ));
        }
        self.check_trial(&plan, buyer)?;
        let token = plan.price.token_address.clone();
        let total = plan.price.total();
        let held = self.token_balance(buyer, &token);
        let Some(left) = held.checked_sub(total) else {
            return Err(ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                "BCK.PROTOCOL.0008",
                format!(
                    "Insufficient funds: the plan costs {total} of token {token}, the buyer holds {held}"
                ),
            ));
        };
        self.wallets.insert((buyer.clone(), token.clone()), left);
        for (amount, receiver) in plan.price.amounts.iter().zip(&plan.price.receivers) {
            let had = self.token_balance(receiver, &token);
            self.wallets.insert(
                (receiver.clone(), token.clone()),
                had.saturating_add(*amount),
            );
        }
        self.grant(&plan, buyer, now);
        Ok(NvmApiResult::ok(new_tx_hash()))
    }

    fn check_trial(&self, plan: &PlanRecord, buyer: &Address) -> Result<(), ApiError> {
        if plan.is_trial
            && self
                .trials_ordered
                .contains(&(plan.id.clone(), buyer.clone()))
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "BCK.PROTOCOL.0006",
                "A trial plan can only be ordered once",
            ));
        }
        Ok(())
    }

    /// Gives the buyer what one order of the plan grants.
    fn grant(&mut self, plan: &PlanRecord, buyer: &Address, now: u64) {
        if plan.is_trial {
            self.trials_ordered.insert((plan.id.clone(), buyer.clone()));
        }
        let holding = self
            .holdings
            .entry((plan.id.clone(), buyer.clone()))
            .or_default();
        if plan.is_time() {
            let duration = plan.credits.duration_secs;
            holding.access_until = Some(if duration == 0 {
                u64::MAX
            } else {
                holding
                    .access_until
                    .filter(|&t| t > now)
                    .unwrap_or(now)
                    .saturating_add(duration)
            });
        } else {
            holding.credits = holding.credits.saturating_add(plan.credits.amount);
        }
    }

    /// Opens a fiat checkout session for a fiat plan.
    pub(crate) fn open_checkout(
        &mut self,
        plan_id: &PlanId,
        buyer: &Address,
        session_id: String,
    ) -> Result<(), ApiError> {
        let plan = self.plan(plan_id)?;
        if plan.price.is_crypto {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "BCK.PROTOCOL.0010",
                "This plan is paid in crypto: order it with POST /api/v1/protocol/plans/{planId}/order",
            ));
        }
        self.check_trial(plan, buyer)?;
        self.checkouts.insert(
            session_id,
            Checkout {
                plan_id: plan_id.clone(),
                buyer: buyer.clone(),
                completed: false,
            },
        );
        Ok(())
    }

    /// Completes a checkout session once: `Ok(true)` the first time, `Ok(false)` after.
    pub(crate) fn complete_checkout(
        &mut self,
        session_id: &str,
        now: u64,
    ) -> Result<(Checkout, bool), ApiError> {
        let checkout = self.checkouts.get(session_id).cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "BCK.PROTOCOL.0011",
                "Checkout session not found",
            )
        })?;
        if checkout.completed {
            return Ok((checkout, false));
        }
        let plan = self.plan(&checkout.plan_id)?.clone();
        self.check_trial(&plan, &checkout.buyer)?;
        self.grant(&plan, &checkout.buyer, now);
        if let Some(c) = self.checkouts.get_mut(session_id) {
            c.completed = true;
        }
        Ok((checkout, true))
    }

    fn owned_plan(&self, caller: &Address, plan_id: &PlanId) -> Result<&PlanRecord, ApiError> {
        let plan = self.plan(plan_id)?;
        if &plan.owner != caller {
            return Err(forbidden(
                "BCK.PROTOCOL.0004",
                "Only the owner of the plan can do this",
            ));
        }
        Ok(plan)
    }

    /// Mints credits (plan owner only); `expires_at` makes them an expirable lot.
    pub(crate) fn mint(
        &mut self,
        caller: &Address,
        plan_id: &PlanId,
        amount: Credits,
        receiver: &Address,
        expires_at: Option<u64>,
    ) -> Result<NvmApiResult, ApiError> {
        self.owned_plan(caller, plan_id)?;
        if amount.is_zero() {
            return Err(ApiError::validation(
                "the amount to mint must be greater than 0",
            ));
        }
        let holding = self
            .holdings
            .entry((plan_id.clone(), receiver.clone()))
            .or_default();
        match expires_at {
            Some(expires_at) => holding.lots.push(ExpirableLot { amount, expires_at }),
            None => holding.credits = holding.credits.saturating_add(amount),
        }
        Ok(NvmApiResult::ok(new_tx_hash()))
    }

    /// Burns credits from the caller's own balance (plan owner only).
    pub(crate) fn burn(
        &mut self,
        caller: &Address,
        plan_id: &PlanId,
        amount: Credits,
        now: u64,
    ) -> Result<NvmApiResult, ApiError> {
        self.owned_plan(caller, plan_id)?;
        self.spend(plan_id, caller, amount, now)?;
        Ok(NvmApiResult::ok(new_tx_hash()))
    }

    fn spend(
        &mut self,
        plan_id: &PlanId,
        holder: &Address,
        amount: Credits,
        now: u64,
    ) -> Result<(), ApiError> {
        let insufficient = |available: Credits| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "BCK.PROTOCOL.0009",
                format!("Insufficient credits: {available} available, {amount} requested"),
            )
        };
        match self.holdings.get_mut(&(plan_id.clone(), holder.clone())) {
            Some(h) => h.spend(amount, now).map_err(insufficient),
            None if amount.is_zero() => Ok(()),
            None => Err(insufficient(Credits::ZERO)),
        }
    }

    /// Redeems credits for a request (owner of the plan or of an agent linked to it),
    /// idempotent by `agent_request_id`.
    pub(crate) fn redeem(
        &mut self,
        caller: &Address,
        agent_request_id: &str,
        plan_id: &PlanId,
        redeem_from: &Address,
        requested: Credits,
        now: u64,
    ) -> Result<NvmApiResult, ApiError> {
        if let Some(done) = self.redemptions.get(agent_request_id) {
            return Ok(done.clone());
        }
        let plan = self.plan(plan_id)?;
        let may_redeem = &plan.owner == caller
            || self
                .agents
                .values()
                .any(|a| &a.owner == caller && a.plans.contains(plan_id));
        if !may_redeem {
            return Err(forbidden(
                "BCK.PROTOCOL.0012",
                "Only the owner of the plan or of an agent linked to it can redeem its credits",
            ));
        }
        let burned = self.charge_amount(plan_id, redeem_from, requested, now)?;
        self.spend(plan_id, redeem_from, burned, now)?;
        let result = NvmApiResult {
            data: Some(json!({ "creditsBurned": burned.to_string() })),
            ..NvmApiResult::ok(new_tx_hash())
        };
        if !agent_request_id.is_empty() {
            self.redemptions
                .insert(agent_request_id.to_owned(), result.clone());
        }
        Ok(result)
    }

    /// What a charge of `requested` really burns: clamped by the plan; nothing while a
    /// time plan's access is active.
    fn charge_amount(
        &self,
        plan_id: &PlanId,
        holder: &Address,
        requested: Credits,
        now: u64,
    ) -> Result<Credits, ApiError> {
        let plan = self.plan(plan_id)?;
        let time_access = self
            .holdings
            .get(&(plan_id.clone(), holder.clone()))
            .is_some_and(|h| h.time_access(now));
        Ok(if plan.is_time() && time_access {
            Credits::ZERO
        } else {
            plan.credits.redemption_amount(requested)
        })
    }

    /// The checks of verify and settle (wire-spec §6.5): plan, agent, balance.
    pub(crate) fn check_charge(
        &self,
        charge: &Charge<'_>,
        now: u64,
    ) -> Result<CheckedCharge, InvalidReason> {
        if !self.plans.contains_key(charge.plan_id) {
            return Err(InvalidReason::InvalidPlan);
        }
        let required_agent = if charge.accepts.is_empty() {
            None
        } else {
            let entry = charge
                .accepts
                .iter()
                .find(|(p, _)| p == charge.plan_id)
                .ok_or(InvalidReason::InvalidPlan)?;
            entry.1.clone()
        };
        if let (Some(required), Some(named)) = (&required_agent, charge.token_agent) {
            if required != named {
                return Err(InvalidReason::InvalidAgent);
            }
        }
        let agent = required_agent.or_else(|| charge.token_agent.cloned());
        let mut agent_name = None;
        if let Some(agent_id) = &agent {
            match self.agents.get(agent_id) {
                Some(a) if a.plans.contains(charge.plan_id) => {
                    agent_name = Some(a.metadata.name.clone());
                }
                _ => return Err(InvalidReason::InvalidAgent),
            }
        }
        let amount = self
            .charge_amount(charge.plan_id, charge.payer, charge.requested, now)
            .map_err(|_| InvalidReason::InvalidPlan)?;
        let balance = self
            .balance(charge.plan_id, charge.payer, now)
            .map_err(|_| InvalidReason::InvalidPlan)?;
        if !balance.is_subscriber || balance.balance < amount {
            return Err(InvalidReason::InsufficientBalance);
        }
        Ok(CheckedCharge {
            amount,
            agent,
            agent_name,
        })
    }

    /// Settles a charge, idempotent by `agent_request_id`: a known id answers the
    /// first successful result and spends nothing. Failures are not stored, so a retry
    /// after a top-up can succeed.
    pub(crate) fn settle(
        &mut self,
        charge: &Charge<'_>,
        network: &str,
        agent_request_id: Option<&str>,
        now: u64,
    ) -> SettleResponse {
        if let Some(done) = agent_request_id.and_then(|id| self.settlements.get(id)) {
            return done.clone();
        }
        let failed = |reason: InvalidReason| SettleResponse {
            success: false,
            error_reason: Some(reason.as_str().to_owned()),
            payer: Some(charge.payer.clone()),
            transaction: String::new(),
            network: network.to_owned(),
            credits_redeemed: None,
            remaining_balance: None,
            order_tx: None,
        };
        let checked = match self.check_charge(charge, now) {
            Ok(c) => c,
            Err(reason) => return failed(reason),
        };
        if self
            .spend(charge.plan_id, charge.payer, checked.amount, now)
            .is_err()
        {
            return failed(InvalidReason::InsufficientBalance);
        }
        let remaining = self
            .balance(charge.plan_id, charge.payer, now)
            .map(|b| b.balance)
            .unwrap_or_default();
        let response = SettleResponse {
            success: true,
            error_reason: None,
            payer: Some(charge.payer.clone()),
            transaction: new_tx_hash(),
            network: network.to_owned(),
            credits_redeemed: Some(checked.amount),
            remaining_balance: Some(remaining),
            order_tx: None,
        };
        if let Some(id) = agent_request_id.filter(|id| !id.is_empty()) {
            self.settlements.insert(id.to_owned(), response.clone());
        }
        response
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{
        get_dynamic_credits_config, get_expirable_duration_config, get_fixed_credits_config,
        get_free_price_config, get_native_token_price_config,
    };

    fn addr(n: u8) -> Address {
        format!("0x{:040x}", n).parse().unwrap()
    }
    fn c(n: u64) -> Credits {
        Credits::from(n)
    }

    fn credits_plan(l: &mut Ledger, owner: &Address, cfg: PlanCreditsConfig) -> PlanId {
        l.register_plan(
            owner,
            PlanMetadata::named("p"),
            get_native_token_price_config(c(10), owner.clone()),
            cfg,
            None,
            false,
        )
        .unwrap()
    }

    #[test]
    fn order_moves_tokens_and_grants_credits() {
        let mut l = Ledger::default();
        let (owner, buyer) = (addr(1), addr(2));
        let plan = credits_plan(&mut l, &owner, get_fixed_credits_config(c(100), c(1)));
        l.order(&plan, &buyer, 0).unwrap();
        assert_eq!(l.balance(&plan, &buyer, 0).unwrap().balance, c(100));
        let zero = Address::zero();
        assert_eq!(
            l.token_balance(&buyer, &zero),
            DEFAULT_TOKEN_BALANCE.saturating_sub(c(10))
        );
        assert_eq!(
            l.token_balance(&owner, &zero),
            DEFAULT_TOKEN_BALANCE.saturating_add(c(10))
        );
        l.wallets.insert((buyer.clone(), zero), c(3));
        let err = l.order(&plan, &buyer, 0).unwrap_err();
        assert_eq!(err.status, StatusCode::PAYMENT_REQUIRED);
    }

    #[test]
    fn expirable_lots_lapse_and_are_spent_first() {
        let mut l = Ledger::default();
        let owner = addr(1);
        let plan = credits_plan(
            &mut l,
            &owner,
            get_dynamic_credits_config(c(5), c(1), c(100)),
        );
        let h = addr(3);
        l.mint(&owner, &plan, c(10), &h, None).unwrap();
        l.mint(&owner, &plan, c(4), &h, Some(100)).unwrap();
        l.mint(&owner, &plan, c(6), &h, Some(50)).unwrap();
        assert_eq!(l.balance(&plan, &h, 0).unwrap().balance, c(20));
        l.spend(&plan, &h, c(7), 0).unwrap(); // 6 from the lot expiring at 50, 1 from 100
        assert_eq!(l.balance(&plan, &h, 60).unwrap().balance, c(13));
        assert_eq!(l.balance(&plan, &h, 100).unwrap().balance, c(10));
        assert!(l.mint(&h, &plan, c(1), &h, None).is_err());
    }

    #[test]
    fn time_plans_grant_access_until_expiry() {
        let mut l = Ledger::default();
        let owner = addr(1);
        let plan = l
            .register_plan(
                &owner,
                PlanMetadata::named("t"),
                get_free_price_config(),
                get_expirable_duration_config(60),
                Some(AccessLimit::Time),
                false,
            )
            .unwrap();
        let h = addr(4);
        l.order(&plan, &h, 1000).unwrap();
        let b = l.balance(&plan, &h, 1059).unwrap();
        assert!(b.is_subscriber);
        assert_eq!(b.balance, c(1));
        let b = l.balance(&plan, &h, 1060).unwrap();
        assert!(!b.is_subscriber);
        assert_eq!(b.balance, c(0));
    }

    #[test]
    fn trial_plans_order_once() {
        let mut l = Ledger::default();
        let owner = addr(1);
        let plan = l
            .register_plan(
                &owner,
                PlanMetadata::named("trial"),
                get_free_price_config(),
                get_fixed_credits_config(c(1), c(1)),
                None,
                true,
            )
            .unwrap();
        l.order(&plan, &addr(5), 0).unwrap();
        assert_eq!(
            l.order(&plan, &addr(5), 0).unwrap_err().status,
            StatusCode::CONFLICT
        );
    }

    #[test]
    fn settle_is_idempotent_and_clamped() {
        let mut l = Ledger::default();
        let owner = addr(1);
        let plan = credits_plan(
            &mut l,
            &owner,
            get_dynamic_credits_config(c(10), c(2), c(3)),
        );
        let payer = addr(6);
        l.order(&plan, &payer, 0).unwrap();
        let charge = Charge {
            payer: &payer,
            plan_id: &plan,
            token_agent: None,
            accepts: vec![],
            requested: c(9),
        };
        let first = l.settle(&charge, "n", Some("r1"), 0);
        assert!(first.success);
        assert_eq!(first.credits_redeemed, Some(c(3)));
        assert_eq!(l.settle(&charge, "n", Some("r1"), 0), first);
        assert_eq!(l.balance(&plan, &payer, 0).unwrap().balance, c(7));
        let low = Charge {
            requested: c(1),
            ..charge.clone()
        };
        assert_eq!(
            l.settle(&low, "n", Some("r2"), 0).credits_redeemed,
            Some(c(2))
        );
        l.settle(&charge, "n", None, 0);
        let broke = l.settle(&charge, "n", Some("r3"), 0);
        assert!(!broke.success, "2 left, 3 needed");
        assert_eq!(broke.error_reason.as_deref(), Some("insufficient_balance"));
    }

    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Mint(u64),
            MintExpirable(u64, u64),
            Spend(u64),
            Advance(u64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (1..50u64).prop_map(Op::Mint),
                (1..50u64, 1..100u64).prop_map(|(a, d)| Op::MintExpirable(a, d)),
                (0..80u64).prop_map(Op::Spend),
                (0..60u64).prop_map(Op::Advance),
            ]
        }

        proptest! {
            /// Against a naive model (a list of lots, spent soonest-expiring first),
            /// the holding agrees on every balance and on which spends succeed.
            #[test]
            fn holding_matches_a_naive_model(ops in proptest::collection::vec(op(), 1..40)) {
                let mut holding = Holding::default();
                let mut lots: Vec<(u64, u64)> = vec![]; // (expires_at, amount); u64::MAX = never
                let mut now = 0u64;
                for op in ops {
                    match op {
                        Op::Mint(a) => {
                            holding.credits = holding.credits.saturating_add(Credits::from(a));
                            lots.push((u64::MAX, a));
                        }
                        Op::MintExpirable(a, d) => {
                            holding.lots.push(ExpirableLot { amount: Credits::from(a), expires_at: now + d });
                            lots.push((now + d, a));
                        }
                        Op::Spend(a) => {
                            lots.retain(|&(e, _)| e > now);
                            let total: u64 = lots.iter().map(|&(_, a)| a).sum();
                            let ok = holding.spend(Credits::from(a), now).is_ok();
                            prop_assert_eq!(ok, total >= a);
                            if ok {
                                lots.sort_by_key(|&(e, _)| e);
                                let mut left = a;
                                for lot in &mut lots {
                                    let take = lot.1.min(left);
                                    lot.1 -= take;
                                    left -= take;
                                }
                            }
                        }
                        Op::Advance(t) => now += t,
                    }
                    let model: u64 = lots.iter().filter(|&&(e, _)| e > now).map(|&(_, a)| a).sum();
                    prop_assert_eq!(holding.credits_at(now), Credits::from(model));
                }
            }
        }
    }
}
