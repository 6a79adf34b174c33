//! Settings of a llama-server, as `[[backends]]` entries with `kind = "llamacpp"` deserialise
//! into.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::routing::health::HealthConfig;
use crate::routing::replica::ReplicaConfig;
use crate::timeouts::TimeoutConfig;

/// One llama-server.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaCppConfig {
    pub name: String,
    /// The server root, without `/v1` (e.g. `http://127.0.0.1:8080`).
    pub base_url: String,
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The server's parallel slots (its `-np`); each session maps to one of them. The health
    /// checks read the real number from the server's `/slots`, which then wins; this one is used
    /// until then, and for servers started with `--no-slots`.
    #[serde(default = "one")]
    pub slots: usize,
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    #[serde(default)]
    pub routing: ReplicaConfig,
    /// `health_check = { interval_ms = 5000, ... }` against `/health` (503 while loading).
    #[serde(default)]
    pub health_check: HealthConfig,
}

fn one() -> usize {
    1
}
