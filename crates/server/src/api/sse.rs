//! Streaming responses: one request's pipeline events as Server-Sent Events, in the shape of the
//! API the client called (a [`Writer`]: OpenAI's chunks here, Anthropic's events in
//! `anthropic::stream`).
//!
//! The HTTP status is chosen when the first event arrives, so a request that fails before its
//! first token gets its real status (429, 502, 504, ...). After that, a failure ends the stream
//! with an error event in the API's shape: never a silent truncation.
//!
//! The events ready when the connection can take more are written together ([`frames`]): a
//! burst of tokens costs one write, and a lone token is never held back for company.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::response::Response;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;
use tokio_prompt_orchestrator::{
    Completion, Passthrough, PipelineError, ResponseEvent, ResponseHandle, RetrievedChunk,
};

use super::error::ApiError;
use super::frames::{self, Frames};
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
pub trait Writer: Send + Unpin + 'static {
    /// The events before the first output; `sources` when the client asked to see them.
    fn opening(&mut self, sources: Option<&[RetrievedChunk]>, out: &mut Frames);
    fn token(&mut self, text: &str, out: &mut Frames);
    /// What the upstream sent besides text (tool calls, top-level fields).
    fn passthrough(&mut self, extra: Box<Passthrough>, out: &mut Frames);
    /// The closing events of a completed answer; `elapsed` since the request arrived.
    fn done(&mut self, completion: &Completion, elapsed: Duration, out: &mut Frames);
    /// The event that ends a stream failing after its first output.
    fn failed(&mut self, error: &ApiError, out: &mut Frames);
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
    let mut frames = Frames::default();
    writer.opening(sources.as_deref(), &mut frames);
    let mut closing = Closing {
        writer,
        start,
        outcome,
        keeping: fill.map(|fill| (fill, String::new(), None)),
    };
    let mut response = match closing.write(first, &mut frames) {
        // The first event was already the last one.
        Some(ending) => {
            closing.end(ending, &mut frames).await;
            guard.disarm();
            frames::whole(frames)
        }
        None => {
            let open = Open {
                handle,
                closing,
                guard,
                frames,
            };
            let rest = Rest {
                open: Some(open),
                ending: None,
            };
            frames::live(rest, KEEP_ALIVE)
        }
    };
    if let Some(sources) = &sources {
        response
            .headers_mut()
            .insert(sources::SOURCES_HEADER, sources::header(sources));
    }
    Ok(response)
}

/// The rest of a stream after its first output, as writes. Dropping it (the client went away)
/// drops the handle, which cancels the request.
struct Rest<W> {
    open: Option<Open<W>>,
    /// The closing events being written, after the final event.
    ending: Option<BoxFuture<'static, Bytes>>,
}

struct Open<W> {
    handle: ResponseHandle,
    closing: Closing<W>,
    guard: DisconnectGuard,
    /// Written, not yet sent: the opening, then whatever a poll finds ready.
    frames: Frames,
}

impl<W: Writer> Stream for Rest<W> {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = &mut *self;
        if let Some(ending) = &mut this.ending {
            let last = ready!(ending.as_mut().poll(cx));
            this.ending = None;
            return Poll::Ready(Some(last));
        }
        let Some(open) = &mut this.open else {
            return Poll::Ready(None);
        };
        // Every event that is ready goes into this write.
        let ending = loop {
            match open.handle.poll_next_unpin(cx) {
                Poll::Ready(Some(event)) => {
                    if let Some(ending) = open.closing.write(event, &mut open.frames) {
                        break ending;
                    }
                }
                // Only after the final event, which ends this loop.
                Poll::Ready(None) => {
                    let last = open.frames.take();
                    this.open = None;
                    return Poll::Ready((!last.is_empty()).then_some(last));
                }
                Poll::Pending if open.frames.is_empty() => return Poll::Pending,
                Poll::Pending => return Poll::Ready(Some(open.frames.take())),
            }
        };
        let Some(Open {
            mut closing,
            mut guard,
            mut frames,
            ..
        }) = this.open.take()
        else {
            return Poll::Ready(None);
        };
        let mut last = Box::pin(async move {
            closing.end(ending, &mut frames).await;
            guard.disarm();
            frames.take()
        });
        match last.as_mut().poll(cx) {
            Poll::Ready(last) => Poll::Ready(Some(last)),
            Poll::Pending => {
                this.ending = Some(last);
                Poll::Pending
            }
        }
    }
}

/// How a stream ends: its final event.
enum Ending {
    Done(Box<Completion>),
    Failed(Box<PipelineError>),
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
    /// Writes an event's output, or returns the final event for [`end`](Closing::end).
    fn write(&mut self, event: ResponseEvent, out: &mut Frames) -> Option<Ending> {
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
            ResponseEvent::Done(completion) => Some(Ending::Done(completion)),
            ResponseEvent::Error(error) => Some(Ending::Failed(error)),
        }
    }

    /// Settles the request and writes the closing events.
    async fn end(&mut self, ending: Ending, out: &mut Frames) {
        match ending {
            Ending::Done(completion) => self.done(&completion, out).await,
            Ending::Failed(error) => {
                // Boxed: the failure path's state would otherwise size every handler's future.
                let error = Box::pin(self.outcome.failed(*error)).await;
                self.writer.failed(&error, out);
            }
        }
    }

    async fn done(&mut self, completion: &Completion, out: &mut Frames) {
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
        self.writer.done(completion, self.start.elapsed(), out);
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
    fn opening(&mut self, sources: Option<&[RetrievedChunk]>, out: &mut Frames) {
        match (self.header.role_chunk(), sources) {
            (Some(role), Some(sources)) => out.data(&sources::with_field(role, sources)),
            (Some(role), None) => out.data(&role),
            // Completions have no role chunk: the sources go in a chunk of their own.
            (None, Some(sources)) => {
                let chunk = self.header.text_chunk("", None);
                out.data(&sources::with_field(chunk, sources));
            }
            (None, None) => {}
        }
    }

    fn token(&mut self, text: &str, out: &mut Frames) {
        match self.held.take() {
            Some(held) => out.data(&self.header.text_chunk(text, Some(&held))),
            None => {
                let header = &self.header;
                let chunks = self.text.get_or_insert_with(|| header.text_chunks());
                out.data_line(|buf| chunks.write(text, buf));
            }
        }
    }

    fn passthrough(&mut self, mut extra: Box<Passthrough>, out: &mut Frames) {
        if extra.message.is_empty() && extra.choice.is_empty() {
            self.held = Some(extra);
            return;
        }
        if let Some(held) = self.held.take() {
            for (key, value) in held.response {
                extra.response.entry(key).or_insert(value);
            }
        }
        out.data(&self.header.passthrough_chunk(&extra));
    }

    fn done(&mut self, completion: &Completion, elapsed: Duration, out: &mut Frames) {
        let held = self.held.take();
        out.data(
            &self
                .header
                .finish_chunk(completion.finish_reason, held.as_deref()),
        );
        if self.include_usage {
            out.data(&self.header.usage_chunk(completion.usage));
        }
        // Headers left before the stream's cost was known; clients ignore SSE comments.
        out.comment(&format!(
            "orchestrator-overhead-ms {}",
            Millis(overhead(elapsed, completion))
        ));
        out.data("[DONE]");
    }

    fn failed(&mut self, error: &ApiError, out: &mut Frames) {
        out.event("error", &error.to_json());
    }

    fn identity(&self) -> (String, u64) {
        (self.header.id.clone(), self.header.created)
    }
}
