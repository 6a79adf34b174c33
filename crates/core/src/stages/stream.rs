//! Stream stage: delivers tokens and the one final event to the caller, and records the
//! request's outcome.
//!
//! A submitted request gets each token on its handle as it arrives; a fire-and-forget request
//! gets its joined text on the output stream. If the request is aborted (caller gone, deadline,
//! shutdown) this stage ends it with the matching typed error.

use std::pin::pin;

use futures_util::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;

use super::{Finished, Handoff, Piece, StageLogic, Start};
use crate::error::{PipelineError, Stage};
use crate::event::{Passthrough, ResponseEvent};
use crate::pipeline::envelope::{Body, Outcome};

pub(crate) struct StreamStage;

impl StageLogic for StreamStage {
    const STAGE: Stage = Stage::Stream;
    type In = Handoff;
    type Out = Handoff;

    fn start(&self, handoff: Handoff, permit: OwnedSemaphorePermit) -> Start<Handoff> {
        Start::Work(run(handoff, permit).boxed())
    }
}

async fn run(handoff: Handoff, _permit: OwnedSemaphorePermit) {
    let Handoff { mut env, mut pieces } = handoff;
    let body: &mut Body = &mut env;
    let started = Instant::now();
    let mut text = String::new();
    let mut extra = None;
    let relayed = relay(body, &mut pieces, &mut text, &mut extra).await;
    let active = started.elapsed();
    let metrics = body.shared.metrics.stage(Stage::Stream);
    metrics.latency.record(active.as_secs_f64());
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

/// Relays pieces to the caller until the end marker; returns how the stream ended. A
/// fire-and-forget request's text and pass-through deltas are gathered into `text` and `extra`.
async fn relay(
    env: &mut Body,
    pieces: &mut mpsc::Receiver<Piece>,
    text: &mut String,
    extra: &mut Option<Box<Passthrough>>,
) -> Result<Finished, (Stage, PipelineError)> {
    let abort = env.abort();
    // One abort future for the whole relay, polled first at every wait.
    let mut aborted = pin!(abort.wait());
    let tokens = env.tokens().cloned();
    loop {
        let piece = tokio::select! {
            biased;
            cause = &mut aborted => {
                // Still waiting for the model (or Post): the deadline ran out there.
                return Err((Stage::Inference, cause.into_error(Stage::Inference)));
            }
            piece = pieces.recv() => piece,
        };
        let event = match piece {
            Some(Piece::Token(token)) => ResponseEvent::Token(token),
            Some(Piece::Passthrough(delta)) => ResponseEvent::Passthrough(delta),
            Some(Piece::End(end)) => {
                env.timings.stage_mut(Stage::Inference).active = end.inference_active;
                env.timings.stage_mut(Stage::Post).active = end.post_active;
                return end.result;
            }
            None => {
                // Upstream stopped without an end marker because the request was aborted.
                let error = match abort.check() {
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
            env.shared.metrics.time_to_first_token.record(ttft.as_secs_f64());
        }
        let Some(tokens) = &tokens else {
            match event {
                ResponseEvent::Token(token) => text.push_str(&token),
                ResponseEvent::Passthrough(delta) => match extra {
                    Some(whole) => whole.merge(*delta),
                    None => *extra = Some(delta),
                },
                // Only tokens and deltas come this far.
                ResponseEvent::Done(_) | ResponseEvent::Error(_) => {}
            }
            continue;
        };
        tokio::select! {
            biased;
            cause = &mut aborted => return Err((Stage::Stream, cause.into_error(Stage::Stream))),
            sent = tokens.send(event) => {
                if sent.is_err() {
                    // The handle was dropped without its drop guard having fired yet.
                    return Err((Stage::Stream, PipelineError::Cancelled));
                }
            }
        }
    }
}
