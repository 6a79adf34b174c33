//! The envelope a request travels in, and `finish`: the one place every request ends.
//!
//! An envelope that is dropped without being finished (a defect, or a panic in a stage) still
//! sends its caller a final `Internal` error from `Drop`, so no admitted request ends silently.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::order::OrderGate;
use super::pipe::PipeTx;
use crate::error::{PipelineError, Stage};
use crate::event::{
    Completion, FinishReason, Passthrough, PromptOutput, Response, ResponseEvent, StageTimings, Usage,
};
use crate::request::{InferenceRequest, RequestId};
use crate::stages::assemble::Assembled;
use crate::stages::rag::RetrievedChunk;

/// Where a request's events go.
pub(crate) enum Reply {
    /// A submitted request: tokens, then the one final event, on its handle's pipe. `None` only
    /// while the Stream stage has the pipe out to relay tokens (`take_events`).
    Handle(Option<PipeTx<ResponseEvent>>),
    /// A fire-and-forget request: one joined output, in session order, on the output stream.
    Output {
        tx: mpsc::Sender<PromptOutput>,
        gate: OrderGate,
    },
}

/// How a request ended.
pub(crate) enum Outcome {
    Completed {
        text: String,
        passthrough: Option<Box<Passthrough>>,
        finish_reason: FinishReason,
        usage: Usage,
    },
    /// Failed; `stage` is where the failure arose.
    Failed { stage: Stage, error: PipelineError },
}

/// An admitted request and everything the stages add to it.
///
/// The body is boxed so that handing a request from stage to stage moves one pointer, not the
/// few hundred bytes of its timings and state.
pub(crate) struct Envelope(Box<Body>);

pub(crate) struct Body {
    pub id: RequestId,
    pub request: Arc<InferenceRequest>,
    /// Cancelled when the caller goes away or the pipeline aborts at its shutdown deadline.
    pub cancel: CancellationToken,
    pub deadline: Option<Instant>,
    /// The deadline the stages must time themselves: `None` when the request's handle holds
    /// its one timer, whose alarm cancels the request at the deadline.
    timed_here: Option<Instant>,
    pub admitted_at: Instant,
    /// When the envelope joined its current queue (for queue-wait timings).
    pub enqueued_at: Instant,
    pub timings: StageTimings,
    /// Added by the RAG stage.
    pub retrieved: Vec<RetrievedChunk>,
    /// Added by the Assemble stage.
    pub assembled: Option<Assembled>,
    pub span: tracing::Span,
    /// For submitted requests: the stage whose queue the request last joined, read by its handle
    /// when the deadline passes while the request waits in a queue.
    pub progress: Option<Arc<AtomicU8>>,
    /// `None` once finished; `Drop` reports an envelope lost with it still set.
    reply: Option<Reply>,
    pub shared: Arc<Shared>,
}

/// Why a request must stop early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AbortCause {
    Cancelled,
    Shutdown,
    Deadline,
}

impl AbortCause {
    pub fn into_error(self, stage: Stage) -> PipelineError {
        match self {
            AbortCause::Cancelled => PipelineError::Cancelled,
            AbortCause::Shutdown => PipelineError::Shutdown,
            AbortCause::Deadline => PipelineError::Timeout { stage },
        }
    }
}

/// What a task needs to notice that its request must stop, without borrowing the envelope.
pub(crate) struct Abort {
    cancel: CancellationToken,
    shared: Arc<Shared>,
    deadline: Option<Instant>,
    timed_here: Option<Instant>,
}

/// Why the request with these parts must stop, if it must.
fn abort_cause(cancel: &CancellationToken, shared: &Shared, deadline: Option<Instant>) -> Option<AbortCause> {
    // Deadline first: a handle that timed out drops its guard, which cancels; still a timeout.
    if deadline.is_some_and(|d| d <= Instant::now()) {
        Some(AbortCause::Deadline)
    } else if cancel.is_cancelled() {
        Some(if shared.root.is_cancelled() {
            AbortCause::Shutdown
        } else {
            AbortCause::Cancelled
        })
    } else {
        None
    }
}

impl Abort {
    /// Cancels the request's token, so its model worker sees the call end.
    pub fn cancel_request(&self) {
        self.cancel.cancel();
    }

    /// Resolves when the request must stop.
    pub async fn wait(&self) -> AbortCause {
        wait_for_abort(&self.cancel, &self.shared, self.deadline, self.timed_here).await
    }
}

/// Resolves when the request with these parts must stop: its token is cancelled, or
/// `timed_here` passes.
async fn wait_for_abort(
    cancel: &CancellationToken,
    shared: &Shared,
    deadline: Option<Instant>,
    timed_here: Option<Instant>,
) -> AbortCause {
    match timed_here {
        Some(deadline) => {
            // Whichever comes first: the caller leaving / shutdown, or the deadline. The timer
            // is boxed: held inline it would enlarge every stage job's future (which is moved
            // into a box per request) by its size, deadline or not.
            tokio::select! {
                () = cancel.cancelled() => {}
                () = Box::pin(tokio::time::sleep_until(deadline)) => return AbortCause::Deadline,
            }
        }
        None => cancel.cancelled().await,
    }
    abort_cause(cancel, shared, deadline).unwrap_or(AbortCause::Cancelled)
}

impl Deref for Envelope {
    type Target = Body;

