//! Settings of an OpenAI-compatible backend, as `[[backends]]` entries with `kind = "openai"`
//! deserialise into.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::routing::health::HealthConfig;
use crate::routing::replica::ReplicaConfig;
use crate::timeouts::TimeoutConfig;

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
    /// `health_check = { interval_ms = 5000, ... }`; by default on for vLLM, off otherwise
    /// (hosted APIs have no health endpoint and rate-limit their model list).
    #[serde(default)]
    pub health_check: Option<HealthConfig>,
}

impl OpenAiConfig {
    /// The health checks to run against this backend as `flavor`.
    pub fn health(&self, flavor: super::Flavor) -> HealthConfig {
        self.health_check.unwrap_or(match flavor {
            super::Flavor::OpenAi => HealthConfig::off(),
            super::Flavor::Vllm => HealthConfig::default(),
        })
    }
}
