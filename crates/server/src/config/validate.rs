//! The validation pass: the checks serde cannot make (references between sections, one-of rules,
//! values out of range, environment variables), each problem with its TOML path and a fix.
//!
//! It runs on what parsed: entries that did not are in [`Unparsed`], and a reference to one of
//! them is not reported again as a dangling name.

use std::collections::HashSet;

use super::parse::Unparsed;
use super::{BackendConfig, Config, ModelConfig, ModelKind, Problem};
use crate::cluster::config::is_key_char;
use crate::gateway::limits::RateLimitConfig;

impl Problem {
    /// A problem at `path`, placed in the file later.
    pub(super) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            location: None,
        }
    }
}

/// `names`, sorted, for a "(known: ...)" hint.
pub(super) fn known<'n>(names: impl IntoIterator<Item = &'n str>) -> String {
    let mut names: Vec<&str> = names.into_iter().filter(|n| !n.is_empty()).collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// What is wrong with `var` as the name of the environment variable holding a secret, if
/// anything. A value that is not a variable name may be the secret itself, written where its
/// variable's name goes: it is never repeated in the message (messages reach logs).
fn secret_variable_problem(var: &str) -> Option<String> {
    if var.is_empty() {
        return Some("must name an environment variable, e.g. \"ORCHESTRATOR_KEY_APP\"".into());
    }
    let is_name = var.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !is_name {
        return Some(
            "must be the name of an environment variable (letters, digits and `_`), e.g. \
             \"ORCHESTRATOR_KEY_APP\"; is the secret itself written here? Put it in the variable"
                .into(),
        );
    }
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => None,
        _ => Some(format!("the environment variable {var} is not set or empty")),
    }
}

/// A token budget's settings make sense together.
fn budget_problems(path: &str, limit: &RateLimitConfig, problems: &mut Vec<Problem>) {
    match limit.token_budget {
        None => {
            for (field, set) in [
                ("budget_period_hours", limit.budget_period_hours.is_some()),
                ("reserve_tokens", limit.reserve_tokens.is_some()),
            ] {
                if set {
                    problems.push(Problem::new(
                        format!("{path}.{field}"),
                        "has no effect without token_budget (tokens per period); set it, or remove this",
                    ));
                }
            }
        }
        Some(total) => {
            if let Some(reserve) = limit.reserve_tokens
                && u64::from(reserve.get()) > total.get()
            {
                problems.push(Problem::new(
                    format!("{path}.reserve_tokens"),
                    format!(
                        "must be at most token_budget ({total}): a request reserving more could never run"
                    ),
                ));
            }
        }
    }
}

/// The largest `server.max_header_bytes`: more would let each connection hold a megabyte of head.
const MAX_HEADER_BYTES_LIMIT: usize = 1 << 20;

impl Config {
    fn server_problems(&self, problems: &mut Vec<Problem>) {
        let server = &self.server;
        if server.max_body_bytes == 0 {
            problems.push(Problem::new(
                "server.max_body_bytes",
                "must be at least 1 (the default is 1048576, 1 MiB)",
            ));
        }
        if !(1024..=MAX_HEADER_BYTES_LIMIT).contains(&server.max_header_bytes) {
            problems.push(Problem::new(
                "server.max_header_bytes",
                "must be from 1024 to 1048576 (the default is 32768, 32 KiB)",
            ));
        }
        if server.max_connections == 0 {
            problems.push(Problem::new(
                "server.max_connections",
                "must be at least 1 (the default is 8192)",
            ));
        }
        if server.max_body_bytes_in_flight < server.max_body_bytes {
            problems.push(Problem::new(
                "server.max_body_bytes_in_flight",
                format!(
                    "must be at least server.max_body_bytes ({}), or no body that large could \
                     ever be taken (the default is 268435456, 256 MiB)",
                    server.max_body_bytes
                ),
            ));
        }
        if server.body_read_timeout_ms > 0 && server.body_min_bytes_per_sec == 0 {
            problems.push(Problem::new(
                "server.body_min_bytes_per_sec",
                "must be at least 1 while server.body_read_timeout_ms is set (the default is 16384); \
                 set body_read_timeout_ms = 0 to turn the body limit off",
            ));
        }
    }

