//! Inference stage: calls the model worker and relays its tokens downstream as they arrive.
//!
//! The request is handed to Post at once with a token channel; the model call runs as the
//! request's job in this lane. The stage's concurrency limit is the number of model calls in
//! flight. When the request is aborted, or Post stops reading (a stop sequence or length cap was
//! hit), the worker's future and stream are dropped, which cancels the upstream call.

use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use tokio::time::Instant;

use super::{Finished, Handoff, Piece, Place, StageLogic, Start, StreamEnd};
use crate::error::{PipelineError, Stage};
use crate::event::FinishReason;
use crate::pipeline::Shared;
use crate::pipeline::envelope::{Abort, Envelope};
use crate::pipeline::pipe::{PipeTx, pipe};
use crate::stages::assemble::{self, Assembled};
use crate::worker::{InferenceCall, ModelWorker, WorkerChunk};

pub(crate) struct InferenceStage {
    pub worker: Arc<dyn ModelWorker>,
}

impl StageLogic for InferenceStage {
    const STAGE: Stage = Stage::Inference;
    type In = Envelope;
    type Out = Handoff;

    fn start(&self, env: Envelope, permit: Place, now: Instant) -> Start<Handoff> {
        let shared = env.shared.clone();
        let (tx, rx) = pipe(shared.config.token_buffer.get());
        let assembled = env.assembled.clone().unwrap_or_else(|| Assembled {
            messages: None,
            prompt: assemble::render(&env.request.input, &env.retrieved),
            prompt_templated: false,
            prefix_key: None,
            prompt_tokens: None,
        });
        let call = InferenceCall {
            id: env.id,
            request: env.request.clone(),
            prompt: assembled.prompt,
            prompt_templated: assembled.prompt_templated,
            messages: assembled.messages,
            prefix_key: assembled.prefix_key,
            cancel: env.cancel.clone(),
            deadline: env.deadline,
            traceparent: env.request.trace.as_ref().map(|t| t.parent),
        };
        let job = run(self.worker.clone(), call, tx, env.abort(), shared, permit, now);
        Start::Stream(Handoff { env, pieces: rx }, job.boxed())
    }
}

async fn run(
    worker: Arc<dyn ModelWorker>,
    call: InferenceCall,
    mut tx: PipeTx<Piece>,
    abort: Abort,
    shared: Arc<Shared>,
    _permit: Place,
    started: Instant,
) {
    let metrics = shared.metrics.stage(Stage::Inference);
    // Abort first: once the request must stop, the worker's future is dropped mid-call. The
    // token is cancelled before that (a deadline does not cancel it by itself), so the worker
    // sees why its call ended.
    let relayed = tokio::select! {
        biased;
        cause = async {
            let cause = abort.wait().await;
            abort.cancel_request();
            cause
        } => Err(cause.into_error(Stage::Inference)),
        relayed = relay(worker, call, &mut tx) => relayed,
    };
    let active = started.elapsed();
    metrics.latency.record(active);
    let result = match relayed {
        // Downstream stopped reading: the request ended there (a stop sequence, a length cap).
        Ok(None) => {
            metrics.completed.increment(1);
            return;
        }
        // The same, seen as a cancellation: ending the request cancels its token, which may be
        // noticed before a send fails.
        Err(PipelineError::Cancelled) if tx.is_closed() => {
            metrics.completed.increment(1);
            return;
        }
        // Aborted: downstream notices the closed channel and asks the envelope why.
        Err(PipelineError::Cancelled) => {
            metrics.cancelled.increment(1);
            return;
        }
        Err(PipelineError::Shutdown | PipelineError::Timeout { .. }) => {
            metrics.failed.increment(1);
            return;
        }
        Ok(Some(finished)) => {
            metrics.completed.increment(1);
            Ok(finished)
        }
        Err(error) => {
            metrics.failed.increment(1);
            Err((Stage::Inference, error))
        }
    };
    let end = StreamEnd {
        result,
        inference_active: active,
        post_active: Default::default(),
    };
    // If Post has gone, the request already ended there.
    tx.finish(Piece::End(Box::new(end)));
}

/// Streams the worker's tokens into `tx`; `Ok(None)` when the receiver went away.
async fn relay(
    worker: Arc<dyn ModelWorker>,
    call: InferenceCall,
    tx: &mut PipeTx<Piece>,
) -> Result<Option<Finished>, PipelineError> {
    let mut stream = worker.infer_stream(call).await?;
    while let Some(chunk) = stream.next().await {
        match chunk? {
            WorkerChunk::Token(text) => {
                if tx.send(Piece::Token(text)).await.is_err() {
                    return Ok(None);
                }
            }
            WorkerChunk::Passthrough(extra) => {
                if tx.send(Piece::Passthrough(extra)).await.is_err() {
                    return Ok(None);
                }
            }
            WorkerChunk::Finish { reason, usage } => return Ok(Some(Finished { reason, usage })),
        }
    }
    Ok(Some(Finished {
        reason: FinishReason::Stop,
        usage: None,
    }))
}
