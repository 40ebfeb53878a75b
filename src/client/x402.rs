//! The x402 handle: access tokens, the facilitator (verify, settle), `PaymentRequired`,
//! and the legacy bearer access token.

use http::Method;
use jsonwebtoken::jwk::JwkSet;

use super::transport::Auth;
use super::{Environment, Error, Payments};
use crate::types::{
    AccessToken, AgentAccessCredentials, AgentId, Credits, DelegationConfig, PaymentRequired,
    PaymentResource, PaymentScheme, PermissionsRequest, PermissionsResponse, PlanId, SchemeExtra,
    SettleRequest, SettleResponse, VerifyRequest, VerifyResponse, SCHEME_CARD_DELEGATION,
    SCHEME_ERC4337, X402_VERSION,
};

/// Where a backend serves the public keys of legacy bearer access tokens (a JWKS).
/// The devserver serves it; point the layer elsewhere if your issuer differs.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// x402 operations, borrowed from [`Payments::x402`].
#[derive(Debug, Clone, Copy)]
pub struct X402<'a> {
    pub(crate) payments: &'a Payments,
}

/// Optional parts of a [`PaymentRequired`] (the arguments of the SDKs'
/// `build_payment_required`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaymentRequiredOptions {
    /// The protected path or URL (`resource.url`).
    pub endpoint: Option<String>,
    /// The agent the route belongs to.
    pub agent_id: Option<AgentId>,
    /// The route's HTTP verb (upper-cased).
    pub http_verb: Option<String>,
    /// Network (default: from the environment, docs/wire-notes.md §6.1).
    pub network: Option<String>,
    /// Resource description.
    pub description: Option<String>,
    /// Response MIME type.
    pub mime_type: Option<String>,
    /// Scheme (default `nvm:erc4337`).
    pub scheme: Option<String>,
}

/// Options of [`X402::get_x402_access_token_for`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct X402TokenOptions {
    /// The agent the token is for.
    pub agent_id: Option<AgentId>,
    /// Scheme (default `nvm:erc4337`).
    pub scheme: Option<String>,
    /// Network (default: from the scheme and environment, wire-spec §6.1).
    pub network: Option<String>,
    /// The delegation to spend through (`delegationConfig`).
    pub delegation: Option<DelegationConfig>,
    /// `2` or `3` (`tokenVersion`); left out, the backend mints v2.
    pub token_version: Option<u8>,
    /// The URL a v3 token is bound to (top-level `resource.url`).
    pub resource_url: Option<String>,
    /// The verb a v3 token is bound to (`accepted.extra.httpVerb`, upper-cased).
    pub http_verb: Option<String>,
}

impl X402TokenOptions {
    fn into_request(
        self,
        plan_id: &PlanId,
        environment: Environment,
    ) -> Result<PermissionsRequest, Error> {
        let scheme = self.scheme.unwrap_or_else(|| SCHEME_ERC4337.to_owned());
        if let Some(v) = self.token_version.filter(|v| !matches!(v, 2 | 3)) {
            return Err(Error::InvalidArgument {
                field: "token_version",
                reason: format!("{v} is not a token version the backend mints (2 or 3)"),
            });
        }
        match &self.delegation {
            Some(d)
                if d.delegation_id
                    .as_deref()
                    .is_some_and(|id| id.trim().is_empty()) =>
            {
                return Err(Error::InvalidArgument {
                    field: "delegation.delegation_id",
                    reason: "must not be blank".to_owned(),
                });
            }
            None if scheme == SCHEME_CARD_DELEGATION => {
                return Err(Error::InvalidArgument {
                    field: "delegation",
                    reason: "a nvm:card-delegation token needs a delegation (create one with delegations().create_delegation)".to_owned(),
                });
            }
            _ => {}
        }
        let network = self.network.unwrap_or_else(|| {
            if scheme == SCHEME_ERC4337 {
                environment.default_network().to_owned()
            } else {
                "stripe".to_owned()
            }
        });
        Ok(PermissionsRequest {
            accepted: PaymentScheme {
                scheme,
                network,
                plan_id: plan_id.clone(),
                extra: Some(SchemeExtra {
                    version: None,
                    agent_id: self.agent_id,
                    http_verb: self.http_verb.map(|v| v.to_ascii_uppercase()),
                }),
            },
            delegation_config: self.delegation,
            resource: self.resource_url.map(|url| PaymentResource {
                url,
                ..Default::default()
            }),
            token_version: self.token_version,
        })
    }
}

