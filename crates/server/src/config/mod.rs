//! `pipeline.toml`: the raw file as serde reads it, and the validation pass that turns it into a
//! [`Config`] with every problem reported at once.
//!
//! - `parse`: the text, read section by section and entry by entry, so one entry's serde error
//!   does not hide the rest;
//! - `validate`: the checks serde cannot make; `graph` and `rag` add those of `[[stages]]`,
//!   `[rag]` and `[assemble]`;
//! - `locate`: a problem's path turned into a line and column.
//!
//! With no file, [`Config::default`] serves one model, `echo`, from an echo backend.

mod graph;
mod locate;
mod parse;
mod rag;
mod summary;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use orchestrator_backends::OpenAiConfig;
use orchestrator_backends::llamacpp::LlamaCppConfig;
use orchestrator_backends::routing::balance::Balancing;
use orchestrator_backends::routing::replica::ReplicaConfig;
use orchestrator_backends::routing::retry::RetryConfig;
use orchestrator_context::assemble::AssembleConfig;
use orchestrator_grpc::GrpcConfig;
use serde::Deserialize;
use tokio_prompt_orchestrator::{AdmissionConfig, PipelineConfig, Priority};

pub use self::graph::{StageDecl, StageKind};
pub use self::rag::RagConfig;
pub use crate::cluster::config::ClusterConfig;
use crate::cluster::jobs::backend::RemoteConfig;
use crate::dlq::entry::Reason;
use crate::gateway::cache::CacheConfig;
use crate::gateway::limits::RateLimitConfig;
use crate::post::PostConfig;
pub use crate::runtime::{RuntimeConfig, RuntimeMode};
pub use crate::telemetry::TelemetryConfig;
pub use crate::worker::config::WorkerConfig;

/// The whole file. Unknown keys are errors, so a typo never silently falls back to a default.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub pipeline: PipelineConfig,
    /// How many requests are inside the pipeline at once, and how the rest wait (by priority).
    pub admission: AdmissionConfig,
    /// Where failed requests are kept for replay; `None`: they are not kept.
    pub dlq: Option<DlqConfig>,
    /// Where answers of `POST /v1/responses` are kept for `previous_response_id` and
    /// `GET /v1/responses/{id}`; `None`: they are not kept.
    pub responses: Option<ResponsesConfig>,
    /// The cluster this node joins over NATS JetStream; `None`: it runs alone.
    pub cluster: Option<ClusterConfig>,
    /// Retrieval from a full-text index in the RAG stage; `None`: requests pass straight through.
    pub rag: Option<RagConfig>,
    /// Prompt templates, prefix-stable assembly and the token budget of the Assemble stage.
    pub assemble: AssembleConfig,
    /// Model backends, by name. (Field defaults: a file must declare its own models.)
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    /// Model names clients ask for, each served by one backend.
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    /// Post-processors, applied in order to the output of the models each names.
    #[serde(default)]
    pub post: Vec<PostConfig>,
    /// The pipeline as a graph of named stages; empty: the canonical five in order.
    #[serde(default)]
    pub stages: Vec<StageDecl>,
    /// What `orchestrator worker` reads of this file beside the backends and models.
    pub worker: WorkerConfig,
    /// Where metrics go besides `/metrics` (StatsD).
    pub telemetry: TelemetryConfig,
    /// Work-stealing or per-core, and how many threads.
    pub runtime: RuntimeConfig,
}

/// `[server]`: the listener and HTTP limits.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Larger request bodies are refused with 413.
    pub max_body_bytes: usize,
    /// After SIGTERM/SIGINT, how long in-flight requests may run before they are ended with an
    /// error event.
    pub shutdown_grace_ms: u64,
    /// After SIGTERM/SIGINT, how long the listener stays open answering `/readyz` with 503 (and
    /// new work with 503) before it closes, so load balancers notice the drain first.
    pub drain_delay_ms: u64,
    /// Longest request head (request line and headers); a longer one is refused with 431. Also
    /// what one connection may buffer of a head that has not ended yet.
    pub max_header_bytes: usize,
    /// Time a connection gets to send a whole request head, counted from when it opens or its
    /// previous response ends, so an idle keep-alive connection is closed after it too; 0: none.
    pub header_read_timeout_ms: u64,
    /// Time a request body gets to arrive (408 after it), extended by a second for every
    /// `body_min_bytes_per_sec` bytes received, so a large upload may take longer but a stalled
    /// one cannot hold its request open; 0: no limit.
    pub body_read_timeout_ms: u64,
    pub body_min_bytes_per_sec: u64,
    /// Connections open at once; one more is answered 503 (with `Retry-After`) and closed.
    pub max_connections: usize,
    /// Bytes of request bodies held at once, over every request being read, waiting or running;
    /// a body that does not fit is refused with 429. Read when the server starts.
    pub max_body_bytes_in_flight: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1024 * 1024,
            shutdown_grace_ms: 30_000,
            drain_delay_ms: 0,
            max_header_bytes: 32 * 1024,
            header_read_timeout_ms: 30_000,
            body_read_timeout_ms: 10_000,
            body_min_bytes_per_sec: 16 * 1024,
            max_connections: 8192,
            max_body_bytes_in_flight: 256 * 1024 * 1024,
        }
    }
}

