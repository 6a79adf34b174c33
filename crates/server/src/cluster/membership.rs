//! Membership: each node keeps a record under its name in the `orchestrator_nodes` bucket,
//! written every `cluster.heartbeat_ms`. A record whose last write is older than
//! `cluster.node_timeout_ms` (by the broker's clock, which stamps every write) is a node that has
//! left; a node that stops cleanly deletes its record at once.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::config::ClusterConfig;
use super::store::{NODES, StoreError, decode};
use super::{Cluster, JoinError};
use crate::dlq::entry::unix_ms;
use crate::gateway::Gateway;

/// What a node says of itself every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    /// This run of the node (a restarted node has a new one).
    pub instance: String,
    pub version: String,
    /// Where it serves HTTP.
    pub address: String,
    pub started_at_ms: u64,
    /// The models it serves.
    pub models: Vec<String>,
    /// Reloads since it started (0: the config it started with).
    pub generation: u64,
    /// The revision of the pushed config it runs; `None`: a file of its own.
    pub config_revision: Option<u64>,
    /// Why it does not run the latest pushed revision, when it could not apply it.
    pub config_error: Option<String>,
    /// Requests inside its pipeline, and waiting for a place.
    pub in_flight: usize,
    pub queued: usize,
    /// `in_flight` over `admission.max_in_flight`.
    pub load: f64,
    /// The backends it finds down (see [`super::verdicts`]); a worker's are its own affair.
    pub down_backends: Vec<String>,
    #[serde(default)]
    pub role: Role,
    /// A worker's slots: the jobs it runs at once (0 for a gateway node).
    #[serde(default)]
    pub slots: usize,
    /// A worker that is draining takes no more jobs; its partitions go to the others.
    #[serde(default)]
    pub draining: bool,
}

/// What a member does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Serves clients (`orchestrator serve`).
    #[default]
    Gateway,
    /// Runs jobs from the broker (`orchestrator worker`).
    Worker,
}

/// A record as read back, with how long ago it was written.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    #[serde(flatten)]
    pub record: NodeRecord,
    pub last_seen_ms_ago: u64,
}

impl Member {
    /// A live worker's record, for tests of what is computed from membership.
    #[cfg(test)]
    pub fn worker(name: &str, models: &[&str]) -> Self {
        Member {
            record: NodeRecord {
                name: name.into(),
                instance: name.into(),
                version: String::new(),
                address: String::new(),
                started_at_ms: 0,
                models: models.iter().map(|m| (*m).to_owned()).collect(),
                generation: 0,
                config_revision: None,
                config_error: None,
                in_flight: 0,
                queued: 0,
                load: 0.0,
                down_backends: Vec::new(),
                role: Role::Worker,
                slots: 4,
                draining: false,
            },
            last_seen_ms_ago: 0,
        }
    }
}

/// The node records of one cluster.
pub struct Members<'c> {
    bucket: &'c kv::Store,
    timeout: Duration,
    heartbeat: Duration,
}

impl<'c> Members<'c> {
    pub fn new(bucket: &'c kv::Store, config: &ClusterConfig) -> Self {
        Self {
            bucket,
            timeout: Duration::from_millis(config.node_timeout_ms),
            heartbeat: Duration::from_millis(config.heartbeat_ms),
        }
    }

