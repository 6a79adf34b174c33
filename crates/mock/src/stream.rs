//! Paced Server-Sent Event streams: the tokens of a [`Plan`] in a protocol's frames, with the
//! time to first token, the token pace and the mid-stream cut, and the counters that say how
//! each stream ended.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream;
use serde::Serialize;
use tokio::time::Instant;

use super::reply::{Plan, SlotLease};
use super::state::Shared;

/// One protocol's SSE frames.
pub(crate) trait Frames: Send + 'static {
    /// Frames sent with the first token (or with the closing frames when there is none).
    fn opening(&self, _plan: &Plan, _out: &mut Vec<u8>) {}
    /// The frame of token `index`.
    fn token(&self, plan: &Plan, index: u64, out: &mut Vec<u8>);
    /// The frames after the last token.
    fn closing(&self, plan: &Plan, out: &mut Vec<u8>);
}

/// Appends `data: {json}\n\n`.
pub(crate) fn data<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    // Serialising into a Vec cannot fail for these plain structs.
    let _ = serde_json::to_writer(&mut *out, value);
    out.extend_from_slice(b"\n\n");
}

/// The OpenAI stream terminator.
pub(crate) const DONE: &[u8] = b"data: [DONE]\n\n";

/// How a stream ended, counted when its body is dropped.
#[derive(Clone, Copy, PartialEq)]
enum Outcome {
    /// Dropped before the end: the client went away.
    Running,
    Completed,
    Cut,
}

/// Counts the stream's outcome and frees its slot when hyper drops the body, whichever way
/// the stream ended.
struct Watch {
    shared: Arc<Shared>,
    outcome: Outcome,
    _lease: Option<SlotLease>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let counters = &self.shared.counters;
        let counter = match self.outcome {
            Outcome::Running => &counters.streams_abandoned,
            Outcome::Completed => &counters.streams_completed,
            Outcome::Cut => &counters.streams_cut,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.shared.notify();
    }
}

struct Run<F> {
    frames: F,
    plan: Plan,
    /// Tokens sent so far.
    sent: u64,
    /// When the response head left; token `i` is due at `start + ttft + i * interval`.
    start: Instant,
    watch: Watch,
}

/// A `200 text/event-stream` response that plays `plan` through `frames`.
///
/// The tokens are due at fixed offsets from the start (no drift from slow polls). A cut closes
/// the connection with an error after `cut_after` tokens: hyper then ends the chunked body
/// without its terminator, as a crashed upstream would.
pub(crate) fn respond<F: Frames>(
    shared: &Arc<Shared>,
    plan: Plan,
    frames: F,
    lease: Option<SlotLease>,
) -> Response {
    shared.counters.streams_started.fetch_add(1, Ordering::Relaxed);
    let run = Run {
        frames,
        plan,
        sent: 0,
        start: Instant::now(),
        watch: Watch {
            shared: shared.clone(),
            outcome: Outcome::Running,
            _lease: lease,
        },
    };
    let body = stream::unfold(Some(run), |run| async move {
        let mut run = run?;
        let cut = run.plan.cut_after.filter(|&cut| cut < run.plan.tokens);
        if cut == Some(run.sent) {
            run.watch.outcome = Outcome::Cut;
            // Pending once first: hyper flushes what it holds when the body is not ready, so
            // the tokens before the cut reach the client before the connection drops (an
            // unpaced stream would otherwise lose its head and tokens with the connection).
            tokio::task::yield_now().await;
            let error = io::Error::other("mock upstream: stream cut by cut_after");
            return Some((Err(error), None));
        }
        let mut out = Vec::with_capacity(256);
        if run.sent == 0 {
            run.frames.opening(&run.plan, &mut out);
        }
        if run.sent < run.plan.tokens {
            if let Some(due) = due(&run.plan, run.start, run.sent) {
                tokio::time::sleep_until(due).await;
            }
            run.frames.token(&run.plan, run.sent, &mut out);
            run.sent += 1;
            return Some((Ok(Bytes::from(out)), Some(run)));
        }
        run.frames.closing(&run.plan, &mut out);
        run.watch.outcome = Outcome::Completed;
        // `run` drops here, after the last frame was handed over: the count is "completed".
        Some((Ok(Bytes::from(out)), None))
    });
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// When token `sent` is due, or `None` when nothing is paced: unpaced streams skip the timer
/// entirely, which keeps them at full speed.
fn due(plan: &Plan, start: Instant, sent: u64) -> Option<Instant> {
    if plan.ttft.is_zero() && plan.interval.is_zero() {
        return None;
    }
    let index = u32::try_from(sent).unwrap_or(u32::MAX);
    Some(start + plan.ttft + plan.interval.saturating_mul(index))
}