    fn deref(&self) -> &Body {
        &self.0
    }
}

impl DerefMut for Envelope {
    fn deref_mut(&mut self) -> &mut Body {
        &mut self.0
    }
}

impl Envelope {
    pub fn new(
        shared: Arc<Shared>,
        id: RequestId,
        request: InferenceRequest,
        cancel: CancellationToken,
        reply: Reply,
        progress: Option<Arc<AtomicU8>>,
    ) -> Self {
        let now = Instant::now();
        let timeout = request.timeout.or(shared.config.default_timeout());
        let deadline = timeout.map(|t| now + t);
        let span = tracing::debug_span!("request", id = id.0, session = %request.session);
        Self(Box::new(Body {
            id,
            request: Arc::new(request),
            cancel,
            deadline,
            timed_here: match reply {
                Reply::Handle(_) => None,
                Reply::Output { .. } => deadline,
            },
            admitted_at: now,
            enqueued_at: now,
            timings: StageTimings::default(),
            retrieved: Vec::new(),
            assembled: None,
            span,
            progress,
            reply: Some(reply),
            shared,
        }))
    }

    /// Ends the request with a failure that arose in `stage`.
    pub fn fail(self, stage: Stage, error: PipelineError) {
        self.finish(Outcome::Failed { stage, error });
    }

    /// Ends the request: counts it and sends its caller the one final event.
    pub fn finish(mut self, outcome: Outcome) {
        if let Some(reply) = self.reply.take() {
            self.0.deliver(reply, outcome);
        }
    }
}

impl Body {
    /// Notes that the request joined `stage`'s queue.
    pub fn enqueued(&mut self, stage: Stage, now: Instant) {
        self.enqueued_at = now;
        if let Some(progress) = &self.progress {
            progress.store(stage as u8, Ordering::Relaxed);
        }
    }

    /// A handle for tasks that must notice when the request has to stop.
    pub fn abort(&self) -> Abort {
        Abort {
            cancel: self.cancel.clone(),
            shared: self.shared.clone(),
            deadline: self.deadline,
            timed_here: self.timed_here,
        }
    }

    /// Lends out the caller's event pipe (a submitted request's), for relaying tokens; give it
    /// back with [`return_events`](Self::return_events) before finishing, or the caller sees
    /// the pipe end without a final event (an `Internal` error).
    pub fn take_events(&mut self) -> Option<PipeTx<ResponseEvent>> {
        match &mut self.reply {
            Some(Reply::Handle(events)) => events.take(),
            _ => None,
        }
    }

    pub fn return_events(&mut self, pipe: Option<PipeTx<ResponseEvent>>) {
        if let Some(Reply::Handle(events)) = &mut self.reply {
            *events = pipe;
        }
    }

    /// Why the request must stop, if it must.
    pub fn abort_cause(&self) -> Option<AbortCause> {
        abort_cause(&self.cancel, &self.shared, self.deadline)
    }

    /// Resolves when the request must stop; borrows instead of cloning the token, as
    /// [`abort`](Self::abort) does.
    pub async fn wait_for_abort(&self) -> AbortCause {
        wait_for_abort(&self.cancel, &self.shared, self.deadline, self.timed_here).await
    }

    fn deliver(&mut self, reply: Reply, outcome: Outcome) {
        // Whatever may still run for this request upstream (a model call whose output was cut
        // short, a shed hand-off's job) stops now.
        self.cancel.cancel();
        let stats = &self.shared.stats;
        self.timings.total = self.admitted_at.elapsed();
        let result = match outcome {
            Outcome::Completed {
                text,
                passthrough,
                finish_reason,
                usage,
            } => {
                stats.record_completed();
                self.shared.metrics.completed.increment(1);
                Ok(Response {
                    text,
                    sources: (!self.retrieved.is_empty()).then(|| std::mem::take(&mut self.retrieved).into()),
                    passthrough,
                    completion: Completion {
                        finish_reason,
                        usage,
                        timings: self.timings,
                    },
                })
            }
            Outcome::Failed { stage, error } => {
                stats.record_failed(&error);
                self.shared.metrics.failed(&error);
                tracing::debug!(parent: &self.span, %stage, kind = error.kind(), %error, "Request failed.");
                Err(error)
            }
        };
        match reply {
            Reply::Handle(events) => {
                let event = match result {
                    Ok(response) => ResponseEvent::Done(Box::new(response.completion)),
                    Err(error) => ResponseEvent::Error(Box::new(error)),
                };
                // After every token; never waits. The caller may have gone, and then nobody
                // needs the event.
                if let Some(events) = events {
                    events.finish(event);
                }
            }
            Reply::Output { tx, gate } => {
                let output = PromptOutput {
                    id: self.id,
                    session: self.request.session.clone(),
                    meta: self.request.meta.clone(),
                    result,
                };
                gate.deliver(tx, output, &self.shared);
            }
        }
    }
}

impl Drop for Envelope {
    fn drop(&mut self) {
        if let Some(reply) = self.reply.take() {
            tracing::error!(parent: &self.span, "Request dropped inside the pipeline without a final event.");
            let error = PipelineError::Internal {
                message: "the request was dropped inside the pipeline".into(),
            };
            self.0.deliver(
                reply,
                Outcome::Failed {
                    stage: Stage::Stream,
                    error,
                },
            );
        }
    }
}
