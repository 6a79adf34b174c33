//! Stream stage: delivers tokens and the one final event to the caller, and records the
//! request's outcome.
//!
//! A submitted request gets each token on its handle as it arrives; a fire-and-forget request
//! gets its joined text on the output stream. If the request is aborted (caller gone, deadline,
//! shutdown) this stage ends it with the matching typed error.

use futures_util::FutureExt;
use tokio::time::Instant;

use super::{Finished, Handoff, Piece, Place, StageLogic, Start};
use crate::error::{PipelineError, Stage};
use crate::event::{Passthrough, ResponseEvent};
use crate::pipeline::envelope::{Body, Outcome};
use crate::pipeline::pipe::{PipeRx, PipeTx};

pub(crate) struct StreamStage;

impl StageLogic for StreamStage {
    const STAGE: Stage = Stage::Stream;
    type In = Handoff;
    type Out = Handoff;

    fn start(&self, handoff: Handoff, permit: Place, now: Instant) -> Start<Handoff> {
        Start::Work(run(handoff, permit, now).boxed())
    }
}

async fn run(handoff: Handoff, _permit: Place, started: Instant) {
    let Handoff { mut env, mut pieces } = handoff;
    let body: &mut Body = &mut env;
    let mut text = String::new();
    let mut extra = None;
    // The caller's pipe goes back into the envelope before it finishes, which sends the final
    // event on it after the tokens.
    let mut events = body.take_events();
    let relayed = relay(body, &mut pieces, events.as_mut(), &mut text, &mut extra).await;
    body.return_events(events);
    let active = started.elapsed();
    let metrics = body.shared.metrics.stage(Stage::Stream);
    metrics.latency.record(active);
    body.timings.stage_mut(Stage::Stream).active = active;
    match relayed {
        Ok(finished) => {
            metrics.completed.increment(1);
            env.finish(Outcome::Completed {
                text,
                passthrough: extra,
                finish_reason: finished.reason,
                usage: finished.usage.unwrap_or_default(),
            });
        }
        Err((stage, error)) => {
            if stage == Stage::Stream {
                metrics.failed.increment(1);
            }
            env.fail(stage, error);
        }
    }
}

/// Sends one event to the caller's handle.
async fn deliver(
    env: &Body,
    events: &mut PipeTx<ResponseEvent>,
    event: ResponseEvent,
) -> Result<(), (Stage, PipelineError)> {
    // `biased`, send first: with room in the pipe the event goes at once and the abort watch
    // is never polled (nor registered). A full pipe means a slow reader, and then only this
    // stage can notice the deadline, so it watches for it here.
    tokio::select! {
        biased;
        sent = events.send(event) => match sent {
            Ok(()) => Ok(()),
            // The handle was dropped without its drop guard having fired yet.
            Err(_) => Err((Stage::Stream, PipelineError::Cancelled)),
        },
        cause = env.wait_for_abort() => Err((Stage::Stream, cause.into_error(Stage::Stream))),
    }
}

/// Relays pieces to the caller (`events`, for a submitted request) until the end marker;
/// returns how the stream ended. A fire-and-forget request's text and pass-through deltas are
/// gathered into `text` and `extra`.
async fn relay(
    env: &mut Body,
    pieces: &mut PipeRx<Piece>,
    mut events: Option<&mut PipeTx<ResponseEvent>>,
    text: &mut String,
    extra: &mut Option<Box<Passthrough>>,
) -> Result<Finished, (Stage, PipelineError)> {
    loop {
        // No abort watch here: while the request waits on the model, the Inference stage
        // watches for the caller leaving and for the deadline. When the request must stop it
        // drops the model call and its pipe, Post follows, and this pipe ends without an end
        // marker (below). Not registering a waiter per request saves two locks.
        let event = match pieces.recv().await {
            Some(Piece::Token(token)) => ResponseEvent::Token(token),
            Some(Piece::Passthrough(delta)) => ResponseEvent::Passthrough(delta),
            Some(Piece::End(end)) => {
                env.timings.stage_mut(Stage::Inference).active = end.inference_active;
                env.timings.stage_mut(Stage::Post).active = end.post_active;
                return end.result;
            }
            None => {
                // Upstream stopped without an end marker because the request was aborted.
                let error = match env.abort_cause() {
                    Some(cause) => cause.into_error(Stage::Inference),
                    None => PipelineError::Internal {
                        message: "the token stream ended without an end marker".into(),
                    },
                };
                return Err((Stage::Inference, error));
            }
        };
        if env.timings.first_token.is_none() {
            let ttft = env.admitted_at.elapsed();
            env.timings.first_token = Some(ttft);
            env.shared.metrics.time_to_first_token.record(ttft);
        }
        let Some(events) = events.as_deref_mut() else {
            match event {
                ResponseEvent::Token(token) => text.push_str(&token),
                ResponseEvent::Passthrough(delta) => match extra {
                    Some(whole) => whole.merge(*delta),
                    None => *extra = Some(delta),
                },
                // Only tokens and deltas come this far.
                _ => {}
            }
            continue;
        };
        // The retrieved context goes to the caller once, just before the first output.
        if !env.retrieved.is_empty() {
            let sources = std::mem::take(&mut env.retrieved).into();
            deliver(env, events, ResponseEvent::Sources(sources)).await?;
        }
        deliver(env, events, event).await?;
    }
}
