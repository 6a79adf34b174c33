//! `ResponseHandle`: one submitted request's events, tokens first, then exactly one final event.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};

use futures_util::Stream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::pipe::PipeRx;
use crate::error::{PipelineError, Stage};
use crate::event::{Passthrough, Response, ResponseEvent};
use crate::request::RequestId;

/// The events of one submitted request. Dropping it before the final event cancels the request
/// in whatever stage it is, including the model call.
///
/// When the request has a deadline, the handle itself ends with `Timeout` at that instant, even
/// while the request still waits in a queue where no stage can see it yet.
pub struct ResponseHandle {
    id: RequestId,
    /// Tokens and pass-through deltas, then the final event, from the Stream stage (or from
    /// wherever the request ended).
    events: PipeRx<ResponseEvent>,
    /// Whether the final event has been returned.
    done: bool,
    /// Cancels the request when the handle goes before its final event.
    cancel_on_drop: Option<DropGuard>,
    deadline: Option<Pin<Box<Sleep>>>,
    /// The stage the request last entered, named in a timeout.
    progress: Arc<AtomicU8>,
}

impl ResponseHandle {
    pub(crate) fn new(
        id: RequestId,
        events: PipeRx<ResponseEvent>,
        cancel: CancellationToken,
        deadline: Option<Instant>,
        progress: Arc<AtomicU8>,
    ) -> Self {
        Self {
            id,
            events,
            done: false,
            cancel_on_drop: Some(cancel.drop_guard()),
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
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
        // Once the request is in the Stream stage, the pipeline's own deadline timers end it and
        // can tell a slow model from a slow reader; before that it may sit unseen in a queue.
        let stage = Stage::ALL
            .get(usize::from(self.progress.load(Ordering::Relaxed)))
            .copied()
            .unwrap_or(Stage::Rag);
        if stage != Stage::Stream
            && let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            // Ending here cancels the request (the guard fires); the pipeline counts it as a
            // timeout too, because its deadline has passed.
            self.done = true;
            self.cancel_on_drop = None;
            return Poll::Ready(Some(ResponseEvent::Error(Box::new(PipelineError::Timeout {
                stage,
            }))));
        }
        let event = match ready!(self.events.poll_recv(cx)) {
            Some(event) => event,
            // The pipe ended without a final event: the envelope was lost.
            None => ResponseEvent::Error(Box::new(lost())),
        };
        if event.is_final() {
            self.done = true;
            // Finished: dropping the handle now has nothing to cancel.
            if let Some(guard) = self.cancel_on_drop.take() {
                guard.disarm();
            }
        }
        Poll::Ready(Some(event))
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

impl std::fmt::Debug for ResponseHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseHandle")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}
