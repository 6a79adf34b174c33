//! Streaming responses: one request's pipeline events as Server-Sent Events.
//!
//! The HTTP status is chosen when the first event arrives, so a request that fails before its
//! first token gets its real status (429, 502, 504, ...). After that, a failure ends the stream
//! with an `error` event carrying the error object and no `[DONE]`: never a silent truncation.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use tokio::time::Instant;
use tokio_prompt_orchestrator::{Completion, PipelineError, ResponseEvent, ResponseHandle};

use super::error::ApiError;
use super::generate::{format_ms, overhead};
use super::middleware::DisconnectGuard;
use super::wire::Header;

/// A comment every so often keeps idle proxies from closing a slow stream and lets the server
/// notice a client that went away between tokens.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Waits for the first event, then streams the rest.
///
/// # Errors
/// The request's error, when it fails before producing anything.
pub async fn respond(
    mut handle: ResponseHandle,
    header: Header,
    include_usage: bool,
    start: Instant,
    mut guard: DisconnectGuard,
) -> Result<Response, ApiError> {
    let first = match handle.recv().await {
        Some(ResponseEvent::Error(error)) => return Err(error.into()),
        Some(event) => event,
        None => {
            return Err(PipelineError::Internal {
                message: "the request ended without a final event".into(),
            }
            .into());
        }
    };
    let closing = Closing { include_usage, start };
    let mut opening: Vec<Event> = header.role_chunk().into_iter().map(data).collect();
    let rest = if let Some(events) = closing.events(&header, first, &mut opening) {
        // The first event was already the last one.
        opening.extend(events);
        guard.disarm();
        None
    } else {
        Some((handle, header, guard))
    };
    // Dropping this stream (the client went away) drops the handle, which cancels the request.
    let rest = stream::unfold(rest, move |state| async move {
        let (mut handle, header, mut guard) = state?;
        let event = handle.recv().await?;
        let mut out = Vec::new();
        match closing.events(&header, event, &mut out) {
            Some(last) => {
                out.extend(last);
                guard.disarm();
                Some((out, None))
            }
            None => Some((out, Some((handle, header, guard)))),
        }
    });
    let events = stream::iter(opening)
        .chain(rest.flat_map(stream::iter))
        .map(Ok::<_, Infallible>);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// How a stream ends.
#[derive(Clone, Copy)]
struct Closing {
    include_usage: bool,
    start: Instant,
}

impl Closing {
    /// Puts a token's chunk in `out` and returns `None`, or returns the closing events after a
    /// final event.
    fn events(&self, header: &Header, event: ResponseEvent, out: &mut Vec<Event>) -> Option<Vec<Event>> {
        match event {
            ResponseEvent::Token(text) => {
                out.push(data(header.text_chunk(&text)));
                None
            }
            ResponseEvent::Done(completion) => Some(self.done(header, &completion)),
            ResponseEvent::Error(error) => {
                let error = ApiError::from(error);
                Some(vec![Event::default().event("error").data(error.to_json())])
            }
        }
    }

    fn done(&self, header: &Header, completion: &Completion) -> Vec<Event> {
        let mut events = vec![data(header.finish_chunk(completion.finish_reason))];
        if self.include_usage {
            events.push(data(header.usage_chunk(completion.usage)));
        }
        // Headers left before the stream's cost was known; clients ignore SSE comments.
        events.push(Event::default().comment(format!(
            "orchestrator-overhead-ms {}",
            format_ms(overhead(self.start.elapsed(), completion))
        )));
        events.push(Event::default().data("[DONE]"));
        events
    }
}

fn data(json: String) -> Event {
    Event::default().data(json)
}
