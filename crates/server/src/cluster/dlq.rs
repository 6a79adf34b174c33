//! The shared dead-letter queue: in cluster mode a node's dead letters go to one JetStream
//! stream, `ORCHESTRATOR_DLQ` (file storage, bounded by `[cluster.dlq]`), where every node and
//! `orchestrator dlq --cluster` see the same entries, numbered by their stream sequence.
//!
//! - A node writes each dead letter to its own `[dlq]` file first, as a node alone does, and
//!   [`forward`] moves the file's entries into the stream while NATS is there; an entry leaves
//!   the file only once the stream has acknowledged it, and its message id (node and file id)
//!   lets JetStream drop the copy a retry after a crash would add. So NATS going away loses no
//!   dead letter: they wait in the file and follow when it is back.
//! - Stream messages cannot change, so what a failed replay adds (the count, the latest error)
//!   is kept beside them in the KV bucket `orchestrator_dlq_replays`, as are replay claims: a
//!   node creates `claim.<id>` before it replays an entry, and a create succeeds for one node
//!   only, so two nodes replaying at once never replay one entry twice.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::HeaderMap;
use async_nats::jetstream;
use async_nats::jetstream::kv::{self, CreateErrorKind};
use async_nats::jetstream::stream::{self, RawMessageErrorKind};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::Cluster;
use super::config::ClusterDlqConfig;
use super::store::{BucketSpec, StoreError, is_not_found, open_bucket};
use crate::dlq::entry::unix_ms;
use crate::dlq::{DeadLetter, DlqError, ListFilter};
use crate::gateway::Gateway;

const STREAM: &str = "ORCHESTRATOR_DLQ";
const SUBJECT: &str = "orchestrator.dlq.entries";
const LAYOUT: &str = "tokio-prompt-orchestrator dead letters, layout 1";

/// Replay counts and claims, beside the stream.
pub const REPLAYS: BucketSpec = BucketSpec::new(
    "orchestrator_dlq_replays",
    "tokio-prompt-orchestrator dead-letter replays, layout 1",
    // Longer than any entry is likely kept; bounds what entries dropped by age leave behind.
    Duration::from_secs(90 * 24 * 3600),
);

/// A claim older than this was left by a node that died mid-replay, and may be taken over.
const CLAIM_EXPIRY_MS: u64 = 10 * 60 * 1000;
/// Entries moved from the file to the stream per pass.
const FORWARD_BATCH: usize = 64;

/// The stream and its replay bucket.
pub struct SharedDlq {
    jetstream: jetstream::Context,
    stream: stream::Stream,
    replays: kv::Store,
    /// Names this node in claims.
    node: String,
}

/// What a failed replay adds to an entry.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ReplayState {
    replays: u32,
    last_replay_error: Option<String>,
}

/// A replay claim held by one node; released by [`SharedDlq::release`].
#[derive(Debug, Serialize, Deserialize)]
struct Claim {
    node: String,
    at_ms: u64,
}

impl SharedDlq {
    /// Opens the stream and the replay bucket, making them when they do not exist. A node gives
    /// its `[cluster.dlq]` bounds, which the stream takes; a command gives none and leaves the
    /// stream's as they are.
    ///
    /// # Errors
    /// When either has another layout or cannot be opened.
    pub async fn open(
        jetstream: &jetstream::Context,
        bounds: Option<ClusterDlqConfig>,
        node: &str,
    ) -> Result<Self, StoreError> {
        let keep_bounds = bounds.is_none();
        let bounds = bounds.unwrap_or_default();
        let fail = |e: &dyn std::fmt::Display| StoreError::Open {
            bucket: STREAM,
            reason: e.to_string(),
        };
        let wanted = stream::Config {
            name: STREAM.into(),
            description: Some(LAYOUT.into()),
            subjects: vec![SUBJECT.into()],
            storage: stream::StorageType::File,
            max_bytes: i64::try_from(bounds.max_bytes).unwrap_or(i64::MAX),
            max_age: Duration::from_secs(bounds.max_age_hours.saturating_mul(3600)),
            discard: stream::DiscardPolicy::Old,
            // Long enough for a node to retry a forward it could not confirm.
            duplicate_window: Duration::from_secs(120),
            num_replicas: 1,
            ..Default::default()
        };
        let stream = match jetstream.get_stream(STREAM).await {
            Ok(stream) => {
                let found = stream.cached_info().config.clone();
                if found.description.as_deref() != Some(LAYOUT) {
                    return Err(StoreError::Layout {
                        bucket: STREAM,
                        found: found.description.unwrap_or_default(),
                        wanted: LAYOUT,
                    });
                }
                // Bounds only grow: a node configured smaller must not throw away what the
                // others keep.
                let grown = stream::Config {
                    max_bytes: found.max_bytes.max(wanted.max_bytes),
                    max_age: found.max_age.max(wanted.max_age),
                    ..found.clone()
                };
                if (grown.max_bytes, grown.max_age) != (wanted.max_bytes, wanted.max_age) {
                    tracing::warn!(
                        max_bytes = grown.max_bytes,
                        max_age_hours = grown.max_age.as_secs() / 3600,
                        "The shared dead-letter stream keeps bounds larger than this node's [cluster.dlq]."
                    );
                }
                if !keep_bounds && (found.max_bytes, found.max_age) != (grown.max_bytes, grown.max_age) {
                    tracing::info!(
                        max_bytes = grown.max_bytes,
                        max_age_hours = bounds.max_age_hours,
                        "The shared dead-letter stream grows to this node's [cluster.dlq] bounds."
                    );
                    jetstream.update_stream(grown).await.map_err(|e| fail(&e))?;
                }
                jetstream.get_stream(STREAM).await.map_err(|e| fail(&e))?
            }
            Err(e) if is_not_found(&e) => jetstream
                .get_or_create_stream(wanted)
                .await
                .map_err(|e| fail(&e))?,
            Err(e) => return Err(fail(&e)),
        };
        Ok(Self {
            jetstream: jetstream.clone(),
            stream,
            replays: open_bucket(jetstream, &REPLAYS).await?,
            node: node.to_owned(),
        })
    }

