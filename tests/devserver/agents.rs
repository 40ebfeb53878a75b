//! Devserver agents over loopback HTTP: register, agent+plan, get, update, list,
//! plans of an agent, agents of a plan, link and unlink.
#![cfg(feature = "devserver")]

use crate::support::devserver_world::{api_code, c, expect_envelope, http, World};
use nvm_payments::client::Page;
use nvm_payments::types::{AgentApiAttributes, AgentMetadata, PlanMetadata};
use nvm_payments::{get_fixed_credits_config, get_free_price_config, Endpoint};
use serde_json::{json, Value};

#[tokio::test]
async fn register_get_update_and_list_agents() {
    let w = World::new().await;
    let plan = w.free_plan(get_fixed_credits_config(c(10), c(1))).await;
    let owner = w.server.payments(&w.builder);
    let api = AgentApiAttributes::with_endpoints(vec![Endpoint::new(
        "post",
        "https://agent.example/ask",
    )]);
    let agent = owner
        .agents()
        .register_agent(AgentMetadata::named("helper"), api, vec![plan.clone()])
        .await
        .unwrap();
    assert!(agent.as_str().len() >= 70);

    let got = owner.agents().get_agent(&agent).await.unwrap();
    assert_eq!(got.id, agent);
    assert_eq!(got.registry.owner, w.builder.address);
    assert_eq!(got.registry.plans, vec![plan.clone()]);
    assert_eq!(got.metadata.main.name, "helper");
    let raw: Value = http()
        .get(w.url(&format!("/api/v1/protocol/agents/{agent}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        raw["metadata"]["agent"]["endpoints"],
        json!([{"POST": "https://agent.example/ask"}])
    );

    let plans = owner
        .agents()
        .get_agent_plans(&agent, Page::default())
        .await
        .unwrap();
    assert_eq!(plans.total, 1);
    assert_eq!(plans.plans[0].id, plan);
    let raw: Value = http()
        .get(w.url(&format!("/api/v1/protocol/agents/{agent}/plans")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(raw["plans"][0]["id"], plan.as_str());

    let of_plan = owner
        .plans()
        .get_plan_agents(&plan, Page::default())
        .await
        .unwrap();
    assert_eq!(of_plan.agents.len(), 1);
    assert_eq!(of_plan.agents[0].id, agent);

    // Update: owner only.
    let update = json!({"metadataAttributes": {"name": "renamed"}, "agentApiAttributes": {"endpoints": [{"verb": "GET", "url": "https://agent.example/v2"}]}});
    let resp = http()
        .put(w.url(&format!("/api/v1/protocol/agents/{agent}")))
        .bearer_auth(w.builder.api_key.expose())
        .json(&update)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = owner.agents().get_agent(&agent).await.unwrap();
    assert_eq!(got.metadata.main.name, "renamed");
    assert_eq!(
        got.metadata.agent.unwrap().endpoints,
        vec![Endpoint::new("GET", "https://agent.example/v2")]
    );
    let resp = http()
        .put(w.url(&format!("/api/v1/protocol/agents/{agent}")))
        .bearer_auth(w.subscriber.api_key.expose())
        .json(&update)
        .send()
        .await
        .unwrap();
    expect_envelope(resp, 403, "BCK.PROTOCOL.0005").await;

    let mine: Value = http()
        .get(w.url("/api/v1/protocol/agents?page=1&offset=10"))
        .bearer_auth(w.builder.api_key.expose())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mine["total"], 1);
    assert_eq!(mine["agents"][0]["id"], agent.as_str());

    let err = owner
        .agents()
        .get_agent(&"42".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some((404, "BCK.PROTOCOL.0003".into())));
}

#[tokio::test]
async fn register_agent_with_unknown_plan_fails() {
    let w = World::new().await;
    let err = w
        .server
        .payments(&w.builder)
        .agents()
        .register_agent(
            AgentMetadata::named("x"),
            Default::default(),
            vec!["123".parse().unwrap()],
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some((404, "BCK.PROTOCOL.0002".into())));
}

#[tokio::test]
async fn register_agent_and_plan_together() {
    let w = World::new().await;
    let owner = w.server.payments(&w.builder);
    let created = owner
        .agents()
        .register_agent_and_plan(
            AgentMetadata::named("bundle"),
            Default::default(),
            PlanMetadata::named("bundle plan"),
            get_free_price_config(),
            get_fixed_credits_config(c(5), c(1)),
        )
        .await
        .unwrap();
    assert!(created.tx_hash.unwrap().starts_with("0x"));
    let agent = owner
        .agents()
        .get_agent(&created.data.agent_id)
        .await
        .unwrap();
    assert_eq!(agent.registry.plans, vec![created.data.plan_id.clone()]);
    let plan = owner.plans().get_plan(&created.data.plan_id).await.unwrap();
    assert_eq!(plan.metadata.main.name, "bundle plan");
}

#[tokio::test]
async fn link_and_unlink_plans() {
    let w = World::new().await;
    let owner = w.server.payments(&w.builder);
    let a = w.free_plan(get_fixed_credits_config(c(1), c(1))).await;
    let b = w.free_plan(get_fixed_credits_config(c(1), c(1))).await;
    let agent = owner
        .agents()
        .register_agent(
            AgentMetadata::named("x"),
            Default::default(),
            vec![a.clone()],
        )
        .await
        .unwrap();

    let linked = owner.agents().add_plan_to_agent(&b, &agent).await.unwrap();
    assert!(linked.success);
    owner.agents().add_plan_to_agent(&b, &agent).await.unwrap();
    assert_eq!(
        owner
            .agents()
            .get_agent(&agent)
            .await
            .unwrap()
            .registry
            .plans,
        vec![a.clone(), b.clone()]
    );

    owner
        .agents()
        .remove_plan_from_agent(&a, &agent)
        .await
        .unwrap();
    assert_eq!(
        owner
            .agents()
            .get_agent(&agent)
            .await
            .unwrap()
            .registry
            .plans,
        vec![b.clone()]
    );
    assert_eq!(
        owner
            .plans()
            .get_plan_agents(&a, Page::default())
            .await
            .unwrap()
            .agents
            .len(),
        0
    );

    let err = w
        .server
        .payments(&w.subscriber)
        .agents()
        .add_plan_to_agent(&a, &agent)
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some((403, "BCK.PROTOCOL.0005".into())));
    let err = owner
        .agents()
        .add_plan_to_agent(&"77".parse().unwrap(), &agent)
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some((404, "BCK.PROTOCOL.0002".into())));
}

#[tokio::test]
async fn client_lists_own_agents_and_updates_metadata() {
    let w = World::new().await;
    let plan = w.free_plan(get_fixed_credits_config(c(10), c(1))).await;
    let owner = w.server.payments(&w.builder);
    let agent = owner
        .agents()
        .register_agent(
            AgentMetadata::named("before"),
            AgentApiAttributes::default(),
            vec![plan.clone()],
        )
        .await
        .unwrap();
    let mine = owner.agents().get_agents(Page::default()).await.unwrap();
    assert_eq!(mine.total, 1);
    assert_eq!(mine.agents[0].id, agent);
    // Someone else's listing is empty.
    let other = w.server.payments(&w.subscriber);
    assert_eq!(
        other
            .agents()
            .get_agents(Page::default())
            .await
            .unwrap()
            .total,
        0
    );

    let api = AgentApiAttributes::with_endpoints(vec![Endpoint::new(
        "get",
        "https://agent.example/items/:id",
    )]);
    owner
        .agents()
        .update_agent_metadata(&agent, AgentMetadata::named("after"), api)
        .await
        .unwrap();
    let got = owner.agents().get_agent(&agent).await.unwrap();
    assert_eq!(got.metadata.main.name, "after");
    let endpoints = got.metadata.agent.expect("api attributes").endpoints;
    assert_eq!(
        endpoints,
        vec![Endpoint::new("GET", "https://agent.example/items/:id")]
    );
}
