//! OpenTelemetry traces over OTLP (`[telemetry.otlp]`): one span per traced request, a child per
//! pipeline stage, and under the Inference stage one per call to a backend, so retries and
//! fallbacks show; attributes from the OpenTelemetry GenAI conventions.
//!
//! Spans are built when the request ends, from what the request measured anyway: the stage
//! timings every answer carries, and the backend calls its router recorded
//! ([`RequestTrace`]). Nothing is done per stage while the request runs, and a request that is
//! not sampled carries no trace at all: with tracing off, or for the requests a ratio leaves
//! out, the cost is one random number. The SDK's batch processor exports from a thread of its
//! own.
//!
//! Sampling follows the client: a `traceparent` it sent decides (sampled or not, and the trace is
//! continued); without one, `sampling_ratio` does. The W3C context goes on to every upstream
//! call (`traceparent`) and, in the request's metadata, to remote workers.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SpanData, SpanEvents, SpanLinks, SpanProcessor};
use serde::Deserialize;
use tokio_prompt_orchestrator::trace::{
    RequestTrace, SpanRecord, SpanValue, TraceParent, new_span_id, new_trace_id,
};
use tokio_prompt_orchestrator::{Completion, InferenceRequest, PipelineError, Stage};

/// `[telemetry.otlp]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector: `http://HOST:4317` for gRPC, `http://HOST:4318` for HTTP (where
    /// `/v1/traces` is added unless the URL has a path).
    pub endpoint: String,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Headers sent with every export, each read from the environment variable named:
    /// `{ "x-honeycomb-team" = "HONEYCOMB_KEY" }`. Keys stay out of the config file.
    #[serde(default)]
    pub headers_env: BTreeMap<String, String>,
    /// Share of requests traced when the client sent no `traceparent` (0 to 1).
    #[serde(default = "default_ratio")]
    pub sampling_ratio: f64,
    #[serde(default = "default_service")]
    pub service_name: String,
    /// Also exports the request's messages (`gen_ai.input.messages`). Off: no prompt or answer
    /// text ever leaves in a span.
    #[serde(default)]
    pub capture_content: bool,
    /// How long one export may take.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_ratio() -> f64 {
    1.0
}

fn default_service() -> String {
    "orchestrator".into()
}

fn default_timeout_ms() -> u64 {
    10_000
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317 by convention).
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318).
    Http,
}

impl OtlpConfig {
    /// Problems with the settings, by the setting's name.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://"))
            || http::Uri::from_str(&self.endpoint).is_err()
        {
            problems.push((
                "endpoint",
                format!(
                    "must be the collector's URL, e.g. \"http://127.0.0.1:4317\" (got {:?})",
                    self.endpoint
                ),
            ));
        }
        if self.protocol == OtlpProtocol::Grpc && self.endpoint.starts_with("https://") {
            problems.push((
                "endpoint",
                "OTLP/gRPC is sent in plain text here: for a collector behind TLS use protocol = \"http\" \
                 (OTLP/HTTP, https works), or a collector on this host"
                    .to_string(),
            ));
        }
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            problems.push((
                "sampling_ratio",
                format!("must be from 0 to 1 (got {})", self.sampling_ratio),
            ));
        }
        for (header, variable) in &self.headers_env {
            if http::HeaderName::from_str(header).is_err() {
                problems.push(("headers_env", format!("{header:?} is not a valid header name")));
            } else if std::env::var_os(variable).is_none() {
                problems.push((
                    "headers_env",
                    format!("the environment variable {variable} (for the header {header}) is not set"),
                ));
            }
        }
        if self.timeout_ms == 0 {
            problems.push(("timeout_ms", "must be at least 1 (the default is 10000)".into()));
        }
        problems
    }

    fn headers(&self) -> Result<HashMap<String, String>, String> {
        self.headers_env
            .iter()
            .map(|(header, variable)| match std::env::var(variable) {
                Ok(value) => Ok((header.clone(), value)),
                Err(_) => Err(format!(
                    "telemetry.otlp.headers_env: the environment variable {variable} is not set"
                )),
            })
            .collect()
    }

    fn traces_url(&self) -> String {
        let trimmed = self.endpoint.trim_end_matches('/');
        match http::Uri::from_str(trimmed) {
            Ok(uri) if uri.path() == "/" || uri.path().is_empty() => format!("{trimmed}/v1/traces"),
            _ => trimmed.to_string(),
        }
    }
}

