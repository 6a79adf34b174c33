//! The OpenAI-compatible worker against recorded upstream answers (wiremock): bodies sent,
//! tokens relayed, pass-through parts (tool calls, logprobs) kept, errors named, cuts and
//! timeouts reported; vLLM's priority and health probes.

use std::sync::Arc;

use futures_util::StreamExt;
use orchestrator_backends::openai::{Flavor, OpenAiConfig, OpenAiWorker, TimeoutConfig};
use orchestrator_backends::routing::health::{HealthConfig, HealthProbe};
use serde_json::json;
use tokio_prompt_orchestrator::{
    ChatMessage, FinishReason, InferenceCall, InferenceRequest, ModelWorker, Passthrough, Priority,
    RequestId, SessionId, Usage, WorkerChunk, WorkerError,
};
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn config(server: &MockServer) -> OpenAiConfig {
    OpenAiConfig {
        name: "vllm-a".into(),
        base_url: format!("{}/v1", server.uri()),
        api_key_env: None,
        model: Some("served-model".into()),
        headers: Default::default(),
        timeouts: TimeoutConfig::default(),
        routing: Default::default(),
        health_check: None,
    }
}

fn call(stream: bool) -> InferenceCall {
    let mut request = InferenceRequest::chat(SessionId::new("s"), vec![ChatMessage::user("Hello")])
        .with_model("client-model")
        .with_stream(stream);
    request.extra.insert(
        "tools".into(),
        tokio_prompt_orchestrator::raw(&json!([{"type": "function", "function": {"name": "f"}}])),
    );
    InferenceCall::new(RequestId(1), request, "Hello")
}

async fn collect(worker: &OpenAiWorker, call: InferenceCall) -> Vec<Result<WorkerChunk, WorkerError>> {
    match worker.infer_stream(call).await {
        Ok(stream) => stream.collect().await,
        Err(e) => vec![Err(e)],
    }
}

/// A chat completion as vLLM answers it.
const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"served-model",
  "choices":[{"index":0,"message":{"role":"assistant","content":"Hi there"},"finish_reason":"length"}],
  "usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;

/// A streamed chat completion as vLLM sends it, usage chunk included.
const STREAM: &str = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" there\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n\
data: [DONE]\n\n";

fn sse(body: &str) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .insert_header("content-type", "text/event-stream")
        .set_body_string(body)
}

#[tokio::test]
async fn a_whole_answer_becomes_one_token_and_the_finish() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(body_partial_json(json!({
            "model": "served-model",
            "stream": false,
            "messages": [{"role": "user", "content": "Hello"}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
        })))
        .respond_with(ResponseTemplate::new(200).set_body_raw(ANSWER, "application/json"))
        .expect(1)
        .mount(&server)
        .await;
    let worker = OpenAiWorker::new(&config(&server)).unwrap();
    let chunks = collect(&worker, call(false)).await;
    assert_eq!(
        chunks,
        [
            Ok(WorkerChunk::Token("Hi there".into())),
            Ok(WorkerChunk::Finish {
                reason: FinishReason::Length,
                usage: Some(Usage::new(5, 2))
            })
        ]
    );
}

#[tokio::test]
async fn a_stream_is_relayed_token_by_token() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(body_partial_json(
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        ))
        .respond_with(sse(STREAM))
        .expect(1)
        .mount(&server)
        .await;
    let worker = OpenAiWorker::new(&config(&server)).unwrap();
    let chunks = collect(&worker, call(true)).await;
    assert_eq!(
        chunks,
        [
            Ok(WorkerChunk::Token("Hi".into())),
            Ok(WorkerChunk::Token(" there".into())),
            Ok(WorkerChunk::Finish {
                reason: FinishReason::Stop,
                usage: Some(Usage::new(5, 2))
            })
        ]
    );
}

