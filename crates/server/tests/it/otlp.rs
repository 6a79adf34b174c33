//! Traces over OTLP, received by a collector in the test (gRPC, and HTTP/protobuf): the span tree
//! of one request (the request, its five stages, a failed call and its fallback under Inference),
//! the GenAI attributes, the client's trace continued, and the `traceparent` each upstream saw.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use orchestrator_mock::{Behaviour, RunningMock};
use orchestrator_server::config::{BackendConfig, Config, ModelConfig};
use orchestrator_server::telemetry::otlp::{OtlpConfig, OtlpProtocol};
use orchestrator_server::{Server, ServerHandle};
use prost::Message;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::gateway_mock::{mock, openai_backend};
use crate::support::client;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// Spans a collector received, whichever way they came.
#[derive(Clone, Default)]
pub struct Received {
    spans: Arc<Mutex<Vec<Span>>>,
    arrived: Arc<Notify>,
}

impl Received {
    fn add(&self, request: ExportTraceServiceRequest) {
        let spans = request
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        self.spans.lock().unwrap().extend(spans);
        self.arrived.notify_waiters();
    }

    /// Waits until `n` spans have arrived (bounded by the test's own timeout).
    pub async fn at_least(&self, n: usize) -> Vec<Span> {
        loop {
            let arrived = self.arrived.notified();
            {
                let spans = self.spans.lock().unwrap();
                if spans.len() >= n {
                    return spans.clone();
                }
            }
            arrived.await;
        }
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC collector on a free port: its URL and what it receives.
async fn grpc_collector() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Received::default();
    let service = TraceServiceServer::new(received.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (url, received)
}

/// An OTLP/HTTP collector (protobuf bodies at `/v1/traces`) on a free port.
pub async fn http_collector() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Received::default();
    let app = axum::Router::new().route(
        "/v1/traces",
        post({
            let received = received.clone();
            move |body: Bytes| async move {
                received.add(ExportTraceServiceRequest::decode(body).unwrap());
                ExportTraceServiceResponse::default().encode_to_vec()
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

fn otlp(endpoint: String, protocol: OtlpProtocol, sampling_ratio: f64) -> OtlpConfig {
    OtlpConfig {
        endpoint,
        protocol,
        headers_env: BTreeMap::new(),
        sampling_ratio,
        service_name: "orchestrator-test".into(),
        capture_content: false,
        timeout_ms: 10_000,
    }
}

/// A gateway serving model `m` from `primary`, falling back to `fallback`, with no retry on the
/// primary itself: a failing primary makes exactly two calls.
async fn gateway(primary: &RunningMock, fallback: &RunningMock, otlp: OtlpConfig) -> (String, Stop) {
    let mut config = Config::default();
    config.models.clear();
    let mut model = ModelConfig::single("m", "primary");
    model.fallback = vec!["fallback".into()];
    model.retries.max = 0;
    config.models.push(model);
    config.backends = vec![
        BackendConfig::Openai(openai_backend("primary", primary)),
        BackendConfig::Openai(openai_backend("fallback", fallback)),
    ];
    config.telemetry.otlp = Some(otlp);
    let mut config = crate::support::in_suite_runtime(config);
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    let server = Server::bind(config).await.unwrap();
    let base = format!("http://{}", server.local_addr().unwrap());
    let handle = server.handle();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    (
        base,
        Stop {
            stop,
            task,
            _handle: handle,
        },
    )
}

/// Stops a gateway: it drains, then sends the spans it holds.
struct Stop {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<tokio_prompt_orchestrator::ShutdownReport>>,
    _handle: ServerHandle,
}

impl Stop {
    async fn now(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.clone()?.value)
}

pub fn text(span: &Span, key: &str) -> String {
    match attribute(span, key) {
        Some(Value::StringValue(s)) => s,
        other => panic!("{}: {key} is {other:?}", span.name),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attribute(span, key) {
        Some(Value::IntValue(i)) => i,
        other => panic!("{}: {key} is {other:?}", span.name),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_a_span_tree_continuing_the_clients_trace() {
    let (collector, received) = grpc_collector().await;
    let primary = mock(Behaviour {
        error_rate: 1.0,
        ..Behaviour::default()
    })
    .await;
    let fallback = mock(Behaviour::default()).await;
    let (base, stop) = gateway(&primary, &fallback, otlp(collector, OtlpProtocol::Grpc, 0.0)).await;

    let response = client()
        .post(format!("{base}/v1/chat/completions"))
        .header("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))
        .json(&json!({
            "model": "m",
            "stream": true,
            "temperature": 0.5,
            "messages": [{"role": "user", "content": "a secret prompt"}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    // The sampling ratio is 0, but the client's trace is sampled: it decides.
    stop.now().await;
    let spans = received.at_least(8).await;
    assert_eq!(
        spans.len(),
        8,
        "{:#?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    assert!(
        spans.iter().all(|s| hex(&s.trace_id) == TRACE_ID),
        "one trace, the client's"
    );
    let by_name = |name: &str| -> Vec<&Span> { spans.iter().filter(|s| s.name == name).collect() };

    // The request: a server span under the client's, with the GenAI attributes.
    let [root] = by_name("chat m")
        .into_iter()
        .filter(|s| s.kind == 2)
        .collect::<Vec<_>>()[..]
    else {
        panic!("one server span")
    };
    assert_eq!(hex(&root.parent_span_id), CLIENT_SPAN);
    assert_eq!(text(root, "gen_ai.operation.name"), "chat");
    assert_eq!(text(root, "gen_ai.request.model"), "m");
    assert_eq!(text(root, "gen_ai.response.model"), "m");
    assert_eq!(int(root, "gen_ai.usage.output_tokens"), 16);
    assert!(int(root, "gen_ai.usage.input_tokens") > 0);
    match attribute(root, "gen_ai.response.finish_reasons") {
        Some(Value::ArrayValue(array)) => {
            assert_eq!(array.values.len(), 1);
            assert_eq!(array.values[0].value, Some(Value::StringValue("stop".into())));
        }
        other => panic!("finish reasons: {other:?}"),
    }
    assert_eq!(
        attribute(root, "gen_ai.request.temperature"),
        Some(Value::DoubleValue(0.5))
    );
    assert!(root.events.iter().any(|e| e.name == "gen_ai.first_token"));

    // A span per stage, in order, each under the request.
    let mut stages: Vec<&Span> = spans.iter().filter(|s| s.name.starts_with("stage ")).collect();
    stages.sort_by_key(|s| s.start_time_unix_nano);
    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "stage rag",
            "stage assemble",
            "stage inference",
            "stage post",
            "stage stream"
        ]
    );
    for stage in &stages {
        assert_eq!(stage.parent_span_id, root.span_id, "{}", stage.name);
        assert!(attribute(stage, "orchestrator.queue_wait_ms").is_some());
        assert!(attribute(stage, "orchestrator.work_ms").is_some());
        assert!(stage.start_time_unix_nano >= root.start_time_unix_nano);
    }
    let inference = stages[2];

    // Two calls under Inference: the primary's failure, then the fallback's answer.
    let mut calls: Vec<&Span> = by_name("chat m").into_iter().filter(|s| s.kind == 3).collect();
    calls.sort_by_key(|s| s.start_time_unix_nano);
    let backends: Vec<String> = calls.iter().map(|c| text(c, "orchestrator.backend")).collect();
    assert_eq!(backends, ["primary", "fallback"]);
    for call in &calls {
        assert_eq!(call.parent_span_id, inference.span_id);
        assert_eq!(text(call, "gen_ai.request.model"), "m");
    }
    assert_eq!(text(calls[0], "orchestrator.attempt.outcome"), "failure");
    assert_eq!(text(calls[0], "error.type"), "503");
    assert_eq!(calls[0].status.as_ref().map(|s| s.code), Some(2), "error status");
    assert_eq!(text(calls[1], "orchestrator.attempt.outcome"), "success");
    let address = fallback.local_addr().to_string();
    assert_eq!(text(calls[1], "server.address"), address);

    // Each upstream saw the trace with its own call's span as the parent.
    for (mock, call) in [(&primary, calls[0]), (&fallback, calls[1])] {
        let seen = mock.handle().last_request().unwrap().traceparent;
        let expected = format!("00-{TRACE_ID}-{}-01", hex(&call.span_id));
        assert_eq!(seen.as_deref(), Some(expected.as_str()));
    }

    // No prompt text leaves without `capture_content`.
    let everything = format!("{spans:?}");
    assert!(!everything.contains("secret prompt"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_export_samples_by_ratio_and_passes_an_unsampled_context_on() {
    let (collector, received) = http_collector().await;
    let upstream = mock(Behaviour::default()).await;
    let mut config = otlp(collector, OtlpProtocol::Http, 1.0);
    config.capture_content = true;
    let (base, stop) = gateway(&upstream, &upstream, config).await;
    let chat = |traceparent: Option<&'static str>| {
        let mut request = client()
            .post(format!("{base}/v1/chat/completions"))
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "captured words"}]}));
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        request.send()
    };

    // A client's unsampled trace is not traced here, and reaches the upstream as it came.
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    assert_eq!(chat(Some(unsampled)).await.unwrap().status(), 200);
    let seen = upstream.handle().last_request().unwrap().traceparent;
    assert_eq!(seen.as_deref(), Some(unsampled));

    // Without one, the ratio (1.0) traces it in a trace of its own.
    assert_eq!(chat(None).await.unwrap().status(), 200);
    stop.now().await;
    let spans = received.at_least(7).await;
    assert_eq!(
        spans.len(),
        7,
        "one request's spans: request, five stages, one call"
    );
    let root = spans.iter().find(|s| s.kind == 2).unwrap();
    assert!(root.parent_span_id.is_empty(), "a root span");
    assert_ne!(hex(&root.trace_id), "0af7651916cd43dd8448eb211c80319c");
    // Content capture is on: the request's messages are exported.
    assert!(text(root, "gen_ai.input.messages").contains("captured words"));
}
