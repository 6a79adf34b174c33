//! Settings of an OpenAI-compatible backend, as `[[backends]]` entries with `kind = "openai"`
//! deserialise into.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::routing::replica::ReplicaConfig;

/// One OpenAI-compatible server: OpenAI itself, vLLM, SGLang, Ollama, llama.cpp's `/v1`, TGI.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// Names the backend in routes, logs, metrics and errors.
    pub name: String,
    /// The API root, ending in `/v1` for most servers (e.g. `http://127.0.0.1:8000/v1`).
    pub base_url: String,
    /// Name of the environment variable holding the API key (sent as a bearer token).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The model name to send upstream; by default the name the client asked for.
    #[serde(default)]
    pub model: Option<String>,
    /// Extra headers sent with every request (e.g. an organisation id).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `timeouts = { first_token_ms = 30000, ... }`.
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    /// `routing = { weight = 1, max_in_flight = 0, breaker = { ... } }`.
    #[serde(default)]
    pub routing: ReplicaConfig,
}

/// Time limits of one upstream call; each can be turned off with 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutConfig {
    /// Establishing the TCP (and TLS) connection.
    pub connect_ms: u64,
    /// From sending the request to the first token (prompt processing and queueing upstream).
    pub first_token_ms: u64,
    /// Longest silence between two tokens of a stream.
    pub between_tokens_ms: u64,
    /// The whole call.
    pub total_ms: u64,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self {
            connect_ms: 5_000,
            first_token_ms: 60_000,
            between_tokens_ms: 30_000,
            total_ms: 600_000,
        }
    }
}

/// [`TimeoutConfig`] as durations; `None` where a limit is off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Option<Duration>,
    pub first_token: Option<Duration>,
    pub between_tokens: Option<Duration>,
    pub total: Option<Duration>,
}

impl From<TimeoutConfig> for Timeouts {
    fn from(c: TimeoutConfig) -> Self {
        let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
        Self {
            connect: ms(c.connect_ms),
            first_token: ms(c.first_token_ms),
            between_tokens: ms(c.between_tokens_ms),
            total: ms(c.total_ms),
        }
    }
}
