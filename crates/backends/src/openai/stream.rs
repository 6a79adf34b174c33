//! Reading an upstream answer: an SSE stream parsed incrementally, each token relayed as soon as
//! its event arrives, or one JSON body; both become the worker's token stream.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use tokio::time::Instant;
use tokio_prompt_orchestrator::{FinishReason, TokenStream, Usage, WorkerChunk, WorkerError};

use super::config::Timeouts;

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Usage::new(u.prompt_tokens, u.completion_tokens)
    }
}

/// One streamed chunk, chat (`delta.content`) or completions (`text`).
#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<WireUsage>,
    error: Option<WireError>,
}

/// A choice of a chunk or of a whole answer.
#[derive(Deserialize)]
struct Choice {
    delta: Option<Message>,
    message: Option<Message>,
    text: Option<String>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    content: Option<String>,
}

#[derive(Deserialize)]
struct WireError {
    message: Option<String>,
}

/// A whole, non-streamed answer.
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<WireUsage>,
}

/// The body of an error response: `{"error": {"message": ...}}`, or a plain text.
#[derive(Deserialize)]
struct ErrorBody {
    error: WireError,
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "length" => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

impl Choice {
    fn text(self) -> Option<String> {
        self.delta
            .or(self.message)
            .and_then(|m| m.content)
            .or(self.text)
            .filter(|t| !t.is_empty())
    }
}

/// The message of an upstream error body, or the body itself when it is not JSON.
pub fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody {
            error: WireError { message: Some(m) },
        }) => m,
        _ => String::from_utf8_lossy(body).trim().chars().take(500).collect(),
    }
}

/// A non-streamed answer as a token stream: its text as one token, then the finish.
///
/// # Errors
/// When the body is not an OpenAI answer.
pub fn answer_stream(backend: &str, body: &[u8]) -> Result<TokenStream, WorkerError> {
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| WorkerError::retryable(format!("{backend}: the answer is not OpenAI JSON ({e})")))?;
    let usage = answer.usage.map(Usage::from);
    let mut chunks = Vec::with_capacity(2);
    let mut reason = FinishReason::Stop;
    if let Some(choice) = answer.choices.into_iter().next() {
        reason = choice
            .finish_reason
            .as_deref()
            .map_or(FinishReason::Stop, finish_reason);
        if let Some(text) = choice.text() {
            chunks.push(Ok(WorkerChunk::Token(text)));
        }
    }
    chunks.push(Ok(WorkerChunk::Finish { reason, usage }));
    Ok(stream::iter(chunks).boxed())
}

type Events = Pin<Box<dyn Stream<Item = Result<eventsource_stream::Event, String>> + Send>>;

/// What the SSE reader knows so far.
struct Reader {
    events: Events,
    backend: Arc<str>,
    timeouts: Timeouts,
    /// When the whole call must be over.
    deadline: Option<Instant>,
    got_token: bool,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    done: bool,
}

/// Relays an SSE body as tokens, enforcing the time to first token, the gap between tokens and
/// the call's deadline. A stream that ends without `[DONE]` or a finish reason is an error.
pub fn sse_stream(
    response: reqwest::Response,
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
        backend,
        timeouts,
        deadline,
        got_token: false,
        finish: None,
        usage: None,
        done: false,
    };
    stream::unfold(reader, |mut reader| async move {
        let item = reader.next().await?;
        Some((item, reader))
    })
    .boxed()
}

impl Reader {
    async fn next(&mut self) -> Option<Result<WorkerChunk, WorkerError>> {
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
            if event.data.trim() == "[DONE]" {
                self.done = true;
                return Some(Ok(self.finish_chunk()));
            }
            let chunk: Chunk = match serde_json::from_str(&event.data) {
                Ok(chunk) => chunk,
                Err(e) => return Some(Err(self.fail(format!("an unreadable stream chunk ({e})")))),
            };
            if let Some(error) = chunk.error {
                let message = error.message.unwrap_or_else(|| "an error event".into());
                return Some(Err(self.fail(message)));
            }
            if let Some(usage) = chunk.usage {
                self.usage = Some(usage.into());
            }
            if let Some(choice) = chunk.choices.into_iter().next() {
                if let Some(reason) = choice.finish_reason.as_deref() {
                    self.finish = Some(finish_reason(reason));
                }
                if let Some(text) = choice.text() {
                    self.got_token = true;
                    return Some(Ok(WorkerChunk::Token(text)));
                }
            }
        }
        None
    }

    /// The body ended: fine after a finish reason (some servers omit `[DONE]`), a cut otherwise.
    fn ended(&mut self) -> Result<WorkerChunk, WorkerError> {
        if self.finish.is_some() {
            self.done = true;
            Ok(self.finish_chunk())
        } else {
            Err(self.fail("the stream ended before the answer was complete".into()))
        }
    }

    fn finish_chunk(&self) -> WorkerChunk {
        WorkerChunk::Finish {
            reason: self.finish.unwrap_or_default(),
            usage: self.usage,
        }
    }

    fn timeout_message(&self, wait: Option<Duration>) -> String {
        match (wait, self.got_token) {
            (Some(w), false) if self.deadline.is_none_or(|d| Instant::now() < d) => {
                format!("no first token within {} ms", w.as_millis())
            }
            (Some(w), true) if self.deadline.is_none_or(|d| Instant::now() < d) => {
                format!("no token for {} ms", w.as_millis())
            }
            _ => "the call took longer than its total timeout".into(),
        }
    }

    /// Ends the stream with an error naming the backend. Before the first token it may be
    /// retried elsewhere; after it, the caller has seen output and the pipeline ends the stream.
    fn fail(&mut self, message: String) -> WorkerError {
        self.done = true;
        WorkerError {
            retryable: !self.got_token,
            ..WorkerError::new(format!("{}: {message}", self.backend))
        }
    }
}

pub(crate) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
