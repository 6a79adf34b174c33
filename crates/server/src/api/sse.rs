//! Streaming responses: one request's pipeline events as Server-Sent Events, in the shape of the
//! API the client called (a [`Writer`]: OpenAI's chunks here, Anthropic's events in
//! `anthropic::stream`).
//!
//! The HTTP status is chosen when the first event arrives, so a request that fails before its
//! first token gets its real status (429, 502, 504, ...). After that, a failure ends the stream
//! with an error event in the API's shape: never a silent truncation.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt};
use tokio::time::Instant;
use tokio_prompt_orchestrator::{
    Completion, Passthrough, PipelineError, ResponseEvent, ResponseHandle, RetrievedChunk,
};

use super::error::ApiError;
use super::middleware::DisconnectGuard;
use super::sources;
use super::timing::{Millis, overhead};
use super::wire::{Header, TextChunks};
use crate::gateway::cache::{Cached, Fill};
use crate::gateway::outcome::Outcome;

/// A comment every so often keeps idle proxies from closing a slow stream and lets the server
/// notice a client that went away between tokens.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One API's stream: the events each pipeline event becomes.
pub trait Writer: Send + 'static {
    /// The events before the first output; `sources` when the client asked to see them.
    fn opening(&mut self, sources: Option<&[RetrievedChunk]>) -> Vec<Event>;
    fn token(&mut self, text: &str, out: &mut Vec<Event>);
    /// What the upstream sent besides text (tool calls, top-level fields).
    fn passthrough(&mut self, extra: Box<Passthrough>, out: &mut Vec<Event>);
    /// The closing events of a completed answer; `elapsed` since the request arrived.
    fn done(&mut self, completion: &Completion, elapsed: Duration, out: &mut Vec<Event>);
    /// The event that ends a stream failing after its first output.
    fn failed(&mut self, error: &ApiError) -> Event;
    /// The answer's id and creation time, for the response cache.
    fn identity(&self) -> (String, u64);
    /// Work to finish once the answer is complete, before its closing events go out: a
    /// Responses answer is stored first, so that a client continuing it at once finds it.
    fn finishing(&mut self, _completion: &Completion) -> Option<BoxFuture<'static, ()>> {
        None
    }
}

/// A tool call as an OpenAI-shaped answer carries it: whole, or one streamed delta of it (whose
/// `id` and `name` may be empty after the first).
pub struct ToolCall<'a> {
    /// Its place among the answer's calls (its position, when the upstream numbers none).
    pub index: u64,
    pub id: &'a str,
    pub name: &'a str,
    pub arguments: &'a str,
}

/// The tool calls `extra` carries, in order.
pub fn tool_calls(extra: &Passthrough) -> impl Iterator<Item = ToolCall<'_>> {
    let calls = match extra.message.get("tool_calls") {
        Some(serde_json::Value::Array(calls)) => calls.as_slice(),
        _ => &[],
    };
    calls.iter().enumerate().map(|(i, call)| {
        let function = &call["function"];
        ToolCall {
            index: call["index"].as_u64().unwrap_or(i as u64),
            id: call["id"].as_str().unwrap_or_default(),
            name: function["name"].as_str().unwrap_or_default(),
            arguments: function["arguments"].as_str().unwrap_or_default(),
        }
    })
}

/// How one stream is written.
pub struct Plan<W> {
    pub writer: W,
    /// When the request arrived, for the overhead the answer reports.
    pub start: Instant,
    /// `X-Rag-Sources: true`: the stream's opening lists the retrieved context.
    pub show_sources: bool,
    /// The response cache's place for this answer, when it is to be kept.
    pub fill: Option<Fill>,
}

