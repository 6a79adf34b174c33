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
use tokio_prompt_orchestrator::{Completion, Passthrough, PipelineError, ResponseEvent, ResponseHandle};

use super::error::ApiError;
use super::middleware::DisconnectGuard;
use super::sources;
use super::timing::{Millis, overhead};
use super::wire::Header;
use crate::gateway::cache::{Cached, Fill};
use crate::gateway::outcome::Outcome;

/// A comment every so often keeps idle proxies from closing a slow stream and lets the server
/// notice a client that went away between tokens.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How one stream is written.
pub struct Plan {
    pub header: Header,
    /// The client asked for a last chunk with the usage.
    pub include_usage: bool,
    /// When the request arrived, for the overhead comment.
    pub start: Instant,
    /// `X-Rag-Sources: true`: the first chunk lists the retrieved context.
    pub show_sources: bool,
    /// The response cache's place for this answer, when it is to be kept.
    pub fill: Option<Fill>,
}

/// Waits for the first event, then streams the rest.
///
/// # Errors
/// The request's error, when it fails before producing anything.
pub async fn respond(
    mut handle: ResponseHandle,
    plan: Plan,
    mut guard: DisconnectGuard,
    mut outcome: Outcome,
) -> Result<Response, ApiError> {
    let Plan {
        header,
        include_usage,
        start,
        show_sources,
        fill,
    } = plan;
    // The retrieved context comes just before the first output; the status still waits for
    // that output (or the error instead of it).
    let mut found = None;
    let first = loop {
        match handle.recv().await {
            Some(ResponseEvent::Error(error)) => return Err(Box::pin(outcome.failed(*error)).await),
            Some(ResponseEvent::Sources(sources)) => found = Some(sources),
            Some(event) => break event,
            None => {
                let error = PipelineError::Internal {
                    message: "the request ended without a final event".into(),
                };
                return Err(Box::pin(outcome.failed(error)).await);
            }
        }
    };
    let sources = found.filter(|_| show_sources);
    let mut closing = Closing {
        keeping: fill.map(|fill| (fill, String::new())),
        include_usage,
        start,
        header,
        held: None,
        outcome,
    };
    let mut opening: Vec<Event> = Vec::new();
    match (closing.header.role_chunk(), &sources) {
        (Some(role), Some(sources)) => opening.push(data(sources::with_field(role, sources))),
        (Some(role), None) => opening.push(data(role)),
        // Completions have no role chunk: the sources go in a chunk of their own.
        (None, Some(sources)) => {
            let chunk = closing.header.text_chunk("", None);
            opening.push(data(sources::with_field(chunk, sources)));
        }
        (None, None) => {}
    }
    let rest = if let Some(events) = closing.settle(first, &mut opening).await {
        // The first event was already the last one.
        opening.extend(events);
        guard.disarm();
        None
    } else {
        Some((handle, closing, guard))
    };
    // Dropping this stream (the client went away) drops the handle, which cancels the request.
    let rest = stream::unfold(rest, move |state| async move {
        let (mut handle, mut closing, mut guard) = state?;
        let event = handle.recv().await?;
        let mut out = Vec::new();
        match closing.settle(event, &mut out).await {
            Some(last) => {
                out.extend(last);
                guard.disarm();
                Some((out, None))
            }
            None => Some((out, Some((handle, closing, guard)))),
        }
    });
    let events = stream::iter(opening)
        .chain(rest.flat_map(stream::iter))
        .map(Ok::<_, Infallible>);
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    if let Some(sources) = &sources {
        response
            .headers_mut()
            .insert(sources::SOURCES_HEADER, sources::header(sources));
    }
    Ok(response)
}

/// One stream's chunks, and how it ends.
struct Closing {
    include_usage: bool,
    start: Instant,
    header: Header,
    /// Top-level fields (`system_fingerprint`) that came alone, to go out with the next chunk
    /// rather than in an empty chunk of their own.
    held: Option<Box<Passthrough>>,
    /// Settled when the stream ends: tokens charged, place given up, a failure kept.
    outcome: Outcome,
    /// The response cache's place for this answer, and its text so far; dropped when the answer
    /// carries more than text (tool calls are not kept).
    keeping: Option<(Fill, String)>,
}

/// What one event asks of the stream.
enum Step {
    /// Its chunk (if any) is in the output; the stream goes on.
    More,
    /// The stream ends with these events.
    Last(Vec<Event>),
    /// The request failed after its first output.
    Failed(PipelineError),
}

impl Closing {
    /// Puts an event's chunk in `out` and returns `None`, or returns the closing events after a
    /// final event.
    async fn settle(&mut self, event: ResponseEvent, out: &mut Vec<Event>) -> Option<Vec<Event>> {
        match self.events(event, out) {
            Step::More => None,
            Step::Last(events) => Some(events),
            // Boxed: the failure path's state would otherwise sit in every open stream.
            Step::Failed(error) => Some(Box::pin(self.failed(error)).await),
        }
    }

    /// The error event that ends a stream failing after its first output.
    async fn failed(&mut self, error: PipelineError) -> Vec<Event> {
        let error = self.outcome.failed(error).await;
        vec![Event::default().event("error").data(error.to_json())]
    }

    /// What `event` asks for; a chunk it makes goes in `out`.
    fn events(&mut self, event: ResponseEvent, out: &mut Vec<Event>) -> Step {
        match event {
            ResponseEvent::Token(text) => {
                out.push(data(self.header.text_chunk(&text, self.held.take().as_deref())));
                if let Some((_, kept)) = &mut self.keeping {
                    kept.push_str(&text);
                }
                Step::More
            }
            ResponseEvent::Passthrough(extra) if extra.message.is_empty() && extra.choice.is_empty() => {
                self.held = Some(extra);
                Step::More
            }
            ResponseEvent::Passthrough(mut extra) => {
                self.keeping = None;
                if let Some(held) = self.held.take() {
                    for (key, value) in held.response {
                        extra.response.entry(key).or_insert(value);
                    }
                }
                out.push(data(self.header.passthrough_chunk(&extra)));
                Step::More
            }
            // Sent once, before the first output, and read there.
            ResponseEvent::Sources(_) => Step::More,
            ResponseEvent::Done(completion) => Step::Last(self.done(&completion)),
            ResponseEvent::Error(error) => Step::Failed(*error),
        }
    }

    fn done(&mut self, completion: &Completion) -> Vec<Event> {
        self.outcome.completed(completion);
        let held = self.held.take();
        if let Some((fill, text)) = self.keeping.take() {
            fill.put(Cached {
                id: self.header.id.clone(),
                created: self.header.created,
                text,
                finish_reason: completion.finish_reason,
                usage: completion.usage,
                passthrough: held.clone(),
            });
        }
        let finish = self
            .header
            .finish_chunk(completion.finish_reason, held.as_deref());
        let mut events = vec![data(finish)];
        if self.include_usage {
            events.push(data(self.header.usage_chunk(completion.usage)));
        }
        // Headers left before the stream's cost was known; clients ignore SSE comments.
        events.push(Event::default().comment(format!(
            "orchestrator-overhead-ms {}",
            Millis(overhead(self.start.elapsed(), completion))
        )));
        events.push(Event::default().data("[DONE]"));
        events
    }
}

fn data(json: String) -> Event {
    Event::default().data(json)
}