/// A server's trace exporter.
pub struct Tracing {
    processor: BatchSpanProcessor,
    scope: InstrumentationScope,
    ratio: f64,
    capture_content: bool,
}

impl Tracing {
    /// Starts the exporter `config` describes. Call inside a tokio runtime (the gRPC client
    /// runs on it).
    ///
    /// # Errors
    /// When a header's variable is unset or the exporter cannot be built.
    pub fn start(config: &OtlpConfig) -> Result<Arc<Self>, String> {
        let headers = config.headers()?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let exporter = match config.protocol {
            OtlpProtocol::Grpc => {
                let mut metadata = http::HeaderMap::new();
                for (name, value) in &headers {
                    let name = http::HeaderName::from_str(name).map_err(|e| e.to_string())?;
                    let value = http::HeaderValue::from_str(value).map_err(|e| e.to_string())?;
                    metadata.insert(name, value);
                }
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(config.endpoint.clone())
                    .with_timeout(timeout)
                    .with_metadata(tonic::metadata::MetadataMap::from_headers(metadata))
                    .build()
            }
            OtlpProtocol::Http => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(config.traces_url())
                .with_timeout(timeout)
                .with_headers(headers)
                .build(),
        }
        .map_err(|e| format!("telemetry.otlp: the exporter cannot be built: {e}"))?;
        let mut processor = BatchSpanProcessor::builder(exporter).build();
        processor.set_resource(
            &Resource::builder_empty()
                .with_attributes([
                    KeyValue::new("service.name", config.service_name.clone()),
                    KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                ])
                .build(),
        );
        Ok(Arc::new(Self {
            processor,
            scope: InstrumentationScope::builder("orchestrator")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            ratio: config.sampling_ratio,
            capture_content: config.capture_content,
        }))
    }

    /// Whether to trace a request to `route` that the client sent with `client` (its
    /// `traceparent`), and its trace if so. `request`'s messages are kept when content is
    /// captured.
    pub fn begin(
        self: &Arc<Self>,
        client: Option<&str>,
        route: &str,
        request: &InferenceRequest,
    ) -> Option<Box<TracedRequest>> {
        let client = client.and_then(TraceParent::parse);
        let sampled = match client {
            Some(parent) => parent.sampled,
            None => self.ratio >= 1.0 || fastrand::f64() < self.ratio,
        };
        if !sampled {
            return None;
        }
        let inference = new_span_id();
        let trace_id = client.map_or_else(new_trace_id, |c| c.trace_id);
        let parent = TraceParent {
            trace_id,
            parent_id: inference,
            sampled: true,
        };
        Some(Box::new(TracedRequest {
            tracing: self.clone(),
            trace: Arc::new(RequestTrace::new(parent)),
            root: new_span_id(),
            inference,
            remote_parent: client.map(|c| c.parent_id),
            start: SystemTime::now(),
            submitted: None,
            operation: operation(route),
            route: route.to_string(),
            model: request.model.clone(),
            params: (request.params.temperature, request.params.max_tokens),
            content: self
                .capture_content
                .then(|| serde_json::to_string(&request.input).unwrap_or_default()),
            ended: false,
        }))
    }

    /// Sends what is buffered. Blocks: call from a blocking thread.
    pub fn flush_blocking(&self) {
        if let Err(e) = self.processor.force_flush() {
            tracing::warn!(error = %e, "Spans could not be exported before exit.");
        }
    }

    fn export(&self, mut span: SpanData) {
        span.instrumentation_scope = self.scope.clone();
        self.processor.on_end(span);
    }
}

/// The GenAI operation a route performs.
fn operation(route: &str) -> &'static str {
    match route {
        "/v1/completions" => "text_completion",
        "/v1/embeddings" => "embeddings",
        _ => "chat",
    }
}

