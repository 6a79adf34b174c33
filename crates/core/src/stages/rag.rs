//! RAG stage: retrieves context for a request; passes it straight through when no retriever is
//! configured.
//!
//! Retrieval runs as the request's own future inside the lane (a retriever that does blocking
//! work must move it to a blocking pool), so a slow query holds only its own request.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{Place, StageLogic, Start};
use crate::error::{PipelineError, Stage};
use crate::pipeline::envelope::Envelope;
use crate::request::InferenceRequest;

/// One piece of retrieved context.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetrievedChunk {
    pub text: String,
    /// Where it came from (a file path, a URL).
    pub source: String,
    /// Its position within the source (chunk number).
    pub position: u64,
    pub score: f32,
}

/// Finds context for a request.
#[async_trait]
pub trait Retriever: Send + Sync + 'static {
    /// # Errors
    /// [`PipelineError::Retrieval`] when the index cannot be searched; the request then fails.
    async fn retrieve(&self, request: &InferenceRequest) -> Result<Vec<RetrievedChunk>, PipelineError>;
}

pub(crate) struct RagStage {
    pub retriever: Option<Arc<dyn Retriever>>,
}

impl StageLogic for RagStage {
    const STAGE: Stage = Stage::Rag;
    type In = Envelope;
    type Out = Envelope;

    fn start(&self, env: Envelope, permit: Place, now: Instant) -> Start<Envelope> {
        let Some(retriever) = self.retriever.clone() else {
            return Start::Forward(env);
        };
        Start::Later(retrieve(retriever, env, permit, now).boxed())
    }

    fn synchronous(&self) -> bool {
        self.retriever.is_none()
    }
}

async fn retrieve(
    retriever: Arc<dyn Retriever>,
    mut env: Envelope,
    _permit: Place,
    started: Instant,
) -> Option<Envelope> {
    // The retriever's future is dropped when the caller leaves or the deadline passes.
    let result = tokio::select! {
        biased;
        cause = env.wait_for_abort() => Err(cause.into_error(Stage::Rag)),
        found = retriever.retrieve(&env.request) => found,
    };
    let active = started.elapsed();
    env.timings.stage_mut(Stage::Rag).active = active;
    let metrics = env.shared.metrics.stage(Stage::Rag);
    metrics.latency.record(active);
    match result {
        Ok(chunks) => {
            metrics.completed.increment(1);
            env.retrieved = chunks;
            Some(env)
        }
        Err(error) => {
            metrics.failed.increment(1);
            env.fail(Stage::Rag, error);
            None
        }
    }
}
