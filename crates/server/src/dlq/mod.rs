//! The dead-letter queue: requests the gateway could not answer, kept on disk so an operator can
//! inspect and replay them.
//!
//! - [`entry`]: the record, [`DeadLetter`].
//! - [`store`]: the file, [`DlqStore`]: one writer thread committing batches, direct reads.
//! - [`queue`]: the queue an operator works on: the file, or in cluster mode the shared stream.
//! - [`replay`]: entries sent through a running pipeline again.
//! - [`cli`]: `orchestrator dlq list|show|replay|purge`, for a file no gateway has open.

pub mod cli;
pub mod entry;
pub mod queue;
pub mod replay;
pub mod store;

pub use entry::{Attempt, DeadLetter, Reason, UnknownReason};
pub use queue::DeadLetterQueue;
pub use store::{DLQ_ENTRIES_ADDED, DLQ_SIZE, DlqError, DlqStore, ListFilter};
