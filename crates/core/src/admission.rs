//! Priority admission: a bounded number of requests inside the pipeline, the rest waiting in
//! per-priority queues that serve high before normal before low, with a starvation bound.
//!
//! The pipeline's own queues are FIFO (a session's requests must keep their order through every
//! stage), so priority is decided before admission, at the edge. A [`PriorityGate`] hands out
//! [`GatePermit`]s, at most `max_in_flight` at once; a caller holds its permit until its response
//! has ended. Callers that find every permit taken wait in the queue of their priority:
//!
//! - a freed permit goes to the oldest waiter of the highest priority, except that a request at
//!   the front of a lower queue is passed over at most `starvation_bound` times; then it goes next,
//!   so low-priority work still progresses under sustained high-priority load;
//! - when `max_queued` requests already wait, a newcomer takes the place of the newest waiter of
//!   the lowest priority below its own, which ends at once with `Overloaded`; a newcomer with no
//!   lower-priority waiter to displace is refused with `Overloaded` itself.

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};

use metrics::{Gauge, counter, gauge};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::error::{PipelineError, Stage};
use crate::metrics::{ADMISSION_QUEUED, ADMISSION_REQUESTS, Tally};
use crate::request::Priority;

/// How many requests are let in at once, how many may wait, and how far priority may starve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Requests admitted (holding a permit) at once.
    pub max_in_flight: NonZeroUsize,
    /// Requests waiting for a permit, over all priorities.
    pub max_queued: usize,
    /// How many times a request at the front of its queue may be overtaken by higher-priority
    /// requests before it is let in next; 0 serves strictly in arrival order.
    pub starvation_bound: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            max_in_flight: NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN),
            max_queued: 1024,
            starvation_bound: 16,
        }
    }
}

/// Three priorities, indexed by `Priority as usize` (low 0, normal 1, high 2).
const LEVELS: usize = 3;
const BY_RANK: [Priority; LEVELS] = [Priority::Low, Priority::Normal, Priority::High];

/// A waiting caller: its ticket (to find it again if it gives up) and where its permit goes.
struct Waiter {
    ticket: u64,
    tx: oneshot::Sender<Result<GatePermit, PipelineError>>,
    /// Times a higher-priority request was let in while this one was at the front of its queue.
    passed_over: u32,
}

#[derive(Default)]
struct State {
    in_flight: usize,
    queues: [VecDeque<Waiter>; LEVELS],
    next_ticket: u64,
}

