//! The llama.cpp backend against a recorded server (wiremock): chat calls go to
//! `/v1/chat/completions` (the model's own chat template) with the session's `id_slot` and
//! `cache_prompt`; completions and template-rendered prompts go to the native `/completion`;
//! the slot count the server's `/slots` reports replaces the configured one, so sessions spread
//! over every slot that exists.

use std::collections::BTreeSet;

use futures_util::StreamExt;
use orchestrator_backends::llamacpp::{LlamaCppConfig, LlamaCppWorker};
use orchestrator_backends::routing::health::HealthProbe;
use serde_json::json;
use tokio_prompt_orchestrator::{
    ChatMessage, FinishReason, InferenceCall, InferenceRequest, ModelWorker, Passthrough, RequestId,
    SamplingParams, SessionId, Usage, WorkerChunk, WorkerError,
};
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const ANSWER: &str =
    r#"{"content":"Hi","stop":true,"stop_type":"eos","tokens_predicted":1,"tokens_evaluated":3}"#;

/// A whole chat answer as llama-server sends it (`timings` is its own).
const CHAT_ANSWER: &str = r#"{"choices":[{"finish_reason":"length","index":0,
  "message":{"role":"assistant","content":"Hello there"}}],"created":1,"model":"m",
  "system_fingerprint":"b1-x","object":"chat.completion",
  "usage":{"completion_tokens":2,"prompt_tokens":9,"total_tokens":11},"id":"chatcmpl-1",
  "timings":{"prompt_n":9,"predicted_n":2}}"#;

/// A streamed chat answer as llama-server sends it: the counts ride on a last chunk, with its
/// `timings`.
const CHAT_STREAM: &str = "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null}}],\"object\":\"chat.completion.chunk\"}\n\n\
data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\"Hello\"}}],\"object\":\"chat.completion.chunk\"}\n\n\
data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\" there\"}}],\"object\":\"chat.completion.chunk\"}\n\n\
data: {\"choices\":[{\"finish_reason\":\"stop\",\"index\":0,\"delta\":{}}],\"object\":\"chat.completion.chunk\"}\n\n\
data: {\"choices\":[],\"object\":\"chat.completion.chunk\",\"usage\":{\"completion_tokens\":2,\"prompt_tokens\":9,\"total_tokens\":11},\"timings\":{\"cache_n\":4,\"prompt_n\":5}}\n\n\
data: [DONE]\n\n";

fn chat(session: &str, stream: bool) -> InferenceCall {
    let request = InferenceRequest::chat(SessionId::new(session), vec![ChatMessage::user("Hello")])
        .with_model("m")
        .with_stream(stream);
    InferenceCall::new(RequestId(1), request, "Hello")
}

fn text(session: &str) -> InferenceCall {
    let request = InferenceRequest::text(SessionId::new(session), "Once").with_stream(false);
    InferenceCall::new(RequestId(1), request, "Once")
}

fn worker(server: &MockServer, slots: usize) -> LlamaCppWorker {
    let config: LlamaCppConfig = toml::from_str(&format!(
        "name = \"llama\"\nbase_url = \"{}\"\nslots = {slots}",
        server.uri()
    ))
    .unwrap();
    LlamaCppWorker::new(&config).unwrap()
}

async fn collect(worker: &LlamaCppWorker, call: InferenceCall) -> Vec<Result<WorkerChunk, WorkerError>> {
    match worker.infer_stream(call).await {
        Ok(stream) => stream.collect().await,
        Err(e) => vec![Err(e)],
    }
}

/// The `id_slot` of every generating request the server received, on either endpoint, after
/// checking that each session's chat and completion (sent one after the other, by
/// `ask_as_twenty_sessions`) carried the same one.
async fn slots_used(server: &MockServer) -> BTreeSet<u64> {
    let requests = server.received_requests().await.unwrap_or_default();
    let sent: Vec<(String, u64)> = requests
        .iter()
        .filter(|r| r.method == wiremock::http::Method::POST)
        .map(|r| {
            let body = r.body_json::<serde_json::Value>().unwrap();
            (r.url.path().to_string(), body["id_slot"].as_u64().unwrap())
        })
        .collect();
    for pair in sent.chunks(2) {
        assert_eq!(pair[0].0, "/v1/chat/completions");
        assert_eq!(pair[1].0, "/completion");
        assert_eq!(pair[0].1, pair[1].1, "one session, one slot: {sent:?}");
    }
    sent.into_iter().map(|(_, slot)| slot).collect()
}

async fn mount_answers(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/completion"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(ANSWER, "application/json"))
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(CHAT_ANSWER, "application/json"))
        .mount(server)
        .await;
}

/// Twenty sessions, each asking once in chat and once as a completion: both endpoints carry
/// the session's slot.
async fn ask_as_twenty_sessions(worker: &LlamaCppWorker) {
    for n in 0..20 {
        for call in [chat(&format!("s{n}"), false), text(&format!("s{n}"))] {
            let chunks = collect(worker, call).await;
            assert!(chunks.iter().all(Result::is_ok), "{chunks:?}");
        }
    }
}

