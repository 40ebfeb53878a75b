//! What every holder has: plan credits (with expirable lots and time access), dev
//! wallet tokens, and which trials were ordered; orders, mint and burn move them.

use std::collections::{HashMap, HashSet};

use http::StatusCode;

use super::{Ledger, PlanRecord};
use crate::devserver::error::ApiError;
use crate::devserver::ids::new_tx_hash;
use crate::types::{Address, Credits, NvmApiResult, PlanBalance, PlanId};

/// What every dev wallet holds of every token until it spends: 10^24 base units.
pub const DEFAULT_TOKEN_BALANCE: Credits = Credits::from_u128(1_000_000_000_000_000_000_000_000);

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

/// Plan holdings, dev wallets and ordered trials.
#[derive(Debug, Default)]
pub(crate) struct Holdings {
    holdings: HashMap<(PlanId, Address), Holding>,
    wallets: HashMap<(Address, Address), Credits>,
    trials_ordered: HashSet<(PlanId, Address)>,
}

impl Holdings {
    fn holding(&self, plan_id: &PlanId, holder: &Address) -> Option<&Holding> {
        self.holdings.get(&(plan_id.clone(), holder.clone()))
    }

    /// Whether `holder`'s access to a time plan is active at `now`.
    pub(super) fn time_access(&self, plan_id: &PlanId, holder: &Address, now: u64) -> bool {
        self.holding(plan_id, holder)
            .is_some_and(|h| h.time_access(now))
    }

    /// A dev wallet's balance of `token`.
    pub(crate) fn token_balance(&self, holder: &Address, token: &Address) -> Credits {
        self.wallets
            .get(&(holder.clone(), token.clone()))
            .copied()
            .unwrap_or(DEFAULT_TOKEN_BALANCE)
    }

    /// Moves the plan's price from the buyer's dev wallet to its receivers; nothing
    /// moves if the buyer cannot pay.
    fn pay(&mut self, plan: &PlanRecord, buyer: &Address) -> Result<(), ApiError> {
        // Registration refuses a price without a token (validate_plan), so the zero
        // address here only stands in for a record made some other way.
        let token = plan
            .price
            .token_address
            .clone()
            .unwrap_or_else(Address::zero);
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
        Ok(())
    }

    /// A trial plan can be ordered once per buyer.
    pub(super) fn check_trial(&self, plan: &PlanRecord, buyer: &Address) -> Result<(), ApiError> {
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
    pub(super) fn grant(&mut self, plan: &PlanRecord, buyer: &Address, now: u64) {
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

    /// Adds minted credits; `expires_at` makes them an expirable lot.
    fn add(
        &mut self,
        plan_id: &PlanId,
        receiver: &Address,
        amount: Credits,
        expires_at: Option<u64>,
    ) {
        let holding = self
            .holdings
            .entry((plan_id.clone(), receiver.clone()))
            .or_default();
        match expires_at {
            Some(expires_at) => holding.lots.push(ExpirableLot { amount, expires_at }),
            None => holding.credits = holding.credits.saturating_add(amount),
        }
    }

    /// Spends `amount` of `holder`'s credits of a plan, all or nothing.
    pub(super) fn spend(
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
}

impl Ledger {
    /// The `PlanBalance` of any holder (unknown holders hold nothing).
    pub(crate) fn balance(
        &self,
        plan_id: &PlanId,
        holder: &Address,
        now: u64,
    ) -> Result<PlanBalance, ApiError> {
        let plan = self.registry.plan(plan_id)?;
        let holding = self.holdings.holding(plan_id, holder);
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

    /// Orders a crypto (or free) plan: moves the price from the buyer's dev wallet to
    /// the receivers and grants the plan.
    pub(crate) fn order(
        &mut self,
        plan_id: &PlanId,
        buyer: &Address,
        now: u64,
    ) -> Result<NvmApiResult, ApiError> {
        let plan = self.registry.plan(plan_id)?;
        if plan.is_fiat() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "BCK.PROTOCOL.0007",
                "This plan is paid in fiat: order it with POST /api/v1/fiat/stripe/payment",
            ));
        }
        self.holdings.check_trial(plan, buyer)?;
        self.holdings.pay(plan, buyer)?;
        self.holdings.grant(plan, buyer, now);
        Ok(NvmApiResult::ok(new_tx_hash()))
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
        self.registry.owned_plan(caller, plan_id)?;
        if amount.is_zero() {
            return Err(ApiError::validation(
                "the amount to mint must be greater than 0",
            ));
        }
        self.holdings.add(plan_id, receiver, amount, expires_at);
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
        self.registry.owned_plan(caller, plan_id)?;
        self.holdings.spend(plan_id, caller, amount, now)?;
        Ok(NvmApiResult::ok(new_tx_hash()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{addr, c, credits_plan};
    use super::*;
    use crate::types::{
        get_dynamic_credits_config, get_expirable_duration_config, get_fixed_credits_config,
        get_free_price_config, AccessLimit, PlanMetadata,
    };

    #[test]
    fn order_moves_tokens_and_grants_credits() {
        let mut l = Ledger::default();
        let (owner, buyer) = (addr(1), addr(2));
        let plan = credits_plan(&mut l, &owner, get_fixed_credits_config(c(100), c(1)));
        l.order(&plan, &buyer, 0).unwrap();
        assert_eq!(l.balance(&plan, &buyer, 0).unwrap().balance, c(100));
        let zero = Address::zero();
        assert_eq!(
            l.holdings.token_balance(&buyer, &zero),
            DEFAULT_TOKEN_BALANCE.saturating_sub(c(10))
        );
        assert_eq!(
            l.holdings.token_balance(&owner, &zero),
            DEFAULT_TOKEN_BALANCE.saturating_add(c(10))
        );
        l.holdings.wallets.insert((buyer.clone(), zero), c(3));
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
        l.holdings.spend(&plan, &h, c(7), 0).unwrap(); // 6 from the lot expiring at 50, 1 from 100
        assert_eq!(l.balance(&plan, &h, 60).unwrap().balance, c(13));
        assert_eq!(l.balance(&plan, &h, 100).unwrap().balance, c(10));
        assert!(l.mint(&h, &plan, c(1), &h, None).is_err());
    }

    #[test]
    fn time_plans_grant_access_until_expiry() {
        let mut l = Ledger::default();
        let owner = addr(1);
        let plan = l
            .registry
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
            .registry
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