/// `[auth]`: bearer API keys. With no keys, the API is open.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub keys: Vec<ApiKeyConfig>,
    /// Whether `/metrics` needs a key too (`/healthz` and `/readyz` never do).
    pub protect_metrics: bool,
    /// Rate limits of every key that sets none of its own.
    pub rate_limit: Option<RateLimitConfig>,
}

/// One accepted key: exactly one of `key_env`, the name of the environment variable holding the
/// key (read when the file is loaded), or `sha256`, the hex SHA-256 digest of the key. The key
/// itself is never written in the file: reading one refuses `key = "..."`, pointing to `key_env`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Shown in logs and used as the session key of requests without one; never the key itself.
    pub name: Option<String>,
    /// The environment variable holding the key, like backends' `api_key_env`.
    pub key_env: Option<String>,
    pub sha256: Option<String>,
    /// Whether the key may use the admin endpoints (`POST /admin/reload`).
    #[serde(default)]
    pub admin: bool,
    /// This key's rate limits, instead of `[auth] rate_limit`.
    pub rate_limit: Option<RateLimitConfig>,
    /// Priority of this key's requests that send no `X-Priority` header (default `normal`).
    pub priority: Option<Priority>,
}

/// `[dlq]`: the dead-letter queue, a file of failed requests that can be inspected and replayed.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqConfig {
    /// The redb file, created on first use; relative paths are from the working directory.
    pub path: PathBuf,
    /// Which endings are kept: `failed` (after retries and fallbacks), `timeout`, `shed`.
    #[serde(default = "DlqConfig::default_record")]
    pub record: Vec<Reason>,
}

/// `[responses]`: the Responses API's stored answers, bounded and dropped after a time. A node
/// alone keeps them in a redb file; in cluster mode they go to the JetStream bucket
/// `orchestrator_responses`, so that any node continues any conversation.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponsesConfig {
    /// The redb file (a node alone; unused in cluster mode), created on first use.
    pub path: Option<PathBuf>,
    /// Seconds a stored answer is kept (default 30 days).
    #[serde(default = "ResponsesConfig::default_ttl_s")]
    pub ttl_s: u64,
    /// Stored answers kept at most; the oldest go first.
    #[serde(default = "ResponsesConfig::default_max_entries")]
    pub max_entries: u64,
}

impl ResponsesConfig {
    fn default_ttl_s() -> u64 {
        30 * 24 * 3600
    }

    fn default_max_entries() -> u64 {
        100_000
    }
}

impl DlqConfig {
    fn default_record() -> Vec<Reason> {
        vec![Reason::Failed, Reason::Timeout]
    }
}

/// One backend, selected by `kind`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum BackendConfig {
    /// Answers with the prompt, token by token.
    Echo {
        name: String,
        /// Delay before each token, like a model generating `1000 / token_delay_ms` tokens/s.
        #[serde(default)]
        token_delay_ms: u64,
        #[serde(default)]
        routing: ReplicaConfig,
    },
    /// An OpenAI-compatible server: OpenAI, vLLM, SGLang, Ollama, llama.cpp `/v1`, TGI.
    Openai(OpenAiConfig),
    /// vLLM's OpenAI-compatible server, with its `priority`, `/health` and queue length.
    Vllm(OpenAiConfig),
    /// llama-server's native `/completion`, one KV-cache slot per session.
    Llamacpp(LlamaCppConfig),
    /// `orchestrator worker` processes, reached through the cluster's broker.
    Cluster(RemoteConfig),
    /// One `orchestrator worker`, reached directly over its gRPC port.
    Grpc(GrpcConfig),
}

impl BackendConfig {
    pub fn name(&self) -> &str {
        match self {
            BackendConfig::Echo { name, .. } => name,
            BackendConfig::Openai(c) | BackendConfig::Vllm(c) => &c.name,
            BackendConfig::Llamacpp(c) => &c.name,
            BackendConfig::Cluster(c) => &c.name,
            BackendConfig::Grpc(c) => &c.name,
        }
    }