impl State {
    fn queued(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    /// The waiter a freed permit goes to, taken out of its queue.
    fn next_waiter(&mut self, starvation_bound: u32) -> Option<Waiter> {
        // A front waiter that has been passed over enough goes first; of several, the oldest.
        let starved = (0..LEVELS)
            .filter_map(|level| Some((level, self.queues[level].front()?)))
            .filter(|(_, w)| w.passed_over >= starvation_bound)
            .min_by_key(|(_, w)| w.ticket)
            .map(|(level, _)| level);
        let level = starved.or_else(|| (0..LEVELS).rev().find(|&l| !self.queues[l].is_empty()))?;
        let waiter = self.queues[level].pop_front()?;
        for lower in &mut self.queues[..level] {
            if let Some(front) = lower.front_mut() {
                front.passed_over += 1;
            }
        }
        Some(waiter)
    }
}

/// Lets at most `max_in_flight` requests in at once, higher priority first; see the module docs.
#[derive(Clone)]
pub struct PriorityGate {
    inner: Arc<Inner>,
}

struct Inner {
    config: AdmissionConfig,
    state: Mutex<State>,
    metrics: [LevelMetrics; LEVELS],
}

/// Registered metric handles of one priority level.
struct LevelMetrics {
    admitted: Tally,
    shed: Tally,
    queued: Gauge,
}

impl LevelMetrics {
    fn register(priority: Priority) -> Self {
        let p = priority.as_str();
        Self {
            admitted: Tally::register(counter!(ADMISSION_REQUESTS, "priority" => p, "outcome" => "admitted")),
            shed: Tally::register(counter!(ADMISSION_REQUESTS, "priority" => p, "outcome" => "shed")),
            queued: gauge!(ADMISSION_QUEUED, "priority" => p),
        }
    }
}

impl PriorityGate {
    pub fn new(config: AdmissionConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State::default()),
                metrics: BY_RANK.map(LevelMetrics::register),
            }),
        }
    }

    pub fn config(&self) -> AdmissionConfig {
        self.inner.config
    }

    /// Waits for a permit at `priority`.
    ///
    /// # Errors
    /// `Overloaded { stage: Rag }` (the queue in front of the pipeline) when the queue is full and
    /// holds nothing of lower priority to displace, or when this waiter is displaced later.
    /// Dropping the future gives up the place in the queue (or the permit, if one was granted).
    pub async fn acquire(&self, priority: Priority) -> Result<GatePermit, PipelineError> {
        let (rx, ticket) = {
            let mut state = self.inner.lock();
            if state.in_flight < self.inner.config.max_in_flight.get() && state.queued() == 0 {
                state.in_flight += 1;
                self.inner.level(priority).admitted.increment(1);
                return Ok(GatePermit {
                    gate: Some(self.clone()),
                });
            }
            let displaced = if state.queued() < self.inner.config.max_queued {
                None
            } else {
                // The newest waiter of the lowest level below this one makes room, if any.
                let Some(level) = (0..priority as usize).find(|&l| !state.queues[l].is_empty()) else {
                    self.inner.level(priority).shed.increment(1);
                    return Err(overloaded());
                };
                state.queues[level].pop_back().map(|w| (w, BY_RANK[level]))
            };
            let (tx, rx) = oneshot::channel();
            let ticket = state.next_ticket;
            state.next_ticket += 1;
            state.queues[priority as usize].push_back(Waiter {
                ticket,
                tx,
                passed_over: 0,
            });
            self.inner.set_queued(&state);
            drop(state);
            if let Some((waiter, level)) = displaced {
                self.inner.level(level).shed.increment(1);
                // A displaced waiter that has already gone needs no answer.
                let _ = waiter.tx.send(Err(overloaded()));
            }
            (rx, ticket)
        };
        let mut waiting = Waiting {
            gate: self,
            priority,
            ticket,
            rx: Some(rx),
        };
        let result = match waiting.rx.as_mut() {
            Some(rx) => rx.await.unwrap_or_else(|_| Err(overloaded())),
            None => Err(overloaded()),
        };
        waiting.rx = None;
        if result.is_ok() {
            self.inner.level(priority).admitted.increment(1);
        }
        result
    }

    /// Requests holding a permit and requests waiting, now.
    pub fn load(&self) -> (usize, usize) {
        let state = self.inner.lock();
        (state.in_flight, state.queued())
    }

    /// Each priority, highest first: requests waiting now, and let in or shed so far.
    pub fn levels(&self) -> Vec<LevelStats> {
        let queued: Vec<usize> = self.inner.lock().queues.iter().map(VecDeque::len).collect();
        (0..LEVELS)
            .rev()
            .map(|l| {
                let metrics = &self.inner.metrics[l];
                LevelStats {
                    priority: BY_RANK[l],
                    queued: queued[l],
                    admitted: metrics.admitted.get(),
                    shed: metrics.shed.get(),
                }
            })
            .collect()
    }

    /// A permit was given back: it goes to the next waiter, or is freed.
    fn release(&self) {
        loop {
            let waiter = {
                let mut state = self.inner.lock();
                let waiter = state.next_waiter(self.inner.config.starvation_bound);
                if waiter.is_none() {
                    state.in_flight -= 1;
                }
                self.inner.set_queued(&state);
                waiter
            };
            let Some(waiter) = waiter else { return };
            // The permit moves to the waiter without being counted out and in again. A waiter
            // that has gone hands it back through the loop, not through `Drop`, so a long run of
            // abandoned waiters cannot grow the stack.
            match waiter.tx.send(Ok(GatePermit {
                gate: Some(self.clone()),
            })) {
                Ok(()) => return,
                Err(Ok(mut unclaimed)) => unclaimed.gate = None,
                Err(Err(_)) => return,
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held, so a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn level(&self, priority: Priority) -> &LevelMetrics {
        &self.metrics[priority as usize]
    }

    fn set_queued(&self, state: &State) {
        for (metrics, queue) in self.metrics.iter().zip(&state.queues) {
            metrics.queued.set(queue.len() as f64);
        }
    }
}

fn overloaded() -> PipelineError {
    PipelineError::Overloaded { stage: Stage::Rag }
}

/// One priority level of a [`PriorityGate`], as [`PriorityGate::levels`] reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LevelStats {
    pub priority: Priority,
    pub queued: usize,
    pub admitted: u64,
    /// Refused, or displaced from the queue by a request of higher priority.
    pub shed: u64,
}

/// A place inside the pipeline; dropping it lets the next waiter in.
#[must_use = "the permit is the request's place; dropping it lets the next request in"]
pub struct GatePermit {
    gate: Option<PriorityGate>,
}

impl Drop for GatePermit {
    fn drop(&mut self) {
        if let Some(gate) = self.gate.take() {
            gate.release();
        }
    }
}

impl std::fmt::Debug for GatePermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GatePermit")
    }
}

/// A caller's place in a queue while it waits; given up if the wait is abandoned.
struct Waiting<'a> {
    gate: &'a PriorityGate,
    priority: Priority,
    ticket: u64,
    rx: Option<oneshot::Receiver<Result<GatePermit, PipelineError>>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        let mut state = self.gate.inner.lock();
        let queue = &mut state.queues[self.priority as usize];
        if let Some(at) = queue.iter().position(|w| w.ticket == self.ticket) {
            queue.remove(at);
            self.gate.inner.set_queued(&state);
            return;
        }
        drop(state);
        // Already answered: a permit granted but never collected goes back (its own `Drop`).
        rx.close();
        drop(rx.try_recv());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max_in_flight: usize, max_queued: usize, starvation_bound: u32) -> PriorityGate {
        PriorityGate::new(AdmissionConfig {
            max_in_flight: NonZeroUsize::new(max_in_flight).unwrap(),
            max_queued,
            starvation_bound,
        })
    }

    #[tokio::test]
    async fn admits_up_to_the_limit_at_once() {
        let gate = gate(2, 0, 0);
        let a = gate.acquire(Priority::Low).await.unwrap();
        let _b = gate.acquire(Priority::Low).await.unwrap();
        assert_eq!(gate.load(), (2, 0));
        // Full and no queue: refused at once.
        assert_eq!(gate.acquire(Priority::High).await.unwrap_err(), overloaded());
        drop(a);
        assert_eq!(gate.load(), (1, 0));
    }
}
