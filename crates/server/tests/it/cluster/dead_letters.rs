//! The shared dead-letter queue: written on one node, seen and replayed (once) from any other,
//! and kept through a NATS outage.

use orchestrator_mock::{Behaviour, RunningMock};
use serde_json::{Value, json};

use super::{ECHO, Nats, command_json_lines, eventually, http, node};
use crate::binary::Binary;
use crate::mock_upstream::mock;

/// A node with a dead-letter file of its own, serving `m` from `upstream` with no retries, and
/// `echo`.
async fn dlq_node(nats: &Nats, name: &str, upstream: &RunningMock, dir: &tempfile::TempDir) -> Binary {
    let config = format!(
        "[dlq]\npath = {path:?}\n\n{ECHO}\n[[backends]]\nkind = \"openai\"\nname = \"up\"\nbase_url = \"{url}\"\n\n\
         [[models]]\nname = \"m\"\nbackends = [\"up\"]\nretries = {{ max = 0 }}\n",
        path = dir.path().join(format!("{name}.redb")).display().to_string(),
        url = upstream.url("/v1"),
    );
    node(nats, name, &config).await
}

async fn ask(node: &Binary, model: &str) -> u16 {
    http()
        .post(format!("{}/v1/chat/completions", node.base))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn admin(node: &Binary, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = http().request(method, format!("{}{path}", node.base));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn listed(node: &Binary) -> Vec<Value> {
    let (status, body) = admin(node, reqwest::Method::GET, "/admin/dlq", None).await;
    assert_eq!(status, 200, "{body}");
    body["data"].as_array().unwrap().clone()
}

fn failing() -> Behaviour {
    Behaviour {
        error_rate: 1.0,
        ..Behaviour::default()
    }
}

#[tokio::test]
async fn a_dead_letter_written_on_one_node_is_listed_and_replayed_once_from_the_others() {
    let nats = Nats::start().await;
    let upstream = mock(failing()).await;
    let dir = tempfile::tempdir().unwrap();
    let a = dlq_node(&nats, "a", &upstream, &dir).await;
    let b = dlq_node(&nats, "b", &upstream, &dir).await;

    assert_eq!(ask(&a, "m").await, 502);
    eventually("b lists a's dead letter", || async {
        listed(&b).await.len() == 1
    })
    .await;
    let entry = &listed(&b).await[0];
    assert_eq!(entry["model"], "m");
    assert_eq!(entry["reason"], "failed");
    let id = entry["id"].as_u64().unwrap();
    let (status, shown) = admin(&b, reqwest::Method::GET, &format!("/admin/dlq/{id}"), None).await;
    assert_eq!((status, &shown["request"]["model"]), (200, &json!("m")));

    // The operator's command sees the same entry, from the broker.
    let lines = command_json_lines(&["dlq", "list", "--json", "--cluster", &nats.url]).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["id"], id);

    // A failed replay is counted on the entry, whichever node reads it.
    let (status, report) = admin(
        &a,
        reqwest::Method::POST,
        "/admin/dlq/replay",
        Some(json!({"ids": [id]})),
    )
    .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["failed"][0]["id"], id);
    assert_eq!(listed(&b).await[0]["replays"], 1);

    // Replayed from three nodes at once: the upstream sees it once.
    upstream.handle().update(|b| b.error_rate = 0.0);
    let before = upstream.stats().chat_completions;
    let c = dlq_node(&nats, "c", &upstream, &dir).await;
    let replay = |node: &Binary| {
        let url = format!("{}/admin/dlq/replay", node.base);
        async move {
            let response = http().post(url).json(&json!({"all": true})).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    let reports = futures_util::future::join_all([replay(&a), replay(&b), replay(&c)]).await;
    let replayed: usize = reports
        .iter()
        .map(|r| r["replayed"].as_array().unwrap().len())
        .sum();
    let failed: usize = reports
        .iter()
        .map(|r| r["failed"].as_array().unwrap().len())
        .sum();
    assert_eq!((replayed, failed), (1, 0), "{reports:?}");
    assert_eq!(upstream.stats().chat_completions - before, 1);
    for node in [&a, &b, &c] {
        assert!(listed(node).await.is_empty());
    }
}

/// Asks `node` for `echo` until `stop`; the statuses it got.
async fn steady_load(base: String, stop: tokio_util::sync::CancellationToken) -> Vec<u16> {
    let client = http();
    let mut statuses = Vec::new();
    while !stop.is_cancelled() {
        let response = client
            .post(format!("{base}/v1/chat/completions"))
            .json(&json!({"model": "echo", "messages": [{"role": "user", "content": "load"}]}))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    statuses
}

#[tokio::test]
async fn nats_stopped_and_restarted_mid_load_loses_no_request_and_no_dead_letter() {
    let mut nats = Nats::start().await;
    let upstream = mock(failing()).await;
    let dir = tempfile::tempdir().unwrap();
    let a = dlq_node(&nats, "a", &upstream, &dir).await;
    let b = dlq_node(&nats, "b", &upstream, &dir).await;
    let stop_load = tokio_util::sync::CancellationToken::new();
    let load = [&a, &b].map(|n| tokio::spawn(steady_load(n.base.clone(), stop_load.clone())));

    nats.stop().await;
    for _ in 0..3 {
        assert_eq!(ask(&a, "m").await, 502);
        assert_eq!(ask(&a, "echo").await, 200, "the node serves on without NATS");
    }
    assert_eq!(ask(&b, "m").await, 502);
    let (status, _) = admin(&a, reqwest::Method::GET, "/admin/dlq", None).await;
    assert_eq!(status, 503, "the shared queue cannot be read meanwhile");

    nats.restart().await;
    eventually("all four dead letters are shared", || async {
        admin(&b, reqwest::Method::GET, "/admin/dlq", None).await.1["data"]
            .as_array()
            .is_some_and(|d| d.len() == 4)
    })
    .await;
    stop_load.cancel();
    for node in load {
        let statuses = node.await.unwrap();
        assert!(!statuses.is_empty());
        assert!(
            statuses.iter().all(|s| *s == 200),
            "every request of the load was answered: {statuses:?}"
        );
    }
}
