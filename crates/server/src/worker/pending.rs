//! The queues a worker knows may hold jobs, and which to pull from next: high before normal
//! before low, with the admission gate's starvation bound; within a priority, the worker's own
//! partitions first, then other workers' jobs that have waited `handoff_ms`, oldest first.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use tokio_prompt_orchestrator::Priority;

use super::ownership::Owned;
use crate::cluster::jobs::PRIORITIES;

/// One queue: a model (by its index in the worker's list), a priority and a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Queue {
    pub model: usize,
    pub priority: Priority,
    pub partition: u32,
}

/// The place of `priority` in [`PRIORITIES`] (0: pulled first).
fn rank(priority: Priority) -> usize {
    PRIORITIES
        .iter()
        .position(|p| *p == priority)
        .unwrap_or(PRIORITIES.len() - 1)
}

pub struct Pending {
    /// Queues that may hold jobs, and since when (for the hand-off wait).
    queues: HashMap<Queue, Instant>,
    /// How many times the best queue of each priority was passed over for a higher one.
    passed_over: [u32; PRIORITIES.len()],
    starvation_bound: u32,
    handoff: Duration,
}

impl Pending {
    pub fn new(starvation_bound: u32, handoff: Duration) -> Self {
        Self {
            queues: HashMap::new(),
            passed_over: [0; PRIORITIES.len()],
            starvation_bound,
            handoff,
        }
    }

    /// `queue` may hold jobs (from `now`, unless it was known already).
    pub fn note(&mut self, queue: Queue, now: Instant) {
        self.queues.entry(queue).or_insert(now);
    }

    /// `queue` is empty.
    pub fn forget(&mut self, queue: &Queue) {
        self.queues.remove(queue);
    }

    /// The queue to pull from now, if any may be pulled.
    pub fn pick(&mut self, now: Instant, owned: &Owned) -> Option<Queue> {
        // The best queue of each priority: owned first, then the longest known.
        let mut best: [Option<(bool, Instant, Queue)>; PRIORITIES.len()] = [None; PRIORITIES.len()];
        for (&queue, &since) in &self.queues {
            let mine = owned.contains(queue.model, queue.partition);
            if !mine && now.duration_since(since) < self.handoff {
                continue;
            }
            let slot = &mut best[rank(queue.priority)];
            let better = slot.is_none_or(|(was_mine, was_since, _)| (mine, was_since) > (was_mine, since));
            if better {
                *slot = Some((mine, since, queue));
            }
        }
        for (passed, best) in self.passed_over.iter_mut().zip(&best) {
            if best.is_none() {
                *passed = 0;
            }
        }
        let present = || (0..best.len()).filter(|&r| best[r].is_some());
        // High before normal before low, unless a lower one has been passed over too often.
        let starved =
            present().find(|&r| self.starvation_bound > 0 && self.passed_over[r] >= self.starvation_bound);
        let chosen = starved.or_else(|| present().next())?;
        for r in present().filter(|&r| r > chosen) {
            self.passed_over[r] += 1;
        }
        self.passed_over[chosen] = 0;
        best[chosen].map(|(_, _, queue)| queue)
    }

    /// When the next job of another worker's partition may be taken, if one is known.
    pub fn next_handoff(&self, owned: &Owned) -> Option<Instant> {
        self.queues
            .iter()
            .filter(|(q, _)| !owned.contains(q.model, q.partition))
            .map(|(_, since)| *since + self.handoff)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::membership::Member;
    use crate::worker::ownership::owned;

    fn queue(priority: Priority, partition: u32) -> Queue {
        Queue {
            model: 0,
            priority,
            partition,
        }
    }

    /// What a worker alone owns: every partition.
    fn all() -> Owned {
        owned(&[], &["m".to_owned()], "me", false)
    }

    #[test]
    fn high_goes_before_normal_before_low() {
        let mut pending = Pending::new(16, Duration::from_millis(500));
        let now = Instant::now();
        pending.note(queue(Priority::Low, 1), now);
        pending.note(queue(Priority::Normal, 2), now);
        pending.note(queue(Priority::High, 3), now);
        let mut order = Vec::new();
        while let Some(q) = pending.pick(now, &all()) {
            order.push(q.priority);
            pending.forget(&q);
        }
        assert_eq!(order, [Priority::High, Priority::Normal, Priority::Low]);
    }

    #[test]
    fn a_lower_priority_passed_over_too_often_goes_next() {
        let mut pending = Pending::new(3, Duration::from_millis(500));
        let now = Instant::now();
        pending.note(queue(Priority::High, 1), now);
        pending.note(queue(Priority::Low, 2), now);
        // High keeps having jobs: low is passed over three times, then served once.
        let picks: Vec<Priority> = (0..8)
            .map(|_| pending.pick(now, &all()).unwrap().priority)
            .collect();
        use Priority::{High, Low};
        assert_eq!(picks, [High, High, High, Low, High, High, High, Low]);
    }

    #[test]
    fn other_workers_jobs_wait_out_the_handoff_and_own_ones_come_first() {
        let other = Member::worker("other", &["m"]);
        let owned = owned(&[other], &["m".to_owned()], "me", false);
        let mine = (0..32).find(|p| owned.contains(0, *p)).unwrap();
        let theirs = (0..32).find(|p| !owned.contains(0, *p)).unwrap();
        let handoff = Duration::from_millis(500);
        let mut pending = Pending::new(16, handoff);
        let t0 = Instant::now();
        pending.note(queue(Priority::Normal, theirs), t0);
        assert_eq!(pending.pick(t0, &owned), None, "not before the hand-off wait");
        assert_eq!(pending.next_handoff(&owned), Some(t0 + handoff));
        pending.note(queue(Priority::Normal, mine), t0 + handoff);
        assert_eq!(
            pending.pick(t0 + handoff, &owned).unwrap().partition,
            mine,
            "own first"
        );
        pending.forget(&queue(Priority::Normal, mine));
        assert_eq!(pending.pick(t0 + handoff, &owned).unwrap().partition, theirs);
    }
}
