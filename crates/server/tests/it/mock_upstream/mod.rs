//! The mock upstream (`orchestrator mock-upstream`) in process on port 0: injected errors,
//! cuts, abandoned streams and runtime changes here; the shapes of both APIs in `shapes`.

mod shapes;

use std::time::Duration;

use futures_util::StreamExt;
use orchestrator_mock::{Behaviour, MockConfig, MockStats, MockUpstream, RunningMock};
use serde_json::{Value, json};

use crate::support::{Frame, SseReader, client, json as frame_json};

pub async fn mock(behaviour: Behaviour) -> RunningMock {
    let config = MockConfig {
        behaviour,
        seed: 42,
        ..MockConfig::ephemeral()
    };
    MockUpstream::start(config).await.unwrap()
}

pub async fn post(mock: &RunningMock, path: &str, body: Value) -> reqwest::Response {
    client().post(mock.url(path)).json(&body).send().await.unwrap()
}

/// Every data frame of a stream that ends cleanly.
pub async fn frames(response: reqwest::Response) -> Vec<String> {
    SseReader::new(response)
        .rest()
        .await
        .into_iter()
        .map(|frame| match frame {
            Frame::Data(data) => data,
            other => panic!("unexpected frame {other:?}"),
        })
        .collect()
}

pub fn parse(data: &str) -> Value {
    frame_json(&Frame::Data(data.to_owned()))
}

/// Waits for the counters to satisfy `condition`; the bound only turns a hang into a failure.
pub async fn wait(mock: &RunningMock, condition: impl Fn(&MockStats) -> bool) -> MockStats {
    tokio::time::timeout(Duration::from_secs(20), mock.wait_until(condition))
        .await
        .unwrap_or_else(|_| panic!("counters stuck at {:?}", mock.stats()))
}

pub fn four_tokens() -> Behaviour {
    Behaviour {
        tokens: 4,
        ..Behaviour::default()
    }
}

#[tokio::test]
async fn injected_errors_follow_the_seed() {
    let behaviour = Behaviour {
        error_rate: 0.5,
        ..Behaviour::default()
    };
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mock = mock(behaviour.clone()).await;
        let mut statuses = Vec::new();
        for _ in 0..40 {
            let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            let response = post(&mock, "/v1/chat/completions", body).await;
            statuses.push(response.status().as_u16());
            if response.status() == 503 {
                let body: Value = response.json().await.unwrap();
                let expected = json!({"error": {
                    "message": "The mock upstream injected this error.",
                    "type": "unavailable_error", "param": null, "code": 503,
                }});
                assert_eq!(body, expected);
            }
        }
        let failed = statuses.iter().filter(|&&s| s == 503).count();
        assert_eq!(mock.stats().errors_injected, failed as u64);
        assert!(statuses.iter().all(|&s| s == 200 || s == 503), "{statuses:?}");
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1], "the same seed gives the same sequence");
    assert!(runs[0].contains(&200) && runs[0].contains(&503), "{:?}", runs[0]);
}

#[tokio::test]
async fn behaviour_changes_at_run_time() {
    let mock = mock(Behaviour::default()).await;
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        post(&mock, "/v1/chat/completions", chat.clone()).await.status(),
        200
    );

    mock.update(|b| {
        b.error_rate = 1.0;
        b.error_status = reqwest::StatusCode::TOO_MANY_REQUESTS;
        b.retry_after_secs = Some(2);
        b.healthy = false;
    });
    let response = post(&mock, "/v1/chat/completions", chat.clone()).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "2");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], 429);
    let health = client().get(mock.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    let llama = post(&mock, "/completion", json!({"prompt": "p"})).await;
    assert_eq!(llama.status(), 429);

    mock.set_behaviour(Behaviour::default());
    assert_eq!(post(&mock, "/v1/chat/completions", chat).await.status(), 200);
    assert_eq!(
        client().get(mock.url("/health")).send().await.unwrap().status(),
        200
    );
    let stats = mock.stats();
    assert_eq!(
        (stats.errors_injected, stats.health, stats.chat_completions),
        (2, 2, 3)
    );
}

