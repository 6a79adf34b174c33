//! The dead-letter queue an operator reads, replays and purges: this node's file, or in cluster
//! mode the stream every node shares (`crate::cluster::dlq`). Either way a node writes its dead
//! letters to its file first.

use std::sync::Arc;

use super::entry::DeadLetter;
use super::store::{DlqError, DlqStore, ListFilter};
use crate::cluster::dlq::SharedDlq;

#[derive(Clone)]
pub enum DeadLetterQueue {
    File(DlqStore),
    Shared(Arc<SharedDlq>),
}

impl DeadLetterQueue {
    /// # Errors
    /// When the queue cannot be read.
    pub async fn get(&self, id: u64) -> Result<Option<DeadLetter>, DlqError> {
        match self {
            Self::File(file) => file.get(id).await,
            Self::Shared(shared) => shared.get(id).await,
        }
    }

    /// # Errors
    /// When the queue cannot be read.
    pub async fn list(&self, filter: ListFilter) -> Result<Vec<DeadLetter>, DlqError> {
        match self {
            Self::File(file) => file.list(filter).await,
            Self::Shared(shared) => shared.list(filter).await,
        }
    }

    /// # Errors
    /// When the queue cannot be read.
    pub async fn count(&self) -> Result<u64, DlqError> {
        match self {
            Self::File(file) => file.len().await,
            Self::Shared(shared) => shared.count().await,
        }
    }

    /// # Errors
    /// When the queue cannot be written.
    pub async fn remove(&self, id: u64) -> Result<bool, DlqError> {
        match self {
            Self::File(file) => file.remove(id).await,
            Self::Shared(shared) => shared.remove(id).await,
        }
    }

    /// # Errors
    /// When the queue cannot be written.
    pub async fn purge(&self) -> Result<u64, DlqError> {
        match self {
            Self::File(file) => file.purge().await,
            Self::Shared(shared) => shared.purge().await,
        }
    }

    /// Keeps the replay count and error `entry` carries.
    ///
    /// # Errors
    /// When the queue cannot be written (or, for the file, the entry is gone).
    pub async fn record_failed_replay(&self, entry: &DeadLetter) -> Result<(), DlqError> {
        match self {
            Self::File(file) => file.update(entry).await,
            Self::Shared(shared) => shared.record_failed_replay(entry).await,
        }
    }

    /// Whether this replay may run entry `id`: always for a file (one process has it open);
    /// for the shared queue, when no other node is replaying it.
    ///
    /// # Errors
    /// When the claim cannot be read or written.
    pub async fn claim(&self, id: u64) -> Result<bool, DlqError> {
        match self {
            Self::File(_) => Ok(true),
            Self::Shared(shared) => shared.claim(id).await,
        }
    }

    pub async fn release(&self, id: u64) {
        if let Self::Shared(shared) = self {
            shared.release(id).await;
        }
    }

    /// What the queue is, for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::File(file) => format!("the dead-letter file {}", file.path().display()),
            Self::Shared(_) => "the cluster's dead-letter stream".into(),
        }
    }
}
