//! The Anthropic Messages API: the official `anthropic` Python SDK against a gateway
//! (tests/python/anthropic_e2e.py), and the shapes the SDK does not exercise: missing and
//! mistyped fields, `x-api-key`, errors in Anthropic's shape.

use orchestrator_mock::{Behaviour, RunningMock};
use orchestrator_server::config::{BackendConfig, Config, ModelConfig};
use orchestrator_server::gateway::cache::CacheConfig;
use serde_json::{Value, json};
use tokio_prompt_orchestrator::AdmissionConfig;

use crate::gateway_mock::{mock, openai_backend};
use crate::sdk::{python_checks, sdk_checks};
use crate::support::{client, serve};

/// `echo`, `tools` (a mock that calls tools) and `slow` (an echo at 5 tokens a second), with one
/// place in the pipeline and none to wait in, so that a second request at once is shed. The
/// mock must be kept as long as the gateway is used.
async fn gateway() -> (String, RunningMock) {
    let upstream = mock(Behaviour::default()).await;
    let echo = |name: &str, token_delay_ms| BackendConfig::Echo {
        name: name.into(),
        token_delay_ms,
        routing: Default::default(),
    };
    let config = Config {
        backends: vec![
            echo("e", 0),
            echo("slow-e", 200),
            BackendConfig::Openai(openai_backend("up", &upstream)),
        ],
        models: vec![
            ModelConfig {
                cache: Some(CacheConfig::default()),
                ..ModelConfig::single("echo", "e")
            },
            ModelConfig::single("tools", "up"),
            ModelConfig::single("slow", "slow-e"),
        ],
        admission: AdmissionConfig {
            max_in_flight: std::num::NonZeroUsize::MIN,
            max_queued: 0,
            ..AdmissionConfig::default()
        },
        ..Config::default()
    };
    (serve(config).await, upstream)
}

#[tokio::test]
async fn the_official_anthropic_sdk_end_to_end() {
    let (base, _upstream) = gateway().await;
    python_checks(
        "anthropic_e2e.py",
        &[("ANTHROPIC_BASE_URL", &base)],
        "all Anthropic SDK checks passed",
    )
    .await;
    // The same gateway's tool calls reach OpenAI's SDK too.
    let stdout = sdk_checks(&format!("{base}/v1")).await;
    assert!(stdout.contains("ok: streamed tool call"), "{stdout}");
}

async fn post(base: &str, body: &str) -> (u16, Value) {
    let response = client()
        .post(format!("{base}/v1/messages"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn every_required_field_missing_or_mistyped_is_a_400_in_anthropics_shape_naming_it() {
    let (base, _upstream) = gateway().await;
    let cases = [
        (
            r#"{"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}"#,
            "model",
        ),
        (
            r#"{"model": "echo", "messages": [{"role": "user", "content": "x"}]}"#,
            "max_tokens",
        ),
        (r#"{"model": "echo", "max_tokens": 5}"#, "messages"),
        (
            r#"{"model": "echo", "max_tokens": 5, "messages": []}"#,
            "messages",
        ),
        (
            r#"{"model": "echo", "max_tokens": "5", "messages": [{"role": "user", "content": "x"}]}"#,
            "max_tokens",
        ),
        (
            r#"{"model": "echo", "max_tokens": 5, "messages": [{"content": "x"}]}"#,
            "messages[0].role",
        ),
        (
            r#"{"model": "echo", "max_tokens": 5, "messages": [{"role": "user"}]}"#,
            "messages[0].content",
        ),
        (
            r#"{"model": "echo", "max_tokens": 5, "messages": [{"role": "robot", "content": "x"}]}"#,
            "messages[0].role",
        ),
        (
            r#"{"model": "echo", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}"#,
            "messages[0].content[0].tool_use_id",
        ),
        (
            r#"{"model": "echo", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": [{"name": "f"}]}"#,
            "tools[0].input_schema",
        ),
        (
            r#"{"model": "echo", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "temperature": 1.5}"#,
            "temperature",
        ),
        (
            r#"{"model": "echo", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "tool"}}"#,
            "tool_choice.name",
        ),
    ];
    for (body, field) in cases {
        let (status, error) = post(&base, body).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(field),
            "{body}: {message} does not name {field}"
        );
    }
    let (status, error) = post(&base, "not json").await;
    assert_eq!(
        (status, error["error"]["type"].as_str()),
        (400, Some("invalid_request_error"))
    );
}

#[tokio::test]
async fn keys_are_read_from_x_api_key_and_refusals_are_in_anthropics_shape() {
    let mut config = Config::default();
    config.auth.keys = vec![
        serde_json::from_value(json!({
            "name": "k",
            "sha256": crate::support::sha256_hex("sk-good"),
        }))
        .unwrap(),
    ];
    let base = serve(config).await;
    let ask = |key: &'static str| {
        let base = base.clone();
        async move {
            let response = client()
                .post(format!("{base}/v1/messages"))
                .header("x-api-key", key)
                .json(&json!({"model": "echo", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let (status, body) = ask("sk-good").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "message");
    let (status, body) = ask("sk-wrong").await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["type"], "authentication_error", "{body}");
}

#[tokio::test]
async fn a_kept_answer_is_sent_again_in_anthropics_shape() {
    let (base, _upstream) = gateway().await;
    let ask = |stream: bool| {
        let base = base.clone();
        async move {
            client()
                .post(format!("{base}/v1/messages"))
                .json(
                    &json!({"model": "echo", "max_tokens": 20, "temperature": 0, "stream": stream,
                    "messages": [{"role": "user", "content": "kept words"}]}),
                )
                .send()
                .await
                .unwrap()
        }
    };
    let first = ask(false).await;
    assert_eq!(first.headers()["x-cache"], "miss");
    let first = first.bytes().await.unwrap();
    let second = ask(false).await;
    assert_eq!(second.headers()["x-cache"], "hit");
    assert_eq!(second.bytes().await.unwrap(), first);
    let streamed = ask(true).await;
    assert_eq!(streamed.headers()["x-cache"], "hit");
    let text = streamed.text().await.unwrap();
    let events: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(
        events,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert!(text.contains(r#""text":"kept words""#), "{text}");
}

#[tokio::test]
async fn images_reach_the_model_as_image_url_parts_from_either_api() {
    let (base, upstream) = gateway().await;
    let seen = |upstream: &RunningMock| {
        upstream.handle().last_request().unwrap().json()["messages"][0]["content"].clone()
    };
    let response = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(
            &json!({"model": "tools", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
            ]}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        seen(&upstream),
        json!([
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
        ])
    );
    let (status, body) = post(
        &base,
        &json!({"model": "tools", "max_tokens": 10, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "text", "text": "Two images."},
        ]}]})
        .to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        seen(&upstream),
        json!([
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "text", "text": "Two images."},
        ])
    );
    // A part of another kind is refused, naming it.
    let response = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(
            &json!({"model": "tools", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
        )
        .send()
        .await
        .unwrap();
    let error = crate::support::expect_error(response, 400).await;
    assert_eq!(error["param"], "messages[0].content[0].type", "{error}");
}
