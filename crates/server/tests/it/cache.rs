//! The exact-match response cache in front of a mock upstream (whose counter says when the
//! model was called): a repeated deterministic request is answered from the cache, byte for byte
//! and as a stream when asked; other requests, and those that say `Cache-Control: no-cache`,
//! reach the model.

use orchestrator_mock::{Behaviour, RunningMock};
use orchestrator_server::config::{BackendConfig, Config, ModelConfig};
use orchestrator_server::gateway::cache::CacheConfig;
use serde_json::{Value, json};

use crate::gateway_mock::{mock, openai_backend};
use crate::support::{SseReader, client, serve, streamed_text};

/// A gateway whose model `m` keeps its answers, in front of `upstream`.
async fn cached_gateway(upstream: &RunningMock) -> String {
    let mut model = ModelConfig::single("m", "up");
    model.cache = Some(CacheConfig::default());
    model.dedup = false;
    serve(Config {
        backends: vec![BackendConfig::Openai(openai_backend("up", upstream))],
        models: vec![model],
        ..Config::default()
    })
    .await
}

async fn ask(base: &str, body: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client()
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response
}

fn x_cache(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_repeated_deterministic_request_is_answered_from_the_cache_byte_for_byte() {
    let upstream = mock(Behaviour::default()).await;
    let base = cached_gateway(&upstream).await;
    let body = r#"{"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}"#;
    let first = ask(&base, body, &[]).await;
    assert_eq!(x_cache(&first).as_deref(), Some("miss"));
    let first = first.bytes().await.unwrap();
    // The same request written otherwise: the fields in another order, other spacing.
    let again = r#"{"messages":[{"content":"hi","role":"user"}],"temperature":0,"model":"m"}"#;
    let second = ask(&base, again, &[]).await;
    assert_eq!(x_cache(&second).as_deref(), Some("hit"));
    assert_eq!(
        second.bytes().await.unwrap(),
        first,
        "the same body, id and created included"
    );
    assert_eq!(
        upstream.handle().stats().chat_completions,
        1,
        "the model was called once"
    );

    // As a stream, with usage: the same answer.
    let streamed = json!({
        "model": "m", "temperature": 0, "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}],
    });
    let response = ask(&base, &streamed.to_string(), &[]).await;
    assert_eq!(x_cache(&response).as_deref(), Some("hit"));
    let frames = SseReader::new(response).rest().await;
    let whole: Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(
        streamed_text(&frames),
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert_eq!(upstream.handle().stats().chat_completions, 1);

    // `Cache-Control: no-cache` goes to the model.
    let bypassed = ask(&base, body, &[("cache-control", "no-cache")]).await;
    assert_eq!(x_cache(&bypassed), None);
    assert_eq!(upstream.handle().stats().chat_completions, 2);
}

#[tokio::test]
async fn a_streamed_answer_is_kept_and_requests_that_are_not_deterministic_are_not() {
    let upstream = mock(Behaviour::default()).await;
    let base = cached_gateway(&upstream).await;
    let streamed =
        r#"{"model": "m", "seed": 7, "stream": true, "messages": [{"role": "user", "content": "hi"}]}"#;
    let response = ask(&base, streamed, &[]).await;
    assert_eq!(x_cache(&response).as_deref(), Some("miss"));
    let text = streamed_text(&SseReader::new(response).rest().await);
    let whole = r#"{"model": "m", "seed": 7, "messages": [{"role": "user", "content": "hi"}]}"#;
    let hit = ask(&base, whole, &[]).await;
    assert_eq!(x_cache(&hit).as_deref(), Some("hit"));
    let hit: Value = hit.json().await.unwrap();
    assert_eq!(hit["choices"][0]["message"]["content"], text.as_str());
    assert_eq!(upstream.handle().stats().chat_completions, 1);

    let sampled = r#"{"model": "m", "temperature": 0.8, "messages": [{"role": "user", "content": "hi"}]}"#;
    for _ in 0..2 {
        let response = ask(&base, sampled, &[]).await;
        assert_eq!(x_cache(&response), None);
    }
    assert_eq!(
        upstream.handle().stats().chat_completions,
        3,
        "both sampled requests reached the model"
    );
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for result in ["hit", "miss", "bypass"] {
        assert!(
            metrics.contains(&format!(
                "orchestrator_cache_requests_total{{model=\"m\",result=\"{result}\"}}"
            )),
            "{result}: {metrics}"
        );
    }
}
