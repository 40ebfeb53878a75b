//! The plans handle: balances, orders, mint, burn, redeem, registration.

use http::Method;
use rand::Rng;

use super::transport::Auth;
use super::{Error, Payments};
use crate::types::{
    AccessLimit, Address, AgentList, BurnRequest, Credits, FiatPaymentRequest, FiatPaymentResponse,
    MintExpirableRequest, MintRequest, NvmApiResult, Plan, PlanBalance, PlanCreditsConfig, PlanId,
    PlanList, PlanMetadata, PlanPriceConfig, RedeemRequest, RegisterPlanRequest,
    RegisterPlanResponse, StripeCheckoutResult,
};

/// Plan operations, borrowed from [`Payments::plans`].
#[derive(Debug, Clone, Copy)]
pub struct Plans<'a> {
    pub(crate) payments: &'a Payments,
}

/// One page of a listing: 1-based page number and page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// 1-based page number.
    pub page: u32,
    /// Items per page.
    pub size: u32,
}

impl Default for Page {
    fn default() -> Self {
        Page { page: 1, size: 10 }
    }
}

impl Page {
    fn query(self) -> String {
        // Both SDKs' names for the page size, so either backend spelling is served.
        format!(
            "page={}&offset={}&pageSize={}",
            self.page, self.size, self.size
        )
    }
}

/// Order of a listing (`sortOrder`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortOrder {
    /// `asc`.
    Asc,
    /// `desc` (the SDKs' default).
    Desc,
}

impl SortOrder {
    fn as_str(self) -> &'static str {
        match self {
            SortOrder::Asc => "asc",
            SortOrder::Desc => "desc",
        }
    }
}

/// Options of a listing: the page, and the SDKs' `sortBy`, `sortOrder` and `orgId`
/// (wire-spec §3.1). Unset options are left out of the query, so the backend's
/// defaults apply. A [`Page`] converts into options with nothing else set.
///
/// ```
/// use nvm_payments::client::{ListOptions, Page, SortOrder};
/// let opts = ListOptions::from(Page { page: 2, size: 20 })
///     .sort_by("created")
///     .sort_order(SortOrder::Asc)
///     .org_id("org 1");
/// assert_eq!(opts.page.page, 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Page number and size.
    pub page: Page,
    /// Field to sort by (`created`, …).
    pub sort_by: Option<String>,
    /// Sort order.
    pub sort_order: Option<SortOrder>,
    /// Organisation whose items to list (user listings only).
    pub org_id: Option<String>,
}

impl From<Page> for ListOptions {
    fn from(page: Page) -> Self {
        ListOptions {
            page,
            ..Default::default()
        }
    }
}

impl ListOptions {
    /// Sorts by `field`.
    #[must_use]
    pub fn sort_by(mut self, field: impl Into<String>) -> Self {
        self.sort_by = Some(field.into());
        self
    }

    /// Sorts in `order`.
    #[must_use]
    pub fn sort_order(mut self, order: SortOrder) -> Self {
        self.sort_order = Some(order);
        self
    }

    /// Lists an organisation's items (`orgId`).
    #[must_use]
    pub fn org_id(mut self, org: impl Into<String>) -> Self {
        self.org_id = Some(org.into());
        self
    }