#[tokio::test]
async fn the_slot_count_comes_from_the_servers_slots() {
    let server = MockServer::start().await;
    mount_answers(&server).await;
    Mock::given(method("GET"))
        .and(path("/health"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(r#"{"status":"ok"}"#, "application/json"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/slots"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            r#"[{"id":0,"is_processing":false},{"id":1,"is_processing":false},{"id":2,"is_processing":true}]"#,
            "application/json",
        ))
        .mount(&server)
        .await;
    let config: LlamaCppConfig =
        toml::from_str(&format!("name = \"llama\"\nbase_url = \"{}\"", server.uri())).unwrap();
    assert_eq!(config.slots, 1);
    let worker = LlamaCppWorker::new(&config).unwrap();

    // Configured: one slot, so every session shares slot 0.
    ask_as_twenty_sessions(&worker).await;
    assert_eq!(slots_used(&server).await, BTreeSet::from([0]));

    // The server lists three: after a health check, sessions spread over all of them.
    assert_eq!(worker.probe().await, Ok(None));
    server.reset().await;
    mount_answers(&server).await;
    ask_as_twenty_sessions(&worker).await;
    assert_eq!(slots_used(&server).await, BTreeSet::from([0, 1, 2]));
}

#[tokio::test]
async fn a_server_without_slots_keeps_the_configured_count() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/health"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/slots"))
        .respond_with(
            ResponseTemplate::new(501).set_body_string("This server does not support slots endpoint."),
        )
        .mount(&server)
        .await;
    mount_answers(&server).await;
    let config: LlamaCppConfig = toml::from_str(&format!(
        "name = \"llama\"\nbase_url = \"{}\"\nslots = 2",
        server.uri()
    ))
    .unwrap();
    let worker = LlamaCppWorker::new(&config).unwrap();
    assert_eq!(
        worker.probe().await,
        Ok(None),
        "the server is healthy all the same"
    );
    ask_as_twenty_sessions(&worker).await;
    assert_eq!(slots_used(&server).await, BTreeSet::from([0, 1]));
}

#[tokio::test]
async fn chat_goes_to_the_chat_endpoint_with_the_slot_and_the_prompt_cache() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(body_partial_json(json!({
            "model": "m",
            "messages": [{"role": "user", "content": "Hello"}],
            "stream": false,
            "cache_prompt": true,
            "max_tokens": 2,
        })))
        .respond_with(ResponseTemplate::new(200).set_body_raw(CHAT_ANSWER, "application/json"))
        .expect(1)
        .mount(&server)
        .await;
    let worker = worker(&server, 4);
    let mut call = chat("alice", false);
    call.request = std::sync::Arc::new(call.request.as_ref().clone().with_params(SamplingParams {
        max_tokens: Some(2),
        ..SamplingParams::default()
    }));
    let chunks = collect(&worker, call).await;
    assert_eq!(chunks[0], Ok(WorkerChunk::Token("Hello there".into())));
    assert_eq!(
        chunks.last(),
        Some(&Ok(WorkerChunk::Finish {
            reason: FinishReason::Length,
            usage: Some(Usage::new(9, 2))
        }))
    );
    // The slot is the session's, as on the native endpoint.
    let slot = tokio_prompt_orchestrator::shard::shard_for(&SessionId::new("alice"), 4) as u64;
    let requests = server.received_requests().await.unwrap();
    let body: serde_json::Value = requests[0].body_json().unwrap();
    assert_eq!(body["id_slot"].as_u64(), Some(slot));
    assert!(
        body.get("prompt").is_none() && body.get("n_predict").is_none(),
        "{body}"
    );
}

#[tokio::test]
async fn a_chat_stream_is_relayed_with_the_servers_counts() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(body_partial_json(
            json!({"stream": true, "stream_options": {"include_usage": true}, "cache_prompt": true}),
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "text/event-stream")
                .set_body_string(CHAT_STREAM),
        )
        .expect(1)
        .mount(&server)
        .await;
    let chunks = collect(&worker(&server, 1), chat("s", true)).await;
    // llama-server's own fields reach the caller, as any OpenAI-compatible server's do.
    let mut timings = Passthrough::default();
    timings
        .response
        .insert("timings".into(), json!({"cache_n": 4, "prompt_n": 5}));
    assert_eq!(
        chunks,
        [
            Ok(WorkerChunk::Token("Hello".into())),
            Ok(WorkerChunk::Token(" there".into())),
            Ok(WorkerChunk::Passthrough(Box::new(timings))),
            Ok(WorkerChunk::Finish {
                reason: FinishReason::Stop,
                usage: Some(Usage::new(9, 2))
            })
        ]
    );
}

#[tokio::test]
async fn a_prompt_from_a_configured_template_goes_to_the_native_endpoint_as_it_is() {
    let server = MockServer::start().await;
    let rendered = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n";
    Mock::given(method("POST"))
        .and(path("/completion"))
        .and(body_partial_json(
            json!({"prompt": rendered, "cache_prompt": true, "id_slot": 0}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_raw(ANSWER, "application/json"))
        .expect(1)
        .mount(&server)
        .await;
    let mut call = chat("s", false);
    call.prompt = rendered.into();
    call.prompt_templated = true;
    let chunks = collect(&worker(&server, 1), call).await;
    assert_eq!(chunks[0], Ok(WorkerChunk::Token("Hi".into())));
}

#[tokio::test]
async fn infer_asks_in_the_models_chat_format() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(body_partial_json(
            json!({"messages": [{"role": "user", "content": "Hi"}], "stream": false}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_raw(CHAT_ANSWER, "application/json"))
        .expect(1)
        .mount(&server)
        .await;
    assert_eq!(worker(&server, 1).infer("Hi").await.unwrap(), ["Hello there"]);
}

#[tokio::test]
async fn errors_on_either_endpoint_name_the_backend_and_status() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_raw(
            r#"{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}"#,
            "application/json",
        ))
        .mount(&server)
        .await;
    let worker = worker(&server, 1);
    for call in [chat("s", true), text("s")] {
        let Err(error) = worker.infer_stream(call).await else {
            panic!("a 503 is an error");
        };
        assert_eq!(error.status, Some(503));
        assert!(error.retryable);
        assert!(
            error.message.starts_with("llama: answered 503: Loading model"),
            "{}",
            error.message
        );
    }
}
