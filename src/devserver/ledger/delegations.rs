//! Spending delegations: recorded and listed, not enforced.

use crate::types::Address;

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

/// Every delegation, in creation order.
#[derive(Debug, Default)]
pub(crate) struct Delegations {
    all: Vec<Delegation>,
}

impl Delegations {
    pub(crate) fn add(&mut self, delegation: Delegation) {
        self.all.push(delegation);
    }

    pub(crate) fn of(&self, owner: &Address) -> Vec<Delegation> {
        self.all
            .iter()
            .filter(|d| &d.owner == owner)
            .cloned()
            .collect()
    }
}