    /// Adds `entry`; `message_id` makes a second add of the same one a no-op. Returns its id.
    async fn add(&self, entry: &DeadLetter, message_id: &str) -> Result<u64, Unshared> {
        let payload = serde_json::to_vec(entry).map_err(|e| Unshared::Never(e.to_string()))?;
        let max = self.jetstream.client().server_info().max_payload;
        if max > 0 && payload.len() > max {
            return Err(Unshared::Never(format!(
                "it is {} bytes, more than the NATS server takes in one message (max_payload, {max} \
                 bytes)",
                payload.len()
            )));
        }
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", message_id);
        let ack = self
            .jetstream
            .publish_with_headers(SUBJECT, headers, payload.into())
            .await
            .map_err(|e| Unshared::Yet(e.to_string()))?
            .await
            .map_err(|e| Unshared::Yet(e.to_string()))?;
        Ok(ack.sequence)
    }

    /// The entry with `id`, with its replay count.
    ///
    /// # Errors
    /// When the stream cannot be read or the entry is malformed.
    pub async fn get(&self, id: u64) -> Result<Option<DeadLetter>, DlqError> {
        match self.stream.get_raw_message(id).await {
            Ok(message) => self.entry(message.sequence, &message.payload).await.map(Some),
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(shared(e)),
        }
    }

