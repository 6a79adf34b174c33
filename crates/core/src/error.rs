//! The typed errors a request can end with, and the stage names they point at.
//!
//! Overload, closed intake, timeout, cancellation and shutdown are distinct variants so callers
//! (and the HTTP layer's status mapping) can tell them apart; each has a stable `kind()` label.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The five stages, in pipeline order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Rag,
    Assemble,
    Inference,
    Post,
    Stream,
}

impl Stage {
    /// All stages in the order a request passes them.
    pub const ALL: [Stage; 5] = [
        Stage::Rag,
        Stage::Assemble,
        Stage::Inference,
        Stage::Post,
        Stage::Stream,
    ];

    /// Stable lower-case name, used as the `stage` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Rag => "rag",
            Stage::Assemble => "assemble",
            Stage::Inference => "inference",
            Stage::Post => "post",
            Stage::Stream => "stream",
        }
    }

    /// Position in [`Stage::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure reported by a [`ModelWorker`](crate::ModelWorker).
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[error("{message}")]
pub struct WorkerError {
    /// What went wrong, in the upstream's own words where there is one.
    pub message: String,
    /// Whether trying again (elsewhere or later) may succeed.
    pub retryable: bool,
    /// The upstream's HTTP status, when the worker talks HTTP.
    pub status: Option<u16>,
    /// How long the upstream asked callers to wait before retrying (its `Retry-After`).
    #[serde(default)]
    pub retry_after: Option<std::time::Duration>,
    /// Every backend a router tried or passed over for this request, in order, when it gave up.
    /// (A boxed slice, not a `Vec`: errors travel in every token stream's item type, so their
    /// size is paid per token.)
    #[serde(default, skip_serializing_if = "<[_]>::is_empty")]
    pub attempts: Box<[BackendAttempt]>,
}

/// One backend a router tried (or passed over) for a request, and what went wrong there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendAttempt {
    pub backend: String,
    pub error: String,
}

impl WorkerError {
    /// A permanent failure.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            status: None,
            retry_after: None,
            attempts: Box::default(),
        }
    }

    /// A failure worth retrying.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            ..Self::new(message)
        }
    }

    /// The same error, telling the caller when trying again may help.
    pub fn with_retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// The same error, with the upstream's HTTP status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }
}

/// Why a request ended without a completion. Every admitted request that fails gets exactly one.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PipelineError {
    /// The queue in front of `stage` was full and its policy is `shed`.
    #[error("overloaded: the {stage} queue is full; retry later")]
    Overloaded { stage: Stage },
    /// The pipeline no longer accepts requests (shutting down).
    #[error("the pipeline is shutting down and accepts no new requests")]
    Closed,
    /// The request's deadline passed while it was in `stage`.
    #[error("deadline exceeded in the {stage} stage")]
    Timeout { stage: Stage },
    /// The caller went away (dropped its response handle).
    #[error("cancelled by the caller")]
    Cancelled,
    /// Still running when the shutdown grace period ran out.
    #[error("aborted: still running when the shutdown grace period ended")]
    Shutdown,
    /// Retrieval failed in the RAG stage.
    #[error("retrieval failed: {message}")]
    Retrieval { message: String },
    /// The Assemble stage could not build the prompt (a template failed).
    #[error("assembling the prompt failed: {message}")]
    Assembly { message: String },
    /// The parts of the prompt that are never dropped (system prompt, last user message) need
    /// more tokens than the model's context window holds.
    #[error(
        "the prompt needs {needed} tokens but the model's context window is {limit}; shorten the system prompt or the last message"
    )]
    ContextLength { needed: usize, limit: usize },
    /// The model worker failed.
    #[error("model worker failed: {0}")]
    Worker(#[from] WorkerError),
    /// A post-processor rejected the model's output (e.g. not valid JSON in JSON mode).
    #[error("the output was rejected by the `{processor}` post-processor: {message}")]
    Output { processor: String, message: String },
    /// A defect: the request was dropped inside the pipeline without an outcome.
    #[error("internal error: {message}")]
    Internal { message: String },
}

impl PipelineError {
    /// Stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            PipelineError::Overloaded { .. } => "overloaded",
            PipelineError::Closed => "closed",
            PipelineError::Timeout { .. } => "timeout",
            PipelineError::Cancelled => "cancelled",
            PipelineError::Shutdown => "shutdown",
            PipelineError::Retrieval { .. } => "retrieval",
            PipelineError::Assembly { .. } => "assembly",
            PipelineError::ContextLength { .. } => "context_length",
            PipelineError::Worker(_) => "worker",
            PipelineError::Output { .. } => "output",
            PipelineError::Internal { .. } => "internal",
        }
    }

    /// Whether the same request may succeed if sent again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            PipelineError::Overloaded { .. }
            | PipelineError::Closed
            | PipelineError::Shutdown
            | PipelineError::Timeout { .. } => true,
            PipelineError::Worker(e) => e.retryable,
            PipelineError::Cancelled
            | PipelineError::Retrieval { .. }
            | PipelineError::Assembly { .. }
            | PipelineError::ContextLength { .. }
            | PipelineError::Output { .. }
            | PipelineError::Internal { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_stage() {
        let e = PipelineError::Overloaded { stage: Stage::Rag };
        assert_eq!(e.to_string(), "overloaded: the rag queue is full; retry later");
        assert_eq!(e.kind(), "overloaded");
        assert!(e.is_retryable());
    }

    #[test]
    fn stage_order_matches_index() {
        for (i, s) in Stage::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
        }
    }
}