    /// The query string; `orgId` only where the SDKs send it (the caller's own plans
    /// and agents).
    pub(crate) fn query(&self, with_org: bool) -> String {
        let mut q = self.page.query();
        if let Some(field) = &self.sort_by {
            q.push_str("&sortBy=");
            q.push_str(&encode_query_value(field));
        }
        if let Some(order) = self.sort_order {
            q.push_str("&sortOrder=");
            q.push_str(order.as_str());
        }
        if let (true, Some(org)) = (with_org, &self.org_id) {
            q.push_str("&orgId=");
            q.push_str(&encode_query_value(org));
        }
        q
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn encode_query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Plans<'_> {
    fn transport(&self) -> &super::transport::Transport {
        self.payments.transport()
    }

    /// A holder's balance of a plan: the caller's own when `holder` is `None`.
    pub async fn get_plan_balance(
        self,
        plan_id: &PlanId,
        holder: Option<&Address>,
    ) -> Result<PlanBalance, Error> {
        let holder = holder.unwrap_or(self.payments.account_address());
        let path = format!("/api/v1/protocol/plans/{plan_id}/balance/{holder}");
        self.transport()
            .call::<(), _>(Method::GET, &path, None, Auth::Public)
            .await
    }

    /// The plan object.
    pub async fn get_plan(self, plan_id: &PlanId) -> Result<Plan, Error> {
        let path = format!("/api/v1/protocol/plans/{plan_id}");
        self.transport()
            .call::<(), _>(Method::GET, &path, None, Auth::Public)
            .await
    }

    /// The caller's own plans (or an organisation's, with
    /// [`ListOptions::org_id`]). Takes a [`Page`] or [`ListOptions`].
    pub async fn get_plans(self, options: impl Into<ListOptions>) -> Result<PlanList, Error> {
        let path = format!("/api/v1/protocol/plans?{}", options.into().query(true));
        self.transport()
            .call::<(), _>(Method::GET, &path, None, Auth::Key)
            .await
    }

    /// Agents that a plan gives access to. Takes a [`Page`] or [`ListOptions`]
    /// (`orgId` is not sent here).
    pub async fn get_plan_agents(
        self,
        plan_id: &PlanId,
        options: impl Into<ListOptions>,
    ) -> Result<AgentList, Error> {
        let path = format!(
            "/api/v1/protocol/plans/{plan_id}/agents?{}",
            options.into().query(false)
        );
        self.transport()
            .call::<(), _>(Method::GET, &path, None, Auth::Public)
            .await
    }

    /// Orders (buys) a plan with crypto, paying from the caller's wallet.
    /// Never retried: a lost answer means the outcome is unknown (check the balance).
    pub async fn order_plan(self, plan_id: &PlanId) -> Result<NvmApiResult, Error> {
        let path = format!("/api/v1/protocol/plans/{plan_id}/order");
        self.transport()
            .call::<(), _>(Method::POST, &path, None, Auth::Key)
            .await
    }

    /// Starts a fiat (Stripe) checkout: open `checkout_link` to pay.
    pub async fn order_fiat_plan(self, plan_id: &PlanId) -> Result<StripeCheckoutResult, Error> {
        let body = FiatPaymentRequest {
            plan_id: plan_id.clone(),
            session_type: "embedded".to_owned(),
        };
        let resp: FiatPaymentResponse = self
            .transport()
            .call(
                Method::POST,
                "/api/v1/fiat/stripe/payment",
                Some(&body),
                Auth::Key,
            )
            .await?;
        Ok(resp.result)
    }

    /// Adds credits to `credits_receiver` (plan owner only).
    pub async fn mint_plan_credits(
        self,
        plan_id: &PlanId,
        credits_amount: Credits,
        credits_receiver: &Address,
    ) -> Result<NvmApiResult, Error> {
        let body = MintRequest {
            plan_id: plan_id.clone(),
            amount: credits_amount,
            credits_receiver: credits_receiver.clone(),
        };
        self.transport()
            .call(
                Method::POST,
                "/api/v1/protocol/plans/mint",
                Some(&body),
                Auth::Key,
            )
            .await
    }

    /// Adds credits that lapse after `credits_duration` seconds (plan owner only).
    pub async fn mint_plan_expirable(
        self,
        plan_id: &PlanId,
        credits_amount: Credits,
        credits_receiver: &Address,
        credits_duration: u64,
    ) -> Result<NvmApiResult, Error> {
        let body = MintExpirableRequest {
            plan_id: plan_id.clone(),
            credits_amount,
            credits_receiver: credits_receiver.clone(),
            credits_duration,
        };
        self.transport()
            .call(
                Method::POST,
                "/api/v1/protocol/plans/mintExpirable",
                Some(&body),
                Auth::Key,
            )
            .await
    }

    /// Burns credits from the caller's own balance of a plan.
    pub async fn burn_credits(
        self,
        plan_id: &PlanId,
        credits_amount: Credits,
    ) -> Result<NvmApiResult, Error> {
        let body = BurnRequest {
            plan_id: plan_id.clone(),
            credits_amount,
        };
        self.transport()
            .call(
                Method::POST,
                "/api/v1/protocol/plans/burn",
                Some(&body),
                Auth::Key,
            )
            .await
    }

    /// Spends `credits_amount` of `redeem_from`'s credits for one agent request. The
    /// `agent_request_id` is the idempotency key: the same id never spends twice.
    ///
    /// The hosted backend no longer mounts this route (it answers 404, docs/wire-notes.md §3.7);
    /// there, charge with [`X402::settle_permissions`](super::X402::settle_permissions).
    pub async fn redeem_credits(
        self,
        agent_request_id: &str,
        plan_id: &PlanId,
        redeem_from: &Address,
        credits_amount: Credits,
    ) -> Result<NvmApiResult, Error> {
        if agent_request_id.is_empty() {
            return Err(Error::InvalidArgument {
                field: "agent_request_id",
                reason: "must not be empty".to_owned(),
            });
        }
        let body = RedeemRequest {
            agent_request_id: agent_request_id.to_owned(),
            plan_id: plan_id.clone(),
            redeem_from: redeem_from.clone(),
            amount: Some(credits_amount),
            batch: None,
            margin_percent: None,
        };
        self.transport()
            .call(
                Method::POST,
                "/api/v1/protocol/plans/redeem",
                Some(&body),
                Auth::Key,
            )
            .await
    }

    /// Registers a credits plan: each order grants `credits_config.amount` credits.
    pub async fn register_credits_plan(
        self,
        metadata: PlanMetadata,
        price: PlanPriceConfig,
        credits: PlanCreditsConfig,
    ) -> Result<PlanId, Error> {
        check_credits_plan(&credits)?;
        self.register(metadata, price, credits, AccessLimit::Credits)
            .await
    }

    /// Registers a time plan: each order grants access for `credits_config.duration_secs`.
    pub async fn register_time_plan(
        self,
        metadata: PlanMetadata,
        price: PlanPriceConfig,
        credits: PlanCreditsConfig,
    ) -> Result<PlanId, Error> {
        check_time_plan(&credits)?;
        self.register(metadata, price, credits, AccessLimit::Time)
            .await
    }

    /// Registers a credits trial plan (orderable once per subscriber).
    pub async fn register_credits_trial_plan(
        self,
        metadata: PlanMetadata,
        price: PlanPriceConfig,
        credits: PlanCreditsConfig,
    ) -> Result<PlanId, Error> {
        let metadata = PlanMetadata {
            is_trial_plan: true,
            ..metadata
        };
        self.register_credits_plan(metadata, price, credits).await
    }

    /// Registers a time trial plan (orderable once per subscriber).
    pub async fn register_time_trial_plan(
        self,
        metadata: PlanMetadata,
        price: PlanPriceConfig,
        credits: PlanCreditsConfig,
    ) -> Result<PlanId, Error> {
        let metadata = PlanMetadata {
            is_trial_plan: true,
            ..metadata
        };
        self.register_time_plan(metadata, price, credits).await
    }

    async fn register(
        self,
        metadata: PlanMetadata,
        price: PlanPriceConfig,
        credits: PlanCreditsConfig,
        access_limit: AccessLimit,
    ) -> Result<PlanId, Error> {
        let body = register_plan_body(metadata, price, credits, access_limit);
        let resp: RegisterPlanResponse = self
            .transport()
            .call(
                Method::POST,
                "/api/v1/protocol/plans",
                Some(&body),
                Auth::Key,
            )
            .await?;
        Ok(resp.plan_id)
    }
}

/// The body the SDKs send to register a plan, with a fresh 128-bit nonce.
pub(crate) fn register_plan_body(
    metadata: PlanMetadata,
    price: PlanPriceConfig,
    credits: PlanCreditsConfig,
    access_limit: AccessLimit,
) -> RegisterPlanRequest {
    let nonce: u128 = rand::thread_rng().gen();
    RegisterPlanRequest {
        is_trial_plan: metadata.is_trial_plan,
        currency: price.currency.clone(),
        metadata_attributes: metadata,
        price_config: price,
        credits_config: credits,
        nonce: Some(Credits::from(nonce)),
        access_limit: Some(access_limit),
    }
}

pub(crate) fn check_credits_plan(credits: &PlanCreditsConfig) -> Result<(), Error> {
    if credits.duration_secs != 0 {
        return Err(Error::InvalidArgument {
            field: "credits_config.duration_secs",
            reason: "must be 0 for a credits plan (use register_time_plan)".to_owned(),
        });
    }
    if credits.min_amount > credits.max_amount {
        return Err(Error::InvalidArgument {
            field: "credits_config.min_amount",
            reason: format!(
                "{} is greater than max_amount {}",
                credits.min_amount, credits.max_amount
            ),
        });
    }
    Ok(())
}

pub(crate) fn check_time_plan(credits: &PlanCreditsConfig) -> Result<(), Error> {
    if credits.duration_secs == 0 {
        return Err(Error::InvalidArgument {
            field: "credits_config.duration_secs",
            reason: "must be greater than 0 for a time plan".to_owned(),
        });
    }
    if credits.is_redemption_amount_fixed {
        return Err(Error::InvalidArgument {
            field: "credits_config.is_redemption_amount_fixed",
            reason: "must be false for a time plan".to_owned(),
        });
    }
    Ok(())
}
