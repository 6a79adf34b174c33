//! Rate limits counted once across the cluster, not once per node.

use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::{ECHO, Nats, node};
use crate::binary::Binary;
use crate::support::sha256_hex;

/// Requests per second the key may make, cluster-wide.
const RATE: u64 = 20;
const HAMMERING: Duration = Duration::from_secs(10);

/// Asks `node` as fast as one client can until `until`; counts (200s, 429s).
async fn hammer(node: &Binary, until: Instant) -> (u64, u64) {
    let client = reqwest::Client::new();
    let (mut ok, mut limited) = (0, 0);
    while Instant::now() < until {
        let status = client
            .post(format!("{}/v1/chat/completions", node.base))
            .bearer_auth("sk-limited")
            .json(&json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        match status {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    (ok, limited)
}

#[tokio::test]
async fn a_key_limited_to_r_per_second_gets_r_per_second_through_three_nodes() {
    let nats = Nats::start().await;
    let config = format!(
        "{ECHO}\n[[auth.keys]]\nname = \"limited\"\nsha256 = \"{}\"\nrate_limit = {{ requests_per_second = {RATE}, burst = 2 }}\n",
        sha256_hex("sk-limited")
    );
    let nodes = [
        node(&nats, "a", &config).await,
        node(&nats, "b", &config).await,
        node(&nats, "c", &config).await,
    ];
    let until = Instant::now() + HAMMERING;
    // Two clients per node.
    let runs = nodes.iter().flat_map(|n| [hammer(n, until), hammer(n, until)]);
    let counts = futures_util::future::join_all(runs).await;
    let ok: u64 = counts.iter().map(|c| c.0).sum();
    let limited: u64 = counts.iter().map(|c| c.1).sum();
    let allowed = RATE * HAMMERING.as_secs();
    // Alone, each node would let the key have the whole rate: three times as many.
    assert!(
        ok.abs_diff(allowed) * 10 <= allowed,
        "{ok} answered (and {limited} refused) in {HAMMERING:?}; the cluster-wide limit allows {allowed}"
    );
    assert!(
        limited > ok,
        "the key was hammered well past its limit: {limited} refused"
    );
}

/// The cluster-wide token budget of sk-budget.
const BUDGET: u64 = 600;

#[tokio::test]
async fn a_token_budget_is_spent_once_across_the_nodes() {
    let nats = Nats::start().await;
    let config = format!(
        "{ECHO}\n[[auth.keys]]\nname = \"budget\"\nsha256 = \"{}\"\nrate_limit = {{ token_budget = {BUDGET} }}\n",
        sha256_hex("sk-budget")
    );
    let nodes = [
        node(&nats, "a", &config).await,
        node(&nats, "b", &config).await,
        node(&nats, "c", &config).await,
    ];
    let client = reqwest::Client::new();
    let mut used = 0;
    let mut refused_by = std::collections::BTreeSet::new();
    let mut asked = 0;
    // Round robin over the nodes until every one refuses.
    while refused_by.len() < nodes.len() {
        let node = &nodes[asked % nodes.len()];
        asked += 1;
        assert!(asked < 1000, "the budget never ran out");
        let response = client
            .post(format!("{}/v1/chat/completions", node.base))
            .bearer_auth("sk-budget")
            .json(&json!({"model": "echo", "max_tokens": 20, "messages": [{"role": "user", "content": "a few words to answer"}]}))
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => {
                refused_by.clear();
                let body: serde_json::Value = response.json().await.unwrap();
                used += body["usage"]["total_tokens"].as_u64().unwrap();
            }
            429 => {
                assert!(response.headers().contains_key("retry-after"));
                let body: serde_json::Value = response.json().await.unwrap();
                assert_eq!(body["error"]["type"], "insufficient_quota", "{body}");
                refused_by.insert(node.base.clone());
            }
            other => panic!("unexpected status {other}"),
        }
    }
    // Spent once: per node, the three would have let three budgets through.
    assert!(
        used <= BUDGET,
        "{used} tokens used; the cluster's budget is {BUDGET}"
    );
    // What nodes reserved and did not use went back to the cluster.
    assert!(
        used * 10 >= BUDGET * 8,
        "only {used} of {BUDGET} tokens could be used"
    );
}

#[tokio::test]
async fn without_nats_each_node_enforces_the_limit_on_its_own() {
    let mut nats = Nats::start().await;
    let config = format!(
        "{ECHO}\n[[auth.keys]]\nname = \"limited\"\nsha256 = \"{}\"\nrate_limit = {{ requests_per_second = 1, burst = 3 }}\n",
        sha256_hex("sk-limited")
    );
    let mut a = node(&nats, "a", &config).await;
    nats.stop().await;
    crate::binary::next_log(&mut a.logs, |log| {
        log["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Lost NATS"))
    })
    .await;
    // Fail open to the node's own limiter: the burst is let through at once, then refused, with
    // no wait for the broker that is not there.
    let until = Instant::now() + Duration::from_millis(500);
    let (ok, limited) = hammer(&a, until).await;
    assert_eq!(ok, 3, "the node's own burst");
    assert!(limited > 0);
}
