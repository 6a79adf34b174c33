//! The lane loop: one task per stage per shard, reading its bounded queue in order.
//!
//! A lane works on up to its stage's concurrency limit at once (a counter of places shared by the
//! stage's lanes) by polling the requests' futures itself, without a task per request. Hand-offs leave in
//! arrival order, so a session's requests enter every stage in the order they were submitted.
//! While a hand-off waits for room downstream, the lane keeps polling its in-flight work, so a
//! full queue never stalls the streams that will empty it.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use futures_util::future::{self, BoxFuture, Either};
use futures_util::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;
use tracing::instrument::Instrumented;

use super::edge::{Edge, Refused};
use super::envelope::Body;
use super::limit::Limit;
use crate::error::PipelineError;
use crate::metrics::StageMetrics;
use crate::stages::{Carries, Place, StageLogic, Start};

/// What a lane task owns.
pub(crate) struct Lane<L: StageLogic> {
    pub logic: Arc<L>,
    pub rx: mpsc::Receiver<L::In>,
    /// The next stage's lane for this shard; `None` for the last stage.
    pub next: Option<Edge<L::Out>>,
    /// The stage's concurrency limit, shared by all its lanes; `None` where it cannot bind.
    pub limit: Option<Arc<Limit>>,
    /// The stage's configured concurrency.
    pub concurrency: usize,
    /// For the first stage: cancelled when intake closes, so the lane stops taking new requests
    /// while live senders still exist.
    pub intake: Option<tokio_util::sync::CancellationToken>,
    pub shard: usize,
    pub metrics: StageMetrics,
}

/// At most this many requests are started from the queue in one pass of the lane loop.
const MAX_BATCH: usize = 32;

type OrderedOut<O> = Either<future::Ready<Option<O>>, BoxFuture<'static, Option<O>>>;

impl<L: StageLogic> Lane<L> {
    pub async fn run(self) {
        let Lane {
            logic,
            mut rx,
            next,
            limit,
            concurrency,
            intake,
            shard,
            metrics,
        } = self;
        let limit = limit.as_ref();
        let stage = L::STAGE;
        let ctx = StartCtx {
            logic: &*logic,
            metrics: &metrics,
            next: next.as_ref(),
        };
        let max_ordered = concurrency.max(1);
        let mut s = LaneState {
            ordered: FuturesOrdered::new(),
            work: FuturesUnordered::new(),
            pending: None,
        };
        // An item taken from the queue that waits for a place under the concurrency limit.
        // Permits are only asked for with an item in hand: an idle lane must not hold places
        // that another shard's lane could use.
        let mut staged: Option<L::In> = None;
        let mut open = true;
        let mut intake_closed = intake.is_none();
        let intake = intake.unwrap_or_default();
        // One wait for the whole loop: a new one per pass would register and unregister a
        // waiter (two locks) every time round.
        let mut intake_cancelled = pin!(intake.cancelled());
        tracing::debug!(%stage, shard, "Lane started.");

        loop {
            if !open && staged.is_none() && s.is_idle() {
                break;
            }
            let can_take = open && staged.is_none() && s.pending.is_none() && s.ordered.len() < max_ordered;
            // `biased`: finish work and hand off before taking more, so the lane drains what it
            // holds ahead of what waits in its queue.
            tokio::select! {
                biased;
                _ = finish_ready(&mut s.work), if !s.work.is_empty() => {}
                Some(out) = s.ordered.next(), if s.pending.is_none() && !s.ordered.is_empty() => {
                    if let Some(out) = out {
                        s.pending = hand_off(ctx.next, out, Instant::now());
                    }
                }
                reserved = reserve(ctx.next), if s.pending.is_some() => {
                    // `pending` is only ever set when there is a next queue.
                    if let (Some(mut out), Some(next)) = (s.pending.take(), ctx.next) {
                        match reserved {
                            Ok(slot) => {
                                out.envelope_mut().enqueued(next.stage, Instant::now());
                                slot.send(out);
                            }
                            // The next lane ends only after this one; this is a defect.
                            Err(error) => out.into_envelope().fail(next.stage, error),
                        }
                    }
                }
                place = wait_for_place(limit), if staged.is_some() => {
                    if let Some(item) = staged.take() {
                        ctx.start(item, place, &mut s);
                    }
                }
                item = rx.recv(), if can_take => match item {
                    None => open = false,
                    Some(item) => {
                        // Start what else is queued while it can start at once: a pass of this
                        // loop costs about as much as a request's own start, so under load the
                        // lane takes requests in batches. The batch is bounded so that work it
                        // holds still finishes promptly.
                        let mut next = Some(item);
                        let mut batch = 0;
                        while let Some(item) = next.take() {
                            let Some(place) = try_place(limit) else {
                                staged = Some(item);
                                break;
                            };
                            ctx.start(item, place, &mut s);
                            batch += 1;
                            if batch < MAX_BATCH && s.pending.is_none() && s.ordered.len() < max_ordered {
                                next = rx.try_recv().ok();
                            }
                        }
                    }
                },
                () = &mut intake_cancelled, if !intake_closed => {
                    // Stop new sends; what is already queued was admitted and still drains.
                    intake_closed = true;
                    rx.close();
                }
            }
        }
        tracing::debug!(%stage, shard, "Lane finished.");
    }
}

