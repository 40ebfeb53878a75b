//! [`PaymentBackend`]: the calls the layer makes, as a trait so tests and benches can
//! put an in-process backend (or charge sink) where the network client would be.

use futures_util::future::BoxFuture;
use jsonwebtoken::jwk::JwkSet;

use crate::client::Error;
use crate::types::{
    AccessToken, Address, Credits, NvmApiResult, PaymentRequired, Plan, PlanBalance, PlanId,
    SettleResponse, VerifyResponse,
};
use crate::Payments;

/// The backend calls the payment layer needs. [`Payments`] implements it over HTTP.
pub trait PaymentBackend: Send + Sync + 'static {
    /// x402 facilitator verify (never burns).
    fn verify<'a>(
        &'a self,
        payment_required: &'a PaymentRequired,
        token: &'a AccessToken,
        max_amount: Option<Credits>,
    ) -> BoxFuture<'a, Result<VerifyResponse, Error>>;

    /// x402 facilitator settle (burns; idempotent by `agent_request_id`).
    fn settle<'a>(
        &'a self,
        payment_required: &'a PaymentRequired,
        token: &'a AccessToken,
        max_amount: Option<Credits>,
        agent_request_id: &'a str,
    ) -> BoxFuture<'a, Result<SettleResponse, Error>>;

    /// Legacy redeem (burns; idempotent by `agent_request_id`).
    fn redeem<'a>(
        &'a self,
        agent_request_id: &'a str,
        plan_id: &'a PlanId,
        redeem_from: &'a Address,
        amount: Credits,
    ) -> BoxFuture<'a, Result<NvmApiResult, Error>>;

    /// A holder's balance of a plan.
    fn plan_balance<'a>(
        &'a self,
        plan_id: &'a PlanId,
        holder: &'a Address,
    ) -> BoxFuture<'a, Result<PlanBalance, Error>>;

    /// The plan object (its credits config decides what a charge burns).
    fn plan<'a>(&'a self, plan_id: &'a PlanId) -> BoxFuture<'a, Result<Plan, Error>>;

    /// Public keys of legacy bearer access tokens.
    fn access_token_jwks(&self) -> BoxFuture<'_, Result<JwkSet, Error>>;
}

impl PaymentBackend for Payments {
    fn verify<'a>(
        &'a self,
        payment_required: &'a PaymentRequired,
        token: &'a AccessToken,
        max_amount: Option<Credits>,
    ) -> BoxFuture<'a, Result<VerifyResponse, Error>> {
        Box::pin(
            self.x402()
                .verify_permissions(payment_required, token, max_amount),
        )
    }

    fn settle<'a>(
        &'a self,
        payment_required: &'a PaymentRequired,
        token: &'a AccessToken,
        max_amount: Option<Credits>,
        agent_request_id: &'a str,
    ) -> BoxFuture<'a, Result<SettleResponse, Error>> {
        Box::pin(self.x402().settle_permissions(
            payment_required,
            token,
            max_amount,
            Some(agent_request_id),
        ))
    }

    fn redeem<'a>(
        &'a self,
        agent_request_id: &'a str,
        plan_id: &'a PlanId,
        redeem_from: &'a Address,
        amount: Credits,
    ) -> BoxFuture<'a, Result<NvmApiResult, Error>> {
        Box::pin(
            self.plans()
                .redeem_credits(agent_request_id, plan_id, redeem_from, amount),
        )
    }

    fn plan_balance<'a>(
        &'a self,
        plan_id: &'a PlanId,
        holder: &'a Address,
    ) -> BoxFuture<'a, Result<PlanBalance, Error>> {
        Box::pin(self.plans().get_plan_balance(plan_id, Some(holder)))
    }

    fn plan<'a>(&'a self, plan_id: &'a PlanId) -> BoxFuture<'a, Result<Plan, Error>> {
        Box::pin(self.plans().get_plan(plan_id))
    }

    fn access_token_jwks(&self) -> BoxFuture<'_, Result<JwkSet, Error>> {
        Box::pin(self.x402().get_access_token_jwks())
    }
}