#[tokio::test]
async fn cut_after_closes_the_stream_without_done() {
    let mock = mock(Behaviour {
        cut_after: Some(2),
        ..four_tokens()
    })
    .await;
    let body = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let response = post(&mock, "/v1/chat/completions", body).await;
    assert_eq!(response.status(), 200);
    let mut received = Vec::new();
    let mut body = response.bytes_stream();
    let mut failed = false;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) => received.extend_from_slice(&bytes),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the body must end with an error, not cleanly");
    let text = String::from_utf8(received).unwrap();
    assert!(text.contains("\"tok0\"") && text.contains("\" tok1\""), "{text}");
    assert!(!text.contains("tok2") && !text.contains("[DONE]"), "{text}");
    let stats = wait(&mock, |s| s.streams_cut == 1).await;
    assert_eq!((stats.streams_completed, stats.streams_abandoned), (0, 0));

    // Non-streaming answers are whole.
    let whole = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let whole: Value = post(&mock, "/v1/chat/completions", whole)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(whole["usage"]["completion_tokens"], 4);
}

#[tokio::test]
async fn a_client_dropping_a_stream_counts_as_abandoned() {
    // Slow enough that the stream cannot finish while the test runs.
    let mock = mock(Behaviour {
        tokens: 100_000,
        tokens_per_second: 20.0,
        ..Behaviour::default()
    })
    .await;
    let body = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let mut reader = SseReader::new(post(&mock, "/v1/chat/completions", body).await);
    reader.next().await.unwrap(); // role
    reader.next().await.unwrap(); // tok0
    assert_eq!(mock.stats().streams_started, 1);
    drop(reader);
    let stats = wait(&mock, |s| s.streams_abandoned == 1).await;
    assert_eq!((stats.streams_completed, stats.streams_cut), (0, 0));
}

#[tokio::test]
async fn a_client_leaving_during_the_latency_counts_as_abandoned() {
    let mock = mock(Behaviour {
        latency_ms: 600_000,
        ..Behaviour::default()
    })
    .await;
    let url = mock.url("/v1/chat/completions");
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let request = tokio::spawn(async move { client().post(url).json(&body).send().await });
    wait(&mock, |s| s.chat_completions == 1).await;
    // Dropping the in-flight request closes its connection.
    request.abort();
    let stats = wait(&mock, |s| s.requests_abandoned == 1).await;
    assert_eq!(stats.streams_started, 0);
}

#[tokio::test]
async fn the_last_request_body_is_recorded() {
    let mock = mock(Behaviour::default()).await;
    let body = json!({
        "model": "m", "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "tool_choice": "auto", "logit_bias": {"50256": -100}, "seed": 7,
    });
    assert_eq!(
        post(&mock, "/v1/chat/completions", body.clone()).await.status(),
        200
    );
    let last = mock.last_request().unwrap();
    assert_eq!(last.path, "/v1/chat/completions");
    assert_eq!(last.json(), body);
}

#[tokio::test]
async fn bad_requests_name_the_missing_field() {
    let mock = mock(Behaviour::default()).await;
    let response = post(&mock, "/v1/chat/completions", json!({"messages": []})).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["param"], "model");
    let response = post(&mock, "/v1/completions", json!({"model": "m"})).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["param"], "prompt");
    let response = client()
        .post(mock.url("/completion"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(mock.stats().bad_requests, 3);
}

/// The pace runs on tokio's clock: under paused time a stream with a long time to first token
/// and a slow pace completes at once, with the same frames.
#[tokio::test(start_paused = true)]
async fn pacing_follows_tokio_time() {
    let mock = mock(Behaviour {
        latency_ms: 5_000,
        ttft_ms: 30_000,
        tokens_per_second: 0.5,
        tokens: 3,
        ..Behaviour::default()
    })
    .await;
    let body = json!({"prompt": "p", "stream": true});
    let response = post(&mock, "/completion", body).await;
    let text = response.text().await.unwrap();
    let frames: Vec<&str> = text.split("\n\n").filter(|f| !f.is_empty()).collect();
    assert_eq!(frames.len(), 4, "{text}");
    assert!(frames[3].contains("\"stop\":true"), "{text}");
}