/// A request being traced: its ids and what its spans are built from when it ends.
pub struct TracedRequest {
    tracing: Arc<Tracing>,
    /// Goes into the pipeline request; backend calls are recorded in it.
    pub trace: Arc<RequestTrace>,
    root: [u8; 8],
    /// The Inference stage's span, which the backend calls hang under.
    inference: [u8; 8],
    /// The client's span, when it sent a `traceparent`.
    remote_parent: Option<[u8; 8]>,
    start: SystemTime,
    /// When the request entered the pipeline: the stage timings count from here.
    submitted: Option<SystemTime>,
    operation: &'static str,
    route: String,
    model: String,
    /// `temperature` and `max_tokens` as asked.
    params: (Option<f32>, Option<u32>),
    /// The request's input as JSON, when content is captured.
    content: Option<String>,
    ended: bool,
}

impl TracedRequest {
    /// The request enters the pipeline now (after any wait for a place in it).
    pub fn submitted(&mut self) {
        self.submitted = Some(SystemTime::now());
    }

    pub fn completed(&mut self, completion: &Completion) {
        self.end(Ok(completion));
    }

    pub fn failed(&mut self, error: &PipelineError) {
        self.end(Err(error));
    }

    fn end(&mut self, result: Result<&Completion, &PipelineError>) {
        self.ended = true;
        let end = SystemTime::now();
        let submitted = self.submitted.unwrap_or(end);
        let mut root = self.span(
            self.root,
            self.remote_parent,
            format!("{} {}", self.operation, self.model),
        );
        root.span_kind = SpanKind::Server;
        root.start_time = self.start;
        root.end_time = end;
        root.parent_span_is_remote = self.remote_parent.is_some();
        let attributes = &mut root.attributes;
        attributes.extend([
            KeyValue::new("gen_ai.operation.name", self.operation),
            KeyValue::new("gen_ai.request.model", self.model.clone()),
            KeyValue::new("http.route", self.route.clone()),
        ]);
        if let Some(temperature) = self.params.0 {
            attributes.push(KeyValue::new(
                "gen_ai.request.temperature",
                f64::from(temperature),
            ));
        }
        if let Some(max_tokens) = self.params.1 {
            attributes.push(KeyValue::new("gen_ai.request.max_tokens", i64::from(max_tokens)));
        }
        if let Some(content) = self.content.take() {
            attributes.push(KeyValue::new("gen_ai.input.messages", content));
        }
        let mut spans = Vec::new();
        match result {
            Ok(completion) => {
                let usage = completion.usage;
                root.attributes.extend([
                    KeyValue::new("gen_ai.response.model", self.model.clone()),
                    KeyValue::new("gen_ai.usage.input_tokens", i64::from(usage.prompt_tokens)),
                    KeyValue::new("gen_ai.usage.output_tokens", i64::from(usage.completion_tokens)),
                    KeyValue::new(
                        "gen_ai.response.finish_reasons",
                        Value::Array(vec![StringValue::from(finish_reason(completion))].into()),
                    ),
                ]);
                if let Some(first) = completion.timings.first_token {
                    root.events.events.push(opentelemetry::trace::Event::new(
                        "gen_ai.first_token",
                        submitted + first,
                        vec![KeyValue::new(
                            "gen_ai.server.time_to_first_token",
                            first.as_secs_f64(),
                        )],
                        0,
                    ));
                }
                spans.extend(self.stage_spans(completion, submitted));
            }
            Err(error) => {
                root.status = Status::error(error.to_string());
                root.attributes.push(KeyValue::new("error.type", error.kind()));
                // Without the timings of a finished answer, the Inference span covers the
                // request's time in the pipeline, so the backend calls still have their parent.
                let mut inference = self.span(self.inference, Some(self.root), "stage inference".into());
                inference.start_time = submitted;
                inference.end_time = end;
                inference.status = Status::error(error.to_string());
                spans.push(inference);
            }
        }
        for call in self.trace.take() {
            spans.push(self.call_span(call));
        }
        spans.push(root);
        for span in spans {
            self.tracing.export(span);
        }
    }

