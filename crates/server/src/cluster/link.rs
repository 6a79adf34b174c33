//! The node's link to NATS as the rest of the node sees it: up or down, since when, and the
//! latest problem with the cluster's state. Reported in `/readyz`, the log and
//! `orchestrator_cluster_connected`; the client reconnects by itself, so a node that lost NATS
//! rejoins without being restarted.

use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use async_nats::Event;
use metrics::{counter, gauge};
use serde::Serialize;

use crate::dlq::entry::unix_ms;

/// 1 while the node is connected to NATS, 0 while it serves with its local state (gauge).
pub const CLUSTER_CONNECTED: &str = "orchestrator_cluster_connected";
/// Times the node lost its connection to NATS (counter).
pub const CLUSTER_DISCONNECTS: &str = "orchestrator_cluster_disconnects_total";

/// The connection's state, shared by everything the cluster runs.
pub struct Link {
    node: String,
    connected: AtomicBool,
    /// Unix ms of the last change between connected and not.
    since_ms: AtomicU64,
    /// The latest failure to read or write the cluster's state while connected; cleared by the
    /// next success.
    problem: Mutex<Option<String>>,
}

/// What `/readyz` and `/admin/cluster` show of the link.
#[derive(Debug, Clone, Serialize)]
pub struct LinkState {
    pub node: String,
    pub connected: bool,
    /// Connected, and the latest read or write of the cluster's state succeeded.
    pub ok: bool,
    pub since_ms: u64,
    /// `ok`, or what is degraded and what the node does meanwhile.
    pub detail: String,
}

impl Link {
    pub fn new(node: &str) -> Self {
        gauge!(CLUSTER_CONNECTED).set(1.0);
        Self {
            node: node.to_owned(),
            connected: AtomicBool::new(true),
            since_ms: AtomicU64::new(unix_ms(SystemTime::now())),
            problem: Mutex::new(None),
        }
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Follows the client's connection events.
    pub fn observe(&self, event: &Event) {
        match event {
            Event::Connected => self.set_connected(true),
            Event::Disconnected => self.set_connected(false),
            Event::ServerError(e) => tracing::warn!(node = %self.node, error = %e, "NATS reported an error."),
            _ => {}
        }
    }

    fn set_connected(&self, connected: bool) {
        if self.connected.swap(connected, Ordering::AcqRel) == connected {
            return;
        }
        self.since_ms.store(unix_ms(SystemTime::now()), Ordering::Release);
        gauge!(CLUSTER_CONNECTED).set(if connected { 1.0 } else { 0.0 });
        if connected {
            tracing::info!(node = %self.node, "Reconnected to NATS: the cluster's state is shared again.");
        } else {
            counter!(CLUSTER_DISCONNECTS).increment(1);
            tracing::warn!(
                node = %self.node,
                "Lost NATS: serving with this node's local state until it reconnects."
            );
        }
    }

    /// Notes a failed read or write of the cluster's state (`None`: the latest one succeeded).
    /// Logged when it starts and when it ends, not on every retry.
    pub fn set_problem(&self, problem: Option<String>) {
        let mut held = self.problem.lock().unwrap_or_else(PoisonError::into_inner);
        match (&*held, &problem) {
            (None, Some(p)) => {
                tracing::warn!(node = %self.node, problem = %p, "The cluster's state cannot be written.")
            }
            (Some(_), None) => tracing::info!(node = %self.node, "The cluster's state is written again."),
            _ => {}
        }
        *held = problem;
    }

    pub fn state(&self) -> LinkState {
        let connected = self.connected();
        let problem = self
            .problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let ok = connected && problem.is_none();
        let detail = match (connected, problem) {
            (false, _) => {
                "NATS is unreachable: serving with this node's local state; reconnecting".to_owned()
            }
            (true, Some(problem)) => format!("connected, but the cluster's state fails: {problem}"),
            (true, None) => "ok".to_owned(),
        };
        LinkState {
            node: self.node.clone(),
            connected,
            ok,
            since_ms: self.since_ms.load(Ordering::Acquire),
            detail,
        }
    }
}
