//! `[cluster]`: where the broker is, who this node is, and the bounds of the state the cluster
//! keeps there. Without the section the node runs alone and needs no broker.

use serde::Deserialize;

pub use super::jobs::JobsConfig;

/// `[cluster]` in `pipeline.toml`, or `orchestrator serve --cluster nats://HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The NATS server (JetStream enabled): `nats://HOST:PORT`, or several separated by commas.
    pub nats_url: String,
    /// This node's name in the cluster; default: the host name and the process id. Two live
    /// nodes may not share one.
    #[serde(default)]
    pub node_name: Option<String>,
    /// The environment variable holding a NATS token (the server's `authorization.token`).
    #[serde(default)]
    pub token_env: Option<String>,
    /// A NATS user, with the environment variable holding its password in `password_env`.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    /// How often the node writes its membership record.
    #[serde(default = "ClusterConfig::default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A node whose last heartbeat is older than this has left the cluster.
    #[serde(default = "ClusterConfig::default_node_timeout_ms")]
    pub node_timeout_ms: u64,
    /// How long joining may take at start before the node gives up and exits.
    #[serde(default = "ClusterConfig::default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// The shared dead-letter queue's bounds.
    #[serde(default)]
    pub dlq: ClusterDlqConfig,
    /// The bounds of the queue of jobs for workers.
    #[serde(default)]
    pub jobs: JobsConfig,
}

/// `[cluster.dlq]`: the JetStream stream that holds dead letters in cluster mode. Its bounds are
/// set when the stream is first made, and grown by a node that starts with larger ones (never
/// shrunk: a node configured smaller must not throw away what the others keep).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterDlqConfig {
    /// The oldest entries are dropped once the stream holds this many bytes.
    pub max_bytes: u64,
    /// Entries older than this are dropped.
    pub max_age_hours: u64,
}

impl Default for ClusterDlqConfig {
    fn default() -> Self {
        Self {
            max_bytes: 1 << 30,
            max_age_hours: 7 * 24,
        }
    }
}

impl ClusterConfig {
    fn default_heartbeat_ms() -> u64 {
        1_000
    }

    fn default_node_timeout_ms() -> u64 {
        5_000
    }

    fn default_connect_timeout_ms() -> u64 {
        5_000
    }

    /// What a command line's `--cluster URL` makes of a file's `[cluster]`: the section with
    /// that address, or, without a section, one with only the address; the file's section as it
    /// is without the flag.
    pub fn with_url(from_file: Option<ClusterConfig>, url: Option<&str>) -> Option<ClusterConfig> {
        let Some(url) = url else {
            return from_file;
        };
        Some(match from_file {
            Some(section) => ClusterConfig {
                nats_url: url.to_owned(),
                ..section
            },
            None => ClusterConfig {
                nats_url: url.to_owned(),
                node_name: None,
                token_env: None,
                user: None,
                password_env: None,
                heartbeat_ms: Self::default_heartbeat_ms(),
                node_timeout_ms: Self::default_node_timeout_ms(),
                connect_timeout_ms: Self::default_connect_timeout_ms(),
                dlq: ClusterDlqConfig::default(),
                jobs: JobsConfig::default(),
            },
        })
    }

    /// The configured name, or the host's name and this process's id.
    pub fn node_name(&self) -> String {
        self.node_name.clone().unwrap_or_else(host_and_pid)
    }
}

/// The host's name and this process's id (`gpu-3-4711`), in the characters a node name may have.
pub fn host_and_pid() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host.trim().chars().filter(|c| is_key_char(*c)).collect();
    let host = if host.is_empty() { "node".into() } else { host };
    format!("{host}-{}", std::process::id())
}

/// Whether `c` may appear in a JetStream KV key (and so in a node name).
pub fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=')
}