/// What a lane holds while it works.
struct LaneState<O> {
    /// Hand-offs in arrival order, some still being worked on.
    ordered: FuturesOrdered<OrderedOut<O>>,
    /// Per-request jobs that need no hand-off when they finish (token relays).
    work: FuturesUnordered<Instrumented<BoxFuture<'static, ()>>>,
    /// A hand-off waiting for room in the next queue (block policy).
    pending: Option<O>,
}

impl<O> LaneState<O> {
    fn is_idle(&self) -> bool {
        self.pending.is_none() && self.ordered.is_empty() && self.work.is_empty()
    }
}

struct StartCtx<'a, L: StageLogic> {
    logic: &'a L,
    metrics: &'a StageMetrics,
    next: Option<&'a Edge<L::Out>>,
}

impl<L: StageLogic> StartCtx<'_, L> {
    /// Starts one item that has its place under the concurrency limit.
    fn start(&self, mut item: L::In, permit: Place, s: &mut LaneState<L::Out>) {
        let stage = L::STAGE;
        let metrics = self.metrics;
        let env: &mut Body = item.envelope_mut();
        let now = Instant::now();
        let queued = now - env.enqueued_at;
        env.timings.stage_mut(stage).queued = queued;
        metrics.queue_wait.record(queued);
        metrics.admitted.increment(1);
        if let Some(cause) = env.abort_cause() {
            metrics.failed.increment(1);
            item.into_envelope().fail(stage, cause.into_error(stage));
            return;
        }
        let span = tracing::debug_span!(parent: &env.span, "stage", stage = stage.as_str());
        match self.logic.start(item, permit, now) {
            // Synchronous work: the lane times it, and the same clock reading stamps the hand-off.
            Start::Forward(mut out) => {
                let done = Instant::now();
                let active = done - now;
                out.envelope_mut().timings.stage_mut(stage).active = active;
                metrics.latency.record(active);
                metrics.completed.increment(1);
                self.forward(out, done, s);
            }
            Start::Stream(out, job) => {
                s.work.push(job.instrument(span));
                self.forward(out, now, s);
            }
            Start::Work(job) => s.work.push(job.instrument(span)),
            Start::Later(job) => s.ordered.push_back(Either::Right(Box::pin(job.instrument(span)))),
        }
    }

    /// Hands `out` on now, unless earlier hand-offs are still in progress (then it queues behind
    /// them) or the next queue is full (then it waits in `pending`).
    fn forward(&self, out: L::Out, now: Instant, s: &mut LaneState<L::Out>) {
        if s.ordered.is_empty() && s.pending.is_none() {
            s.pending = hand_off(self.next, out, now);
        } else {
            s.ordered.push_back(Either::Left(future::ready(Some(out))));
        }
    }
}

/// Polls the lane's jobs until none is ready (or `MAX_BATCH` have finished); resolves once at
/// least one has finished. Draining several per pass of the lane loop keeps the loop's own cost
/// per request down under load.
fn finish_ready<F: Future<Output = ()> + Unpin>(
    work: &mut FuturesUnordered<F>,
) -> impl Future<Output = usize> + '_ {
    std::future::poll_fn(move |cx| {
        let mut finished = 0;
        while finished < MAX_BATCH {
            match work.poll_next_unpin(cx) {
                Poll::Ready(Some(())) => finished += 1,
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        if finished == 0 && !work.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(finished)
        }
    })
}

/// A place under the stage's limit at once, if one is free (always, without a limit).
fn try_place(limit: Option<&Arc<Limit>>) -> Option<Place> {
    match limit {
        None => Some(None),
        Some(limit) => limit.try_take().map(Some),
    }
}

/// Waits for a place under the stage's limit.
async fn wait_for_place(limit: Option<&Arc<Limit>>) -> Place {
    match limit {
        None => None,
        Some(limit) => Some(limit.take().await),
    }
}

/// Tries the next queue; returns the item if it must wait for room.
fn hand_off<O: Carries>(next: Option<&Edge<O>>, mut out: O, now: Instant) -> Option<O> {
    let next = next?;
    out.envelope_mut().enqueued(next.stage, now);
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
