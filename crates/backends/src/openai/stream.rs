//! Reading OpenAI answers: the SSE chunks of a stream (`delta.content` for chat, `text` for
//! completions, then a finish reason, a usage chunk and `[DONE]`), or one whole JSON answer.
//!
//! Fields we do not act on (tool calls, logprobs, `system_fingerprint`, ...) are collected as a
//! [`Passthrough`] for the caller; the names the gateway sets itself (`id`, `model`, ...) and
//! empty values are left out, so a plain text chunk carries none.

use futures_util::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use tokio_prompt_orchestrator::{
    Extra, FinishReason, Passthrough, TokenStream, Usage, WorkerChunk, WorkerError,
};

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
    /// Named so that they stay out of `extra`: the gateway sets its own.
    #[serde(default, rename = "id")]
    _id: Value,
    #[serde(default, rename = "object")]
    _object: Value,
    #[serde(default, rename = "created")]
    _created: Value,
    #[serde(default, rename = "model")]
    _model: Value,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Deserialize)]
struct Choice {
    delta: Option<Message>,
    message: Option<Message>,
    text: Option<String>,
    finish_reason: Option<String>,
    #[serde(default, rename = "index")]
    _index: Value,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Deserialize)]
struct Message {
    content: Option<String>,
    #[serde(default, rename = "role")]
    _role: Value,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Deserialize)]
struct WireError {
    message: Option<String>,
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "length" => FinishReason::Length,
        "tool_calls" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

impl Body {
    /// The token, pass-through fields, finish reason and usage of the first choice.
    fn parsed(self) -> Parsed {
        let mut parsed = Parsed {
            usage: self.usage.map(Usage::from),
            ..Parsed::default()
        };
        let mut extra = Passthrough {
            response: meaningful(self.extra),
            ..Passthrough::default()
        };
        if let Some(choice) = self.choices.into_iter().next() {
            parsed.finish = choice.finish_reason.as_deref().map(finish_reason);
            extra.choice = meaningful(choice.extra);
            let message = choice.delta.or(choice.message);
            let content = message.map(|m| {
                extra.message = meaningful(m.extra);
                m.content
            });
            parsed.token = content.flatten().or(choice.text).filter(|t| !t.is_empty());
        }
        parsed.extra = (!extra.is_empty()).then(|| Box::new(extra));
        parsed
    }
}

/// `fields` without nulls and empty lists, which say nothing (`"logprobs": null`,
/// `"tool_calls": []`).
fn meaningful(mut fields: Extra) -> Extra {
    fields.retain(|_, v| !(v.is_null() || v.as_array().is_some_and(Vec::is_empty)));
    fields
}

/// Whether `list` holds the same fields as `map`, in its order.
fn same(list: &[(String, Value)], map: &Extra) -> bool {
    list.len() == map.len() && list.iter().zip(map).all(|((k, v), (mk, mv))| k == mk && v == mv)
}

/// The OpenAI stream format.
#[derive(Default)]
pub struct OpenAiDialect {
    /// The top-level fields last passed on, as a list: a stream keeps them for its whole life,
    /// and a map's first node alone takes over half a kilobyte.
    last_response: Option<Box<[(String, Value)]>>,
}

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
        let mut parsed = body.parsed();
        // Top-level fields (`system_fingerprint`) ride along on every chunk: passed on the first
        // time, then only with something else.
        if let Some(extra) = &parsed.extra
            && extra.message.is_empty()
            && extra.choice.is_empty()
            && (parsed.token.is_some()
                || (self.last_response.as_deref()).is_some_and(|last| same(last, &extra.response)))
        {
            parsed.extra = None;
        }
        if let Some(extra) = &parsed.extra {
            let fields = extra.response.iter().map(|(k, v)| (k.clone(), v.clone()));
            self.last_response = Some(fields.collect());
        }
        Ok(parsed)
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
    let mut chunks = Vec::with_capacity(3);
    if let Some(text) = parsed.token {
        chunks.push(Ok(WorkerChunk::Token(text)));
    }
    if let Some(extra) = parsed.extra {
        chunks.push(Ok(WorkerChunk::Passthrough(extra)));
    }
    chunks.push(Ok(WorkerChunk::Finish {
        reason: parsed.finish.unwrap_or_default(),
        usage: parsed.usage,
    }));
    Ok(stream::iter(chunks).boxed())
}
