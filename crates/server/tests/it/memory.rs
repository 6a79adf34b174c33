//! Memory held by large request bodies: a body's pass-through fields are kept as the text the
//! client sent (not as a parsed tree, which costs many times its size), and the bytes of bodies
//! held at once are bounded by `server.max_body_bytes_in_flight` (429 past it).
//!
//! Measured on the `orchestrator` binary as a child process: its peak resident memory (`VmHWM`)
//! while a hundred 1 MiB bodies meet a budget of 48 MiB and an upstream that never answers.

use std::time::Duration;

use orchestrator_mock::Behaviour;
use serde_json::json;

use crate::binary::spawn_binary;
use crate::mock_upstream::mock;
use crate::support::client;

const BODY_BYTES: usize = 1 << 20;
const REQUESTS: usize = 100;
const BUDGET: usize = 48 << 20;

/// A field of the child's `/proc/PID/status`, in bytes.
fn status_bytes(pid: u32, field: &str) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// A chat request of about 1 MiB, nearly all of it a pass-through `tools` array of zeros: the
/// shape that cost many times its size when pass-through fields were parsed into trees.
fn large_body() -> Vec<u8> {
    let zeros = vec!["0"; (BODY_BYTES - 200) / 2].join(",");
    format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"tools":[{zeros}]}}"#).into_bytes()
}

#[tokio::test]
async fn large_bodies_stay_within_the_budget_and_the_rest_are_refused() {
    let upstream = mock(Behaviour {
        latency_ms: 3_600_000,
        ..Behaviour::default()
    })
    .await;
    let config = format!(
        "[server]\nmax_body_bytes = {}\nmax_body_bytes_in_flight = {BUDGET}\n\
         [pipeline]\ndefault_timeout_ms = 0\n\
         [[backends]]\nkind = \"openai\"\nname = \"slow\"\nbase_url = \"{}/v1\"\n\
         [[models]]\nname = \"m\"\nbackends = [\"slow\"]\n",
        2 * BODY_BYTES,
        upstream.base_url()
    );
    let binary = spawn_binary(&config).await;
    let pid = binary.child.id().unwrap();
    let before = status_bytes(pid, "VmHWM:");

    let body = large_body();
    let (tx, mut statuses) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..REQUESTS {
        let (tx, body, url) = (
            tx.clone(),
            body.clone(),
            format!("{}/v1/chat/completions", binary.base),
        );
        tokio::spawn(async move {
            let response = client()
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let error = if status == 200 {
                json!(null)
            } else {
                response.json().await.unwrap()
            };
            let _ = tx.send((status, error));
        });
    }
    // Every request is either refused or held by the upstream: none is lost.
    let mut refused = 0;
    let mut admitted = 0;
    for _ in 0..6000 {
        while let Ok((status, error)) = statuses.try_recv() {
            assert_eq!(status, 429, "{error}");
            assert_eq!(error["error"]["code"], "overloaded");
            refused += 1;
        }
        admitted = upstream.stats().chat_completions as usize;
        if refused + admitted == REQUESTS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        refused + admitted,
        REQUESTS,
        "{refused} refused, {admitted} at the upstream"
    );
    assert!(
        admitted > 0 && refused > 0,
        "{admitted} admitted, {refused} refused"
    );
    assert!(
        admitted * BODY_BYTES <= BUDGET,
        "{admitted} bodies of 1 MiB admitted"
    );

    let grew = status_bytes(pid, "VmHWM:").saturating_sub(before);
    let held = admitted * body.len();
    assert!(
        grew < 3 * held,
        "peak memory grew by {} MiB holding {admitted} bodies of 1 MiB ({} MiB): more than 3x",
        grew >> 20,
        held >> 20
    );
}
