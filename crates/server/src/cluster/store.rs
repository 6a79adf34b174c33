//! The cluster's buckets, each made with a description that names its layout version. A node
//! opens a bucket only if the description matches, so nodes of another version never read
//! values they would misunderstand; and it decodes every value it reads, so a malformed one is
//! an error naming the bucket and key, never a panic.

use std::time::Duration;

use async_nats::jetstream::context::{GetStreamError, GetStreamErrorKind};
use async_nats::jetstream::stream::DiscardPolicy;
use async_nats::jetstream::{self, ErrorCode, kv, stream};
use serde::de::DeserializeOwned;

/// A bucket the cluster keeps: name, layout and bounds.
pub struct BucketSpec {
    pub name: &'static str,
    /// Stored as the bucket's description; a bucket with another one is refused.
    pub layout: &'static str,
    /// Revisions kept per key.
    pub history: i64,
    /// Values older than this are dropped by the server (zero: never).
    pub max_age: Duration,
    /// Values kept at most (-1: no bound).
    pub max_messages: i64,
    /// What a full bucket does: refuse the new value, or drop the oldest.
    pub discard: DiscardPolicy,
}

impl BucketSpec {
    /// A bucket of current values (one revision per key), unbounded in number, refusing writes
    /// when the server is out of room rather than dropping what it holds.
    pub const fn new(name: &'static str, layout: &'static str, max_age: Duration) -> Self {
        Self {
            name,
            layout,
            history: 1,
            max_age,
            max_messages: -1,
            discard: DiscardPolicy::New,
        }
    }
}

/// Node records (`membership`); a record of a node gone an hour disappears by itself.
pub const NODES: BucketSpec = BucketSpec::new(
    "orchestrator_nodes",
    "tokio-prompt-orchestrator node records, layout 1",
    Duration::from_secs(3600),
);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the JetStream bucket {bucket} was made by another version of the orchestrator (its \
         description is {found:?}, this version needs {wanted:?}); run every node at one \
         version, or delete the bucket (`nats kv del {bucket}`) if its state may go"
    )]
    Layout {
        bucket: &'static str,
        found: String,
        wanted: &'static str,
    },
    #[error("the JetStream bucket {bucket} cannot be opened or made: {reason}")]
    Open { bucket: &'static str, reason: String },
    #[error("the value of {key:?} in the bucket {bucket} is malformed ({reason}); it is ignored")]
    Malformed {
        bucket: &'static str,
        key: String,
        reason: String,
    },
    #[error("the JetStream bucket {bucket}: {reason}")]
    Broker { bucket: &'static str, reason: String },
}

impl StoreError {
    /// A read or write of `bucket` that the broker failed.
    pub fn broker(bucket: &'static str, error: impl std::fmt::Display) -> Self {
        StoreError::Broker {
            bucket,
            reason: error.to_string(),
        }
    }
}

/// Opens the bucket `spec` names, making it when it does not exist yet.
///
/// The bucket's stream is made here rather than by the client's `create_key_value`, which first
/// reads account details that nats-server 2.9 does not send; the settings are the client's own
/// for a KV bucket.
///
/// # Errors
/// When it exists with another layout, or cannot be opened or made.
pub async fn open_bucket(jetstream: &jetstream::Context, spec: &BucketSpec) -> Result<kv::Store, StoreError> {
    let open_error = |e: &dyn std::fmt::Display| StoreError::Open {
        bucket: spec.name,
        reason: e.to_string(),
    };
    let stream_name = format!("KV_{}", spec.name);
    match jetstream.get_stream(&stream_name).await {
        Ok(stream) => {
            let config = &stream.cached_info().config;
            if config.description.as_deref() != Some(spec.layout) {
                return Err(StoreError::Layout {
                    bucket: spec.name,
                    found: config.description.clone().unwrap_or_default(),
                    wanted: spec.layout,
                });
            }
            // Bounds that come from the config (the stored responses' `ttl_s`, `max_entries`)
            // follow it when a node starts with new ones.
            if (config.max_age, config.max_messages, config.discard)
                != (spec.max_age, spec.max_messages, spec.discard)
            {
                let bounded = stream::Config {
                    max_age: spec.max_age,
                    max_messages: spec.max_messages,
                    discard: spec.discard,
                    ..config.clone()
                };
                jetstream
                    .update_stream(bounded)
                    .await
                    .map_err(|e| open_error(&e))?;
            }
        }
        Err(e) if is_not_found(&e) => {
            jetstream
                .get_or_create_stream(stream::Config {
                    name: stream_name,
                    description: Some(spec.layout.to_owned()),
                    subjects: vec![format!("$KV.{}.>", spec.name)],
                    max_messages_per_subject: spec.history,
                    max_age: spec.max_age,
                    max_bytes: -1,
                    max_message_size: -1,
                    storage: stream::StorageType::File,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    max_messages: spec.max_messages,
                    discard: spec.discard,
                    num_replicas: 1,
                    ..Default::default()
                })
                .await
                .map_err(|e| open_error(&e))?;
        }
        Err(e) => return Err(open_error(&e)),
    }
    jetstream
        .get_key_value(spec.name)
        .await
        .map_err(|e| open_error(&e))
}

/// Whether JetStream answered that a stream does not exist (so JetStream itself is there).
pub fn is_not_found(error: &GetStreamError) -> bool {
    matches!(error.kind(), GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// `value` of `key` in `bucket`, read as JSON.
///
/// # Errors
/// [`StoreError::Malformed`] naming the bucket and key.
pub fn decode<T: DeserializeOwned>(bucket: &'static str, key: &str, value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Malformed {
        bucket,
        key: key.to_owned(),
        reason: e.to_string(),
    })
}
