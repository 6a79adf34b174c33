//! Relaying an upstream SSE stream as the worker's token stream, parsed incrementally: each token
//! goes on as soon as its event arrives. The time to the first token, the gap between tokens and
//! the call's deadline are enforced here; what an event means is the backend's [`Dialect`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::stream::{self, Stream, StreamExt};
use tokio::time::Instant;
use tokio_prompt_orchestrator::{FinishReason, Passthrough, TokenStream, Usage, WorkerChunk, WorkerError};

use crate::timeouts::{Timeouts, earliest};

/// What one event said.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub token: Option<String>,
    /// What the event carried besides text, for the caller (relayed after the token).
    pub extra: Option<Box<Passthrough>>,
    pub finish: Option<FinishReason>,
    pub usage: Option<Usage>,
    /// The stream is complete after this event.
    pub done: bool,
}

/// How a backend's events are read.
pub trait Dialect: Send + 'static {
    /// Reads one event's data.
    ///
    /// # Errors
    /// The upstream's message, when the event reports an error or cannot be read.
    fn parse(&mut self, data: &str) -> Result<Parsed, String>;
}

type Events = Pin<Box<dyn Stream<Item = Result<eventsource_stream::Event, String>> + Send>>;

struct Reader<D> {
    events: Events,
    dialect: D,
    backend: Arc<str>,
    timeouts: Timeouts,
    /// When the whole call must be over.
    deadline: Option<Instant>,
    got_token: bool,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    /// No more events will be read.
    done: bool,
    /// The final item (finish or error) has been produced.
    end_sent: bool,
    /// An event's pass-through part, waiting to follow its token.
    pending: Option<WorkerChunk>,
}

/// The token stream of an SSE `response`. A stream that ends before the dialect has seen its
/// end (or a finish reason) is an error, never a quiet truncation.
pub fn relay<D: Dialect>(
    response: reqwest::Response,
    dialect: D,
    backend: Arc<str>,
    timeouts: Timeouts,
    deadline: Option<Instant>,
) -> TokenStream {
    let events: Events = Box::pin(
        response
            .bytes_stream()
            .eventsource()
            .map(|r| r.map_err(|e| e.to_string())),
    );
    let reader = Reader {
        events,
        dialect,
        backend,
        timeouts,
        deadline,
        got_token: false,
        finish: None,
        usage: None,
        pending: None,
        done: false,
        end_sent: false,
    };
    stream::unfold(reader, |mut reader| async move {
        let item = reader.next().await?;
        Some((item, reader))
    })
    .boxed()
}

impl<D: Dialect> Reader<D> {
    async fn next(&mut self) -> Option<Result<WorkerChunk, WorkerError>> {
        if let Some(chunk) = self.pending.take() {
            return Some(Ok(chunk));
        }
        while !self.done {
            let wait = if self.got_token {
                self.timeouts.between_tokens
            } else {
                self.timeouts.first_token
            };
            let limit = earliest(wait.map(|w| Instant::now() + w), self.deadline);
            let next = match limit {
                Some(at) => match tokio::time::timeout_at(at, self.events.next()).await {
                    Ok(next) => next,
                    Err(_) => return Some(Err(self.fail(self.timeout_message(wait)))),
                },
                None => self.events.next().await,
            };
            let event = match next {
                None => return Some(self.ended()),
                Some(Err(e)) => return Some(Err(self.fail(format!("the stream broke: {e}")))),
                Some(Ok(event)) => event,
            };
            let parsed = match self.dialect.parse(&event.data) {
                Ok(parsed) => parsed,
                Err(message) => return Some(Err(self.fail(message))),
            };
            if parsed.usage.is_some() {
                self.usage = parsed.usage;
            }
            if parsed.finish.is_some() {
                self.finish = parsed.finish;
            }
            self.done = parsed.done;
            let extra = parsed.extra.map(WorkerChunk::Passthrough);
            let output = match parsed.token.filter(|t| !t.is_empty()) {
                Some(text) => {
                    self.pending = extra;
                    Some(WorkerChunk::Token(text))
                }
                None => extra,
            };
            // Tool-call deltas are output too: they count for the token timeouts, and once
            // any output went out a failure can no longer be retried elsewhere.
            if let Some(chunk) = output {
                self.got_token = true;
                return Some(Ok(chunk));
            }
        }
        // The end was seen (its own token, if any, went out above): say how it ended, once.
        if self.end_sent {
            return None;
        }
        self.end_sent = true;
        Some(Ok(WorkerChunk::Finish {
            reason: self.finish.unwrap_or_default(),
            usage: self.usage,
        }))
    }

    /// The body ended: fine after a finish reason (some servers omit their end marker), a cut
    /// otherwise.
    fn ended(&mut self) -> Result<WorkerChunk, WorkerError> {
        match self.finish {
            Some(reason) => {
                self.done = true;
                self.end_sent = true;
                Ok(WorkerChunk::Finish {
                    reason,
                    usage: self.usage,
                })
            }
            None => Err(self.fail("the stream ended before the answer was complete".into())),
        }
    }

    fn timeout_message(&self, wait: Option<Duration>) -> String {
        let before_deadline = self.deadline.is_none_or(|d| Instant::now() < d);
        match wait {
            Some(w) if before_deadline && !self.got_token => {
                format!("no first token within {} ms", w.as_millis())
            }
            Some(w) if before_deadline => format!("no token for {} ms", w.as_millis()),
            _ => "the call took longer than its total timeout".into(),
        }
    }

    /// Ends the stream with an error naming the backend. Before the first token it may be
    /// retried elsewhere; after it, the caller has seen output and the pipeline ends the stream.
    fn fail(&mut self, message: String) -> WorkerError {
        self.done = true;
        self.end_sent = true;
        WorkerError {
            retryable: !self.got_token,
            ..WorkerError::new(format!("{}: {message}", self.backend))
        }
    }
}