#[tokio::test]
async fn completions_go_to_their_endpoint() {
    let server = MockServer::start().await;
    let body = "data: {\"choices\":[{\"index\":0,\"text\":\" upon\",\"finish_reason\":null}]}\n\n\
                data: {\"choices\":[{\"index\":0,\"text\":\"\",\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
    Mock::given(method("POST"))
        .and(path("/v1/completions"))
        .and(body_partial_json(
            json!({"prompt": "Once", "model": "served-model"}),
        ))
        .respond_with(sse(body))
        .mount(&server)
        .await;
    let worker = OpenAiWorker::new(&config(&server)).unwrap();
    let request = InferenceRequest::text(SessionId::new("s"), "Once");
    let call = InferenceCall {
        id: RequestId(2),
        request: Arc::new(request),
        prompt: Arc::from("Once"),
        prompt_templated: false,
        cancel: CancellationToken::new(),
        messages: None,
        prefix_key: None,
        deadline: None,
        traceparent: None,
    };
    let chunks = collect(&worker, call).await;
    assert_eq!(chunks[0], Ok(WorkerChunk::Token(" upon".into())));
    assert_eq!(chunks.len(), 2);
}

#[tokio::test]
async fn upstream_errors_carry_status_and_message() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "7").set_body_raw(
            r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#,
            "application/json",
        ))
        .mount(&server)
        .await;
    let worker = OpenAiWorker::new(&config(&server)).unwrap();
    let chunks = collect(&worker, call(true)).await;
    assert_eq!(
        chunks,
        [Err(WorkerError {
            retry_after: Some(std::time::Duration::from_secs(7)),
            ..WorkerError::retryable("vllm-a: answered 429: Rate limit reached").with_status(429)
        })]
    );

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_string("prompt is too long"))
        .mount(&server)
        .await;
    let worker = OpenAiWorker::new(&config(&server)).unwrap();
    let error = worker.infer_stream(call(false)).await.err().unwrap();
    assert_eq!(error.message, "vllm-a: answered 400: prompt is too long");
    assert!(!error.retryable);
}

#[tokio::test]
async fn a_cut_stream_is_an_error_after_its_tokens() {
    let server = MockServer::start().await;
    let cut = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n";
    Mock::given(method("POST"))
        .respond_with(sse(cut))
        .mount(&server)
        .await;
    let worker = OpenAiWorker::new(&config(&server)).unwrap();
    let chunks = collect(&worker, call(true)).await;
    assert_eq!(chunks[0], Ok(WorkerChunk::Token("Hi".into())));
    let error = chunks[1].clone().unwrap_err();
    assert_eq!(
        error.message,
        "vllm-a: the stream ended before the answer was complete"
    );
    assert!(!error.retryable, "output already went out: no retry");
    assert_eq!(chunks.len(), 2);
}

#[tokio::test]
async fn an_error_event_mid_stream_ends_it() {
    let server = MockServer::start().await;
    let body = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n\
                data: {\"error\":{\"message\":\"engine died\"}}\n\n";
    Mock::given(method("POST"))
        .respond_with(sse(body))
        .mount(&server)
        .await;
    let worker = OpenAiWorker::new(&config(&server)).unwrap();
    let chunks = collect(&worker, call(true)).await;
    assert_eq!(chunks[1].clone().unwrap_err().message, "vllm-a: engine died");
}

#[tokio::test]
async fn unreachable_servers_are_retryable_errors() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = OpenAiConfig {
        base_url: format!("http://127.0.0.1:{port}/v1"),
        ..config(&MockServer::start().await)
    };
    config.name = "down".into();
    let worker = OpenAiWorker::new(&config).unwrap();
    let error = worker.infer_stream(call(true)).await.err().unwrap();
    assert_eq!(error.message, "down: could not connect (connection refused)");
    assert!(error.retryable);
}

#[tokio::test]
async fn a_slow_first_token_times_out() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(sse(STREAM).set_delay(std::time::Duration::from_secs(30)))
        .mount(&server)
        .await;
    let mut config = config(&server);
    config.timeouts.first_token_ms = 100;
    let worker = OpenAiWorker::new(&config).unwrap();
    let error = worker.infer_stream(call(true)).await.err().unwrap();
    assert_eq!(error.message, "vllm-a: no answer within the first-token timeout");
    assert!(error.retryable);
}

#[tokio::test]
async fn the_api_key_comes_from_the_environment() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("authorization", "Bearer sk-from-env"))
        .and(header("x-team", "search"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(ANSWER, "application/json"))
        .expect(1)
        .mount(&server)
        .await;
    // SAFETY: no other test reads or writes this variable.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("ORCHESTRATOR_TEST_OPENAI_KEY", "sk-from-env")
    };
    let mut config = config(&server);
    config.api_key_env = Some("ORCHESTRATOR_TEST_OPENAI_KEY".into());
    config.headers.insert("x-team".into(), "search".into());
    let worker = OpenAiWorker::new(&config).unwrap();
    assert!(collect(&worker, call(false)).await.iter().all(Result::is_ok));

    config.api_key_env = Some("ORCHESTRATOR_TEST_UNSET_KEY".into());
    let error = OpenAiWorker::new(&config).err().unwrap();
    assert_eq!(
        error.to_string(),
        "the environment variable ORCHESTRATOR_TEST_UNSET_KEY is not set or empty"
    );
}

