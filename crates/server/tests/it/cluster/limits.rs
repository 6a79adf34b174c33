//! Rate limits counted once across the cluster, not once per node.

use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::{ECHO, Nats, http, metrics_text, node, stop_nats_seen_by};
use crate::binary::Binary;
use crate::support::sha256_hex;

/// Requests per second the key may make, cluster-wide.
const RATE: u64 = 20;
const HAMMERING: Duration = Duration::from_secs(10);

/// The echo model, with one API key, `sk-{name}`, named `name` and limited by `limit` (the
/// inside of a TOML inline table).
fn keyed(name: &str, limit: &str) -> String {
    format!(
        "{ECHO}\n[[auth.keys]]\nname = \"{name}\"\nsha256 = \"{}\"\nrate_limit = {{ {limit} }}\n",
        sha256_hex(&format!("sk-{name}"))
    )
}

async fn three_nodes(nats: &Nats, config: &str) -> [Binary; 3] {
    [
        node(nats, "a", config).await,
        node(nats, "b", config).await,
        node(nats, "c", config).await,
    ]
}

/// One request of the key `key` to `node`: its status.
async fn ask(node: &Binary, key: &str) -> u16 {
    http()
        .post(format!("{}/v1/chat/completions", node.base))
        .bearer_auth(key)
        .json(&json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Asks `node` as fast as one client can until `until`; counts (200s, 429s).
async fn hammer(node: &Binary, until: Instant) -> (u64, u64) {
    let (mut ok, mut limited) = (0, 0);
    while Instant::now() < until {
        match ask(node, "sk-limited").await {
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
    let config = keyed("limited", &format!("requests_per_second = {RATE}"));
    let nodes = three_nodes(&nats, &config).await;
    // Two clients per node. The first second spends the burst (the rate itself, by default);
    // the next ten are counted, when only the refill can be let through.
    let hammer_all = |until| {
        futures_util::future::join_all(nodes.iter().flat_map(|n| [hammer(n, until), hammer(n, until)]))
    };
    hammer_all(Instant::now() + Duration::from_secs(1)).await;
    let counts = hammer_all(Instant::now() + HAMMERING).await;
    let ok: u64 = counts.iter().map(|c| c.0).sum();
    let limited: u64 = counts.iter().map(|c| c.1).sum();
    let allowed = RATE * HAMMERING.as_secs();
    // Alone, each node would let the key have the whole rate: three times as many.
    assert!(
        ok.abs_diff(allowed) * 10 <= allowed,
        "{ok} answered (and {limited} refused) in {HAMMERING:?}; the cluster-wide limit allows {allowed}"
    );
    assert!(limited > 0, "the key was hammered past its limit");
}

/// The cluster-wide token budget of sk-budget.
const BUDGET: u64 = 600;

#[tokio::test]
async fn a_token_budget_is_spent_once_across_the_nodes() {
    let nats = Nats::start().await;
    let config = keyed("budget", &format!("token_budget = {BUDGET}"));
    let nodes = three_nodes(&nats, &config).await;
    let client = http();
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
    let config = keyed("limited", "requests_per_second = 1, burst = 3");
    let mut a = node(&nats, "a", &config).await;
    stop_nats_seen_by(&mut nats, &mut a).await;
    // Fail open to the node's own limiter: the burst is let through, then refused, with no wait
    // for the broker that is not there.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(ask(&a, "sk-limited").await);
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429, 429, 429],
        "the node's own burst of 3"
    );
}

/// The count of `orchestrator_cluster_leases_total` with `labels` in `node`'s metrics.
async fn leases(node: &Binary, labels: &[&str]) -> u64 {
    metrics_text(&node.base)
        .await
        .lines()
        .filter(|l| {
            l.starts_with("orchestrator_cluster_leases_total{") && labels.iter().all(|x| l.contains(x))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn requests_take_the_cells_their_node_leased_without_asking_the_broker() {
    let nats = Nats::start().await;
    let config = keyed("limited", "requests_per_second = 1000");
    let a = node(&nats, "a", &config).await;
    for _ in 0..50 {
        assert_eq!(ask(&a, "sk-limited").await, 200);
    }
    // The first request leased a slice (a tenth of the burst of 1,000) and waited for it; the
    // next 49 took cells from it.
    assert_eq!(leases(&a, &["path=\"request\"", "outcome=\"granted\""]).await, 1);
    assert_eq!(leases(&a, &["path=\"request\""]).await, 1);
}

/// One request of sk-budget to `node`, reserving `max_tokens` for its answer: its status, and
/// the tokens it used when it ran.
async fn ask_budget(node: &Binary, max_tokens: u64) -> (u16, u64) {
    let response = http()
        .post(format!("{}/v1/chat/completions", node.base))
        .bearer_auth("sk-budget")
        .json(&json!({"model": "echo", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    (status, body["usage"]["total_tokens"].as_u64().unwrap_or(0))
}

fn budget_config(tokens: u64) -> String {
    keyed("budget", &format!("token_budget = {tokens}"))
}

/// What a request of [`ask_budget`] reserves beyond its `max_tokens`: the estimate of its prompt.
const PROMPT_ESTIMATE: u64 = 5;

#[tokio::test]
async fn a_large_reservation_refused_does_not_shut_out_small_ones() {
    let nats = Nats::start().await;
    let a = node(&nats, "a", &budget_config(100)).await;
    let mut used = 0;
    for _ in 0..5 {
        let (status, tokens) = ask_budget(&a, 5).await;
        assert_eq!(status, 200);
        used += tokens;
    }
    // Settled with their usage, the five left this much: a request reserving more is refused,
    // and one reserving less still runs.
    let left = 100 - used;
    assert_eq!(ask_budget(&a, left).await.0, 429);
    assert_eq!(ask_budget(&a, 1).await.0, 200);
}

#[tokio::test]
async fn without_nats_each_node_enforces_the_token_budget_on_its_own() {
    let mut nats = Nats::start().await;
    let mut a = node(&nats, "a", &budget_config(100)).await;
    stop_nats_seen_by(&mut nats, &mut a).await;
    // The node's own bucket holds the whole budget: requests run until what is left cannot
    // cover a reservation, then are refused.
    let mut used = 0;
    loop {
        let (status, tokens) = ask_budget(&a, 20).await;
        if status == 429 {
            break;
        }
        assert_eq!(status, 200);
        used += tokens;
        assert!(used <= 100, "{used} tokens used of a budget of 100");
    }
    assert!(
        100 - used < 20 + PROMPT_ESTIMATE,
        "refused with {} tokens left",
        100 - used
    );
}
