//! Stored responses in the cluster: the JetStream bucket `orchestrator_responses`, one key per
//! answer, bounded by the server (the oldest go first, every value after `ttl_s`), so that any
//! node continues a conversation another node began.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use async_nats::jetstream::stream::DiscardPolicy;

use crate::cluster::Cluster;
use crate::cluster::store::{BucketSpec, open_bucket};
use crate::config::ResponsesConfig;

const NAME: &str = "orchestrator_responses";

#[derive(Clone)]
pub struct SharedStore {
    bucket: Arc<kv::Store>,
}

impl SharedStore {
    /// # Errors
    /// When the bucket cannot be opened or made, or has another layout.
    pub async fn open(cluster: &Cluster, config: &ResponsesConfig) -> Result<Self, String> {
        let spec = BucketSpec {
            max_messages: i64::try_from(config.max_entries).unwrap_or(i64::MAX),
            // A full bucket makes room: stored answers are a convenience, not a record.
            discard: DiscardPolicy::Old,
            ..BucketSpec::new(
                NAME,
                "tokio-prompt-orchestrator stored responses, layout 1",
                Duration::from_secs(config.ttl_s),
            )
        };
        let bucket = open_bucket(&cluster.jetstream, &spec)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self {
            bucket: Arc::new(bucket),
        })
    }

    // Ids are checked at the edge (letters, digits, `_` and `-`), so they are valid keys.
    pub async fn put(&self, id: &str, bytes: Vec<u8>) -> Result<(), String> {
        self.bucket.put(id, bytes.into()).await.map(drop).map_err(broker)
    }

    pub async fn read(&self, id: &str) -> Result<Option<Vec<u8>>, String> {
        let value = self.bucket.get(id).await.map_err(broker)?;
        Ok(value.map(|bytes| bytes.to_vec()))
    }

    pub async fn delete(&self, id: &str) -> Result<(), String> {
        self.bucket.delete(id).await.map_err(broker)
    }
}

fn broker(error: impl std::fmt::Display) -> String {
    format!("the JetStream bucket {NAME}: {error}")
}