/// Builds the official `PaymentRequired` for one or more plans (one `accepts[]` entry
/// each), as `build_payment_required` / `build_payment_required_for_plans` do.
///
/// ```
/// use nvm_payments::client::{build_payment_required, Environment, PaymentRequiredOptions};
/// let plan = "123".parse().unwrap();
/// let pr = build_payment_required(&[plan], Environment::Custom, &PaymentRequiredOptions {
///     endpoint: Some("/ask".into()), http_verb: Some("post".into()), ..Default::default()
/// });
/// assert_eq!(serde_json::to_string(&pr).unwrap(),
///   r#"{"x402Version":2,"resource":{"url":"/ask"},"accepts":[{"scheme":"nvm:erc4337","network":"eip155:84532","planId":"123","extra":{"version":"1","httpVerb":"POST"}}],"extensions":{}}"#);
/// ```
pub fn build_payment_required(
    plan_ids: &[PlanId],
    environment: Environment,
    options: &PaymentRequiredOptions,
) -> PaymentRequired {
    let scheme = options
        .scheme
        .clone()
        .unwrap_or_else(|| SCHEME_ERC4337.to_owned());
    let network = options.network.clone().unwrap_or_else(|| {
        if scheme == SCHEME_ERC4337 {
            environment.default_network().to_owned()
        } else {
            "stripe".to_owned()
        }
    });
    let extra = SchemeExtra {
        version: Some("1".to_owned()),
        agent_id: options.agent_id.clone(),
        http_verb: options.http_verb.as_ref().map(|v| v.to_ascii_uppercase()),
    };
    PaymentRequired {
        x402_version: X402_VERSION,
        error: None,
        resource: PaymentResource {
            url: options.endpoint.clone().unwrap_or_default(),
            description: options.description.clone(),
            mime_type: options.mime_type.clone(),
        },
        accepts: plan_ids
            .iter()
            .map(|plan_id| PaymentScheme {
                scheme: scheme.clone(),
                network: network.clone(),
                plan_id: plan_id.clone(),
                extra: Some(extra.clone()),
            })
            .collect(),
        extensions: Default::default(),
    }
}