    /// The live nodes, by name, and the records that could not be read (each a problem, so a
    /// malformed value hides no other node).
    ///
    /// A read the broker never answers (it went away mid-read) is given up after
    /// `node_timeout_ms`: by then any member it would list could have timed out.
    ///
    /// # Errors
    /// When the bucket cannot be read, or not within `node_timeout_ms`.
    pub async fn live(&self) -> Result<(Vec<Member>, Vec<StoreError>), StoreError> {
        tokio::time::timeout(self.timeout, self.read())
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::broker(
                    NODES.name,
                    format!(
                        "no answer within {} ms (cluster.node_timeout_ms)",
                        self.timeout.as_millis()
                    ),
                ))
            })
    }

    async fn read(&self) -> Result<(Vec<Member>, Vec<StoreError>), StoreError> {
        let mut keys = self
            .bucket
            .keys()
            .await
            .map_err(|e| StoreError::broker(NODES.name, e))?;
        let mut members = Vec::new();
        let mut problems = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| StoreError::broker(NODES.name, e))?;
            let Some(entry) = self
                .bucket
                .entry(key.clone())
                .await
                .map_err(|e| StoreError::broker(NODES.name, e))?
            else {
                continue;
            };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let age = age_ms(&entry);
            if age > self.timeout.as_millis() as u64 {
                continue;
            }
            match decode::<NodeRecord>(NODES.name, &key, &entry.value) {
                Ok(record) => members.push(Member {
                    record,
                    last_seen_ms_ago: age,
                }),
                Err(problem) => problems.push(problem),
            }
        }
        members.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        Ok((members, problems))
    }

    /// Makes sure no live node has `name`: a record of another instance that is still being
    /// written is waited on for one timeout (it may be this node's previous run, killed), then
    /// refused.
    pub(super) async fn claim(&self, name: &str, instance: &str) -> Result<(), JoinError> {
        let give_up = tokio::time::Instant::now() + self.timeout + self.heartbeat;
        loop {
            let entry = self
                .bucket
                .entry(name)
                .await
                .map_err(|e| StoreError::broker(NODES.name, e))?;
            let held = entry.filter(|e| {
                e.operation == kv::Operation::Put
                    && age_ms(e) <= self.timeout.as_millis() as u64
                    && decode::<NodeRecord>(NODES.name, name, &e.value).is_ok_and(|r| r.instance != instance)
            });
            if held.is_none() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(JoinError::NameTaken { name: name.into() });
            }
            tokio::time::sleep(self.heartbeat).await;
        }
    }
}

/// Milliseconds since the broker stored `entry`.
fn age_ms(entry: &kv::Entry) -> u64 {
    let written_ms = (entry.created.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
    unix_ms(SystemTime::now()).saturating_sub(written_ms)
}

/// Writes this member's record, as `record` makes it, every heartbeat until `stop`, then deletes
/// it so the member leaves at once. A failed write is noted on the link (and `/readyz`) and
/// retried on the next beat.
pub async fn heartbeat(cluster: Arc<Cluster>, record: impl Fn() -> NodeRecord, stop: CancellationToken) {
    let mut beats = tokio::time::interval(Duration::from_millis(cluster.config.heartbeat_ms));
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = beats.tick() => {}
        }
        let Ok(value) = serde_json::to_vec(&record()) else {
            continue;
        };
        let written = cluster.nodes.put(&cluster.node, value.into()).await;
        cluster
            .link
            .set_problem(written.err().map(|e| format!("heartbeat: {e}")));
    }
    if let Err(e) = cluster.nodes.delete(&cluster.node).await {
        tracing::warn!(error = %e, "Could not remove this node's record; it drops out when its heartbeat times out.");
    }
}

/// A gateway node's record.
pub fn gateway_record(cluster: &Cluster, gateway: &Gateway, address: &str, started_at_ms: u64) -> NodeRecord {
    let live = gateway.live();
    let (in_flight, queued) = live.gate.load();
    let capacity = live.config.admission.max_in_flight.get();
    NodeRecord {
        name: cluster.node.clone(),
        instance: cluster.instance.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        address: address.to_owned(),
        started_at_ms,
        models: live.models.names().to_vec(),
        generation: live.generation,
        config_revision: live.cluster_revision,
        config_error: cluster.following.error(),
        in_flight,
        queued,
        load: in_flight as f64 / capacity as f64,
        down_backends: live
            .models
            .replicas()
            .iter()
            .filter(|r| r.down_here())
            .map(|r| r.name().to_owned())
            .collect(),
        role: Role::Gateway,
        slots: 0,
        draining: false,
    }
}