#[tokio::test]
async fn the_one_shot_form_works_too() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(ANSWER, "application/json"))
        .mount(&server)
        .await;
    let worker = OpenAiWorker::new(&config(&server)).unwrap();
    assert_eq!(worker.infer("Hello").await.unwrap(), ["Hi there"]);
}

#[tokio::test]
async fn vllm_gets_the_request_priority_and_plain_openai_does_not() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({"priority": -1})))
        .respond_with(ResponseTemplate::new(200).set_body_raw(ANSWER, "application/json"))
        .expect(1)
        .named("vLLM with priority")
        .mount(&server)
        .await;
    let high = || {
        let mut call = call(false);
        let mut request = (*call.request).clone();
        request.priority = Priority::High;
        call.request = Arc::new(request);
        call
    };
    let vllm = OpenAiWorker::with_flavor(&config(&server), Flavor::Vllm).unwrap();
    assert!(collect(&vllm, high()).await.iter().all(Result::is_ok));
    // Normal priority is vLLM's default: nothing is sent, and plain OpenAI servers never get it.
    let openai = OpenAiWorker::new(&config(&server)).unwrap();
    for (worker, call) in [(&vllm, call(false)), (&openai, high())] {
        collect(worker, call).await;
        let last = server.received_requests().await.unwrap().pop().unwrap();
        let body: serde_json::Value = serde_json::from_slice(&last.body).unwrap();
        assert!(body.get("priority").is_none(), "{body}");
    }
}

#[tokio::test]
async fn health_probes_ask_each_server_the_way_it_answers() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/models"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(r#"{"data":[]}"#, "application/json"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/health"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/metrics"))
        .respond_with(ResponseTemplate::new(200).set_body_string(
            "vllm:num_requests_running{model_name=\"m\"} 3.0\nvllm:num_requests_waiting{model_name=\"m\"} 7.0\n",
        ))
        .mount(&server)
        .await;
    let openai = OpenAiWorker::new(&config(&server)).unwrap();
    assert_eq!(openai.probe().await, Ok(None));
    let vllm = OpenAiWorker::with_flavor(&config(&server), Flavor::Vllm).unwrap();
    assert_eq!(vllm.probe().await, Ok(Some(7)));

    server.reset().await;
    Mock::given(method("GET"))
        .and(path("/health"))
        .respond_with(ResponseTemplate::new(503).set_body_string("engine dead"))
        .mount(&server)
        .await;
    let error = vllm.probe().await.unwrap_err();
    assert_eq!(
        error,
        format!("GET {}/health answered 503: engine dead", server.uri())
    );
    assert!(
        openai
            .probe()
            .await
            .unwrap_err()
            .contains("/v1/models answered 404")
    );
}

#[test]
fn checks_are_on_for_vllm_and_off_for_other_openai_servers_unless_configured() {
    let config = OpenAiConfig {
        name: "n".into(),
        base_url: "http://h/v1".into(),
        api_key_env: None,
        model: None,
        headers: Default::default(),
        timeouts: TimeoutConfig::default(),
        routing: Default::default(),
        health_check: None,
    };
    assert_eq!(config.health(Flavor::Vllm), HealthConfig::default());
    assert_eq!(config.health(Flavor::OpenAi).interval_ms, 0);
    let on = OpenAiConfig {
        health_check: Some(HealthConfig::default()),
        ..config
    };
    assert_eq!(on.health(Flavor::OpenAi), HealthConfig::default());
}

/// The pass-through parts of `chunks`, merged as a client accumulates a stream.
fn merged(chunks: &[Result<WorkerChunk, WorkerError>]) -> serde_json::Value {
    let mut whole = Passthrough::default();
    for chunk in chunks {
        if let Ok(WorkerChunk::Passthrough(delta)) = chunk {
            whole.merge((**delta).clone());
        }
    }
    serde_json::to_value(whole).unwrap()
}

