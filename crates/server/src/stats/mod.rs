//! Live stats: a snapshot of the node every half second, for `GET /admin/stats/stream` (a
//! server-sent-events feed), the dashboard at `/dashboard` that reads it, and `orchestrator top`.
//!
//! - [`snapshot`]: what a snapshot holds (the feed's JSON);
//! - [`sample`]: reading the gateway into one, with rates and latency windows;
//! - [`top`]: `orchestrator top`, the same feed drawn in a terminal.
//!
//! One sampler task per server takes the snapshots, whether anyone watches or not, so a new
//! viewer's charts start with the last few minutes. A snapshot is written as JSON once, when the
//! first viewer asks for it, and shared by every viewer.

pub mod sample;
pub mod snapshot;
pub mod top;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::sample::Sampler;
use self::snapshot::Snapshot;
use crate::gateway::Gateway;

/// How often a snapshot is taken.
pub const INTERVAL: Duration = Duration::from_millis(500);

/// The latest snapshot, and its JSON once someone has asked for it.
pub struct Latest {
    pub snapshot: Snapshot,
    json: OnceLock<Arc<str>>,
}

impl Latest {
    /// The snapshot as JSON (without history), written once however many viewers ask.
    pub fn json(&self) -> Arc<str> {
        self.json.get_or_init(|| serialize(&self.snapshot).into()).clone()
    }
}

fn serialize(snapshot: &Snapshot) -> String {
    // Plain data with string keys: serialising it cannot fail.
    serde_json::to_string(snapshot).unwrap_or_default()
}

/// Where the sampler publishes, and viewers subscribe.
pub struct StatsFeed {
    /// `None` before the first snapshot and once the server drains (viewers' streams then end).
    latest: watch::Sender<Option<Arc<Latest>>>,
    history: Mutex<VecDeque<snapshot::Point>>,
}

impl Default for StatsFeed {
    fn default() -> Self {
        Self {
            latest: watch::Sender::new(None),
            history: Mutex::new(VecDeque::new()),
        }
    }
}

impl StatsFeed {
    /// Snapshots as they are taken; the current one is marked unseen.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Latest>>> {
        let mut rx = self.latest.subscribe();
        rx.mark_changed();
        rx
    }

    /// The current snapshot, if one has been taken.
    pub fn latest(&self) -> Option<Arc<Latest>> {
        self.latest.borrow().clone()
    }

    /// `latest` as JSON with the history the charts draw: a stream's first event.
    pub fn with_history(&self, latest: &Latest) -> String {
        let mut snapshot = latest.snapshot.clone();
        snapshot.history = self
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        serialize(&snapshot)
    }

    fn publish(&self, snapshot: Snapshot, point: snapshot::Point) {
        {
            let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
            if history.len() == sample::HISTORY {
                history.pop_front();
            }
            history.push_back(point);
        }
        self.latest.send_replace(Some(Arc::new(Latest {
            snapshot,
            json: OnceLock::new(),
        })));
    }

    /// Ends every viewer's stream.
    fn close(&self) {
        self.latest.send_replace(None);
    }
}

/// Takes a snapshot of `state` every [`INTERVAL`] until `stop` is cancelled (the server
/// drains) or the gateway is gone. `node` names this node in the snapshots.
pub async fn run_sampler(state: Weak<Gateway>, node: String, stop: CancellationToken) {
    let mut sampler = Sampler::new(node);
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let Some(state) = state.upgrade() else { return };
        let (snapshot, point) = sampler.sample(&state).await;
        state.stats.publish(snapshot, point);
    }
    if let Some(state) = state.upgrade() {
        state.stats.close();
    }
}