    /// Weight, concurrency limit and breaker of this backend.
    pub fn routing(&self) -> ReplicaConfig {
        match self {
            BackendConfig::Echo { routing, .. } => *routing,
            BackendConfig::Openai(c) | BackendConfig::Vllm(c) => c.routing,
            BackendConfig::Llamacpp(c) => c.routing,
            BackendConfig::Cluster(c) => c.routing,
            BackendConfig::Grpc(c) => c.routing,
        }
    }
}

/// `[[models]]`: a model name clients send, and the backends serving it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    /// The replicas, balanced by `balancing`.
    pub backends: Vec<String>,
    /// Tried, in the same way, when every backend has failed.
    #[serde(default)]
    pub fallback: Vec<String>,
    #[serde(default)]
    pub balancing: Balancing,
    /// Retries before the first token, within each group.
    #[serde(default)]
    pub retries: RetryConfig,
    /// Identical requests in flight at once share one upstream call, when they are
    /// deterministic (temperature 0) or the client sends `X-Dedup: on`.
    #[serde(default = "yes")]
    pub dedup: bool,
    /// Answers kept and sent again to identical deterministic requests; `None`: not cached.
    #[serde(default)]
    pub cache: Option<CacheConfig>,
    /// What the model does: generate text (`chat`, served by the generation endpoints) or
    /// embed it (`embedding`, served by `/v1/embeddings`).
    #[serde(default)]
    pub kind: ModelKind,
    /// An embedding model's inputs per upstream call: longer lists are split (default 64).
    #[serde(default)]
    pub batch_size: Option<usize>,
}

/// What a model does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    #[default]
    Chat,
    Embedding,
}

impl ModelConfig {
    /// Inputs per upstream call when the config names no `batch_size`.
    pub const DEFAULT_BATCH_SIZE: usize = 64;

    /// An embedding model's inputs per upstream call; `None` for a chat model.
    pub fn embedding_batch(&self) -> Option<usize> {
        (self.kind == ModelKind::Embedding).then(|| self.batch_size.unwrap_or(Self::DEFAULT_BATCH_SIZE))
    }
}

fn yes() -> bool {
    true
}

impl ModelConfig {
    /// A model served by one backend, with the default routing.
    pub fn single(name: &str, backend: &str) -> Self {
        Self {
            name: name.into(),
            backends: vec![backend.into()],
            fallback: Vec::new(),
            balancing: Balancing::default(),
            retries: RetryConfig::default(),
            dedup: true,
            cache: None,
            kind: ModelKind::Chat,
            batch_size: None,
        }
    }
}

impl Default for Config {
    /// One model, `echo`, answered by an echo backend.
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            auth: AuthConfig::default(),
            pipeline: PipelineConfig::default(),
            admission: AdmissionConfig::default(),
            dlq: None,
            responses: None,
            cluster: None,
            rag: None,
            assemble: AssembleConfig::default(),
            backends: vec![BackendConfig::Echo {
                name: "echo".into(),
                token_delay_ms: 0,
                routing: ReplicaConfig::default(),
            }],
            models: vec![ModelConfig::single("echo", "echo")],
            post: Vec::new(),
            stages: Vec::new(),
            worker: WorkerConfig::default(),
            telemetry: TelemetryConfig::default(),
            runtime: RuntimeConfig::default(),
        }
    }
}

/// The sample corpus the built-in config indexes: the project's own documentation.
const SAMPLE_CORPUS: [&str; 5] = [
    "README.md",
    "ARCHITECTURE.md",
    "BENCHMARKS.md",
    "docs/configuration.md",
    "docs/operations.md",
];
/// Where the built-in config keeps the sample corpus's index (build output, not source).
const SAMPLE_INDEX: &str = "target/orchestrator-sample-index";

impl Config {
    /// What `orchestrator` serves without `--config`: [`Config::default`], plus retrieval over
    /// the project's documentation when it is started from a checkout of the repository (the
    /// index is built on the first start), so the echo model shows what RAG adds to a prompt.
    pub fn builtin() -> Self {
        let mut config = Self::default();
        let corpus: Vec<PathBuf> = SAMPLE_CORPUS.iter().map(PathBuf::from).collect();
        if corpus.iter().all(|p| p.is_file()) {
            config.rag = Some(RagConfig {
                index: orchestrator_context::index::IndexConfig::new(SAMPLE_INDEX),
                search: orchestrator_context::index::RagSettings {
                    top_k: 2,
                    ..Default::default()
                },
                models: Default::default(),
                ingest_on_start: corpus,
            });
        }
        config
    }
}

