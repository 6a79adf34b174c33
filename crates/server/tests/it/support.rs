//! Shared by the gateway tests: an in-process server on port 0, a test worker whose behaviour is
//! chosen by model name, and helpers to read SSE bodies.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream;
use orchestrator_backends::Router;
use orchestrator_server::config::{Config, RuntimeMode};
use orchestrator_server::{Server, ServerHandle};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;
use tokio_prompt_orchestrator::{
    EchoWorker, InferenceCall, ModelWorker, ShutdownReport, TokenStream, WorkerChunk, WorkerError,
};

/// What the test worker saw.
#[derive(Default)]
pub struct Counters {
    /// Calls that reached the worker.
    pub started: AtomicUsize,
    /// Streams that ran to their end.
    pub finished: AtomicUsize,
    /// Streams dropped before their end: the upstream call was cancelled.
    pub abandoned: AtomicUsize,
    /// Every call, in the order the calls reached the worker.
    pub calls: std::sync::Mutex<Vec<Seen>>,
}

/// One call the test worker saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub session: String,
    /// The last user message.
    pub text: String,
    /// The name of the thread the call ran on.
    pub thread: String,
}

/// Model names select behaviour:
/// - `echo`: echoes the prompt.
/// - `gated`: one token per permit added to `gate` ("tok0", " tok1", ...), up to 100 tokens.
/// - `fail-before`: fails before any token, like an upstream answering 503.
/// - `fail-after-2`: two tokens, then the upstream connection breaks.
///
/// Clones share their counters and gate.
#[derive(Clone)]
pub struct TestWorker {
    pub counters: Arc<Counters>,
    pub gate: Arc<Semaphore>,
}

pub const MODELS: [&str; 4] = ["echo", "gated", "fail-before", "fail-after-2"];

impl Default for TestWorker {
    fn default() -> Self {
        Self {
            counters: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
        }
    }
}

impl TestWorker {
    pub fn registry(&self) -> Router {
        let mut registry = Router::new();
        for name in MODELS {
            registry.insert_worker(name, Arc::new(self.clone()));
        }
        registry
    }

    pub fn started(&self) -> usize {
        self.counters.started.load(Ordering::SeqCst)
    }

    /// The sessions of the calls so far, in the order they reached the worker.
    pub fn sessions(&self) -> Vec<String> {
        self.calls().into_iter().map(|c| c.session).collect()
    }

    /// The calls so far, in the order they reached the worker.
    pub fn calls(&self) -> Vec<Seen> {
        self.counters.calls.lock().unwrap().clone()
    }

    pub fn abandoned(&self) -> usize {
        self.counters.abandoned.load(Ordering::SeqCst)
    }

    /// Lets the `gated` model produce `tokens` more tokens.
    pub fn release(&self, tokens: usize) {
        self.gate.add_permits(tokens);
    }
}

/// Counts the stream as finished or abandoned when it is dropped.
struct Watch {
    counters: Arc<Counters>,
    done: bool,
}