    /// Every problem of this config; `unparsed` names the entries of the file that did not parse.
    pub(super) fn problems(&self, unparsed: &Unparsed) -> Vec<Problem> {
        let mut problems = Vec::new();
        self.server_problems(&mut problems);
        self.auth_problems(&mut problems);
        self.dlq_problems(&mut problems);
        self.responses_problems(&mut problems);
        self.telemetry_problems(&mut problems);
        for (field, problem) in self.runtime.problems(self.pipeline.shards.get()) {
            problems.push(Problem::new(format!("runtime.{field}"), problem));
        }
        self.cluster_problems(&mut problems);
        if let Some(rag) = &self.rag {
            for (path, message) in rag.problems(|name| self.unknown_model(name, unparsed)) {
                problems.push(Problem::new(path, message));
            }
        }
        self.backend_problems(&mut problems);
        self.model_problems(unparsed, &mut problems);
        self.post_problems(unparsed, &mut problems);
        let before = problems.len();
        self.graph_problems(unparsed, &mut problems);
        // The graph's assemble branches are compiled into `[assemble]` to check them, which
        // needs a whole, valid graph: with a stage that did not parse, the cycle check was not
        // made either.
        if problems.len() == before && !unparsed.stages.any() {
            for (path, message) in self.assemble_problems(unparsed) {
                problems.push(Problem::new(path, message));
            }
        }
        problems
    }

    /// `[[auth.keys]]`: each key is named by `key_env` or given as `sha256` (one written out in
    /// the file was refused while reading it).
    fn auth_problems(&self, problems: &mut Vec<Problem>) {
        if let Some(limit) = &self.auth.rate_limit {
            budget_problems("auth.rate_limit", limit, problems);
        }
        for (i, key) in self.auth.keys.iter().enumerate() {
            let path = format!("auth.keys[{i}]");
            if let Some(limit) = &key.rate_limit {
                budget_problems(&format!("{path}.rate_limit"), limit, problems);
            }
            if key.key_env.is_some() == key.sha256.is_some() {
                problems.push(Problem::new(
                    path.clone(),
                    "set exactly one of `key_env` (the environment variable holding the key) or \
                     `sha256` (the key's digest)",
                ));
            }
            if let Some(digest) = &key.sha256
                && (digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                problems.push(Problem::new(
                    format!("{path}.sha256"),
                    "must be 64 hex digits (e.g. the output of `printf %s KEY | sha256sum`)",
                ));
            }
            if let Some(message) = key.key_env.as_deref().and_then(secret_variable_problem) {
                problems.push(Problem::new(format!("{path}.key_env"), message));
            }
        }
    }

    fn dlq_problems(&self, problems: &mut Vec<Problem>) {
        let Some(dlq) = &self.dlq else {
            return;
        };
        if dlq.path.as_os_str().is_empty() {
            problems.push(Problem::new(
                "dlq.path",
                "must name the dead-letter file, e.g. \"orchestrator-dlq.redb\"",
            ));
        } else if dlq.path.is_dir() {
            problems.push(Problem::new(
                "dlq.path",
                format!("{} is a directory; name a file inside it", dlq.path.display()),
            ));
        }
        if dlq.record.is_empty() {
            problems.push(Problem::new(
                "dlq.record",
                "name at least one of \"failed\", \"timeout\", \"shed\" (or remove [dlq])",
            ));
        }
    }

    fn telemetry_problems(&self, problems: &mut Vec<Problem>) {
        if let Some(otlp) = &self.telemetry.otlp {
            for (field, problem) in otlp.problems() {
                problems.push(Problem::new(format!("telemetry.otlp.{field}"), problem));
            }
        }
        let Some(statsd) = &self.telemetry.statsd else {
            return;
        };
        if statsd.host_port().is_none() {
            problems.push(Problem::new(
                "telemetry.statsd.address",
                format!(
                    "must be the agent's host:port, e.g. \"127.0.0.1:8125\" (got {:?})",
                    statsd.address
                ),
            ));
        }
        if statsd.flush_ms == 0 {
            problems.push(Problem::new(
                "telemetry.statsd.flush_ms",
                "must be at least 1 (the default is 1000)",
            ));
        }
    }