/// Waits for the first event, then streams the rest.
///
/// # Errors
/// The request's error, when it fails before producing anything.
pub async fn respond<W: Writer>(
    mut handle: ResponseHandle,
    plan: Plan<W>,
    mut guard: DisconnectGuard,
    mut outcome: Outcome,
) -> Result<Response, ApiError> {
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
    let sources: Option<Arc<[RetrievedChunk]>> = found.filter(|_| plan.show_sources);
    let Plan {
        mut writer,
        start,
        fill,
        ..
    } = plan;
    let mut opening = writer.opening(sources.as_deref());
    let mut closing = Closing {
        writer,
        start,
        outcome,
        keeping: fill.map(|fill| (fill, String::new(), None)),
    };
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

/// One stream's writer, and how it ends.
struct Closing<W> {
    writer: W,
    start: Instant,
    /// Settled when the stream ends: tokens charged, place given up, a failure kept.
    outcome: Outcome,
    /// The response cache's place for this answer, its text so far and its top-level fields;
    /// dropped when the answer carries more than that (tool calls are not kept).
    keeping: Option<(Fill, String, Option<Box<Passthrough>>)>,
}

impl<W: Writer> Closing<W> {
    /// Puts an event's output in `out` and returns `None`, or returns the closing events after
    /// a final event.
    async fn settle(&mut self, event: ResponseEvent, out: &mut Vec<Event>) -> Option<Vec<Event>> {
        match event {
            ResponseEvent::Token(text) => {
                self.writer.token(&text, out);
                if let Some((_, kept, _)) = &mut self.keeping {
                    kept.push_str(&text);
                }
                None
            }
            ResponseEvent::Passthrough(extra) => {
                if extra.message.is_empty() && extra.choice.is_empty() {
                    if let Some((_, _, top)) = &mut self.keeping {
                        top.get_or_insert_with(Default::default).merge((*extra).clone());
                    }
                } else {
                    self.keeping = None;
                }
                self.writer.passthrough(extra, out);
                None
            }
            // Sent once, before the first output, and read there.
            ResponseEvent::Sources(_) => None,
            ResponseEvent::Done(completion) => Some(self.done(&completion).await),
            // Boxed: the failure path's state would otherwise sit in every open stream.
            ResponseEvent::Error(error) => Some(Box::pin(self.failed(*error)).await),
        }
    }

    async fn failed(&mut self, error: PipelineError) -> Vec<Event> {
        let error = self.outcome.failed(error).await;
        vec![self.writer.failed(&error)]
    }

    async fn done(&mut self, completion: &Completion) -> Vec<Event> {
        self.outcome.completed(completion);
        if let Some(work) = self.writer.finishing(completion) {
            work.await;
        }
        if let Some((fill, text, passthrough)) = self.keeping.take() {
            let (id, created) = self.writer.identity();
            fill.put(Cached {
                id,
                created,
                text,
                finish_reason: completion.finish_reason,
                usage: completion.usage,
                passthrough,
            });
        }
        let mut events = Vec::new();
        self.writer.done(completion, self.start.elapsed(), &mut events);
        events
    }
}

/// OpenAI's chat and completion chunks, ending in `[DONE]`.
pub struct OpenAiChunks {
    pub header: Header,
    /// The client asked for a last chunk with the usage.
    pub include_usage: bool,
    /// Top-level fields (`system_fingerprint`) that came alone, to go out with the next chunk
    /// rather than in an empty chunk of their own.
    held: Option<Box<Passthrough>>,
    /// Chunks of text alone, from a template made at the first.
    text: Option<TextChunks>,
}

impl OpenAiChunks {
    pub fn new(header: Header, include_usage: bool) -> Self {
        Self {
            header,
            include_usage,
            held: None,
            text: None,
        }
    }
}

impl Writer for OpenAiChunks {
    fn opening(&mut self, sources: Option<&[RetrievedChunk]>) -> Vec<Event> {
        match (self.header.role_chunk(), sources) {
            (Some(role), Some(sources)) => vec![data(sources::with_field(role, sources))],
            (Some(role), None) => vec![data(role)],
            // Completions have no role chunk: the sources go in a chunk of their own.
            (None, Some(sources)) => {
                let chunk = self.header.text_chunk("", None);
                vec![data(sources::with_field(chunk, sources))]
            }
            (None, None) => Vec::new(),
        }
    }

    fn token(&mut self, text: &str, out: &mut Vec<Event>) {
        let chunk = match self.held.take() {
            Some(held) => self.header.text_chunk(text, Some(&held)),
            None => {
                let header = &self.header;
                self.text.get_or_insert_with(|| header.text_chunks()).chunk(text)
            }
        };
        out.push(data(chunk));
    }

    fn passthrough(&mut self, mut extra: Box<Passthrough>, out: &mut Vec<Event>) {
        if extra.message.is_empty() && extra.choice.is_empty() {
            self.held = Some(extra);
            return;
        }
        if let Some(held) = self.held.take() {
            for (key, value) in held.response {
                extra.response.entry(key).or_insert(value);
            }
        }
        out.push(data(self.header.passthrough_chunk(&extra)));
    }

    fn done(&mut self, completion: &Completion, elapsed: Duration, out: &mut Vec<Event>) {
        let held = self.held.take();
        out.push(data(
            self.header
                .finish_chunk(completion.finish_reason, held.as_deref()),
        ));
        if self.include_usage {
            out.push(data(self.header.usage_chunk(completion.usage)));
        }
        // Headers left before the stream's cost was known; clients ignore SSE comments.
        out.push(Event::default().comment(format!(
            "orchestrator-overhead-ms {}",
            Millis(overhead(elapsed, completion))
        )));
        out.push(Event::default().data("[DONE]"));
    }

    fn failed(&mut self, error: &ApiError) -> Event {
        Event::default().event("error").data(error.to_json())
    }

    fn identity(&self) -> (String, u64) {
        (self.header.id.clone(), self.header.created)
    }
}

fn data(json: String) -> Event {
    Event::default().data(json)
}
