//! A stage's concurrency limit: a counter of free places, shared by the stage's lanes.
//!
//! This replaces a `tokio::sync::Semaphore`, whose every release takes a lock to look for
//! waiters. Here taking and giving back a place are one atomic operation each, and a release
//! only touches the `Notify` (itself lock-free when nobody waits) to wake a lane that waits.
//! What it gives up is fairness: a lane that finds a free place takes it even if another lane has
//! waited longer. The stages do not need it: each lane waits with one request in hand, keeps its
//! own queue in order, and every release wakes a waiting lane, so none can wait forever while
//! places are given back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Free places under one stage's concurrency limit.
pub(crate) struct Limit {
    places: usize,
    free: AtomicUsize,
    /// Wakes a lane waiting for a place when one is given back.
    released: Notify,
}

impl Limit {
    pub fn new(places: usize) -> Arc<Self> {
        Arc::new(Self {
            places,
            free: AtomicUsize::new(places),
            released: Notify::new(),
        })
    }

    /// A place now, if one is free.
    pub fn try_take(self: &Arc<Self>) -> Option<LimitPermit> {
        self.free
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| free.checked_sub(1))
            .ok()
            .map(|_| LimitPermit { limit: self.clone() })
    }

    /// Waits for a place.
    ///
    /// Cancel-safe: dropping the future takes no place, and a wake-up it received but did not
    /// use passes to the next waiting lane (`Notify` forwards an unused `notify_one`).
    pub async fn take(self: &Arc<Self>) -> LimitPermit {
        loop {
            if let Some(permit) = self.try_take() {
                return permit;
            }
            let released = self.released.notified();
            let mut released = std::pin::pin!(released);
            // Registered before looking again, so a release between the look and the wait wakes it.
            released.as_mut().enable();
            if let Some(permit) = self.try_take() {
                return permit;
            }
            released.await;
        }
    }

    /// Places taken now: the stage's requests in flight. Only a limit that binds (see
    /// `StageLogic::synchronous`) is taken from; the others read 0.
    pub fn in_use(&self) -> usize {
        self.places.saturating_sub(self.free.load(Ordering::Relaxed))
    }

    #[cfg(test)]
    fn free(&self) -> usize {
        self.free.load(Ordering::Acquire)
    }
}

/// A request's place under its stage's limit; given back when dropped.
pub(crate) struct LimitPermit {
    limit: Arc<Limit>,
}

impl Drop for LimitPermit {
    fn drop(&mut self) {
        self.limit.free.fetch_add(1, Ordering::AcqRel);
        self.limit.released.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn places_are_taken_and_given_back() {
        let limit = Limit::new(2);
        let a = limit.try_take().expect("first place");
        let _b = limit.take().await;
        assert!(limit.try_take().is_none());
        assert_eq!(limit.free(), 0);
        drop(a);
        assert_eq!(limit.free(), 1);
        let _c = limit.try_take().expect("given back");
    }

    #[tokio::test]
    async fn a_waiting_lane_is_woken_by_a_release() {
        let limit = Limit::new(1);
        let held = limit.try_take().expect("place");
        let waiter = tokio::spawn({
            let limit = limit.clone();
            async move {
                let _permit = limit.take().await;
            }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(held);
        waiter.await.expect("waiter got the place");
        assert_eq!(limit.free(), 1);
    }

    #[tokio::test]
    async fn a_dropped_waiter_passes_its_wake_up_on() {
        let limit = Limit::new(1);
        let held = limit.try_take().expect("place");
        let mut first = Box::pin(limit.take());
        let second = tokio::spawn({
            let limit = limit.clone();
            async move {
                let _permit = limit.take().await;
            }
        });
        // Both wait; `first` is registered first.
        assert!(futures_util::poll!(first.as_mut()).is_pending());
        tokio::task::yield_now().await;
        drop(held);
        // `first` was woken but goes away without taking the place.
        drop(first);
        second.await.expect("the second waiter got the place");
    }
}
