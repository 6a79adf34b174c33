//! Post stage: streaming transforms between the model and the caller.
//!
//! In order: the request's stop sequences (the output ends before the first one), the
//! pipeline's post-processors ([`chain`]), the `max_tokens` cap (`finish_reason = length`), and
//! joining into one piece for callers that did not ask for a
//! stream (pass-through deltas such as tool calls are merged into one too). When Post ends a stream early it stops reading, which cancels the model call upstream.

pub mod chain;
mod stop;

use std::sync::Arc;

use futures_util::FutureExt;
use tokio::time::Instant;

use self::chain::Chain;
use super::{Finished, Handoff, Piece, Place, StageLogic, Start, StreamEnd};
use crate::error::PipelineError;
use crate::error::Stage;
use crate::event::{FinishReason, Passthrough, Usage};
use crate::pipeline::Shared;
use crate::pipeline::pipe::{PipeRx, PipeTx, pipe};
use crate::request::InferenceRequest;
use crate::worker::count_tokens;

pub(crate) struct PostStage;

impl StageLogic for PostStage {
    const STAGE: Stage = Stage::Post;
    type In = Handoff;
    type Out = Handoff;

    fn start(&self, handoff: Handoff, permit: Place, now: Instant) -> Start<Handoff> {
        let Handoff { env, pieces } = handoff;
        let shared = env.shared.clone();
        let (tx, rx) = pipe(shared.config.token_buffer.get());
        // The assembler's count (a real tokenizer) when it made one, else a word count.
        let prompt_tokens = env.assembled.as_ref().map_or(0, |a| {
            a.prompt_tokens.unwrap_or_else(|| count(count_tokens(&a.prompt)))
        });
        let job = run(
            env.request.clone(),
            prompt_tokens,
            pieces,
            tx,
            shared,
            permit,
            now,
        );
        Start::Stream(Handoff { env, pieces: rx }, job.boxed())
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// What follows the last token a request's `max_tokens` allows.
enum Capped {
    /// The model's own end: its usage and finish reason, and its active time.
    Ended(Box<StreamEnd>),
    /// More text: the model does not honour the cap, so the stream is ended here.
    Overran,
    /// Downstream went away.
    Gone,
}

/// Waits for the model's end after the last token `max_tokens` allows. The model was sent the
/// same cap, so its end (with its real usage) is due next; ending the stream before it would
/// throw that usage away and count a complete call as cut.
async fn upstream_end(pieces: &mut PipeRx<Piece>, out: &mut Output) -> Capped {
    loop {
        match pieces.recv().await {
            Some(Piece::End(end)) => return Capped::Ended(end),
            Some(Piece::Passthrough(extra)) => {
                if !out.pass(extra).await {
                    return Capped::Gone;
                }
            }
            Some(Piece::Token(_)) => return Capped::Overran,
            // Aborted: the Stream stage reports why.
            None => return Capped::Gone,
        }
    }
}

/// The end of a stream that reached its `max_tokens`: the model's own, with its usage, or a
/// length end when it failed after giving every token the caller asked for.
fn capped(result: Result<Finished, (Stage, PipelineError)>) -> Result<Finished, (Stage, PipelineError)> {
    match result {
        Ok(finished) => Ok(finished),
        Err(_) => Ok(Finished {
            reason: FinishReason::Length,
            usage: None,
        }),
    }
}

/// Where post-processed text goes: straight on, or into one joined piece.
struct Output {
    tx: PipeTx<Piece>,
    joined: Option<String>,
    /// Pass-through deltas merged, for joined callers.
    joined_extra: Option<Box<Passthrough>>,
}

impl Output {
    /// Passes text on; `false` when downstream has gone.
    async fn emit(&mut self, text: String) -> bool {
        if text.is_empty() {
            return true;
        }
        match &mut self.joined {
            Some(joined) => {
                joined.push_str(&text);
                true
            }
            None => self.tx.send(Piece::Token(text)).await.is_ok(),
        }
    }

    /// Passes a pass-through delta on, or merges it for a joined caller; `false` when
    /// downstream has gone.
    async fn pass(&mut self, extra: Box<Passthrough>) -> bool {
        if self.joined.is_none() {
            return self.tx.send(Piece::Passthrough(extra)).await.is_ok();
        }
        match &mut self.joined_extra {
            Some(whole) => whole.merge(*extra),
            None => self.joined_extra = Some(extra),
        }
        true
    }
}

async fn run(
    request: Arc<InferenceRequest>,
    prompt_tokens: u32,
    mut pieces: PipeRx<Piece>,
    tx: PipeTx<Piece>,
    shared: Arc<Shared>,
    _permit: Place,
    started: Instant,
) {
    let metrics = shared.metrics.stage(Stage::Post);
    let mut chain = Chain::new(&shared.post_processors, &request);
    let max_tokens = request.params.max_tokens.map_or(u64::MAX, u64::from);
    let mut out = Output {
        tx,
        joined: (!request.stream).then(String::new),
        joined_extra: None,
    };
    let mut tokens: u64 = 0;
    // The model's active time, from its end marker; a stream ended here has none.
    let mut inference_active = None;
    // Our own end (stop sequence or cap) carries no upstream usage; the counts are ours.
    let own_end = |reason| Ok(Finished { reason, usage: None });
    let rejected = |(processor, message)| Err((Stage::Post, PipelineError::Output { processor, message }));

    let mut result = loop {
        match pieces.recv().await {
            Some(Piece::Token(text)) => {
                tokens += 1;
                let step = match chain.push(text) {
                    Ok(step) => step,
                    Err(rejection) => break rejected(rejection),
                };
                if !out.emit(step.emit).await {
                    return;
                }
                if let Some(reason) = step.end {
                    break own_end(reason);
                }
                if tokens >= max_tokens {
                    let held = match chain.finish() {
                        Ok(held) => held,
                        Err(rejection) => break rejected(rejection),
                    };
                    if !out.emit(held.emit).await {
                        return;
                    }
                    match upstream_end(&mut pieces, &mut out).await {
                        Capped::Ended(end) => {
                            inference_active = Some(end.inference_active);
                            break capped(end.result);
                        }
                        Capped::Overran => break own_end(FinishReason::Length),
                        Capped::Gone => return,
                    }
                }
            }
            Some(Piece::Passthrough(extra)) => {
                if !out.pass(extra).await {
                    return;
                }
            }
            Some(Piece::End(end)) => {
                inference_active = Some(end.inference_active);
                // A failed stream keeps its own error; a complete one must pass every check, and
                // may still be cut by held-back text reaching a cap.
                let held = match (chain.finish(), &end.result) {
                    (Ok(held), _) => held,
                    (Err(_), Err(_)) => Default::default(),
                    (Err(rejection), Ok(_)) => break rejected(rejection),
                };
                if !out.emit(held.emit).await {
                    return;
                }
                match (held.end, end.result) {
                    (Some(reason), Ok(_)) => break own_end(reason),
                    (_, result) => break result,
                }
            }
            // Inference stopped without an end marker: the request was aborted, and the Stream
            // stage reports why.
            None => return,
        }
    };
    // Dropping the upstream channel now stops the model call if we ended early.
    drop(pieces);
    if let Ok(finished) = &mut result {
        let completion = count(usize::try_from(tokens).unwrap_or(usize::MAX));
        finished.usage.get_or_insert(Usage {
            estimated: true,
            ..Usage::new(prompt_tokens, completion)
        });
    }
    if let Some(extra) = out.joined_extra.take()
        && out.tx.send(Piece::Passthrough(extra)).await.is_err()
    {
        return;
    }
    if let Some(joined) = out.joined.take()
        && !joined.is_empty()
        && out.tx.send(Piece::Token(joined)).await.is_err()
    {
        return;
    }
    let post_active = started.elapsed();
    metrics.latency.record(post_active);
    metrics.completed.increment(1);
    let end = StreamEnd {
        result,
        // Ended here (a stop sequence, a cap the model overran): the model was working from
        // about when this stage started until now.
        inference_active: inference_active.unwrap_or(post_active),
        post_active,
    };
    out.tx.finish(Piece::End(Box::new(end)));
}
