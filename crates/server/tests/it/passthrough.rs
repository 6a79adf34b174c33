//! What an upstream answers besides text reaches the client intact, through the gateway: tool
//! calls (streamed as deltas with their `index`), logprobs, `system_fingerprint`. The upstream
//! replays recorded OpenAI answers.

use orchestrator_backends::OpenAiConfig;
use orchestrator_backends::routing::balance::Balancing;
use orchestrator_server::config::BackendConfig;
use serde_json::{Value, json};
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::gateway_mock::gateway_of;
use crate::support::{Frame, SseReader, client, json};

const STREAM: &str = include_str!("../../../backends/tests/recorded/tool_calls.sse");
const ANSWER: &str = include_str!("../../../backends/tests/recorded/tool_calls.json");

/// A gateway serving model `m` from an upstream that answers with the recordings.
async fn gateway() -> (String, MockServer) {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(body_partial_json(json!({"stream": true})))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "text/event-stream")
                .set_body_string(STREAM),
        )
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(body_partial_json(json!({"stream": false})))
        .respond_with(ResponseTemplate::new(200).set_body_raw(ANSWER, "application/json"))
        .mount(&upstream)
        .await;
    let backend = OpenAiConfig {
        name: "recorded".into(),
        base_url: format!("{}/v1", upstream.uri()),
        api_key_env: None,
        model: Some("gpt-4o-mini".into()),
        headers: Default::default(),
        timeouts: Default::default(),
        routing: Default::default(),
        health_check: None,
    };
    let base = gateway_of(vec![BackendConfig::Openai(backend)], Balancing::RoundRobin).await;
    (base, upstream)
}

fn request(stream: bool) -> Value {
    json!({
        "model": "m",
        "stream": stream,
        "messages": [{"role": "user", "content": "Weather and time in Oslo?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
        "logprobs": true,
    })
}

#[tokio::test]
async fn streamed_tool_call_deltas_keep_their_index_and_add_up() {
    let (base, upstream) = gateway().await;
    let response = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&request(true))
        .send()
        .await
        .unwrap();
    let frames = SseReader::new(response).rest().await;
    let chunks: Vec<Value> = frames
        .iter()
        .filter(|f| matches!(f, Frame::Data(d) if d != "[DONE]"))
        .map(json)
        .collect();
    assert_eq!(frames.last(), Some(&Frame::Data("[DONE]".into())));

    // Accumulate the tool calls as an OpenAI client does: by index, arguments appended.
    let mut calls: Vec<Value> = Vec::new();
    let mut indexes = Vec::new();
    for chunk in &chunks {
        assert_eq!(
            chunk["model"], "m",
            "the gateway names the model the client asked for"
        );
        let Some(deltas) = chunk["choices"][0]["delta"]["tool_calls"].as_array() else {
            continue;
        };
        assert_eq!(chunk["system_fingerprint"], "fp_0ba0d124f1");
        assert!(chunk["choices"][0]["delta"].get("content").is_none());
        for delta in deltas {
            let index = delta["index"].as_u64().unwrap() as usize;
            indexes.push(index);
            if index == calls.len() {
                calls.push(delta.clone());
            } else {
                let args = delta["function"]["arguments"].as_str().unwrap();
                let whole = calls[index]["function"]["arguments"]
                    .as_str()
                    .unwrap()
                    .to_string();
                calls[index]["function"]["arguments"] = json!(whole + args);
            }
        }
    }
    assert_eq!(indexes, [0, 0, 0, 1, 1]);
    assert_eq!(
        calls,
        [
            json!({"index": 0, "id": "call_Wq1", "type": "function",
                   "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}),
            json!({"index": 1, "id": "call_Xr2", "type": "function",
                   "function": {"name": "get_time", "arguments": "{\"tz\": \"CET\"}"}}),
        ]
    );
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("tool_calls"));

    // The request's own pass-through fields went upstream.
    let sent: Value = serde_json::from_slice(&upstream.received_requests().await.unwrap()[0].body).unwrap();
    assert_eq!(sent["tools"], request(true)["tools"]);
    assert_eq!(sent["logprobs"], true);
}

#[tokio::test]
async fn a_whole_answer_keeps_tool_calls_logprobs_and_fingerprint() {
    let (base, _upstream) = gateway().await;
    let response = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let recorded: Value = serde_json::from_str(ANSWER).unwrap();
    let choice = &body["choices"][0];
    assert_eq!(
        choice["message"]["tool_calls"],
        recorded["choices"][0]["message"]["tool_calls"]
    );
    assert_eq!(choice["message"]["content"], Value::Null);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["logprobs"], recorded["choices"][0]["logprobs"]);
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(body["system_fingerprint"], "fp_0ba0d124f1");
    assert_eq!(body["service_tier"], "default");
    assert_eq!(body["model"], "m");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["usage"], recorded["usage"]);
}
