//! How a request's ending is accounted for, whichever way its answer goes out (one body, a
//! stream, a replay): the caller's token budget is charged, its place in the pipeline goes to the
//! next waiting request, and a failure is kept in the dead-letter queue when the config says so.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio_prompt_orchestrator::{Completion, GatePermit, PipelineError, Priority, Stage};

use super::error::ApiError;
use super::wire::Endpoint;
use crate::dlq::{Attempt, DeadLetter, DlqStore, Reason};
use crate::limits::KeyLimits;

/// What is settled when one request ends.
#[derive(Default)]
pub struct Outcome {
    /// The caller's key's limits, charged with the tokens used.
    pub limits: Option<Arc<KeyLimits>>,
    /// The request's place inside the pipeline; let go when it ends.
    pub permit: Option<GatePermit>,
    /// What to keep if it fails; `None` when the dead-letter queue is off.
    pub dead_letter: Option<Box<Draft>>,
}

impl Outcome {
    pub fn completed(&mut self, completion: &Completion) {
        if let Some(limits) = &self.limits {
            limits.charge(completion.usage.total_tokens);
        }
        self.permit = None;
        self.dead_letter = None;
    }

    /// Keeps the failure when the config says so, and returns what the caller is told.
    pub async fn failed(&mut self, error: PipelineError) -> ApiError {
        self.permit = None;
        if let Some(draft) = self.dead_letter.take() {
            draft.keep(&error).await;
        }
        ApiError::from(error)
    }
}

/// A request as received, ready to become a dead letter if it fails.
pub struct Draft {
    pub store: DlqStore,
    /// The endings the config keeps.
    pub record: Vec<Reason>,
    pub received_at_ms: u64,
    pub endpoint: Endpoint,
    pub model: String,
    pub key: Option<String>,
    pub priority: Priority,
    pub session: Option<String>,
    /// The body exactly as received; parsed again only if the request fails.
    pub body: Bytes,
}

impl Draft {
    /// Appends the dead letter when `error` is an ending the config keeps, and waits until it is
    /// on disk, except for refusals (see below). A caller who went away left no failure to replay.
    async fn keep(self, error: &PipelineError) {
        let Some((reason, stage)) = classify(error) else {
            return;
        };
        if !self.record.contains(&reason) {
            return;
        }
        let attempts = match error {
            PipelineError::Worker(e) => e
                .attempts
                .iter()
                .map(|a| Attempt {
                    backend: a.backend.clone(),
                    error: a.error.clone(),
                })
                .collect(),
            _ => Vec::new(),
        };
        // The body was parsed once already, so it is JSON.
        let request = serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null);
        let letter = DeadLetter {
            id: 0,
            recorded_at_ms: unix_ms(),
            received_at_ms: self.received_at_ms,
            endpoint: self.endpoint.path().to_owned(),
            model: self.model,
            key: self.key,
            priority: self.priority.as_str().to_owned(),
            session: self.session,
            request,
            reason,
            stage: stage.map(|s| s.as_str().to_owned()),
            error: error.to_string(),
            error_kind: error.kind().to_owned(),
            attempts,
            replays: 0,
            last_replay_error: None,
        };
        let store = self.store;
        let append = async move {
            match store.append(letter).await {
                Ok(id) => tracing::info!(
                    id,
                    reason = reason.as_str(),
                    "Failed request kept in the dead-letter queue."
                ),
                // The caller still gets its error; the operator learns what was not kept.
                Err(e) => {
                    tracing::error!(error = %e, "A failed request could not be kept in the dead-letter queue.")
                }
            }
        };
        if reason == Reason::Shed {
            // A refusal must be answered at once, not after a disk sync (which can take hundreds
            // of milliseconds under a burst of them): it is written in the background.
            tokio::spawn(append);
        } else {
            append.await;
        }
    }
}

/// Why a request ended, as the dead-letter queue files it, and the stage it ended in.
fn classify(error: &PipelineError) -> Option<(Reason, Option<Stage>)> {
    Some(match error {
        PipelineError::Cancelled => return None,
        PipelineError::Overloaded { stage } => (Reason::Shed, Some(*stage)),
        PipelineError::Closed => (Reason::Shed, None),
        PipelineError::Timeout { stage } => (Reason::Timeout, Some(*stage)),
        PipelineError::Retrieval { .. } => (Reason::Failed, Some(Stage::Rag)),
        PipelineError::Worker(_) => (Reason::Failed, Some(Stage::Inference)),
        PipelineError::Output { .. } => (Reason::Failed, Some(Stage::Post)),
        _ => (Reason::Failed, None),
    })
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