    /// One span per stage, from when the request joined its queue until the stage finished with
    /// it; the queue wait and the work as attributes, the start of the work as an event. The
    /// stages hand a request on as soon as they start it (Inference, Post and Stream overlap:
    /// each is active for the whole stream), so each queue is joined when the stage before
    /// started, or finished for RAG and Assemble.
    fn stage_spans(&self, completion: &Completion, submitted: SystemTime) -> Vec<SpanData> {
        let timings = &completion.timings;
        let mut joined = Duration::ZERO;
        Stage::ALL
            .iter()
            .map(|&stage| {
                let timing = timings.stage(stage);
                let started = joined + timing.queued;
                let finished = started + timing.active;
                let id = if stage == Stage::Inference {
                    self.inference
                } else {
                    new_span_id()
                };
                let mut span = self.span(id, Some(self.root), format!("stage {stage}"));
                span.start_time = submitted + joined;
                span.end_time = submitted + finished;
                span.attributes.extend([
                    KeyValue::new("orchestrator.stage", stage.as_str()),
                    KeyValue::new("orchestrator.queue_wait_ms", millis(timing.queued)),
                    KeyValue::new("orchestrator.work_ms", millis(timing.active)),
                ]);
                span.events.events.push(opentelemetry::trace::Event::new(
                    "started",
                    submitted + started,
                    Vec::new(),
                    0,
                ));
                joined = match stage {
                    Stage::Rag | Stage::Assemble => finished,
                    _ => started,
                };
                span
            })
            .collect()
    }

    fn call_span(&self, call: SpanRecord) -> SpanData {
        let mut span = self.span(call.span_id, Some(self.inference), call.name);
        span.span_kind = SpanKind::Client;
        span.start_time = call.start;
        span.end_time = call.end;
        span.attributes
            .extend(call.attributes.into_iter().map(|(key, value)| match value {
                SpanValue::Str(s) => KeyValue::new(key, s),
                SpanValue::Int(i) => KeyValue::new(key, i),
                SpanValue::Bool(b) => KeyValue::new(key, b),
            }));
        if let Some(error) = call.error {
            span.status = Status::error(error);
        }
        span
    }

    fn span(&self, id: [u8; 8], parent: Option<[u8; 8]>, name: String) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(self.trace.parent.trace_id),
                SpanId::from_bytes(id),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: parent.map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: name.into(),
            start_time: self.start,
            end_time: self.start,
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::default(),
        }
    }
}

/// A request dropped before its end (the client went away mid-answer) is exported as cancelled.
impl Drop for TracedRequest {
    fn drop(&mut self) {
        if !self.ended {
            self.end(Err(&PipelineError::Cancelled));
        }
    }
}

fn finish_reason(completion: &Completion) -> &'static str {
    use tokio_prompt_orchestrator::FinishReason;
    match completion.finish_reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: &str) -> OtlpConfig {
        toml::from_str(&format!("endpoint = {endpoint:?}")).unwrap()
    }

    #[test]
    fn defaults_and_the_traces_url() {
        let grpc = config("http://127.0.0.1:4317");
        assert_eq!(grpc.protocol, OtlpProtocol::Grpc);
        assert_eq!(
            (grpc.sampling_ratio, grpc.service_name.as_str()),
            (1.0, "orchestrator")
        );
        assert!(!grpc.capture_content);
        assert!(grpc.problems().is_empty());
        assert_eq!(config("http://c:4318").traces_url(), "http://c:4318/v1/traces");
        assert_eq!(config("http://c:4318/").traces_url(), "http://c:4318/v1/traces");
        assert_eq!(
            config("https://c/otlp/v1/traces").traces_url(),
            "https://c/otlp/v1/traces"
        );
    }

    #[test]
    fn each_bad_setting_is_named() {
        let mut bad = config("127.0.0.1:4317");
        bad.sampling_ratio = 1.5;
        bad.timeout_ms = 0;
        bad.headers_env = [
            ("bad header".to_string(), "X".to_string()),
            (
                "x-key".to_string(),
                "ORCHESTRATOR_TEST_VARIABLE_NEVER_SET".to_string(),
            ),
        ]
        .into();
        let named: Vec<&str> = bad.problems().iter().map(|(field, _)| *field).collect();
        assert_eq!(
            named,
            [
                "endpoint",
                "sampling_ratio",
                "headers_env",
                "headers_env",
                "timeout_ms"
            ]
        );
        let tls = config("https://collector:4317");
        assert_eq!(tls.problems()[0].0, "endpoint");
        assert!(tls.problems()[0].1.contains("protocol = \"http\""));
    }
}
