//! A bounded single-producer, single-consumer pipe: how one request's tokens move from stage to
//! stage and on to its caller.
//!
//! Every request gets its own pipes (Inference -> Post -> Stream -> handle), so creating one has to
//! be cheap. A tokio `mpsc` channel costs two allocations (one cache-aligned) and a block of 32
//! slots per channel, and its multi-producer machinery is of no use with one sender. A pipe is one
//! allocation: a small queue and two waker slots behind a mutex that, with one sender and one
//! receiver, is almost never contended.
//!
//! The last item can be sent with [`PipeTx::finish`], which never waits: a request's end marker
//! must get through even when the reader is slow, from code that cannot wait (`Envelope::finish`).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};

/// Creates a pipe that holds up to `capacity` items (at least one) before `send` waits.
pub(crate) fn pipe<T>(capacity: usize) -> (PipeTx<T>, PipeRx<T>) {
    let shared = Arc::new(Mutex::new(State {
        // Allocated on the first item: most requests carry only a few.
        queue: VecDeque::new(),
        capacity: capacity.max(1),
        rx_waker: None,
        tx_waker: None,
        tx_open: true,
        rx_open: true,
    }));
    (
        PipeTx {
            shared: shared.clone(),
        },
        PipeRx { shared },
    )
}

struct State<T> {
    queue: VecDeque<T>,
    capacity: usize,
    /// The receiver, waiting for an item or the end.
    rx_waker: Option<Waker>,
    /// The sender, waiting for room.
    tx_waker: Option<Waker>,
    tx_open: bool,
    rx_open: bool,
}

fn lock<T>(shared: &Mutex<State<T>>) -> MutexGuard<'_, State<T>> {
    // Every critical section leaves the state consistent (no panics inside), so a poisoned lock
    // holds valid data.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Stores `cx`'s waker in `slot`, cloning it only when it changed.
fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// The sending half; dropping it ends the pipe (the receiver sees `None` after the last item).
pub(crate) struct PipeTx<T> {
    shared: Arc<Mutex<State<T>>>,
}

/// The receiving half; dropping it makes every later send fail.
pub(crate) struct PipeRx<T> {
    shared: Arc<Mutex<State<T>>>,
}

impl<T> PipeTx<T> {
    /// Sends `item`, waiting while the pipe is full.
    ///
    /// # Errors
    /// Gives `item` back when the receiver has gone. Dropping the future drops `item`.
    pub async fn send(&mut self, item: T) -> Result<(), T> {
        let mut item = Some(item);
        poll_fn(|cx| {
            let mut state = lock(&self.shared);
            let Some(value) = item.take() else {
                // Polled again after completing: never happens through `await`.
                return Poll::Ready(Ok(()));
            };
            if !state.rx_open {
                return Poll::Ready(Err(value));
            }
            if state.queue.len() >= state.capacity {
                item = Some(value);
                register(&mut state.tx_waker, cx);
                return Poll::Pending;
            }
            state.queue.push_back(value);
            let waker = state.rx_waker.take();
            drop(state);
            // Wake outside the lock, so the woken task does not find it held.
            if let Some(waker) = waker {
                waker.wake();
            }
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// Whether the receiver has gone.
    pub fn is_closed(&self) -> bool {
        !lock(&self.shared).rx_open
    }

    /// Sends the last item without waiting (it may exceed the capacity by one) and ends the pipe.
    /// Returns `false` if the receiver has gone.
    pub fn finish(self, item: T) -> bool {
        let mut state = lock(&self.shared);
        if !state.rx_open {
            return false;
        }
        state.queue.push_back(item);
        true
        // Dropping `self` marks the end and wakes the receiver.
    }
}

impl<T> Drop for PipeTx<T> {
    fn drop(&mut self) {
        let mut state = lock(&self.shared);
        state.tx_open = false;
        let waker = state.rx_waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> PipeRx<T> {
    /// The next item; `None` once the sender has gone and every item has been taken.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        // Like tokio's own channels, take part in the task's cooperative budget, so a lane
        // whose pipes always have items still yields to the scheduler now and then.
        let coop = ready!(tokio::task::coop::poll_proceed(cx));
        let mut state = lock(&self.shared);
        if let Some(item) = state.queue.pop_front() {
            coop.made_progress();
            // The sender only waits on a full pipe; wake it once there is room again.
            let waker = state.tx_waker.take();
            drop(state);
            if let Some(waker) = waker {
                waker.wake();
            }
            return Poll::Ready(Some(item));
        }
        if !state.tx_open {
            coop.made_progress();
            return Poll::Ready(None);
        }
        register(&mut state.rx_waker, cx);
        Poll::Pending
    }
}

impl<T> Drop for PipeRx<T> {
    fn drop(&mut self) {
        let mut state = lock(&self.shared);
        state.rx_open = false;
        // Items nobody will read are dropped outside the lock (they may hold other pipes).
        let items = std::mem::take(&mut state.queue);
        let waker = state.tx_waker.take();
        drop(state);
        drop(items);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn items_arrive_in_order_then_the_end() {
        let (mut tx, mut rx) = pipe(2);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(i) = rx.recv().await {
                got.push(i);
            }
            got
        });
        for i in 0..10 {
            tx.send(i).await.unwrap();
        }
        assert!(tx.finish(10));
        assert_eq!(reader.await.unwrap(), (0..=10).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_full_pipe_waits_and_a_gone_reader_fails_the_send() {
        let (mut tx, rx) = pipe(1);
        tx.send(1).await.unwrap();
        let blocked = tokio::spawn(async move {
            let result = tx.send(2).await;
            (result, tx)
        });
        tokio::task::yield_now().await;
        assert!(!blocked.is_finished());
        drop(rx);
        let (result, tx) = blocked.await.unwrap();
        assert_eq!(result, Err(2));
        assert!(!tx.finish(3));
    }

    #[tokio::test]
    async fn finish_goes_through_a_full_pipe() {
        let (mut tx, mut rx) = pipe(1);
        tx.send(1).await.unwrap();
        assert!(tx.finish(2));
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, None);
    }
}
