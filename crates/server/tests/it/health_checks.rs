//! Active health checks and vLLM's load figures, through the gateway against mock upstreams: an
//! unhealthy replica leaves rotation and comes back, and a replica whose own queue is long gets
//! no new work under least-outstanding balancing.

use std::time::Duration;

use orchestrator_backends::llamacpp::LlamaCppConfig;
use orchestrator_backends::routing::balance::Balancing;
use orchestrator_backends::routing::health::HealthConfig;
use orchestrator_mock::{Behaviour, RunningMock};
use orchestrator_server::config::BackendConfig;
use serde_json::json;

use crate::gateway_mock::{gateway_of, mock, openai_backend};
use crate::support::client;

/// Quick checks, so the tests wait for probes, never for a fixed time.
const CHECKS: HealthConfig = HealthConfig {
    interval_ms: 20,
    timeout_ms: 1_000,
    unhealthy_after: 1,
    healthy_after: 1,
};

fn llamacpp(name: &str, mock: &RunningMock) -> BackendConfig {
    BackendConfig::Llamacpp(LlamaCppConfig {
        name: name.into(),
        base_url: mock.base_url(),
        api_key_env: None,
        headers: Default::default(),
        slots: 1,
        timeouts: Default::default(),
        routing: Default::default(),
        health_check: CHECKS,
    })
}

/// Waits until the gateway's `/metrics` has the sample `line`: the health checks have then
/// seen what the test set up. The metric names carry backend names unique to each test, as the
/// tests share one metrics registry.
async fn metric_reads(base: &str, line: &str) {
    let poll = async {
        loop {
            let response = client().get(format!("{base}/metrics")).send().await.unwrap();
            if response.text().await.unwrap().lines().any(|l| l == line) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .unwrap_or_else(|_| panic!("/metrics never read {line}"));
}

/// Sends one non-streaming completion per session; returns the statuses.
async fn completions(base: &str, sessions: std::ops::Range<u32>) -> Vec<u16> {
    let mut statuses = Vec::new();
    for s in sessions {
        let response = client()
            .post(format!("{base}/v1/completions"))
            .header("x-session-id", format!("session-{s}"))
            .json(&json!({"model": "m", "prompt": "hi", "max_tokens": 2}))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    statuses
}

#[tokio::test]
async fn an_unhealthy_replica_leaves_rotation_and_comes_back() {
    let (a, b) = (mock(Behaviour::default()).await, mock(Behaviour::default()).await);
    let base = gateway_of(
        vec![llamacpp("evict-a", &a), llamacpp("evict-b", &b)],
        Balancing::SessionAffinity,
    )
    .await;
    assert!(completions(&base, 0..20).await.iter().all(|s| *s == 200));
    let served = |m: &RunningMock| m.stats().llama_completions;
    assert!(served(&a) > 0 && served(&b) > 0, "sessions spread over both");

    a.update(|b| b.healthy = false);
    metric_reads(&base, r#"orchestrator_backend_healthy{backend="evict-a"} 0"#).await;
    let before = served(&a);
    assert!(completions(&base, 0..20).await.iter().all(|s| *s == 200));
    assert_eq!(served(&a), before, "a fails its health checks: no calls");

    a.update(|b| b.healthy = true);
    metric_reads(&base, r#"orchestrator_backend_healthy{backend="evict-a"} 1"#).await;
    assert!(completions(&base, 0..20).await.iter().all(|s| *s == 200));
    assert!(served(&a) > before, "a is back in rotation");
}

#[tokio::test]
async fn with_every_replica_unhealthy_the_caller_learns_why() {
    let a = mock(Behaviour::default()).await;
    let base = gateway_of(vec![llamacpp("down-a", &a)], Balancing::RoundRobin).await;
    a.update(|b| b.healthy = false);
    metric_reads(&base, r#"orchestrator_backend_healthy{backend="down-a"} 0"#).await;
    let response = client()
        .post(format!("{base}/v1/completions"))
        .json(&json!({"model": "m", "prompt": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body: serde_json::Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "Every backend of model `m` failed: down-a: skipped: failing its health checks (GET "
        ) && message.ends_with("/health answered 503: Loading model)"),
        "{message}"
    );
    assert_eq!(a.stats().llama_completions, 0);
}

#[tokio::test]
async fn vllm_replicas_with_a_long_queue_get_no_new_work() {
    let (a, b) = (mock(Behaviour::default()).await, mock(Behaviour::default()).await);
    a.update(|b| b.queue_waiting = 50);
    let vllm = |name: &str, mock: &RunningMock| {
        let mut config = openai_backend(name, mock);
        config.health_check = Some(CHECKS);
        BackendConfig::Vllm(config)
    };
    let base = gateway_of(
        vec![vllm("vllm-a", &a), vllm("vllm-b", &b)],
        Balancing::LeastOutstanding,
    )
    .await;
    metric_reads(
        &base,
        r#"orchestrator_backend_upstream_waiting{backend="vllm-a"} 50"#,
    )
    .await;
    assert!(completions(&base, 0..10).await.iter().all(|s| *s == 200));
    assert_eq!(
        (a.stats().completions, b.stats().completions),
        (0, 10),
        "a reports 50 requests waiting"
    );

    a.update(|b| b.queue_waiting = 0);
    b.update(|b| b.queue_waiting = 50);
    metric_reads(
        &base,
        r#"orchestrator_backend_upstream_waiting{backend="vllm-a"} 0"#,
    )
    .await;
    metric_reads(
        &base,
        r#"orchestrator_backend_upstream_waiting{backend="vllm-b"} 50"#,
    )
    .await;
    assert!(completions(&base, 10..20).await.iter().all(|s| *s == 200));
    assert_eq!(a.stats().completions, 10, "now b's queue is the long one");
}

#[tokio::test]
async fn a_fresh_binary_reports_its_checked_backends_healthy_before_any_change() {
    let upstream = mock(Behaviour::default()).await;
    let config = format!(
        "[[backends]]\nkind = \"llamacpp\"\nname = \"fresh\"\nbase_url = \"{}\"\n\
         health_check = {{ interval_ms = 60000 }}\n\n[[models]]\nname = \"m\"\nbackends = [\"fresh\"]\n",
        upstream.base_url()
    );
    let binary = crate::binary::spawn_binary(&config).await;
    // The first probe succeeds (no change), and the next is a minute away: only a gauge set when
    // the backend was built can be on the page now.
    let page = client()
        .get(format!("{}/metrics", binary.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.lines()
            .any(|l| l == "orchestrator_backend_healthy{backend=\"fresh\"} 1"),
        "{page}"
    );
}