#[tokio::test]
async fn streamed_tool_calls_are_relayed_delta_by_delta() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(sse(include_str!("recorded/tool_calls.sse")))
        .mount(&server)
        .await;
    let worker = OpenAiWorker::new(&config(&server)).unwrap();
    let chunks = collect(&worker, call(true)).await;
    // Five tool-call deltas, each with its index, then the finish.
    let indexes: Vec<serde_json::Value> = chunks
        .iter()
        .filter_map(|c| match c {
            Ok(WorkerChunk::Passthrough(d)) => Some(d.message.get("tool_calls")?[0]["index"].clone()),
            _ => None,
        })
        .collect();
    assert_eq!(indexes, [json!(0), json!(0), json!(0), json!(1), json!(1)]);
    assert_eq!(
        chunks.last().unwrap().clone().unwrap(),
        WorkerChunk::Finish {
            reason: FinishReason::ToolCalls,
            usage: Some(Usage::new(82, 41)),
        }
    );
    assert_eq!(
        merged(&chunks),
        json!({
            "message": {"tool_calls": [
                {"index": 0, "id": "call_Wq1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}},
                {"index": 1, "id": "call_Xr2", "type": "function",
                 "function": {"name": "get_time", "arguments": "{\"tz\": \"CET\"}"}},
            ]},
            "response": {"system_fingerprint": "fp_0ba0d124f1"},
        })
    );
}

#[tokio::test]
async fn streamed_logprobs_follow_their_tokens() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(sse(include_str!("recorded/logprobs.sse")))
        .mount(&server)
        .await;
    let worker = OpenAiWorker::new(&config(&server)).unwrap();
    let chunks = collect(&worker, call(true)).await;
    let shape: Vec<String> = chunks
        .iter()
        .map(|c| match c.as_ref().unwrap() {
            WorkerChunk::Token(t) => format!("token {t}"),
            WorkerChunk::Passthrough(d) => match d.choice.get("logprobs").and_then(|l| l["content"].get(0)) {
                Some(lp) => format!("logprob {}", lp["token"].as_str().unwrap()),
                None => "opening".into(),
            },
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        shape,
        [
            "opening",
            "token Hi",
            "logprob Hi",
            "token !",
            "logprob !",
            "Finish { reason: Stop, usage: None }"
        ]
    );
}

#[tokio::test]
async fn a_whole_answer_passes_its_tool_calls_logprobs_and_fingerprint_on() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(include_str!("recorded/tool_calls.json"), "application/json"),
        )
        .mount(&server)
        .await;
    let worker = OpenAiWorker::new(&config(&server)).unwrap();
    let chunks = collect(&worker, call(false)).await;
    assert_eq!(chunks.len(), 2, "no text: the pass-through part, then the finish");
    assert_eq!(
        merged(&chunks),
        json!({
            "message": {"tool_calls": [{"id": "call_Wq1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
            "choice": {"logprobs": {"content": [{"token": "get", "logprob": -0.0012,
                "bytes": [103, 101, 116], "top_logprobs": []}], "refusal": null}},
            "response": {"system_fingerprint": "fp_0ba0d124f1", "service_tier": "default"},
        })
    );
    assert!(matches!(
        chunks[1],
        Ok(WorkerChunk::Finish {
            reason: FinishReason::ToolCalls,
            ..
        })
    ));
}

#[tokio::test]
async fn a_whole_answer_is_bounded_by_the_total_timeout_not_the_first_token_one() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(ANSWER, "application/json")
                .set_delay(std::time::Duration::from_millis(300)),
        )
        .mount(&server)
        .await;
    let mut config = config(&server);
    // The answer's head comes after the whole generation, later than a first token would.
    config.timeouts.first_token_ms = 100;
    let worker = OpenAiWorker::new(&config).unwrap();
    let chunks = collect(&worker, call(false)).await;
    assert!(
        matches!(&chunks[0], Ok(WorkerChunk::Token(t)) if t == "Hi there"),
        "{chunks:?}"
    );

    config.timeouts.total_ms = 100;
    let worker = OpenAiWorker::new(&config).unwrap();
    let error = worker.infer_stream(call(false)).await.err().unwrap();
    assert_eq!(
        error.message,
        "vllm-a: the call took longer than its total timeout"
    );
    assert!(error.retryable);
}
