//! In-flight deduplication through the gateway: identical concurrent requests reach the
//! upstream once, every caller gets the whole answer; `X-Dedup` is checked.

use std::time::Duration;

use orchestrator_backends::routing::balance::Balancing;
use orchestrator_mock::Behaviour;
use orchestrator_server::config::BackendConfig;
use serde_json::{Value, json};

use crate::gateway_mock::{gateway_of, mock, openai_backend};
use crate::support::{Frame, SseReader, client, expect_error, streamed_text};

fn deterministic() -> Value {
    json!({"model": "m", "stream": true, "temperature": 0,
           "messages": [{"role": "user", "content": "the same question"}]})
}

async fn deterministic_stream(base: &str) -> String {
    let response = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&deterministic())
        .send()
        .await
        .unwrap();
    let frames = SseReader::new(response).rest().await;
    assert_eq!(frames.last(), Some(&Frame::Data("[DONE]".into())));
    streamed_text(&frames)
}

#[tokio::test]
async fn identical_concurrent_requests_reach_the_upstream_once() {
    // A slow stream, so the later requests arrive while the first is still being answered.
    let upstream = mock(Behaviour {
        tokens: 10,
        tokens_per_second: 2.0,
        ..Behaviour::default()
    })
    .await;
    let base = gateway_of(
        vec![BackendConfig::Openai(openai_backend("dedup-up", &upstream))],
        Balancing::RoundRobin,
    )
    .await;
    let first = tokio::spawn({
        let base = base.clone();
        async move { deterministic_stream(&base).await }
    });
    tokio::time::timeout(
        Duration::from_secs(10),
        upstream.wait_until(|s| s.streams_started == 1),
    )
    .await
    .expect("the first request reaches the upstream");
    let later: Vec<_> = (0..4)
        .map(|_| {
            let base = base.clone();
            tokio::spawn(async move { deterministic_stream(&base).await })
        })
        .collect();
    let expected = first.await.unwrap();
    assert_eq!(expected, "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 tok8 tok9");
    for task in later {
        assert_eq!(task.await.unwrap(), expected, "late joiners get every token");
    }
    assert_eq!(upstream.stats().chat_completions, 1);
}

#[tokio::test]
async fn x_dedup_takes_on_or_off() {
    let upstream = mock(Behaviour::default()).await;
    let base = gateway_of(
        vec![BackendConfig::Openai(openai_backend("dedup-check", &upstream))],
        Balancing::RoundRobin,
    )
    .await;
    let response = client()
        .post(format!("{base}/v1/chat/completions"))
        .header("x-dedup", "yes")
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let error = expect_error(response, 400).await;
    assert_eq!(error["message"], "X-Dedup: must be `on` or `off`");
}
