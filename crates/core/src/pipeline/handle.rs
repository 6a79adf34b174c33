//! `ResponseHandle`: one submitted request's events, tokens first, then exactly one final event.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Wake, Waker, ready};

use futures_util::Stream;
use futures_util::task::AtomicWaker;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::pipe::PipeRx;
use crate::error::{PipelineError, Stage};
use crate::event::{Passthrough, Response, ResponseEvent};
use crate::request::RequestId;

/// The events of one submitted request. Dropping it before the final event cancels the request
/// in whatever stage it is, including the model call.
///
/// When the request has a deadline, the handle holds its one timer: at that instant its
/// `Alarm` cancels the request wherever it is, and the handle itself ends with `Timeout` if
/// the request still waits in a queue where no stage can see it yet.
pub struct ResponseHandle {
    id: RequestId,
    /// Tokens and pass-through deltas, then the final event, from the Stream stage (or from
    /// wherever the request ended).
    events: PipeRx<ResponseEvent>,
    /// Whether the final event has been returned; dropping the handle before cancels the request.
    done: bool,
    alarm: Arc<Alarm>,
    /// The deadline timer, registered when the handle is made with `alarm` as its waker, so it
    /// goes off whether or not anyone reads the handle. It is never polled again (that would
    /// replace the waker); `is_elapsed` tells whether it went off.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The stage the request last entered, named in a timeout.
    progress: Arc<AtomicU8>,
}

/// What the deadline timer wakes: it cancels the request (every stage waiting on it sees the
/// token, and reads the passed deadline as a timeout), then wakes the handle's reader. One timer
/// per request serves the stages and the handle alike.
struct Alarm {
    /// The request's token.
    cancel: CancellationToken,
    reader: AtomicWaker,
}

impl Wake for Alarm {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.cancel.cancel();
        self.reader.wake();
    }
}

/// Registers a timer for `at` that wakes `alarm`.
fn arm(at: Instant, alarm: &Arc<Alarm>) -> Pin<Box<Sleep>> {
    let mut timer = Box::pin(tokio::time::sleep_until(at));
    let waker = Waker::from(alarm.clone());
    // Unconstrained: with the task's cooperative budget spent, a poll would return Pending
    // without registering the timer, and wake the alarm at once.
    let first =
        Pin::new(&mut tokio::task::unconstrained(timer.as_mut())).poll(&mut Context::from_waker(&waker));
    if first.is_ready() {
        alarm.wake_by_ref();
    }
    timer
}

impl ResponseHandle {
    pub(crate) fn new(
        id: RequestId,
        events: PipeRx<ResponseEvent>,
        cancel: CancellationToken,
        deadline: Option<Instant>,
        progress: Arc<AtomicU8>,
    ) -> Self {
        let alarm = Arc::new(Alarm {
            cancel,
            reader: AtomicWaker::new(),
        });
        Self {
            id,
            events,
            done: false,
            deadline: deadline.map(|at| arm(at, &alarm)),
            alarm,
            progress,
        }
    }

    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The next event; `None` after the final one.
    pub async fn recv(&mut self) -> Option<ResponseEvent> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// Waits for the whole answer, joining the tokens and merging pass-through deltas.
    ///
    /// # Errors
    /// The request's error, if it failed (also after some tokens arrived).
    pub async fn into_response(mut self) -> Result<Response, PipelineError> {
        let mut text = String::new();
        let mut passthrough: Option<Box<Passthrough>> = None;
        let mut sources = None;
        while let Some(event) = self.recv().await {
            match event {
                ResponseEvent::Sources(found) => sources = Some(found),
                ResponseEvent::Token(t) => text.push_str(&t),
                ResponseEvent::Passthrough(delta) => match &mut passthrough {
                    Some(whole) => whole.merge(*delta),
                    None => passthrough = Some(delta),
                },
                ResponseEvent::Done(completion) => {
                    return Ok(Response {
                        text,
                        sources,
                        passthrough,
                        completion: *completion,
                    });
                }
                ResponseEvent::Error(e) => return Err(*e),
            }
        }
        Err(lost())
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<ResponseEvent>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.deadline.is_some() {
            // Before looking: an alarm that goes off after the look still wakes this reader.
            self.alarm.reader.register(cx.waker());
            if let Some(timeout) = self.queued_past_deadline() {
                return Poll::Ready(Some(timeout));
            }
        }
        let event = match ready!(self.events.poll_recv(cx)) {
            Some(event) => event,
            // The pipe ended without a final event: the envelope was lost.
            None => ResponseEvent::Error(Box::new(lost())),
        };
        // Finished: dropping the handle now has nothing to cancel.
        self.done = event.is_final();
        Poll::Ready(Some(event))
    }
}

impl ResponseHandle {
    /// The handle's own `Timeout` when the deadline has passed while the request waits in a
    /// queue. Once the request is in the Stream stage, the pipeline ends it (the alarm cancelled
    /// it) and its final event says where the time went: a slow model or a slow reader.
    fn queued_past_deadline(&mut self) -> Option<ResponseEvent> {
        if !self.deadline.as_ref().is_some_and(|timer| timer.is_elapsed()) {
            return None;
        }
        let stage = Stage::ALL
            .get(usize::from(self.progress.load(Ordering::Relaxed)))
            .copied()
            .unwrap_or(Stage::Rag);
        if stage == Stage::Stream {
            return None;
        }
        // The alarm cancels the request; the pipeline counts it as a timeout, because its
        // deadline has passed.
        self.done = true;
        Some(ResponseEvent::Error(Box::new(PipelineError::Timeout { stage })))
    }
}

fn lost() -> PipelineError {
    PipelineError::Internal {
        message: "the request ended without a final event".into(),
    }
}

impl Stream for ResponseHandle {
    type Item = ResponseEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ResponseEvent>> {
        self.get_mut().poll_event(cx)
    }
}

impl Drop for ResponseHandle {
    fn drop(&mut self) {
        if !self.done {
            self.alarm.cancel.cancel();
        }
    }
}

impl std::fmt::Debug for ResponseHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseHandle")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}