    /// The entries `filter` selects, oldest first, stepping from one stored message to the next
    /// (removed ones leave gaps, which the stream skips).
    ///
    /// # Errors
    /// When the stream cannot be read, or an entry is malformed.
    pub async fn list(&self, filter: ListFilter) -> Result<Vec<DeadLetter>, DlqError> {
        let mut entries = Vec::new();
        let mut next = filter.after_id.map_or(1, |id| id + 1);
        while filter.limit.is_none_or(|limit| entries.len() < limit) {
            let message = self
                .stream
                .raw_message_builder()
                .sequence(next)
                .next_by_subject(SUBJECT)
                .send()
                .await;
            let message = match message {
                Ok(message) => message,
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(shared(e)),
            };
            next = message.sequence + 1;
            let entry = self.entry(message.sequence, &message.payload).await?;
            if filter.since_ms.is_none_or(|since| entry.recorded_at_ms >= since) {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    async fn entry(&self, id: u64, payload: &[u8]) -> Result<DeadLetter, DlqError> {
        let mut entry: DeadLetter = serde_json::from_slice(payload)
            .map_err(|e| DlqError::Shared(format!("entry {id} is malformed: {e}")))?;
        entry.id = id;
        if let Some(value) = self.replays.get(format!("state.{id}")).await.map_err(shared)?
            && let Ok(state) = serde_json::from_slice::<ReplayState>(&value)
        {
            entry.replays = state.replays;
            entry.last_replay_error = state.last_replay_error;
        }
        Ok(entry)
    }

    /// How many entries the stream holds.
    ///
    /// # Errors
    /// When the stream cannot be read.
    pub async fn count(&self) -> Result<u64, DlqError> {
        Ok(self.stream.get_info().await.map_err(shared)?.state.messages)
    }

    /// Removes entry `id`; `false` when there was none.
    ///
    /// # Errors
    /// When the stream cannot be written.
    pub async fn remove(&self, id: u64) -> Result<bool, DlqError> {
        let removed = match self.stream.delete_message(id).await {
            Ok(removed) => removed,
            Err(e) if e.to_string().contains("no message found") => false,
            Err(e) => return Err(shared(e)),
        };
        let _ = self.replays.purge(format!("state.{id}")).await;
        Ok(removed)
    }

    /// Removes every entry and their replay state; returns how many entries there were.
    ///
    /// # Errors
    /// When the stream cannot be purged.
    pub async fn purge(&self) -> Result<u64, DlqError> {
        let purged = self.stream.purge().await.map_err(shared)?.purged;
        let replays = self
            .jetstream
            .get_stream(format!("KV_{}", REPLAYS.name))
            .await
            .map_err(shared)?;
        // The replay counts go with their entries; claims of replays under way stay.
        replays
            .purge()
            .filter(format!("$KV.{}.state.>", REPLAYS.name))
            .await
            .map_err(shared)?;
        Ok(purged)
    }

    /// Counts a failed replay of `entry`.
    ///
    /// # Errors
    /// When the bucket cannot be written.
    pub async fn record_failed_replay(&self, entry: &DeadLetter) -> Result<(), DlqError> {
        let state = ReplayState {
            replays: entry.replays,
            last_replay_error: entry.last_replay_error.clone(),
        };
        let value = serde_json::to_vec(&state).map_err(|e| DlqError::Encode(Arc::new(e)))?;
        self.replays
            .put(format!("state.{}", entry.id), value.into())
            .await
            .map_err(shared)?;
        Ok(())
    }

    /// Claims entry `id` for this node's replay: `false` when another node holds it.
    ///
    /// # Errors
    /// When the bucket cannot be read or written.
    pub async fn claim(&self, id: u64) -> Result<bool, DlqError> {
        let key = format!("claim.{id}");
        let now = unix_ms(SystemTime::now());
        let claim = serde_json::to_vec(&Claim {
            node: self.node.clone(),
            at_ms: now,
        })
        .map_err(|e| DlqError::Encode(Arc::new(e)))?;
        match self.replays.create(&key, claim.clone().into()).await {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(shared(e)),
        }
        // Held: taken over only when its node left it long ago, and only if nobody else takes
        // it over first (the update names the revision read).
        let Some(held) = self.replays.entry(&key).await.map_err(shared)? else {
            return Ok(false);
        };
        let stale = serde_json::from_slice::<Claim>(&held.value)
            .map_or(true, |c| now.saturating_sub(c.at_ms) > CLAIM_EXPIRY_MS);
        if held.operation != kv::Operation::Put || stale {
            return Ok(self
                .replays
                .update(&key, claim.into(), held.revision)
                .await
                .is_ok());
        }
        Ok(false)
    }

    /// Lets go of the claim on `id`.
    pub async fn release(&self, id: u64) {
        let _ = self.replays.purge(format!("claim.{id}")).await;
    }
}

/// Why a dead letter did not reach the stream.
enum Unshared {
    /// Not yet (NATS is away or slow): it waits in the file for the next try.
    Yet(String),
    /// Never (too large for the broker): it stays in the node's file, where `orchestrator dlq
    /// --file` finds it.
    Never(String),
}

fn shared(error: impl std::fmt::Display) -> DlqError {
    DlqError::Shared(error.to_string())
}

/// Moves the node's dead letters from its `[dlq]` file into the shared stream, every heartbeat
/// while NATS is there, until `stop`; then once more, so a node that stops cleanly leaves
/// nothing behind that NATS could take.
pub async fn forward(cluster: Arc<Cluster>, gateway: Arc<Gateway>, stop: CancellationToken) {
    // Entries that can never be shared, passed over (and logged once) until the file changes.
    let mut kept_here = HashSet::new();
    let mut beats = tokio::time::interval(Duration::from_millis(cluster.config.heartbeat_ms));
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            biased;
            () = stop.cancelled() => true,
            _ = beats.tick() => false,
        };
        if cluster.link.connected() {
            forward_pending(&cluster, &gateway, &mut kept_here).await;
        }
        if stopping {
            return;
        }
    }
}

async fn forward_pending(cluster: &Cluster, gateway: &Gateway, kept_here: &mut HashSet<u64>) {
    let Some(file) = gateway.live().dlq.clone() else {
        return;
    };
    let mut after_id = None;
    loop {
        let filter = ListFilter {
            limit: Some(FORWARD_BATCH),
            after_id,
            ..ListFilter::default()
        };
        let pending = match file.list(filter).await {
            Ok(pending) => pending,
            Err(e) => {
                tracing::error!(error = %e, "Dead letters cannot be read from this node's file to share them.");
                return;
            }
        };
        if pending.is_empty() {
            return;
        }
        after_id = pending.last().map(|e| e.id);
        for entry in &pending {
            if kept_here.contains(&entry.id) {
                continue;
            }
            // The file's id and the time it was kept: unique to this entry even if the file is
            // replaced and its ids start again.
            let message_id = format!("{}-{}-{}", cluster.node, entry.id, entry.recorded_at_ms);
            let moved = match cluster.dlq.add(entry, &message_id).await {
                Ok(_) => file.remove(entry.id).await.map(drop),
                Err(Unshared::Yet(e)) => {
                    // The link reports the outage; the entry waits in the file.
                    tracing::debug!(error = %e, "A dead letter could not be shared yet.");
                    return;
                }
                Err(Unshared::Never(why)) => {
                    tracing::error!(
                        id = entry.id,
                        file = %file.path().display(),
                        "A dead letter cannot be shared ({why}); it stays in this node's file."
                    );
                    kept_here.insert(entry.id);
                    continue;
                }
            };
            if let Err(e) = moved {
                tracing::error!(error = %e, "A shared dead letter could not be removed from this node's file.");
                return;
            }
        }
        if pending.len() < FORWARD_BATCH {
            return;
        }
    }
}