impl X402<'_> {
    fn transport(&self) -> &super::transport::Transport {
        self.payments.transport()
    }

    /// Mints an x402 access token for the caller (a subscriber) to pay with `plan_id`,
    /// optionally bound to one agent. Send it in the `payment-signature` header.
    pub async fn get_x402_access_token(
        self,
        plan_id: &PlanId,
        agent_id: Option<&AgentId>,
    ) -> Result<PermissionsResponse, Error> {
        let body = PermissionsRequest {
            accepted: PaymentScheme {
                scheme: SCHEME_ERC4337.to_owned(),
                network: self.payments.environment().default_network().to_owned(),
                plan_id: plan_id.clone(),
                extra: Some(SchemeExtra {
                    agent_id: agent_id.cloned(),
                    ..Default::default()
                }),
            },
            delegation_config: None,
            resource: None,
            token_version: None,
        };
        self.get_x402_access_token_with(&body).await
    }

    /// Mints an x402 access token with the SDKs' newer options: a delegation (sent as
    /// `delegationConfig`; required for `nvm:card-delegation`, as the TypeScript SDK
    /// and the hosted backend require it), the token version, and for v3 tokens the
    /// resource URL and HTTP verb the token is bound to (wire-spec §6.2).
    ///
    /// ```no_run
    /// # async fn run(p: nvm_payments::Payments, plan: nvm_payments::PlanId) -> Result<(), nvm_payments::client::Error> {
    /// use nvm_payments::client::X402TokenOptions;
    /// let token = p.x402().get_x402_access_token_for(&plan, X402TokenOptions {
    ///     token_version: Some(3),
    ///     resource_url: Some("https://agent.example/ask".into()),
    ///     http_verb: Some("post".into()),
    ///     ..Default::default()
    /// }).await?;
    /// # let _ = token; Ok(()) }
    /// ```
    pub async fn get_x402_access_token_for(
        self,
        plan_id: &PlanId,
        options: X402TokenOptions,
    ) -> Result<PermissionsResponse, Error> {
        let body = options.into_request(plan_id, self.payments.environment())?;
        self.get_x402_access_token_with(&body).await
    }

    /// Mints an x402 access token from a full permissions request (scheme, network,
    /// delegation).
    pub async fn get_x402_access_token_with(
        self,
        request: &PermissionsRequest,
    ) -> Result<PermissionsResponse, Error> {
        self.transport()
            .call(
                Method::POST,
                "/api/v1/x402/permissions",
                Some(request),
                Auth::Key,
            )
            .await
    }

    /// The `PaymentRequired` for one plan, with this client's environment.
    pub fn build_payment_required(
        self,
        plan_id: &PlanId,
        options: &PaymentRequiredOptions,
    ) -> PaymentRequired {
        build_payment_required(
            std::slice::from_ref(plan_id),
            self.payments.environment(),
            options,
        )
    }

    /// Asks the facilitator whether `token` may pay `max_amount` credits for the
    /// request described by `payment_required`. Never burns credits.
    pub async fn verify_permissions(
        self,
        payment_required: &PaymentRequired,
        token: &AccessToken,
        max_amount: Option<Credits>,
    ) -> Result<VerifyResponse, Error> {
        let body = VerifyRequest {
            payment_required: payment_required.clone(),
            x402_access_token: token.clone(),
            max_amount,
        };
        self.transport()
            .call(Method::POST, "/api/v1/x402/verify", Some(&body), Auth::Key)
            .await
    }

    /// Burns credits for a served request (the plan clamps the amount, docs/wire-notes.md §3.4).
    /// `agent_request_id` makes a retry idempotent. Never retried by the client.
    pub async fn settle_permissions(
        self,
        payment_required: &PaymentRequired,
        token: &AccessToken,
        max_amount: Option<Credits>,
        agent_request_id: Option<&str>,
    ) -> Result<SettleResponse, Error> {
        let body = SettleRequest {
            payment_required: payment_required.clone(),
            x402_access_token: token.clone(),
            max_amount,
            agent_request_id: agent_request_id.map(str::to_owned),
            batch: None,
            margin_percent: None,
        };
        self.transport()
            .call(Method::POST, "/api/v1/x402/settle", Some(&body), Auth::Key)
            .await
    }

    /// The legacy bearer access token (a JWT) for `plan_id` and `agent_id`
    /// (docs/wire-notes.md §5.1). Removed from the official SDKs; served by the devserver.
    pub async fn get_agent_access_token(
        self,
        plan_id: &PlanId,
        agent_id: &AgentId,
    ) -> Result<AgentAccessCredentials, Error> {
        let path = format!("/api/v1/protocol/token/{plan_id}/{agent_id}");
        self.transport()
            .call::<(), _>(Method::GET, &path, None, Auth::Key)
            .await
    }

    /// The issuer's public keys for legacy bearer tokens, from [`JWKS_PATH`].
    pub async fn get_access_token_jwks(self) -> Result<JwkSet, Error> {
        self.transport()
            .call::<(), _>(Method::GET, JWKS_PATH, None, Auth::Public)
            .await
    }
}
