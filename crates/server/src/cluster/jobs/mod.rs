//! Remote work: inference jobs that cross the broker to `orchestrator worker` processes.
//!
//! A model whose backend is `kind = "cluster"` publishes each call as a [`wire::Job`] to the
//! work-queue stream `ORCHESTRATOR_JOBS`, on the subject
//! `orchestrator.jobs.<model>.<priority>.<partition>`; the partition is the session's (or prompt
//! prefix's) hash. Workers pull from one durable consumer per subject, only when they have a free
//! slot, so the broker is the only queue. Each partition has one owner among the live workers of
//! the model (rendezvous hashing over membership), which keeps a session on one model server's
//! prompt cache. Replies come back over core NATS to the waiting node.
//!
//! - [`wire`]: the job and reply messages;
//! - [`backend`]: the gateway's side, a `ModelWorker` that publishes and waits;
//! - [`replies`]: one subscription per node, each reply handed to the call waiting for it;
//! - [`depth`]: the queue depth per model, priority and partition, as gauges.

pub mod backend;
pub mod depth;
pub mod replies;
pub mod wire;

use std::time::Duration;

use async_nats::jetstream::consumer::{self, PullConsumer};
use async_nats::jetstream::{self, stream};
use serde::Deserialize;
use tokio_prompt_orchestrator::Priority;

use super::limits::key_part;
use super::store::{StoreError, is_not_found};

/// The work-queue stream every job waits in.
pub const STREAM: &str = "ORCHESTRATOR_JOBS";
const LAYOUT: &str = "tokio-prompt-orchestrator jobs, layout 1";
/// The subjects of jobs. A model's job subjects share a prefix ([`model_filter`]).
const SUBJECTS: &str = "orchestrator.jobs.>";

/// Partitions per model and priority. Enough that the partitions of a model spread evenly over
/// a few dozen workers; each is one durable consumer per priority in the broker.
pub const PARTITIONS: u32 = 32;

/// Priorities from the first pulled to the last.
pub const PRIORITIES: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

/// The job stream and this node's replies, opened when it joins.
pub struct Jobs {
    pub stream: stream::Stream,
    pub replies: replies::Replies,
}

impl Jobs {
    /// Opens the job stream and subscribes to this node's replies.
    ///
    /// # Errors
    /// When the stream has another layout or cannot be opened, or the subscription fails.
    pub async fn open(
        jetstream: &jetstream::Context,
        bounds: JobsConfig,
        instance: &str,
    ) -> Result<Self, StoreError> {
        let stream = open(jetstream, bounds).await?;
        let replies = replies::Replies::start(&jetstream.client(), instance)
            .await
            .map_err(|reason| StoreError::Open {
                bucket: STREAM,
                reason,
            })?;
        Ok(Self { stream, replies })
    }
}

/// `[cluster.jobs]`: the bounds of the job stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Jobs waiting in the broker at once, over all models; a job beyond it is refused with 503.
    pub max_queued: u64,
    /// Bytes of waiting jobs; a job beyond it is refused with 503.
    pub max_bytes: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            max_queued: 100_000,
            max_bytes: 1 << 30,
        }
    }
}

/// The subject a job of `model` at `priority` in `partition` is published on.
pub fn subject(model: &str, priority: Priority, partition: u32) -> String {
    format!(
        "orchestrator.jobs.{}.{}.{partition}",
        key_part(model),
        priority.as_str()
    )
}

/// Every job subject of `model`.
pub fn model_filter(model: &str) -> String {
    format!("orchestrator.jobs.{}.>", key_part(model))
}

/// The priority and partition of a job subject of `model`, if it is one.
pub fn parse_subject(model: &str, subject: &str) -> Option<(Priority, u32)> {
    let rest = subject.strip_prefix(&format!("orchestrator.jobs.{}.", key_part(model)))?;
    let (priority, partition) = rest.split_once('.')?;
    let priority = PRIORITIES.into_iter().find(|p| p.as_str() == priority)?;
    let partition: u32 = partition.parse().ok()?;
    (partition < PARTITIONS).then_some((priority, partition))
}

