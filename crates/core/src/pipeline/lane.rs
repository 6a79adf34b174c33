//! The lane loop: one task per stage per shard, reading its bounded queue in order.
//!
//! A lane works on up to its stage's concurrency limit at once (a semaphore shared by the stage's
//! lanes) by polling the requests' futures itself, without a task per request. Hand-offs leave in
//! arrival order, so a session's requests enter every stage in the order they were submitted.
//! While a hand-off waits for room downstream, the lane keeps polling its in-flight work, so a
//! full queue never stalls the streams that will empty it.

use std::sync::Arc;

use futures_util::future::{self, Either};
use futures_util::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tracing::Instrument;

use super::edge::{Edge, Refused};
use crate::error::PipelineError;
use crate::stages::{Carries, StageLogic, Start};

/// What a lane task owns.
pub(crate) struct Lane<L: StageLogic> {
    pub logic: Arc<L>,
    pub rx: mpsc::Receiver<L::In>,
    /// The next stage's lane for this shard; `None` for the last stage.
    pub next: Option<Edge<L::Out>>,
    /// The stage's concurrency limit, shared by all its lanes.
    pub limit: Arc<Semaphore>,
    /// For the first stage: cancelled when intake closes, so the lane stops taking new requests
    /// while live senders still exist.
    pub intake: Option<tokio_util::sync::CancellationToken>,
    pub shard: usize,
}

type OrderedOut<O> = Either<future::Ready<Option<O>>, futures_util::future::BoxFuture<'static, Option<O>>>;

impl<L: StageLogic> Lane<L> {
    pub async fn run(self) {
        let Lane {
            logic,
            mut rx,
            next,
            limit,
            intake,
            shard,
        } = self;
        let stage = L::STAGE;
        let max_ordered = limit.available_permits().max(1);
        let mut ordered: FuturesOrdered<OrderedOut<L::Out>> = FuturesOrdered::new();
        let mut work = FuturesUnordered::new();
        // A hand-off waiting for room in the next queue (block policy).
        let mut pending: Option<L::Out> = None;
        let mut permit: Option<OwnedSemaphorePermit> = None;
        let mut open = true;
        let mut intake_closed = intake.is_none();
        let intake = intake.unwrap_or_default();
        tracing::debug!(%stage, shard, "Lane started.");

        loop {
            if !open && pending.is_none() && ordered.is_empty() && work.is_empty() {
                break;
            }
            let can_take = open && pending.is_none() && ordered.len() < max_ordered;
            // `biased`: finish work before taking more, and hand off before taking more, so the
            // lane drains what it holds ahead of what waits in its queue.
            tokio::select! {
                biased;
                Some(()) = work.next(), if !work.is_empty() => {}
                Some(out) = ordered.next(), if pending.is_none() && !ordered.is_empty() => {
                    if let Some(out) = out {
                        pending = hand_off(next.as_ref(), out);
                    }
                }
                reserved = reserve(next.as_ref()), if pending.is_some() => {
                    if let Some(mut out) = pending.take() {
                        match reserved {
                            Ok(slot) => {
                                out.envelope_mut().enqueued_at = Instant::now();
                                slot.send(out);
                            }
                            Err(error) => out.into_envelope().fail(stage, error),
                        }
                    }
                }
                acquired = limit.clone().acquire_owned(), if can_take && permit.is_none() => {
                    // The semaphore is never closed; an error cannot happen.
                    permit = acquired.ok();
                }
                item = rx.recv(), if can_take && permit.is_some() => {
                    let Some(mut item) = item else {
                        open = false;
                        continue;
                    };
                    let Some(slot) = permit.take() else { continue };
                    let env = item.envelope_mut();
                    let metrics = env.shared.metrics.stage(stage);
                    let queued = env.enqueued_at.elapsed();
                    env.timings.stage_mut(stage).queued = queued;
                    metrics.queue_wait.record(queued.as_secs_f64());
                    metrics.admitted.increment(1);
                    if let Some(cause) = env.abort().check() {
                        metrics.failed.increment(1);
                        item.into_envelope().fail(stage, cause.into_error(stage));
                        continue;
                    }
                    let span = tracing::debug_span!(parent: &env.span, "stage", stage = stage.as_str());
                    match logic.start(item, slot) {
                        Start::Forward(out) => forward(out, &mut ordered, &mut pending, next.as_ref()),
                        Start::Stream(out, job) => {
                            work.push(job.instrument(span));
                            forward(out, &mut ordered, &mut pending, next.as_ref());
                        }
                        Start::Work(job) => work.push(job.instrument(span)),
                        Start::Later(job) => ordered.push_back(Either::Right(Box::pin(job.instrument(span)))),
                    }
                }
                () = intake.cancelled(), if !intake_closed => {
                    // Stop new sends; what is already queued was admitted and still drains.
                    intake_closed = true;
                    rx.close();
                }
            }
        }
        tracing::debug!(%stage, shard, "Lane finished.");
    }
}

/// Hands `out` on now, unless earlier hand-offs are still in progress (then it queues behind
/// them) or the next queue is full (then it waits in `pending`).
fn forward<O: Carries>(
    out: O,
    ordered: &mut FuturesOrdered<OrderedOut<O>>,
    pending: &mut Option<O>,
    next: Option<&Edge<O>>,
) {
    if ordered.is_empty() && pending.is_none() {
        *pending = hand_off(next, out);
    } else {
        ordered.push_back(Either::Left(future::ready(Some(out))));
    }
}

/// Tries the next queue; returns the item if it must wait for room.
fn hand_off<O: Carries>(next: Option<&Edge<O>>, mut out: O) -> Option<O> {
    let Some(next) = next else {
        return None;
    };
    out.envelope_mut().enqueued_at = Instant::now();
    match next.send_with_shed(out) {
        Ok(()) => None,
        Err(Refused::Wait(out)) => Some(out),
        Err(Refused::Shed(out)) => {
            let env = out.into_envelope();
            env.shared.metrics.stage(next.stage).shed.increment(1);
            env.fail(next.stage, PipelineError::Overloaded { stage: next.stage });
            None
        }
        Err(Refused::Closed(out)) => {
            let env = out.into_envelope();
            env.fail(next.stage, PipelineError::Closed);
            None
        }
    }
}

async fn reserve<O>(next: Option<&Edge<O>>) -> Result<mpsc::Permit<'_, O>, PipelineError> {
    match next {
        Some(edge) => edge.reserve().await,
        None => Err(PipelineError::Closed),
    }
}
