//! Fiat orders: a checkout session is opened, then completed once by the (fake)
//! payment, which grants the plan.

use std::collections::HashMap;

use http::StatusCode;

use super::Ledger;
use crate::devserver::error::ApiError;
use crate::types::{Address, PlanId};

/// A fiat checkout session waiting for its (fake) payment.
#[derive(Debug, Clone)]
pub(crate) struct Checkout {
    pub(crate) plan_id: PlanId,
    pub(crate) buyer: Address,
    pub(crate) completed: bool,
}

/// Checkout sessions by session id.
#[derive(Debug, Default)]
pub(crate) struct Checkouts {
    sessions: HashMap<String, Checkout>,
}

impl Ledger {
    /// Opens a fiat checkout session for a fiat plan.
    pub(crate) fn open_checkout(
        &mut self,
        plan_id: &PlanId,
        buyer: &Address,
        session_id: String,
    ) -> Result<(), ApiError> {
        let plan = self.registry.plan(plan_id)?;
        if plan.price.is_crypto {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "BCK.PROTOCOL.0010",
                "This plan is paid in crypto: order it with POST /api/v1/protocol/plans/{planId}/order",
            ));
        }
        self.holdings.check_trial(plan, buyer)?;
        self.checkouts.sessions.insert(
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
        let checkout = self
            .checkouts
            .sessions
            .get(session_id)
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "BCK.PROTOCOL.0011",
                    "Checkout session not found",
                )
            })?;
        if checkout.completed {
            return Ok((checkout, false));
        }
        let plan = self.registry.plan(&checkout.plan_id)?;
        self.holdings.check_trial(plan, &checkout.buyer)?;
        self.holdings.grant(plan, &checkout.buyer, now);
        if let Some(c) = self.checkouts.sessions.get_mut(session_id) {
            c.completed = true;
        }
        Ok((checkout, true))
    }
}
