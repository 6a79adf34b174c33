//! Post stage: streaming transforms between the model and the caller.
//!
//! In order: stop sequences (the output ends before the first one), the `max_tokens` cap
//! (`finish_reason = length`), and joining into one piece for callers that did not ask for a
//! stream (pass-through deltas such as tool calls are merged into one too). When Post ends a stream early it stops reading, which cancels the model call upstream.

mod stop;

use std::sync::Arc;

use futures_util::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;

use self::stop::StopMatcher;
use super::{Finished, Handoff, Piece, StageLogic, Start, StreamEnd};
use crate::error::Stage;
use crate::event::{FinishReason, Passthrough, Usage};
use crate::pipeline::Shared;
use crate::request::InferenceRequest;
use crate::worker::count_tokens;

pub(crate) struct PostStage;

impl StageLogic for PostStage {
    const STAGE: Stage = Stage::Post;
    type In = Handoff;
    type Out = Handoff;

    fn start(&self, handoff: Handoff, permit: OwnedSemaphorePermit) -> Start<Handoff> {
        let Handoff { env, pieces } = handoff;
        let shared = env.shared.clone();
        let (tx, rx) = mpsc::channel(shared.config.token_buffer.get());
        let prompt_tokens = env.prompt.as_deref().map_or(0, |p| count(count_tokens(p)));
        let job = run(env.request.clone(), prompt_tokens, pieces, tx, shared, permit);
        Start::Stream(Handoff { env, pieces: rx }, job.boxed())
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Where post-processed text goes: straight on, or into one joined piece.
struct Output {
    tx: mpsc::Sender<Piece>,
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
    mut pieces: mpsc::Receiver<Piece>,
    tx: mpsc::Sender<Piece>,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let metrics = shared.metrics.stage(Stage::Post);
    let mut stops = StopMatcher::new(&request.params.stop);
    let max_tokens = request.params.max_tokens.map_or(u64::MAX, u64::from);
    let mut out = Output {
        tx,
        joined: (!request.stream).then(String::new),
        joined_extra: None,
    };
    let mut tokens: u64 = 0;
    let mut inference_active = Default::default();
    // Our own end (stop sequence or cap) carries no upstream usage; the counts are ours.
    let own_end = |reason| Ok(Finished { reason, usage: None });

    let mut result = loop {
        match pieces.recv().await {
            Some(Piece::Token(text)) => {
                tokens += 1;
                let scan = stops.push(&text);
                if !out.emit(scan.emit).await {
                    return;
                }
                if scan.stopped {
                    break own_end(FinishReason::Stop);
                }
                if tokens >= max_tokens {
                    if !out.emit(stops.finish()).await {
                        return;
                    }
                    break own_end(FinishReason::Length);
                }
            }
            Some(Piece::Passthrough(extra)) => {
                if !out.pass(extra).await {
                    return;
                }
            }
            Some(Piece::End(end)) => {
                inference_active = end.inference_active;
                if !out.emit(stops.finish()).await {
                    return;
                }
                break end.result;
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
        finished
            .usage
            .get_or_insert(Usage::new(prompt_tokens, completion));
    }
    if let Some(extra) = out.joined_extra.take()
        && out.tx.send(Piece::Passthrough(extra)).await.is_err()
    {
        return;
    }
    if let Some(joined) = out.joined.take() {
        if !joined.is_empty() && out.tx.send(Piece::Token(joined)).await.is_err() {
            return;
        }
    }
    let post_active = started.elapsed();
    metrics.latency.record(post_active.as_secs_f64());
    metrics.completed.increment(1);
    let end = StreamEnd {
        result,
        inference_active,
        post_active,
    };
    let _ = out.tx.send(Piece::End(end)).await;
}