/// Every problem found in a config file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// Where the configuration came from, for the message.
    pub source_name: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} problem(s)", self.source_name, self.problems.len())?;
        for p in &self.problems {
            match p.location {
                // The `file:line:column:` form editors and terminals link to.
                Some((line, column)) => write!(f, "\n  {}:{line}:{column}: {p}", self.source_name)?,
                None => write!(f, "\n  {p}")?,
            }
        }
        Ok(())
    }
}

/// One problem: where it is, what is wrong, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
    /// Line and column (1-based) of `path` in the file, where it is there.
    pub location: Option<(usize, usize)>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl Config {
    /// Reads and validates `path`.
    ///
    /// # Errors
    /// Every problem in the file (or the reason it could not be read).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let source_name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: source_name.clone(),
            problems: vec![Problem {
                path: String::new(),
                message: format!("cannot read the file: {e}"),
                location: None,
            }],
        })?;
        Self::parse(&text, &source_name)
    }

    /// Parses and validates TOML text; `source_name` names it in errors.
    ///
    /// Each section and list entry is read on its own, so a file with a typo in one backend and
    /// a dangling reference in a model gets both reported; the environment variables that keys
    /// and backends name are read here too.
    ///
    /// # Errors
    /// The syntax errors, or every problem of every item that does not deserialize plus every
    /// one the validation pass finds in the rest.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, ConfigError> {
        let error = |problems| ConfigError {
            source_name: source_name.to_string(),
            problems,
        };
        let (config, unparsed, mut problems) = parse::read(text).map_err(error)?;
        for mut problem in config.problems(&unparsed) {
            problem.path = unparsed.in_file(&problem.path);
            problem.location = locate::locate(text, &problem.path);
            problems.push(problem);
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(error(problems))
        }
    }
}

/// What the validation tests of this module's parts share.
#[cfg(test)]
mod testing {
    use super::Config;

    /// A valid file: one echo backend `e` serving one model `m`.
    pub const BASE: &str =
        "[[backends]]\nkind = \"echo\"\nname = \"e\"\n\n[[models]]\nname = \"m\"\nbackends = [\"e\"]\n";

    /// Each problem of `text` as `path: message`; none when it is valid.
    pub fn problems(text: &str) -> Vec<String> {
        placed(text, |_, p| p.to_string())
    }

    /// Each problem of `text` as `line:column: path: message` (`?` for no place).
    pub fn placed_problems(text: &str) -> Vec<String> {
        placed(text, |at, p| match at {
            Some((line, column)) => format!("{line}:{column}: {p}"),
            None => format!("?: {p}"),
        })
    }

