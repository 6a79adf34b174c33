//! Cancellation on a worker: the jobs running here by id, the jobs cancelled lately that may
//! still come (a cancel can reach the worker before the job it names), and the subscription
//! that hears gateway nodes cancel jobs (`orchestrator.cancel.<job>`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::cluster::Cluster;
use crate::cluster::jobs::{self, wire::Cancel};

/// Stops the jobs gateway nodes cancel, running here or about to.
pub async fn hear_cancels(shared: Arc<Shared>, cluster: Arc<Cluster>, stop: CancellationToken) {
    let mut cancels = match cluster.jetstream.client().subscribe(jobs::CANCEL_ALL).await {
        Ok(cancels) => cancels,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot hear cancellations; cancelled jobs run to their end.");
            return;
        }
    };
    loop {
        let message = tokio::select! {
            message = cancels.next() => match message {
                Some(message) => message,
                None => return,
            },
            () = stop.cancelled() => return,
        };
        let Some(id) = message.subject.as_str().strip_prefix("orchestrator.cancel.") else {
            continue;
        };
        let keep = serde_json::from_slice::<Cancel>(&message.payload)
            .ok()
            .and_then(|c| c.keep);
        if keep.as_deref() != Some(cluster.instance.as_str()) {
            shared.cancels.cancel(id);
        }
    }
}

/// Jobs running here, by id, and jobs cancelled lately that may still come.
#[derive(Default)]
pub struct Cancels(Mutex<CancelState>);

#[derive(Default)]
struct CancelState {
    running: HashMap<String, CancellationToken>,
    /// Cancelled jobs not running here: looked up by id, forgotten oldest first.
    recent: HashSet<String>,
    order: VecDeque<(String, Instant)>,
}

/// Cancellations remembered for jobs not running here, at most this many and this long.
const RECENT_MAX: usize = 10_000;
const RECENT_FOR: Duration = Duration::from_secs(60);

/// A job's place among the running; leaving takes it out.
pub struct Running<'a> {
    cancels: &'a Cancels,
    id: String,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.cancels.lock().running.remove(&self.id);
    }
}

impl Cancels {
    fn lock(&self) -> MutexGuard<'_, CancelState> {
        // Inserts and removes only: a panic while holding it leaves it whole.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers job `id` as running with `token`; `None` if it was cancelled already.
    pub fn start(&self, id: &str, token: CancellationToken) -> Option<Running<'_>> {
        let mut state = self.lock();
        if state.recent.contains(id) {
            return None;
        }
        state.running.insert(id.to_owned(), token);
        Some(Running {
            cancels: self,
            id: id.to_owned(),
        })
    }

    /// Cancels job `id` if it runs here, else remembers it for a while.
    pub fn cancel(&self, id: &str) {
        let mut state = self.lock();
        if let Some(token) = state.running.get(id) {
            token.cancel();
            return;
        }
        let now = Instant::now();
        while state
            .order
            .front()
            .is_some_and(|(_, at)| now.duration_since(*at) > RECENT_FOR)
            || state.order.len() >= RECENT_MAX
        {
            if let Some((old, _)) = state.order.pop_front() {
                state.recent.remove(&old);
            }
        }
        if state.recent.insert(id.to_owned()) {
            state.order.push_back((id.to_owned(), now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_reaches_a_running_job_and_one_that_comes_later() {
        let cancels = Cancels::default();
        let token = CancellationToken::new();
        let running = cancels.start("a", token.clone()).unwrap();
        cancels.cancel("a");
        assert!(token.is_cancelled());
        drop(running);
        cancels.cancel("b");
        assert!(cancels.start("b", CancellationToken::new()).is_none());
        assert!(cancels.start("c", CancellationToken::new()).is_some());
    }
}
