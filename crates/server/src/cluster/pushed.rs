//! The cluster's config: `orchestrator cluster push FILE` validates a file and stores its text in
//! the `orchestrator_config` bucket; every node follows that key and reloads each new revision
//! the way SIGHUP reloads a file. A node that cannot apply a revision keeps what it runs and says
//! why in its membership record (`/admin/cluster`, `orchestrator cluster status`).
//!
//! What stays the node's own: `server.listen` and `[cluster]`, which a pushed file cannot move.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::Cluster;
use super::store::{BucketSpec, StoreError, decode};
use crate::config::Config;
use crate::dlq::entry::unix_ms;
use crate::gateway::Gateway;
use crate::gateway::reload::reload_with;

/// The pushed config; only its latest revision is kept.
pub const CONFIG: BucketSpec = BucketSpec::new(
    "orchestrator_config",
    "tokio-prompt-orchestrator pushed config, layout 1",
    Duration::ZERO,
);

/// The one key of the bucket.
const KEY: &str = "pipeline";

/// A pushed config, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushedConfig {
    /// The file's TOML, as pushed.
    pub text: String,
    /// The file's name where it was pushed from, for messages.
    pub source: String,
    pub pushed_at_ms: u64,
}

/// What this node made of the latest revision it saw.
#[derive(Debug, Default)]
pub struct Following {
    /// Why the latest revision is not running here; `None` when it is (or none was pushed).
    error: Mutex<Option<String>>,
}

impl Following {
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set_error(&self, error: Option<String>) {
        *self.error.lock().unwrap_or_else(PoisonError::into_inner) = error;
    }
}

/// Stores `text` (already validated) as the cluster's config and returns its revision.
///
/// # Errors
/// When the bucket cannot be written.
pub async fn push(bucket: &kv::Store, text: String, source: String) -> Result<u64, StoreError> {
    let value = serde_json::to_vec(&PushedConfig {
        text,
        source,
        pushed_at_ms: unix_ms(SystemTime::now()),
    })
    .unwrap_or_default();
    bucket
        .put(KEY, value.into())
        .await
        .map_err(|e| StoreError::broker(CONFIG.name, e))
}

/// Follows the pushed config until `stop`: the current revision first (a node that joins takes
/// the cluster's config), then every new one. A watch that breaks (NATS went away) is made again
/// from the revision after the last one seen.
pub async fn follow(cluster: Arc<Cluster>, gateway: Arc<Gateway>, stop: CancellationToken) {
    let retry = Duration::from_millis(cluster.config.heartbeat_ms);
    let mut next: Option<u64> = None;
    while !stop.is_cancelled() {
        let watch = match next {
            None => cluster.pushed.watch_with_history(KEY).await,
            Some(revision) => cluster.pushed.watch_from_revision(KEY, revision).await,
        };
        let mut watch = match watch {
            Ok(watch) => watch,
            Err(_) => {
                // The link reports the outage; try again a heartbeat later.
                tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(retry) => continue,
                }
            }
        };
        loop {
            let entry = tokio::select! {
                entry = watch.next() => entry,
                () = stop.cancelled() => return,
            };
            match entry {
                Some(Ok(entry)) => {
                    next = Some(entry.revision + 1);
                    if entry.operation == kv::Operation::Put {
                        apply(&cluster, &gateway, &entry).await;
                    }
                }
                Some(Err(_)) | None => break,
            }
        }
    }
}

/// Reloads the node with one pushed revision, or notes why it cannot.
async fn apply(cluster: &Cluster, gateway: &Arc<Gateway>, entry: &kv::Entry) {
    let revision = entry.revision;
    if gateway.live().cluster_revision == Some(revision) {
        return;
    }
    let outcome = async {
        let pushed: PushedConfig = decode(CONFIG.name, KEY, &entry.value).map_err(|e| e.to_string())?;
        let source = format!("cluster config revision {revision} ({})", pushed.source);
        let mut config = Config::parse(&pushed.text, &source).map_err(|e| e.to_string())?;
        // The node's own: where it listens and which cluster it is in.
        let current = gateway.live();
        config.server.listen = current.config.server.listen;
        config.cluster.clone_from(&current.config.cluster);
        drop(current);
        reload_with(gateway, config, &source, revision)
            .await
            .map(|_| ())
            .map_err(|e| format!("{source}: {e}"))
    }
    .await;
    match &outcome {
        Ok(()) => tracing::info!(revision, "Applied the cluster's config."),
        Err(why) => tracing::error!(
            revision,
            "The cluster's config cannot be applied here; the running config stays.\n{why}"
        ),
    }
    cluster.following.set_error(outcome.err());
}
