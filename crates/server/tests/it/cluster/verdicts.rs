//! Backend verdicts shared across nodes: a backend one node finds down is avoided by all, so a
//! session's requests reach one replica whichever node they arrive at.

use orchestrator_mock::RunningMock;
use serde_json::json;

use super::{Nats, http, node};
use crate::binary::{Binary, next_log};
use crate::mock_upstream::mock;

/// Model `m` on vLLM replicas `r1` and `r2` (session affinity; `/health` probes). `checks_r1`: this node probes `r1`'s
/// health every 100 ms; the others never probe it, so only this node can find it down.
fn config(r1: &RunningMock, r2: &RunningMock, checks_r1: bool) -> String {
    let r1_checks = if checks_r1 {
        "{ interval_ms = 100, timeout_ms = 1000, unhealthy_after = 1, healthy_after = 1 }"
    } else {
        "{ interval_ms = 0 }"
    };
    format!(
        "[[backends]]\nkind = \"vllm\"\nname = \"r1\"\nbase_url = \"{}\"\nhealth_check = {r1_checks}\n\n\
         [[backends]]\nkind = \"vllm\"\nname = \"r2\"\nbase_url = \"{}\"\nhealth_check = {{ interval_ms = 0 }}\n\n\
         [[models]]\nname = \"m\"\nbackends = [\"r1\", \"r2\"]\n",
        r1.url("/v1"),
        r2.url("/v1"),
    )
}

/// Sends each of `sessions` sessions' three requests through the three nodes in turn, one at a
/// time, and returns for each session the replicas its requests reached (1 or 2).
async fn replicas_per_session(nodes: &[Binary], r1: &RunningMock, sessions: usize) -> Vec<Vec<u8>> {
    let client = http();
    let mut seen = Vec::new();
    for s in 0..sessions {
        let mut reached = Vec::new();
        for node in nodes {
            let before = r1.stats().chat_completions;
            let response = client
                .post(format!("{}/v1/chat/completions", node.base))
                .header("x-session-id", format!("session-{s}"))
                .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            reached.push(if r1.stats().chat_completions > before {
                1
            } else {
                2
            });
        }
        seen.push(reached);
    }
    seen
}

#[tokio::test]
async fn a_backend_one_node_finds_down_is_avoided_by_all_so_sessions_do_not_split() {
    let nats = Nats::start().await;
    let (r1, r2) = (mock(Default::default()).await, mock(Default::default()).await);
    let mut nodes = vec![
        node(&nats, "a", &config(&r1, &r2, true)).await,
        node(&nats, "b", &config(&r1, &r2, false)).await,
        node(&nats, "c", &config(&r1, &r2, false)).await,
    ];

    // All healthy: each session stays on its replica, and both replicas have sessions.
    let before = replicas_per_session(&nodes, &r1, 20).await;
    assert!(before.iter().all(|r| r.iter().all(|x| *x == r[0])), "{before:?}");
    assert!(before.iter().any(|r| r[0] == 1) && before.iter().any(|r| r[0] == 2));

    // r1 fails its health checks (it still answers completions): only a probes it and knows.
    r1.handle().update(|b| b.healthy = false);
    for node in &mut nodes[1..] {
        next_log(&mut node.logs, |log| {
            log["fields"]["backend"] == "r1"
                && log["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("Another node finds"))
        })
        .await;
    }
    let during = replicas_per_session(&nodes, &r1, 20).await;
    assert!(
        during.iter().flatten().all(|x| *x == 2),
        "every node sends every session to r2: {during:?}"
    );

    // Back: every node returns the sessions to r1 together.
    r1.handle().update(|b| b.healthy = true);
    for node in &mut nodes[1..] {
        next_log(&mut node.logs, |log| {
            log["fields"]["backend"] == "r1"
                && log["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("No node finds"))
        })
        .await;
    }
    let after = replicas_per_session(&nodes, &r1, 20).await;
    assert_eq!(after, before);
}