impl Watch {
    fn set_done(&mut self) {
        self.done = true;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let counter = if self.done {
            &self.counters.finished
        } else {
            &self.counters.abandoned
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl ModelWorker for TestWorker {
    async fn infer(&self, prompt: &str) -> Result<Vec<String>, WorkerError> {
        EchoWorker::new().infer(prompt).await
    }

    async fn infer_stream(&self, call: InferenceCall) -> Result<TokenStream, WorkerError> {
        self.counters.calls.lock().unwrap().push(Seen {
            session: call.request.session.to_string(),
            text: call
                .request
                .input
                .last_user_text()
                .unwrap_or_default()
                .to_string(),
            thread: std::thread::current().name().unwrap_or_default().to_string(),
        });
        self.counters.started.fetch_add(1, Ordering::SeqCst);
        let mut watch = Watch {
            counters: self.counters.clone(),
            done: false,
        };
        match call.request.model.as_str() {
            "fail-before" => {
                watch.set_done();
                Err(WorkerError::retryable("upstream answered 503: no capacity").with_status(503))
            }
            "fail-after-2" => {
                let items = vec![
                    Ok(WorkerChunk::Token("one".into())),
                    Ok(WorkerChunk::Token(" two".into())),
                    Err(WorkerError::retryable("upstream connection reset after 2 tokens")),
                ];
                Ok(stream::iter(items)
                    .map(move |item| {
                        // Naming `watch` whole makes the closure own it, not just its flag.
                        let watch = &mut watch;
                        if item.is_err() {
                            watch.set_done();
                        }
                        item
                    })
                    .boxed())
            }
            "gated" => {
                let gate = self.gate.clone();
                let tokens = stream::unfold((0u32, watch), move |(i, mut watch)| {
                    let gate = gate.clone();
                    async move {
                        if i == 100 {
                            watch.set_done();
                            return None;
                        }
                        gate.acquire().await.ok()?.forget();
                        let token = if i == 0 {
                            "tok0".to_string()
                        } else {
                            format!(" tok{i}")
                        };
                        Some((Ok(WorkerChunk::Token(token)), (i + 1, watch)))
                    }
                });
                Ok(tokens.boxed())
            }
            _ => {
                let echo = EchoWorker::new().infer_stream(call).await?;
                Ok(echo
                    .map(move |chunk| {
                        let watch = &mut watch;
                        if matches!(chunk, Ok(WorkerChunk::Finish { .. })) {
                            watch.set_done();
                        }
                        chunk
                    })
                    .boxed())
            }
        }
    }
}

/// A server running in this process.
pub struct TestServer {
    pub base: String,
    pub worker: TestWorker,
    pub handle: ServerHandle,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<io::Result<ShutdownReport>>,
}

impl TestServer {
    /// Starts a server on port 0 with `config` (its models are replaced by the test worker's).
    pub async fn start(config: Config) -> Self {
        let mut config = in_suite_runtime(config);
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        let worker = TestWorker::default();
        let server = Server::bind_with_models(config, worker.registry()).await.unwrap();
        let base = format!("http://{}", server.local_addr().unwrap());
        let handle = server.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Self {
            base,
            worker,
            handle,
            stop: Some(stop),
            task,
        }
    }

    pub async fn default() -> Self {
        Self::start(Config::default()).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Triggers the drain, as SIGTERM does in the binary.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn chat(&self, body: serde_json::Value) -> reqwest::Response {
        client()
            .post(self.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

/// The hex SHA-256 digest of `key`, as `[[auth.keys]] sha256` takes it.
pub fn sha256_hex(key: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

/// A chat request body for `model` with one user message.
pub fn chat_body(model: &str, content: &str) -> serde_json::Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": content}]})
}

/// The error object of an error response, after checking its status.
pub async fn expect_error(response: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status, "status");
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "errors are JSON"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    let error = body["error"].clone();
    for field in ["message", "type", "param", "code"] {
        assert!(error.get(field).is_some(), "error.{field} missing in {body}");
    }
    error
}

/// One SSE frame: its event name (if any), data lines joined, and whether it was a comment.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Data(String),
    Event(String, String),
    Comment(String),
}

/// Reads SSE frames from a streaming response as they arrive.
pub struct SseReader {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> Self {
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Self {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// The next frame, or `None` when the stream ends; keep-alive comments are skipped.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let raw: String = self.buffer.drain(..end + 2).collect();
                let frame = parse_frame(raw.trim_end());
                if frame == Frame::Comment(String::new()) {
                    continue;
                }
                return Some(frame);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.body.next())
                .await
                .expect("the stream stalled")?
                .ok()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Every remaining frame.
    pub async fn rest(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next().await {
            frames.push(frame);
        }
        frames
    }
}

fn parse_frame(raw: &str) -> Frame {
    let mut event = None;
    let mut data = Vec::new();
    for line in raw.lines() {
        if let Some(comment) = line.strip_prefix(':') {
            return Frame::Comment(comment.trim().to_string());
        } else if let Some(e) = line.strip_prefix("event:") {
            event = Some(e.trim().to_string());
        } else if let Some(d) = line.strip_prefix("data:") {
            data.push(d.strip_prefix(' ').unwrap_or(d).to_string());
        }
    }
    let data = data.join("\n");
    match event {
        Some(event) => Frame::Event(event, data),
        None => Frame::Data(data),
    }
}

/// The JSON of a data frame.
pub fn json(frame: &Frame) -> serde_json::Value {
    match frame {
        Frame::Data(d) => serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")),
        other => panic!("expected a data frame, got {other:?}"),
    }
}

/// Waits (polling) until `condition` holds, failing after a generous bound.
pub async fn eventually(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

/// Serves `config` (its listen address replaced by port 0) on a background task; returns
/// `http://ADDR`. The server runs until the test's runtime ends.
pub async fn serve(config: Config) -> String {
    serve_here(in_suite_runtime(config)).await
}

/// [`serve`] in `config`'s own runtime mode: for tests on paused time, which reaches the test's
/// own runtime only (a per-core gateway's threads keep real time).
pub async fn serve_here(mut config: Config) -> String {
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    let server = Server::bind(config).await.unwrap();
    let base = format!("http://{}", server.local_addr().unwrap());
    tokio::spawn(server.run(std::future::pending()));
    base
}

/// The text of a chat stream's frames: every `delta.content`, joined.
pub fn streamed_text(frames: &[Frame]) -> String {
    frames
        .iter()
        .filter(|f| matches!(f, Frame::Data(d) if d != "[DONE]"))
        .filter_map(|f| {
            json(f)["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect()
}

/// Whether the suite runs its gateways per-core: `ORCHESTRATOR_TEST_RUNTIME=per_core` runs every
/// gateway of the suite with `[runtime] mode = "per_core"` (the test command runs the suite both
/// ways); unset, each config's own.
pub fn per_core_suite() -> bool {
    match std::env::var("ORCHESTRATOR_TEST_RUNTIME").as_deref() {
        Ok("per_core") => true,
        Err(_) | Ok("" | "work_stealing") => false,
        Ok(other) => panic!("ORCHESTRATOR_TEST_RUNTIME={other}: expected per_core or work_stealing"),
    }
}

/// `config` in the suite's runtime mode ([`per_core_suite`]); per-core, with no more core threads
/// than the config has shards (a test of one shard keeps its one queue).
pub fn in_suite_runtime(mut config: Config) -> Config {
    if per_core_suite() {
        config.runtime.mode = RuntimeMode::PerCore;
        config.runtime.threads = Some(config.runtime.threads().min(config.pipeline.shards));
    }
    config
}

/// The TOML of `config` in the suite's runtime mode, for gateways started as a process.
pub fn toml_in_suite_runtime(config: &str) -> String {
    if per_core_suite() && !config.contains("[runtime]") {
        return format!("{config}\n[runtime]\nmode = \"per_core\"\n");
    }
    config.to_string()
}