    fn responses_problems(&self, problems: &mut Vec<Problem>) {
        let Some(responses) = &self.responses else {
            return;
        };
        match &responses.path {
            None if self.cluster.is_none() => problems.push(Problem::new(
                "responses.path",
                "is required for a node alone: name the file, e.g. \"orchestrator-responses.redb\"",
            )),
            Some(path) if path.as_os_str().is_empty() || path.is_dir() => problems.push(Problem::new(
                "responses.path",
                "must name a file, e.g. \"orchestrator-responses.redb\"",
            )),
            _ => {}
        }
        for (field, value) in [("ttl_s", responses.ttl_s), ("max_entries", responses.max_entries)] {
            if value == 0 {
                problems.push(Problem::new(
                    format!("responses.{field}"),
                    "must be at least 1 (remove [responses] to keep no answers)",
                ));
            }
        }
    }

    /// `[cluster]`: a broker address, a name usable as a key, credentials named by variable, and
    /// a heartbeat that fits several times into the time a node may go silent.
    fn cluster_problems(&self, problems: &mut Vec<Problem>) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let urls: Vec<&str> = cluster.nats_url.split(',').map(str::trim).collect();
        if urls
            .iter()
            .any(|u| u.is_empty() || u.contains(char::is_whitespace))
        {
            problems.push(Problem::new(
                "cluster.nats_url",
                "must name the NATS server, e.g. \"nats://127.0.0.1:4222\" (several separated by commas)",
            ));
        } else if let Some(bad) = urls.iter().find(|u| {
            u.split_once("://")
                .is_some_and(|(scheme, _)| !matches!(scheme, "nats" | "tls"))
        }) {
            problems.push(Problem::new(
                "cluster.nats_url",
                format!("{bad}: the scheme must be nats:// or tls://"),
            ));
        }
        if let Some(name) = &cluster.node_name
            && (name.is_empty() || !name.chars().all(is_key_char))
        {
            problems.push(Problem::new(
                "cluster.node_name",
                "must be letters, digits, `-`, `_` or `=` (it is a key in the cluster's store)",
            ));
        }
        if cluster.token_env.is_some() && (cluster.user.is_some() || cluster.password_env.is_some()) {
            problems.push(Problem::new(
                "cluster.token_env",
                "set either token_env or user and password_env, not both",
            ));
        }
        if cluster.user.is_some() != cluster.password_env.is_some() {
            problems.push(Problem::new(
                "cluster.user",
                "user and password_env go together: set both, or neither",
            ));
        }
        for (field, var) in [
            ("token_env", &cluster.token_env),
            ("password_env", &cluster.password_env),
        ] {
            if let Some(message) = var.as_deref().and_then(secret_variable_problem) {
                problems.push(Problem::new(format!("cluster.{field}"), message));
            }
        }
        if !(100..=60_000).contains(&cluster.heartbeat_ms) {
            problems.push(Problem::new(
                "cluster.heartbeat_ms",
                "must be from 100 to 60000 (the default is 1000)",
            ));
        }
        if cluster.node_timeout_ms > 3_600_000 {
            problems.push(Problem::new(
                "cluster.node_timeout_ms",
                "must be at most 3600000, an hour (the default is 5000)",
            ));
        }
        if cluster.node_timeout_ms < cluster.heartbeat_ms.saturating_mul(2) {
            problems.push(Problem::new(
                "cluster.node_timeout_ms",
                format!(
                    "must be at least twice cluster.heartbeat_ms ({}), or a node would drop out \
                     between two heartbeats (the default is 5000)",
                    cluster.heartbeat_ms
                ),
            ));
        }
        if !(1..=600_000).contains(&cluster.connect_timeout_ms) {
            problems.push(Problem::new(
                "cluster.connect_timeout_ms",
                "must be from 1 to 600000 (the default is 5000)",
            ));
        }
        if cluster.dlq.max_bytes < 1 << 20 {
            problems.push(Problem::new(
                "cluster.dlq.max_bytes",
                "must be at least 1048576, 1 MiB (the default is 1073741824, 1 GiB)",
            ));
        }
        if cluster.dlq.max_age_hours == 0 {
            problems.push(Problem::new(
                "cluster.dlq.max_age_hours",
                "must be at least 1 (the default is 168, a week)",
            ));
        }
    }

    fn backend_problems(&self, problems: &mut Vec<Problem>) {
        let mut names = HashSet::new();
        for (i, backend) in self.backends.iter().enumerate() {
            let path = format!("backends[{i}]");
            let http = match backend {
                BackendConfig::Echo { .. } | BackendConfig::Cluster(_) | BackendConfig::Grpc(_) => None,
                BackendConfig::Openai(c) | BackendConfig::Vllm(c) => Some((&c.base_url, &c.api_key_env)),
                BackendConfig::Llamacpp(c) => Some((&c.base_url, &c.api_key_env)),
            };
            if let Some((base_url, api_key_env)) = http {
                if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
                    problems.push(Problem::new(
                        format!("{path}.base_url"),
                        format!("{base_url:?} is not an http:// or https:// URL"),
                    ));
                }
                if let Some(message) = api_key_env.as_deref().and_then(secret_variable_problem) {
                    problems.push(Problem::new(format!("{path}.api_key_env"), message));
                }
            }
            let health = match backend {
                BackendConfig::Echo { .. } | BackendConfig::Cluster(_) => None,
                BackendConfig::Openai(c) | BackendConfig::Vllm(c) => c.health_check,
                BackendConfig::Llamacpp(c) => Some(c.health_check),
                BackendConfig::Grpc(c) => Some(c.health_check),
            };
            if let Some(h) = health.filter(|h| h.interval_ms > 0) {
                if h.timeout_ms == 0 {
                    problems.push(Problem::new(
                        format!("{path}.health_check.timeout_ms"),
                        "must be at least 1 (set interval_ms = 0 to turn checks off)",
                    ));
                }
                if h.unhealthy_after == 0 || h.healthy_after == 0 {
                    problems.push(Problem::new(
                        format!("{path}.health_check"),
                        "unhealthy_after and healthy_after must be at least 1",
                    ));
                }
            }
            if let BackendConfig::Cluster(c) = backend
                && c.queue_timeout_ms == 0
            {
                problems.push(Problem::new(
                    format!("{path}.queue_timeout_ms"),
                    "must be at least 1: how long a job may wait for a worker (default 30000)",
                ));
            }
            if let BackendConfig::Grpc(c) = backend {
                if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
                    problems.push(Problem::new(
                        format!("{path}.url"),
                        format!(
                            "{:?} is not an http:// or https:// URL (the worker's --grpc-listen address, e.g. \"http://10.0.0.5:50051\")",
                            c.url
                        ),
                    ));
                }
                if let Some(message) = c.secret_env.as_deref().and_then(secret_variable_problem) {
                    problems.push(Problem::new(format!("{path}.secret_env"), message));
                }
            }
            if let BackendConfig::Llamacpp(c) = backend
                && c.slots == 0
            {
                problems.push(Problem::new(
                    format!("{path}.slots"),
                    "must be at least 1: the server's parallel slots (llama-server -np)",
                ));
            }
            if backend.name().is_empty() {
                problems.push(Problem::new(format!("{path}.name"), "must not be empty"));
            } else if !names.insert(backend.name()) {
                problems.push(Problem::new(
                    format!("{path}.name"),
                    format!(
                        "another backend is already named {:?}; give each backend its own name",
                        backend.name()
                    ),
                ));
            }
        }
    }

    fn model_problems(&self, unparsed: &Unparsed, problems: &mut Vec<Problem>) {
        // With entries that did not parse, their problems say what is wrong.
        if self.models.is_empty() && !unparsed.models.any() {
            problems.push(Problem::new(
                "models",
                "declare at least one [[models]] entry with a `name` and its `backends`",
            ));
        }
        let backends: HashSet<&str> = self.backends.iter().map(BackendConfig::name).collect();
        // The names of entries that did not parse are in the file too.
        let known_backends = known(backends.iter().copied().chain(unparsed.backends.iter()));
        let mut names = HashSet::new();
        for (i, model) in self.models.iter().enumerate() {
            if model.name.is_empty() {
                problems.push(Problem::new(format!("models[{i}].name"), "must not be empty"));
            } else if !names.insert(model.name.as_str()) {
                problems.push(Problem::new(
                    format!("models[{i}].name"),
                    format!(
                        "model {:?} is declared twice; merge the entries or rename one",
                        model.name
                    ),
                ));
            }
            if model.backends.is_empty() {
                problems.push(Problem::new(
                    format!("models[{i}].backends"),
                    format!("name at least one backend from [[backends]] (known: {known_backends})"),
                ));
            }
            for (list, names) in [("backends", &model.backends), ("fallback", &model.fallback)] {
                for (j, name) in names.iter().enumerate() {
                    if !backends.contains(name.as_str()) && !unparsed.backends.covers(name) {
                        problems.push(Problem::new(
                            format!("models[{i}].{list}[{j}]"),
                            format!("no backend named {name:?} (known: {known_backends})"),
                        ));
                    }
                }
            }
            match (model.kind, model.batch_size) {
                (ModelKind::Chat, Some(_)) => problems.push(Problem::new(
                    format!("models[{i}].batch_size"),
                    "is for embedding models: add kind = \"embedding\", or remove batch_size",
                )),
                (ModelKind::Embedding, Some(0)) => problems.push(Problem::new(
                    format!("models[{i}].batch_size"),
                    format!(
                        "must be at least 1 (the default is {})",
                        ModelConfig::DEFAULT_BATCH_SIZE
                    ),
                )),
                _ => {}
            }
            if let Some(cache) = model.cache {
                for (field, value, default) in [
                    ("ttl_s", cache.ttl_s, "300"),
                    ("max_entries", cache.max_entries, "10000"),
                    ("max_bytes", cache.max_bytes, "67108864, 64 MiB"),
                ] {
                    if value == 0 {
                        problems.push(Problem::new(
                            format!("models[{i}].cache.{field}"),
                            format!("must be at least 1 (the default is {default}); remove `cache` to keep no answers"),
                        ));
                    }
                }
            }
        }
    }

    fn post_problems(&self, unparsed: &Unparsed, problems: &mut Vec<Problem>) {
        for (i, post) in self.post.iter().enumerate() {
            // `build` names the field at fault (`pattern: ...`).
            if let Err(e) = post.build() {
                let (field, message) = e.split_once(": ").unwrap_or(("", &e));
                problems.push(Problem::new(format!("post[{i}].{field}"), message));
            }
            for (j, name) in post.models().iter().enumerate() {
                if let Some(message) = self.unknown_model(name, unparsed) {
                    problems.push(Problem::new(format!("post[{i}].models[{j}]"), message));
                }
            }
        }
    }

    /// The message for a reference to model `name`, when there is no such model (and none that
    /// failed to parse could be it).
    pub(super) fn unknown_model(&self, name: &str, unparsed: &Unparsed) -> Option<String> {
        if self.models.iter().any(|m| m.name == name) || unparsed.models.covers(name) {
            return None;
        }
        Some(format!(
            "no model named {name:?} (known: {})",
            known(
                self.models
                    .iter()
                    .map(|m| m.name.as_str())
                    .chain(unparsed.models.iter())
            )
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{BASE, problems};

    /// `BASE` and then `extra`, which starts with a table header.
    fn with(extra: &str) -> String {
        format!("{BASE}\n{extra}")
    }

    /// One file per class of mistake the validation pass reports, and its exact problems.
    /// (The stage graph's are in `graph.rs`, serde's in `parse.rs`.)
    #[test]
    fn each_class_of_mistake_has_its_exact_message() {
        let llamacpp =
            "[[backends]]\nkind = \"llamacpp\"\nname = \"l\"\nbase_url = \"http://127.0.0.1:8080\"\n";
        let cases: Vec<(&str, String, Vec<&str>)> = vec![
            (
                "a zero body limit",
                with("[server]\nmax_body_bytes = 0"),
                vec!["server.max_body_bytes: must be at least 1 (the default is 1048576, 1 MiB)"],
            ),
            (
                "a key with neither key_env nor sha256",
                with("[[auth.keys]]\nname = \"app\""),
                vec![
                    "auth.keys[0]: set exactly one of `key_env` (the environment variable holding the \
                     key) or `sha256` (the key's digest)",
                ],
            ),
            (
                "a key with both",
                with(&format!(
                    "[[auth.keys]]\nkey_env = \"ORCHESTRATOR_TEST_VALIDATE_UNSET_KEY\"\nsha256 = \"{}\"",
                    "a".repeat(64)
                )),
                vec![
                    "auth.keys[0]: set exactly one of `key_env` (the environment variable holding the \
                     key) or `sha256` (the key's digest)",
                    "auth.keys[0].key_env: the environment variable ORCHESTRATOR_TEST_VALIDATE_UNSET_KEY \
                     is not set or empty",
                ],
            ),
            (
                "a digest that is not 64 hex digits",
                with("[[auth.keys]]\nsha256 = \"abc\""),
                vec![
                    "auth.keys[0].sha256: must be 64 hex digits (e.g. the output of `printf %s KEY | \
                     sha256sum`)",
                ],
            ),
            (
                "a key variable that is not set",
                with("[[auth.keys]]\nkey_env = \"ORCHESTRATOR_TEST_VALIDATE_UNSET_KEY\""),
                vec![
                    "auth.keys[0].key_env: the environment variable ORCHESTRATOR_TEST_VALIDATE_UNSET_KEY \
                     is not set or empty",
                ],
            ),
            (
                "a key variable with no name",
                with("[[auth.keys]]\nkey_env = \"\""),
                vec![
                    "auth.keys[0].key_env: must name an environment variable, e.g. \"ORCHESTRATOR_KEY_APP\"",
                ],
            ),
            (
                "a key written where its variable's name goes (never repeated)",
                with("[[auth.keys]]\nkey_env = \"sk-live-0123456789\""),
                vec![
                    "auth.keys[0].key_env: must be the name of an environment variable (letters, digits \
                     and `_`), e.g. \"ORCHESTRATOR_KEY_APP\"; is the secret itself written here? Put it \
                     in the variable",
                ],
            ),
            (
                "a cluster without a usable broker, name, credentials or heartbeat",
                with(
                    "[cluster]\nnats_url = \"http://h:4222\"\nnode_name = \"a.b\"\nuser = \"u\"\n\
                     heartbeat_ms = 50\nnode_timeout_ms = 60\n[cluster.dlq]\nmax_age_hours = 0",
                ),
                vec![
                    "cluster.nats_url: http://h:4222: the scheme must be nats:// or tls://",
                    "cluster.node_name: must be letters, digits, `-`, `_` or `=` (it is a key in the \
                     cluster's store)",
                    "cluster.user: user and password_env go together: set both, or neither",
                    "cluster.heartbeat_ms: must be from 100 to 60000 (the default is 1000)",
                    "cluster.node_timeout_ms: must be at least twice cluster.heartbeat_ms (50), or a \
                     node would drop out between two heartbeats (the default is 5000)",
                    "cluster.dlq.max_age_hours: must be at least 1 (the default is 168, a week)",
                ],
            ),
            (
                "token budget settings without a budget, or reserving more than it",
                with(
                    "[auth]\nrate_limit = { reserve_tokens = 10 }\n[[auth.keys]]\nsha256 = \"{}\"\n\
                     rate_limit = { token_budget = 100, reserve_tokens = 200 }"
                        .replace("{}", &"a".repeat(64))
                        .as_str(),
                ),
                vec![
                    "auth.rate_limit.reserve_tokens: has no effect without token_budget (tokens per \
                     period); set it, or remove this",
                    "auth.keys[0].rate_limit.reserve_tokens: must be at most token_budget (100): a \
                     request reserving more could never run",
                ],
            ),
            (
                "a cluster token in an unset variable, beside a user",
                with(
                    "[cluster]\nnats_url = \"nats://h:4222\"\ntoken_env = \"ORCHESTRATOR_TEST_UNSET_NATS\"\n\
                     user = \"u\"\npassword_env = \"ORCHESTRATOR_TEST_UNSET_NATS\"",
                ),
                vec![
                    "cluster.token_env: set either token_env or user and password_env, not both",
                    "cluster.token_env: the environment variable ORCHESTRATOR_TEST_UNSET_NATS is not set or empty",
                    "cluster.password_env: the environment variable ORCHESTRATOR_TEST_UNSET_NATS is not set or empty",
                ],
            ),
            (
                "a dead-letter queue without a file",
                with("[dlq]\npath = \"\""),
                vec!["dlq.path: must name the dead-letter file, e.g. \"orchestrator-dlq.redb\""],
            ),
            (
                "a dead-letter queue that keeps nothing",
                with("[dlq]\npath = \"dlq.redb\"\nrecord = []"),
                vec!["dlq.record: name at least one of \"failed\", \"timeout\", \"shed\" (or remove [dlq])"],
            ),
            (
                "a base URL that is not http(s)",
                with("[[backends]]\nkind = \"openai\"\nname = \"o\"\nbase_url = \"localhost:8000\""),
                vec!["backends[1].base_url: \"localhost:8000\" is not an http:// or https:// URL"],
            ),
            (
                "a backend key variable that is not set",
                with(
                    "[[backends]]\nkind = \"vllm\"\nname = \"v\"\nbase_url = \"http://127.0.0.1:8000/v1\"\n\
                     api_key_env = \"ORCHESTRATOR_TEST_VALIDATE_UNSET_BACKEND\"",
                ),
                vec![
                    "backends[1].api_key_env: the environment variable \
                     ORCHESTRATOR_TEST_VALIDATE_UNSET_BACKEND is not set or empty",
                ],
            ),
            (
                "health checks that never time out or never decide",
                with(&format!(
                    "{llamacpp}health_check = {{ timeout_ms = 0, unhealthy_after = 0 }}"
                )),
                vec![
                    "backends[1].health_check.timeout_ms: must be at least 1 (set interval_ms = 0 to \
                     turn checks off)",
                    "backends[1].health_check: unhealthy_after and healthy_after must be at least 1",
                ],
            ),
            (
                "a llama.cpp server with no slots",
                with(&format!("{llamacpp}slots = 0")),
                vec!["backends[1].slots: must be at least 1: the server's parallel slots (llama-server -np)"],
            ),
            (
                "a backend with an empty name",
                with("[[backends]]\nkind = \"echo\"\nname = \"\""),
                vec!["backends[1].name: must not be empty"],
            ),
            (
                "two backends of one name",
                with("[[backends]]\nkind = \"echo\"\nname = \"e\""),
                vec![
                    "backends[1].name: another backend is already named \"e\"; give each backend its own name",
                ],
            ),
            (
                "no models",
                "[[backends]]\nkind = \"echo\"\nname = \"e\"\n".into(),
                vec!["models: declare at least one [[models]] entry with a `name` and its `backends`"],
            ),
            (
                "a model with an empty name",
                with("[[models]]\nname = \"\"\nbackends = [\"e\"]"),
                vec!["models[1].name: must not be empty"],
            ),
            (
                "two models of one name",
                with("[[models]]\nname = \"m\"\nbackends = [\"e\"]"),
                vec!["models[1].name: model \"m\" is declared twice; merge the entries or rename one"],
            ),
            (
                "a model with no backends",
                with("[[models]]\nname = \"n\"\nbackends = []"),
                vec!["models[1].backends: name at least one backend from [[backends]] (known: e)"],
            ),
            (
                "a model naming an unknown backend or fallback",
                with("[[models]]\nname = \"n\"\nbackends = [\"e\", \"f\"]\nfallback = [\"g\"]"),
                vec![
                    "models[1].backends[1]: no backend named \"f\" (known: e)",
                    "models[1].fallback[0]: no backend named \"g\" (known: e)",
                ],
            ),
            (
                "a post-processor with a bad setting",
                with("[[post]]\nkind = \"redact\"\npattern = \"(\""),
                vec![
                    "post[0].pattern: not a valid regex: regex parse error:\n    (\n    ^\nerror: unclosed group",
                ],
            ),
            (
                "a post-processor naming an unknown model",
                with("[[post]]\nkind = \"json\"\nmodels = [\"m\", \"n\"]"),
                vec!["post[0].models[1]: no model named \"n\" (known: m)"],
            ),
            (
                "bad retrieval settings",
                with(
                    "[rag.index]\npath = \"\"\nchunk_chars = 0\n[rag.search]\ntop_k = 0\n\
                     [rag.models.m]\nmin_score = -1.0",
                ),
                vec![
                    "rag.index.path: is empty; set it to the directory the index should live in",
                    "rag.index.chunk_chars: must be greater than 0; 800 is a good start",
                    "rag.index.overlap_chars: is 100 but must be smaller than chunk_chars (0); about \
                     an eighth of it works well",
                    "rag.search.top_k: is 0, so retrieval would find nothing; set `enabled = false` to \
                     turn it off, or top_k to 1 or more",
                    "rag.models.m.min_score: is -1 but must be a finite number of 0 or more (BM25 \
                     scores are never negative)",
                ],
            ),
            (
                "retrieval settings for an unknown model",
                with("[rag.index]\npath = \"idx\"\n[rag.models.n]\nenabled = false"),
                vec!["rag.models.n: no model named \"n\" (known: m)"],
            ),
            (
                "prompt settings for an unknown model",
                with("[assemble.models.n]\ncontext_window = 8192"),
                vec!["assemble.models.n: no model named \"n\" (known: m)"],
            ),
            (
                "a token budget with no room for the prompt",
                with("[assemble]\ncontext_window = 100\nreserve_output_tokens = 100"),
                vec![
                    "assemble.reserve_output_tokens: reserving 100 tokens for the answer leaves no room \
                     for the prompt in a context window of 100; set `reserve_output_tokens` below \
                     `context_window`",
                ],
            ),
            (
                "a template with an unknown variable",
                with("[assemble]\nsystem = \"You help with {{ prodcut }}.\""),
                vec![
                    "assemble.system: template `system` uses `prodcut`, which is not defined; the \
                     variables are `model`, `messages` and `meta`",
                ],
            ),
        ];
        let mut failed = Vec::new();
        for (class, text, expected) in &cases {
            let found = problems(text);
            if found != *expected {
                failed.push(format!("{class}:\n  found    {found:?}\n  expected {expected:?}"));
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }

    #[test]
    fn a_dead_letter_path_that_is_a_directory() {
        let dir = env!("CARGO_MANIFEST_DIR");
        assert_eq!(
            problems(&with(&format!("[dlq]\npath = {dir:?}"))),
            [format!("dlq.path: {dir} is a directory; name a file inside it")]
        );
    }

    #[test]
    fn a_key_variable_that_is_set_is_no_problem() {
        // SAFETY: no other test reads or writes this variable.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("ORCHESTRATOR_TEST_VALIDATE_SET_KEY", "sk-set")
        };
        let text = with("[[auth.keys]]\nkey_env = \"ORCHESTRATOR_TEST_VALIDATE_SET_KEY\"");
        assert_eq!(problems(&text), Vec::<String>::new());
    }
}
