//! The replies to this node's jobs: one core NATS subscription per node
//! (`orchestrator.replies.<instance>.*`), each message handed to the call waiting for its job.
//!
//! A call registers before it publishes, so no reply can come before it is awaited. Each call's
//! channel is bounded: a call that does not keep up loses its channel and ends with an error
//! rather than letting replies pile up in memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_nats::{Client, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::replies_prefix;

/// Replies one call may have waiting before it counts as not keeping up.
const PER_CALL: usize = 4096;

/// The node's reply subscription and the calls waiting on it.
pub struct Replies {
    prefix: String,
    waiting: Arc<Mutex<HashMap<u64, mpsc::Sender<Bytes>>>>,
    next: AtomicU64,
}

/// One call's replies; leaving drops its place.
pub struct Inbox {
    pub number: u64,
    /// The subject the worker replies on.
    pub subject: String,
    pub receiver: mpsc::Receiver<Bytes>,
    waiting: Arc<Mutex<HashMap<u64, mpsc::Sender<Bytes>>>>,
}

impl Drop for Inbox {
    fn drop(&mut self) {
        lock(&self.waiting).remove(&self.number);
    }
}

impl Replies {
    /// Subscribes to this node's replies and hands them out until the client closes.
    ///
    /// # Errors
    /// When the subscription cannot be made.
    pub async fn start(client: &Client, instance: &str) -> Result<Self, String> {
        let prefix = replies_prefix(instance);
        let subscriber = client
            .subscribe(format!("{prefix}.*"))
            .await
            .map_err(|e| format!("cannot subscribe to the replies of jobs: {e}"))?;
        let waiting = Arc::new(Mutex::new(HashMap::new()));
        tokio::spawn(hand_out(subscriber, waiting.clone()));
        Ok(Self {
            prefix,
            waiting,
            next: AtomicU64::new(0),
        })
    }

    /// A new call's inbox.
    pub fn register(&self) -> Inbox {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::channel(PER_CALL);
        lock(&self.waiting).insert(number, sender);
        Inbox {
            number,
            subject: format!("{}.{number}", self.prefix),
            receiver,
            waiting: self.waiting.clone(),
        }
    }
}

async fn hand_out(mut subscriber: Subscriber, waiting: Arc<Mutex<HashMap<u64, mpsc::Sender<Bytes>>>>) {
    while let Some(message) = subscriber.next().await {
        let Some(number) = message
            .subject
            .rsplit_once('.')
            .and_then(|(_, n)| n.parse::<u64>().ok())
        else {
            continue;
        };
        let mut waiting = lock(&waiting);
        if let Some(sender) = waiting.get(&number)
            && sender.try_send(message.payload).is_err()
        {
            // Full: the call cannot keep up; dropping its sender ends its replies, which it
            // reports as lost. Closed: the call has left.
            waiting.remove(&number);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding this lock leaves the map whole (inserts and removes only).
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
