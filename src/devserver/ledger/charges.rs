//! Charges for requests: the checks of verify and settle, settle and redeem (each
//! idempotent by `agentRequestId`), and the record of every spend.

use std::collections::{HashMap, HashSet};

use serde_json::json;

use super::{forbidden, Ledger};
use crate::devserver::error::ApiError;
use crate::devserver::ids::new_tx_hash;
use crate::types::{Address, AgentId, Credits, NvmApiResult, PlanId, SettleResponse};

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
    /// The single-use nonce of a v3 token (`payload.authorization.nonce`).
    pub(crate) nonce: Option<&'a str>,
}

/// The backend's code for a second settle of a v3 token.
pub(crate) const TOKEN_ALREADY_USED: &str = "BCK.X402.0059";

/// What a successful check found.
#[derive(Debug, Clone)]
pub(crate) struct CheckedCharge {
    pub(crate) amount: Credits,
    pub(crate) agent: Option<AgentId>,
    pub(crate) agent_name: Option<String>,
}

/// One charge that burned credits (a settle or a redeem that spent), as the ledger
/// recorded it. A replayed `agentRequestId` answers the first result and records
/// nothing, so the spends of one request id are its real charges.
///
/// ```
/// use nvm_payments::devserver::Spend;
/// let spend: Spend = serde_json::from_str(
///     r#"{"requestId":"r-1","planId":"7","holder":"0x1111111111111111111111111111111111111111","credits":"2","via":"settle"}"#,
/// ).unwrap();
/// assert_eq!(spend.request_id.as_deref(), Some("r-1"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spend {
    /// The `agentRequestId` sent with the charge (absent when none was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The plan charged.
    pub plan_id: PlanId,
    /// Whose credits were burned.
    pub holder: Address,
    /// Credits burned.
    pub credits: Credits,
    /// `settle` or `redeem`.
    pub via: String,
}

/// The idempotency store of settle and redeem, and every spend in order.
#[derive(Debug, Default)]
pub(crate) struct ChargeLog {
    settlements: HashMap<String, SettleResponse>,
    redemptions: HashMap<String, NvmApiResult>,
    /// Every charge that burned credits (settle, redeem), in order.
    spends: Vec<Spend>,
    /// v3 nonces already settled, per plan: a second settle is refused.
    spent_nonces: HashSet<(PlanId, String)>,
}

impl ChargeLog {
    /// Every charge that burned credits so far, in order.
    pub(crate) fn spends(&self) -> &[Spend] {
        &self.spends
    }
}

impl Ledger {
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
        if let Some(done) = self.charges.redemptions.get(agent_request_id) {
            return Ok(done.clone());
        }
        let plan = self.registry.plan(plan_id)?;
        let may_redeem = &plan.owner == caller || self.registry.owns_an_agent_of(caller, plan_id);
        if !may_redeem {
            return Err(forbidden(
                "BCK.PROTOCOL.0012",
                "Only the owner of the plan or of an agent linked to it can redeem its credits",
            ));
        }
        let burned = self.charge_amount(plan_id, redeem_from, requested, now)?;
        self.holdings.spend(plan_id, redeem_from, burned, now)?;
        self.charges.spends.push(Spend {
            request_id: Some(agent_request_id.to_owned()).filter(|id| !id.is_empty()),
            plan_id: plan_id.clone(),
            holder: redeem_from.clone(),
            credits: burned,
            via: "redeem".to_owned(),
        });
        let result = NvmApiResult {
            data: Some(json!({ "creditsBurned": burned.to_string() })),
            ..NvmApiResult::ok(new_tx_hash())
        };
        if !agent_request_id.is_empty() {
            self.charges
                .redemptions
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
        let plan = self.registry.plan(plan_id)?;
        let time_access = self.holdings.time_access(plan_id, holder, now);
        Ok(if plan.is_time() && time_access {
            Credits::ZERO
        } else {
            plan.credits.redemption_amount(requested)
        })
    }

    /// The checks of verify and settle (docs/wire-notes.md §6.5): plan, agent, balance.
    pub(crate) fn check_charge(
        &self,
        charge: &Charge<'_>,
        now: u64,
    ) -> Result<CheckedCharge, InvalidReason> {
        if self.registry.plan(charge.plan_id).is_err() {
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
            match self.registry.agent(agent_id) {
                Ok(a) if a.plans.contains(charge.plan_id) => {
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
        if let Some(done) = agent_request_id.and_then(|id| self.charges.settlements.get(id)) {
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
        // After the idempotency lookup: a retry of the settle that spent the token is
        // answered as before, any other settle of it is refused (payments #428).
        let single_use = charge.nonce.map(|n| (charge.plan_id.clone(), n.to_owned()));
        if single_use
            .as_ref()
            .is_some_and(|key| self.charges.spent_nonces.contains(key))
        {
            // As tests/support/layer_mock.rs answers it: a 200 refusal naming the code.
            return SettleResponse {
                success: false,
                error_reason: Some(format!(
                    "{TOKEN_ALREADY_USED}: x402 access token already used"
                )),
                payer: Some(charge.payer.clone()),
                transaction: String::new(),
                network: network.to_owned(),
                credits_redeemed: None,
                remaining_balance: None,
                order_tx: None,
            };
        }
        let checked = match self.check_charge(charge, now) {
            Ok(c) => c,
            Err(reason) => return failed(reason),
        };
        if self
            .holdings
            .spend(charge.plan_id, charge.payer, checked.amount, now)
            .is_err()
        {
            return failed(InvalidReason::InsufficientBalance);
        }
        self.charges.spends.push(Spend {
            request_id: agent_request_id
                .filter(|id| !id.is_empty())
                .map(str::to_owned),
            plan_id: charge.plan_id.clone(),
            holder: charge.payer.clone(),
            credits: checked.amount,
            via: "settle".to_owned(),
        });
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
            self.charges
                .settlements
                .insert(id.to_owned(), response.clone());
        }
        if let Some(key) = single_use {
            self.charges.spent_nonces.insert(key);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{addr, c, credits_plan};
    use super::*;
    use crate::types::get_dynamic_credits_config;

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
            nonce: None,
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
}
