//! The delegations handle (wire-spec §5.3): what a subscriber creates before minting
//! x402 tokens for fiat (`nvm:card-delegation`) plans. All calls use the caller's key.

use http::Method;

use super::transport::Auth;
use super::{Error, Payments};
use crate::types::{
    CreateDelegationRequest, CreateDelegationResponse, DelegationSummary, PaymentMethod,
};

/// Delegation operations, borrowed from [`Payments::delegations`].
#[derive(Debug, Clone, Copy)]
pub struct Delegations<'a> {
    pub(crate) payments: &'a Payments,
}

impl Delegations<'_> {
    fn transport(&self) -> &super::transport::Transport {
        self.payments.transport()
    }

    /// Creates a delegation; pass its id as
    /// [`DelegationConfig::existing`](crate::types::DelegationConfig::existing) when
    /// minting tokens. Never retried.
    pub async fn create_delegation(
        self,
        request: &CreateDelegationRequest,
    ) -> Result<CreateDelegationResponse, Error> {
        if request.provider.trim().is_empty() {
            return Err(Error::InvalidArgument {
                field: "provider",
                reason: "must not be empty".to_owned(),
            });
        }
        if request.currency.trim().is_empty() {
            return Err(Error::InvalidArgument {
                field: "currency",
                reason: "is required by the backend (usd, eur, usdc or eurc)".to_owned(),
            });
        }
        self.transport()
            .call(
                Method::POST,
                "/api/v1/delegation/create",
                Some(request),
                Auth::Key,
            )
            .await
    }

    /// The caller's delegations.
    pub async fn list_delegations(self) -> Result<Vec<DelegationSummary>, Error> {
        self.transport()
            .call::<(), _>(Method::GET, "/api/v1/delegation", None, Auth::Key)
            .await
    }

    /// The caller's saved payment methods, of one provider (`stripe`, …) or all.
    pub async fn list_payment_methods(
        self,
        provider: Option<&str>,
    ) -> Result<Vec<PaymentMethod>, Error> {
        let path = match provider {
            Some(p) => format!(
                "/api/v1/payment-methods?provider={}",
                super::plans::encode_query_value(p)
            ),
            None => "/api/v1/payment-methods".to_owned(),
        };
        self.transport()
            .call::<(), _>(Method::GET, &path, None, Auth::Key)
            .await
    }
}
