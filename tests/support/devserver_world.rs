//! Shared helpers for the devserver integration tests (all over loopback HTTP).
#![allow(dead_code)]

use nvm_payments::devserver::DevServer;
use nvm_payments::types::DevAccount;
use nvm_payments::types::{PlanCreditsConfig, PlanMetadata, PlanPriceConfig};
use nvm_payments::{get_free_price_config, get_native_token_price_config, Credits, PlanId};

pub fn c(n: u64) -> Credits {
    Credits::from(n)
}

/// A devserver with a plan builder and a subscriber.
pub struct World {
    pub server: DevServer,
    pub builder: DevAccount,
    pub subscriber: DevAccount,
}

impl World {
    pub async fn new() -> World {
        let server = DevServer::start().await.expect("devserver starts");
        let builder = server.create_account(Some("builder"));
        let subscriber = server.create_account(Some("subscriber"));
        World {
            server,
            builder,
            subscriber,
        }
    }

    pub async fn credits_plan(&self, price: PlanPriceConfig, credits: PlanCreditsConfig) -> PlanId {
        self.server
            .payments(&self.builder)
            .plans()
            .register_credits_plan(PlanMetadata::named("plan"), price, credits)
            .await
            .expect("plan registers")
    }

    pub async fn free_plan(&self, credits: PlanCreditsConfig) -> PlanId {
        self.credits_plan(get_free_price_config(), credits).await
    }

    pub async fn priced_plan(&self, price: u64, credits: PlanCreditsConfig) -> PlanId {
        let price = get_native_token_price_config(c(price), self.builder.address.clone());
        self.credits_plan(price, credits).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base_url())
    }

    pub async fn balance(&self, plan: &PlanId, who: &DevAccount) -> Credits {
        self.server
            .payments(who)
            .plans()
            .get_plan_balance(plan, None)
            .await
            .expect("balance")
            .balance
    }
}

/// A raw HTTP client for wire-shape and error cases.
pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Asserts an error envelope with this status and code; returns the body.
pub async fn expect_envelope(
    resp: reqwest::Response,
    status: u16,
    code: &str,
) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    let body: serde_json::Value = resp.json().await.expect("a JSON body");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["httpStatus"], status, "{body}");
    assert!(
        body["uuid"].as_str().is_some_and(|u| u.starts_with("e-")),
        "{body}"
    );
    assert!(body["date"].as_str().is_some(), "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

/// The client error's backend code, if it is an API error.
pub fn api_code(err: &nvm_payments::client::Error) -> Option<(u16, String)> {
    match err {
        nvm_payments::client::Error::Api(api) => Some((api.status.as_u16(), api.code.clone())),
        _ => None,
    }
}