    fn placed(text: &str, show: impl Fn(Option<(usize, usize)>, &super::Problem) -> String) -> Vec<String> {
        match Config::parse(text, "t.toml") {
            Ok(_) => Vec::new(),
            Err(e) => e.problems.iter().map(|p| show(p.location, p)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default_minus_models() {
        let err = Config::parse("", "test.toml").unwrap_err();
        assert_eq!(
            err.problems[0].to_string(),
            "models: declare at least one [[models]] entry with a `name` and its `backends`"
        );
    }

    /// `pipeline.example.toml` as it is (samples commented out) is the built-in defaults.
    #[test]
    fn the_example_file_is_valid_and_states_the_defaults() {
        let example = Config::parse(
            include_str!("../../../../pipeline.example.toml"),
            "pipeline.example.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let defaults = Config::default();
        assert_eq!(example.server, defaults.server);
        let mut pipeline = example.pipeline.clone();
        // The example leaves `shards` at its default (the number of cores).
        pipeline.shards = defaults.pipeline.shards;
        assert_eq!(pipeline, defaults.pipeline);
        assert_eq!(example.models, defaults.models);
        assert_eq!(example.backends, defaults.backends);
    }

    #[test]
    fn openai_backends_are_read_with_their_timeouts() {
        let text = r#"
            [[backends]]
            kind = "openai"
            name = "vllm-a"
            base_url = "http://127.0.0.1:8000/v1"
            model = "llama"
            headers = { "X-Team" = "search" }
            timeouts = { first_token_ms = 1000 }
            [[models]]
            name = "llama"
            backends = ["vllm-a"]
        "#;
        let config = Config::parse(text, "t").unwrap_or_else(|e| panic!("{e}"));
        let BackendConfig::Openai(backend) = &config.backends[0] else {
            panic!("an openai backend");
        };
        assert_eq!(backend.model.as_deref(), Some("llama"));
        assert_eq!(backend.timeouts.first_token_ms, 1000);
        assert_eq!(
            backend.timeouts.total_ms, 600_000,
            "unset limits keep their defaults"
        );

        let bad = text
            .replace("http://127.0.0.1:8000/v1", "127.0.0.1:8000")
            .replace("model = \"llama\"", "modle = 1");
        let err = Config::parse(&bad, "t").unwrap_err();
        assert!(err.to_string().contains("unknown field `modle`"), "{err}");
        let err =
            Config::parse(&text.replace("http://127.0.0.1:8000/v1", "127.0.0.1:8000"), "t").unwrap_err();
        assert_eq!(
            err.problems[0].to_string(),
            "backends[0].base_url: \"127.0.0.1:8000\" is not an http:// or https:// URL"
        );
    }

    #[test]
    fn post_processors_are_validated() {
        let text = r#"
            [[backends]]
            kind = "echo"
            name = "e"
            [[models]]
            name = "m"
            backends = ["e"]
            [[post]]
            kind = "redact"
            pattern = "("
            [[post]]
            kind = "max_chars"
            max = 10
            models = ["m", "nope"]
        "#;
        let err = Config::parse(text, "test.toml").unwrap_err();
        let lines: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("post[0].pattern: not a valid regex"),
            "{}",
            lines[0]
        );
        assert_eq!(lines[1], "post[1].models[1]: no model named \"nope\" (known: m)");
        let unknown = Config::parse("[[post]]\nkind = \"upper\"\n", "t").unwrap_err();
        assert!(unknown.to_string().contains("(got `upper`)"), "{unknown}");
    }

    #[test]
    fn health_checks_are_validated_only_when_on() {
        let text = r#"
            [[backends]]
            kind = "vllm"
            name = "v"
            base_url = "http://127.0.0.1:8000/v1"
            health_check = { timeout_ms = 0, healthy_after = 0 }
            [[backends]]
            kind = "llamacpp"
            name = "l"
            base_url = "http://127.0.0.1:8080"
            health_check = { interval_ms = 0, timeout_ms = 0 }
            [[models]]
            name = "m"
            backends = ["v", "l"]
        "#;
        let err = Config::parse(text, "test.toml").unwrap_err();
        let lines: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "backends[0].health_check.timeout_ms: must be at least 1 (set interval_ms = 0 to turn checks off)",
                "backends[0].health_check: unhealthy_after and healthy_after must be at least 1",
            ]
        );
    }

    #[test]
    fn default_config_is_valid() {
        assert!(Config::default().problems(&parse::Unparsed::default()).is_empty());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            [server]
            max_body_bytes = 0
            [[auth.keys]]
            key = "a"
            [[auth.keys]]
            sha256 = "b"
            [[backends]]
            kind = "echo"
            name = "e"
            [[models]]
            name = "m"
            backends = ["nope"]
        "#;
        let err = Config::parse(text, "test.toml").unwrap_err();
        // Each problem points at its place in the file: first those that stopped an item from
        // being read, in file order, then the validation pass's.
        let lines: Vec<String> = err.to_string().lines().map(str::to_owned).collect();
        assert_eq!(
            lines,
            [
                "test.toml: 4 problem(s)",
                "  test.toml:5:13: auth.keys[0].key: a key may not be written in the file: put it in \
                 an environment variable and name that variable here with `key_env = \"VAR\"` (or \
                 give the key's SHA-256 digest as `sha256`)",
                "  test.toml:3:30: server.max_body_bytes: must be at least 1 (the default is 1048576, 1 MiB)",
                "  test.toml:7:22: auth.keys[1].sha256: must be 64 hex digits (e.g. the output of \
                 `printf %s KEY | sha256sum`)",
                "  test.toml:13:25: models[0].backends[0]: no backend named \"nope\" (known: e)",
            ]
        );
    }

    #[test]
    fn keys_are_read_from_their_environment_variables() {
        const TEXT: &str = "[[auth.keys]]\nname = \"app\"\nkey_env = \"ORCHESTRATOR_TEST_CONFIG_KEY\"\n\
                            [[backends]]\nkind = \"echo\"\nname = \"e\"\n\
                            [[models]]\nname = \"m\"\nbackends = [\"e\"]\n";
        // SAFETY: no other test reads or writes this variable.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("ORCHESTRATOR_TEST_CONFIG_KEY", "sk-config")
        };
        let config = Config::parse(TEXT, "t").unwrap_or_else(|e| panic!("{e}"));
        let keys = crate::gateway::auth::ApiKeys::from_config(&config.auth, None, None).unwrap();
        assert_eq!(&*keys.verify("sk-config").unwrap().id.0, "app");
    }
}
