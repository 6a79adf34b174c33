//! Per-session ordering of fire-and-forget outputs.
//!
//! Stages overlap requests, so a session's second request can finish before its first. Each
//! fire-and-forget request takes a gate at admission that opens when the session's previous
//! output has been delivered. The registry only holds sessions with a request in flight: the
//! entry goes when the session's last output is delivered, so idle sessions cost nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, oneshot};

use super::Shared;
use crate::event::PromptOutput;
use crate::request::{RequestId, SessionId};

type Waiting = HashMap<SessionId, (RequestId, oneshot::Receiver<()>)>;

/// Sessions with outputs in flight, split by shard to keep lock contention low.
pub(crate) struct OrderRegistry {
    shards: Box<[Mutex<Waiting>]>,
}

impl OrderRegistry {
    pub fn new(shards: usize) -> Arc<Self> {
        Arc::new(Self {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
        })
    }

    fn lock(&self, shard: usize) -> std::sync::MutexGuard<'_, Waiting> {
        // The map stays consistent under a panic (single insert/remove), so poisoning is moot.
        self.shards[shard].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the next place in `session`'s output order.
    pub fn admit(self: &Arc<Self>, shard: usize, session: &SessionId, id: RequestId) -> OrderGate {
        let (release, mine) = oneshot::channel();
        let after = self
            .lock(shard)
            .insert(session.clone(), (id, mine))
            .map(|(_, previous)| previous);
        OrderGate {
            after,
            release: Some(release),
            session: session.clone(),
            id,
            shard,
            registry: self.clone(),
        }
    }

    /// Sessions with fire-and-forget outputs in flight.
    pub fn len(&self) -> usize {
        (0..self.shards.len()).map(|s| self.lock(s).len()).sum()
    }
}

/// One request's place in its session's output order; dropping it lets the next one go.
pub(crate) struct OrderGate {
    /// Resolves when the previous output of the session is out (or was dropped).
    after: Option<oneshot::Receiver<()>>,
    release: Option<oneshot::Sender<()>>,
    session: SessionId,
    id: RequestId,
    shard: usize,
    registry: Arc<OrderRegistry>,
}

impl OrderGate {
    fn is_open(&mut self) -> bool {
        match &mut self.after {
            None => true,
            Some(rx) => match rx.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => false,
                // Sent, or the sender was dropped: either way the previous output is done.
                _ => {
                    self.after = None;
                    true
                }
            },
        }
    }

    /// Delivers `output` after every earlier output of the session. Never blocks the caller:
    /// when it cannot go at once, a tracked task waits for its turn and for room.
    pub fn deliver(mut self, tx: mpsc::Sender<PromptOutput>, output: PromptOutput, shared: &Shared) {
        let output = if self.is_open() {
            match tx.try_send(output) {
                // A dropped output stream means nobody reads outputs any more.
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => return,
                Err(mpsc::error::TrySendError::Full(output)) => output,
            }
        } else {
            output
        };
        let shutdown = shared.root.clone();
        shared.tracker.spawn(async move {
            // At the shutdown deadline, stop waiting for a reader that is not coming.
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = async {
                    if let Some(after) = self.after.take() {
                        let _ = after.await;
                    }
                    let _ = tx.send(output).await;
                } => {}
            }
            drop(self);
        });
    }
}

impl Drop for OrderGate {
    fn drop(&mut self) {
        let mut waiting = self.registry.lock(self.shard);
        if waiting.get(&self.session).is_some_and(|(id, _)| *id == self.id) {
            waiting.remove(&self.session);
        }
        drop(waiting);
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_forgets_a_session_when_its_last_gate_goes() {
        let reg = OrderRegistry::new(2);
        let s = SessionId::new("s");
        let mut a = reg.admit(0, &s, RequestId(1));
        let mut b = reg.admit(0, &s, RequestId(2));
        assert!(a.is_open());
        assert!(!b.is_open());
        assert_eq!(reg.len(), 1);
        drop(a);
        assert!(b.is_open());
        drop(b);
        assert_eq!(reg.len(), 0);
    }
}