/// Where a node announces that it has published a job of `model` (core NATS, no payload of
/// note): workers pull at once rather than on their next scan.
pub fn doorbell(model: &str) -> String {
    format!("orchestrator.ring.{}", key_part(model))
}

/// Where the gateway node with `instance` hears the replies to its jobs.
pub fn replies_prefix(instance: &str) -> String {
    format!("orchestrator.replies.{instance}")
}

/// Where the workers hear that a job is to stop.
pub fn cancel_subject(job_id: &str) -> String {
    format!("orchestrator.cancel.{job_id}")
}

pub const CANCEL_ALL: &str = "orchestrator.cancel.>";

/// The partition of an affinity key.
pub fn partition(key: &str) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % u64::from(PARTITIONS)) as u32
}

/// Opens the job stream, making it when it does not exist yet; its bounds are the first
/// maker's until an operator changes them.
///
/// # Errors
/// When it exists with another layout, or cannot be opened or made.
pub async fn open(jetstream: &jetstream::Context, bounds: JobsConfig) -> Result<stream::Stream, StoreError> {
    let fail = |e: &dyn std::fmt::Display| StoreError::Open {
        bucket: STREAM,
        reason: e.to_string(),
    };
    match jetstream.get_stream(STREAM).await {
        Ok(stream) => {
            let found = &stream.cached_info().config.description;
            if found.as_deref() != Some(LAYOUT) {
                return Err(StoreError::Layout {
                    bucket: STREAM,
                    found: found.clone().unwrap_or_default(),
                    wanted: LAYOUT,
                });
            }
            Ok(stream)
        }
        Err(e) if is_not_found(&e) => jetstream
            .get_or_create_stream(stream::Config {
                name: STREAM.into(),
                description: Some(LAYOUT.into()),
                subjects: vec![SUBJECTS.into()],
                retention: stream::RetentionPolicy::WorkQueue,
                // Jobs survive a restart of the broker.
                storage: stream::StorageType::File,
                max_messages: i64::try_from(bounds.max_queued).unwrap_or(i64::MAX),
                max_bytes: i64::try_from(bounds.max_bytes).unwrap_or(i64::MAX),
                // Full is answered by refusing new jobs, never by dropping queued ones.
                discard: stream::DiscardPolicy::New,
                duplicate_window: Duration::from_secs(120),
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| fail(&e)),
        Err(e) => Err(fail(&e)),
    }
}

/// The durable consumer of one job subject, made on first use. `ack_wait` is how long a job a
/// worker has taken stays its own without news (the worker sends progress while it waits for
/// the first token); then the broker hands it to another.
///
/// # Errors
/// When the broker cannot make or find it.
pub async fn consumer(
    stream: &stream::Stream,
    model: &str,
    priority: Priority,
    partition: u32,
    ack_wait: Duration,
) -> Result<PullConsumer, String> {
    let name = format!("jobs_{}_{}_{partition}", key_part(model), priority.as_str());
    stream
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: subject(model, priority, partition),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait,
                deliver_policy: consumer::DeliverPolicy::All,
                // A worker never holds more than its free slots; the broker need not wait on more.
                max_ack_pending: 10_000,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_read_back_and_name_their_model() {
        for model in ["llama", "org/model.v1 x"] {
            let s = subject(model, Priority::High, 7);
            assert_eq!(parse_subject(model, &s), Some((Priority::High, 7)));
            assert!(!s.contains(' ') && s.matches('.').count() == 4, "{s}");
            assert_eq!(parse_subject("other", &s), None);
        }
    }

    #[test]
    fn partitions_spread_sessions() {
        let mut counts = [0u32; PARTITIONS as usize];
        for i in 0..32_000 {
            counts[partition(&format!("session-{i}")) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
    }
}
