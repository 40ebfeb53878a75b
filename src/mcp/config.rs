//! [`McpPaymentsBuilder`]: the prices of an MCP server, checked once by `build()`.

use std::collections::HashMap;
use std::fmt;

use super::credential::PAYMENT_SIGNATURE;
use super::paywall::McpPayments;
use super::price::Price;
use crate::layer::{ConfigError, Gate, PaymentLayerBuilder};
use crate::types::Credits;

/// The server name of the logical URLs when none is set (payments-py's default).
const DEFAULT_SERVER_NAME: &str = "mcp-server";

/// Builds [`McpPayments`]; start from [`McpPayments::builder`].
#[must_use]
pub struct McpPaymentsBuilder {
    layer: PaymentLayerBuilder,
    server_name: String,
    tools: HashMap<String, Price>,
    prompts: HashMap<String, Credits>,
    resources: HashMap<String, Credits>,
}

impl fmt::Debug for McpPaymentsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpPaymentsBuilder")
            .field("layer", &self.layer)
            .field("server_name", &self.server_name)
            .field("tools", &self.tools)
            .field("prompts", &self.prompts)
            .field("resources", &self.resources)
            .finish()
    }
}

impl McpPaymentsBuilder {
    pub(crate) fn new(layer: PaymentLayerBuilder) -> Self {
        McpPaymentsBuilder {
            layer,
            server_name: DEFAULT_SERVER_NAME.to_owned(),
            tools: HashMap::new(),
            prompts: HashMap::new(),
            resources: HashMap::new(),
        }
    }

    /// The `{server}` of the logical URLs `mcp://{server}/tools/{name}` that calls are
    /// verified and settled for (default `mcp-server`). Use the name the SDKs' servers
    /// selling the same agent use, so tokens bound to a resource match.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = name.into();
        self
    }

    /// Prices the tool `name` (a tool not priced is free).
    pub fn tool(mut self, name: impl Into<String>, price: impl Into<Price>) -> Self {
        self.tools.insert(name.into(), price.into());
        self
    }

    /// Prices the prompt `name` (`prompts/get`).
    pub fn prompt(mut self, name: impl Into<String>, credits: impl Into<Credits>) -> Self {
        self.prompts.insert(name.into(), credits.into());
        self
    }

    /// Prices the resource `uri` (`resources/read` of exactly this URI).
    pub fn resource(mut self, uri: impl Into<String>, credits: impl Into<Credits>) -> Self {
        self.resources.insert(uri.into(), credits.into());
        self
    }

    /// Checks the prices and the layer options and builds the paywall.
    pub fn build(self) -> Result<McpPayments, ConfigError> {
        let bad = |field, reason| Err(ConfigError { field, reason });
        if self.server_name.is_empty() || self.server_name.contains(['/', '?', '#']) {
            return bad("server_name", "must be non-empty, without '/', '?' or '#'");
        }
        if self.tools.is_empty() && self.prompts.is_empty() && self.resources.is_empty() {
            return bad("tool", "price at least one tool, prompt or resource");
        }
        if self.tools.values().any(Price::is_never_charged) {
            return bad(
                "tool",
                "a price must be at least 1 credit (leave free tools unpriced)",
            );
        }
        if self
            .prompts
            .values()
            .chain(self.resources.values())
            .any(Credits::is_zero)
        {
            return bad("prompt", "a price must be at least 1 credit");
        }
        // The gate reads the credential this crate picked from the call (mcp/credential.rs).
        let (backend, config) = self.layer.token_headers([PAYMENT_SIGNATURE]).checked()?;
        Ok(McpPayments::from_parts(
            Gate::new(backend, config),
            self.server_name,
            self.tools,
            self.prompts,
            self.resources,
        ))
    }
}
