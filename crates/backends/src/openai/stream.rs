//! Reading OpenAI answers: the SSE chunks of a stream (`delta.content` for chat, `text` for
//! completions, then a finish reason, a usage chunk and `[DONE]`), or one whole JSON answer.

use futures_util::stream::{self, StreamExt};
use serde::Deserialize;
use tokio_prompt_orchestrator::{FinishReason, TokenStream, Usage, WorkerChunk, WorkerError};

use crate::sse::{Dialect, Parsed};

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

/// One streamed chunk, or a whole answer: both have `choices` and maybe `usage`.
#[derive(Deserialize)]
struct Body {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<WireUsage>,
    error: Option<WireError>,
}

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

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "length" => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

impl Body {
    /// The token, finish reason and usage of the first choice.
    fn parsed(self) -> Parsed {
        let mut parsed = Parsed {
            usage: self.usage.map(Usage::from),
            ..Parsed::default()
        };
        if let Some(choice) = self.choices.into_iter().next() {
            parsed.finish = choice.finish_reason.as_deref().map(finish_reason);
            parsed.token = choice
                .delta
                .or(choice.message)
                .and_then(|m| m.content)
                .or(choice.text)
                .filter(|t| !t.is_empty());
        }
        parsed
    }
}

/// The OpenAI stream format.
pub struct OpenAiDialect;

impl Dialect for OpenAiDialect {
    fn parse(&mut self, data: &str) -> Result<Parsed, String> {
        if data.trim() == "[DONE]" {
            return Ok(Parsed {
                done: true,
                ..Parsed::default()
            });
        }
        let body: Body =
            serde_json::from_str(data).map_err(|e| format!("an unreadable stream chunk ({e})"))?;
        if let Some(error) = body.error {
            return Err(error.message.unwrap_or_else(|| "an error event".into()));
        }
        Ok(body.parsed())
    }
}

/// A non-streamed answer as a token stream: its text as one token, then the finish.
///
/// # Errors
/// When the body is not an OpenAI answer.
pub fn answer_stream(backend: &str, body: &[u8]) -> Result<TokenStream, WorkerError> {
    let answer: Body = serde_json::from_slice(body)
        .map_err(|e| WorkerError::retryable(format!("{backend}: the answer is not OpenAI JSON ({e})")))?;
    let parsed = answer.parsed();
    let mut chunks = Vec::with_capacity(2);
    if let Some(text) = parsed.token {
        chunks.push(Ok(WorkerChunk::Token(text)));
    }
    chunks.push(Ok(WorkerChunk::Finish {
        reason: parsed.finish.unwrap_or_default(),
        usage: parsed.usage,
    }));
    Ok(stream::iter(chunks).boxed())
}
