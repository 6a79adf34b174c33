//! Overload: ten times the configured capacity offered for half a second. Every request gets
//! exactly one answer (200 or 429), the gateway never holds more than its limits, every
//! high-priority request succeeds, and the dead-letter queue holds exactly the shed requests.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use orchestrator_server::dlq::DlqStore;
use orchestrator_server::{Config, Server};
use serde_json::json;

use crate::support::client;

/// Two places and eight waiting; each answer takes 4 tokens x 5 ms: about 100 requests/s.
const CONFIG: &str = r#"
    [admission]
    max_in_flight = 2
    max_queued = 8
    starvation_bound = 4
    [[backends]]
    kind = "echo"
    name = "echo"
    token_delay_ms = 5
    [[models]]
    name = "echo"
    backends = ["echo"]
"#;

/// 50 waves of 10 requests, 10 ms apart: about 1,000 requests/s. One wave in seven carries a
/// high-priority request; the rest alternate normal and low. That makes 8 high-priority requests
/// in all, no more than `max_queued`: the queue can never be full of them, so a high-priority
/// newcomer always finds a lower waiter to displace, however slowly this machine serves.
const WAVES: usize = 50;
const PER_WAVE: usize = 10;
const HIGH_EVERY: usize = 7;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_capacity_loses_nothing_and_high_priority_always_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let dlq = dir.path().join("dlq.redb");
    let text = format!(
        "{CONFIG}\n[dlq]\npath = {:?}\nrecord = [\"failed\", \"timeout\", \"shed\"]\n",
        dlq.display().to_string()
    );
    let mut config = crate::support::in_suite_runtime(Config::parse(&text, "overload.toml").unwrap());
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    let server = Server::bind(config).await.unwrap();
    let url = format!("http://{}/v1/chat/completions", server.local_addr().unwrap());
    let handle = server.handle();
    tokio::spawn(server.run(std::future::pending()));

    // Watch the gateway's holdings while the load runs: they never pass the limits.
    let running = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (handle, running) = (handle.clone(), running.clone());
        tokio::spawn(async move {
            let mut most = (0, 0);
            while running.load(Ordering::Relaxed) {
                let (in_flight, queued) = handle.admission_load();
                most = (most.0.max(in_flight), most.1.max(queued));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            most
        })
    };

    let http = client();
    let mut sent = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for wave in 0..WAVES {
        tick.tick().await;
        for i in 0..PER_WAVE {
            let n = wave * PER_WAVE + i;
            let priority = match (wave % HIGH_EVERY, i) {
                (0, 0) => "high",
                _ if n.is_multiple_of(2) => "normal",
                _ => "low",
            };
            let request = http
                .post(&url)
                .header("x-priority", priority)
                .json(&json!({"model": "echo", "messages": [{"role": "user", "content": format!("load {n} four words")}]}));
            let task = tokio::spawn(async move {
                let response = request.send().await.expect("every request is answered");
                let retry_after = response.headers().get("retry-after").cloned();
                (response.status().as_u16(), retry_after)
            });
            sent.push((n, priority, task));
        }
    }

    let mut shed = BTreeSet::new();
    let (mut ok, mut high_ok) = (0, 0);
    for (n, priority, task) in sent {
        let (status, retry_after) = task.await.unwrap();
        match status {
            200 => {
                ok += 1;
                high_ok += usize::from(priority == "high");
            }
            429 => {
                assert_ne!(priority, "high", "request {n}: high priority was shed");
                assert_eq!(retry_after.unwrap(), "1");
                shed.insert(format!("load {n} four words"));
            }
            other => panic!("request {n} ({priority}): unexpected status {other}"),
        }
    }
    running.store(false, Ordering::Relaxed);
    let most = watcher.await.unwrap();

    assert_eq!(ok + shed.len(), WAVES * PER_WAVE, "every request has one answer");
    assert_eq!(
        high_ok,
        WAVES.div_ceil(HIGH_EVERY),
        "every high-priority request succeeded"
    );
    assert!(!shed.is_empty(), "ten times the capacity sheds something");
    assert!(most.0 <= 2 && most.1 <= 8, "held {most:?}, limits (2, 8)");
    assert_eq!(handle.admission_load(), (0, 0));

    // Exactly the shed requests were kept, each once. Refusals are written in the background
    // (their 429 does not wait for the disk), so their entries may still be arriving.
    assert!(
        DlqStore::open(&dlq).is_err(),
        "the running gateway holds the dead-letter file"
    );
    let list = url.replace("/v1/chat/completions", "/admin/dlq");
    let mut kept = Vec::new();
    for _ in 0..500 {
        let response: serde_json::Value = http.get(&list).send().await.unwrap().json().await.unwrap();
        kept = response["data"].as_array().unwrap().clone();
        if kept.len() >= shed.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kept_prompts: BTreeSet<String> = kept
        .iter()
        .map(|e| {
            assert_eq!(e["reason"], "shed");
            e["request"]["messages"][0]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(kept.len(), shed.len(), "no request kept twice");
    assert_eq!(kept_prompts, shed);
}
