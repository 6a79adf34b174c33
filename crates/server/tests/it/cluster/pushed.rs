//! `orchestrator cluster push`: one config for every node, refused whole when it has problems.

use std::process::Output;

use serde_json::Value;
use tokio::process::Command;

use super::{ECHO, Nats, cluster_view, eventually, get, node};
use crate::binary::Binary;

/// `orchestrator cluster push` of `config`, with `env` added to the pusher's environment.
async fn push(nats: &Nats, config: &str, env: &[(&str, &str)]) -> Output {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), config).unwrap();
    Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["cluster", "push", "--cluster", &nats.url])
        .arg(file.path())
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap()
}

/// Each live node's record, as `node` lists them.
async fn records(node: &Binary) -> Vec<Value> {
    let (status, view) = cluster_view(node).await;
    assert_eq!(status, 200, "{view}");
    view["nodes"].as_array().unwrap().clone()
}

async fn models(node: &Binary) -> Vec<String> {
    let list: Value = get(format!("{}/v1/models", node.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

const TWO_MODELS: &str = "[[backends]]\nkind = \"echo\"\nname = \"e\"\n\n\
    [[models]]\nname = \"echo\"\nbackends = [\"e\"]\n\n[[models]]\nname = \"second\"\nbackends = [\"e\"]\n";

#[tokio::test]
async fn a_pushed_config_reaches_every_node_and_one_with_problems_changes_nothing() {
    let nats = Nats::start().await;
    let nodes = [
        node(&nats, "a", ECHO).await,
        node(&nats, "b", ECHO).await,
        node(&nats, "c", ECHO).await,
    ];
    eventually("three nodes", || async { records(&nodes[0]).await.len() == 3 }).await;

    let pushed = push(&nats, TWO_MODELS, &[]).await;
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    let said = String::from_utf8_lossy(&pushed.stdout).to_string();
    let revision: u64 = said
        .split("revision ")
        .nth(1)
        .and_then(|rest| rest.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {said:?}"));
    for node in &nodes {
        eventually("the node serves the pushed models", || async {
            models(node).await == ["echo", "second"]
        })
        .await;
    }
    eventually("every record names the revision", || async {
        let records = records(&nodes[1]).await;
        records.len() == 3
            && records.iter().all(|r| {
                r["config_revision"] == revision && r["generation"] == 1 && r["config_error"].is_null()
            })
    })
    .await;

    // Refused where it is pushed: nothing reaches the nodes.
    let bad = push(&nats, "[[models]]\nname = \"x\"\nbackends = [\"missing\"]\n", &[]).await;
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("models[0].backends[0]"), "{stderr}");
    assert!(stderr.contains("Nothing was pushed."), "{stderr}");

    // Valid where it is pushed, but each node lacks the key's variable: every node refuses it,
    // keeps what it runs, and says why.
    let needs_a_key =
        format!("{TWO_MODELS}\n[[auth.keys]]\nname = \"app\"\nkey_env = \"ORCHESTRATOR_TEST_PUSHED_KEY\"\n");
    let pushed = push(&nats, &needs_a_key, &[("ORCHESTRATOR_TEST_PUSHED_KEY", "sk-1")]).await;
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    eventually("every node reports why it refused", || async {
        records(&nodes[2]).await.iter().all(|r| {
            r["config_revision"] == revision
                && r["config_error"].as_str().is_some_and(|e| {
                    e.contains("the environment variable ORCHESTRATOR_TEST_PUSHED_KEY is not set or empty")
                })
        })
    })
    .await;
    for node in &nodes {
        assert_eq!(
            models(node).await,
            ["echo", "second"],
            "the running config stays, unprotected"
        );
    }

    // A good revision clears the refusals; a node that joins later takes it too.
    let pushed = push(&nats, TWO_MODELS, &[]).await;
    assert!(pushed.status.success());
    eventually("the refusals are cleared", || async {
        records(&nodes[0])
            .await
            .iter()
            .all(|r| r["config_error"].is_null() && r["config_revision"] != revision)
    })
    .await;
    let late = node(&nats, "d", ECHO).await;
    eventually("the late node serves the pushed models", || async {
        models(&late).await == ["echo", "second"]
    })
    .await;
}
