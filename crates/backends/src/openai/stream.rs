//! Reading OpenAI answers: the SSE chunks of a stream (`delta.content` for chat, `text` for
//! completions, then a finish reason, a usage chunk and `[DONE]`), or one whole JSON answer.
//!
//! Fields we do not act on (tool calls, logprobs, `system_fingerprint`, ...) are collected as a
//! [`Passthrough`] for the caller; the names the gateway sets itself (`id`, `model`, ...) and
//! empty values ([`extra::empty`](tokio_prompt_orchestrator::extra::empty)) are left out, so a
//! plain text chunk carries none.

use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess};
use serde_json::Value;
use tokio_prompt_orchestrator::extra::Fields;
use tokio_prompt_orchestrator::{Extra, FinishReason, Passthrough, TokenStream, Usage, WorkerError};

use super::template::TextTemplate;
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
#[derive(Default)]
struct Body {
    choices: Vec<Choice>,
    usage: Option<WireUsage>,
    error: Option<WireError>,
    extra: Extra,
}

impl Fields for Body {
    type Extra = Extra;
    const EXPECTING: &'static str = "an OpenAI answer or stream chunk (an object)";
    const KEEPS_EMPTY: bool = false;

    fn field<'de, A: MapAccess<'de>>(&mut self, name: &str, map: &mut A) -> Result<bool, A::Error> {
        match name {
            "choices" => self.choices = map.next_value::<Option<_>>()?.unwrap_or_default(),
            "usage" => self.usage = map.next_value()?,
            "error" => self.error = map.next_value()?,
            // Kept out of `extra`: the gateway sets its own.
            "id" | "object" | "created" | "model" => {
                map.next_value::<IgnoredAny>()?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn extra(&mut self) -> &mut Extra {
        &mut self.extra
    }
}

#[derive(Default)]
struct Choice {
    delta: Option<Message>,
    message: Option<Message>,
    text: Option<String>,
    finish_reason: Option<String>,
    extra: Extra,
}

impl Fields for Choice {
    type Extra = Extra;
    const EXPECTING: &'static str = "a choice (an object)";
    const KEEPS_EMPTY: bool = false;

    fn field<'de, A: MapAccess<'de>>(&mut self, name: &str, map: &mut A) -> Result<bool, A::Error> {
        match name {
            "delta" => self.delta = map.next_value()?,
            "message" => self.message = map.next_value()?,
            "text" => self.text = map.next_value()?,
            "finish_reason" => self.finish_reason = map.next_value()?,
            "index" => {
                map.next_value::<IgnoredAny>()?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn extra(&mut self) -> &mut Extra {
        &mut self.extra
    }
}

#[derive(Default)]
struct Message {
    content: Option<String>,
    extra: Extra,
}

impl Fields for Message {
    type Extra = Extra;
    const EXPECTING: &'static str = "a message (an object)";
    const KEEPS_EMPTY: bool = false;

    fn field<'de, A: MapAccess<'de>>(&mut self, name: &str, map: &mut A) -> Result<bool, A::Error> {
        match name {
            "content" => self.content = map.next_value()?,
            "role" => {
                map.next_value::<IgnoredAny>()?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn extra(&mut self) -> &mut Extra {
        &mut self.extra
    }
}

tokio_prompt_orchestrator::read_fields!(Body, Choice, Message);

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
            response: self.extra,
            ..Passthrough::default()
        };
        if let Some(choice) = self.choices.into_iter().next() {
            parsed.finish = choice.finish_reason.as_deref().map(finish_reason);
            extra.choice = choice.extra;
            let message = choice.delta.or(choice.message);
            let content = message.map(|m| {
                extra.message = m.extra;
                m.content
            });
            parsed.token = content.flatten().or(choice.text).filter(|t| !t.is_empty());
        }
        parsed.extra = (!extra.is_empty()).then(|| Box::new(extra));
        parsed
    }
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
    /// The bytes around the text of the stream's text-only chunks.
    text: Option<TextTemplate>,
    /// Whether [`text`](Self::text) has read a chunk. One that never did means this stream's
    /// chunks differ in more than their text (a count or time in each), and no other is learnt.
    text_used: bool,
}

impl Dialect for OpenAiDialect {
    fn parse(&mut self, data: &str) -> Result<Parsed, String> {
        if let Some(token) = self.text.as_ref().and_then(|t| t.read(data)) {
            self.text_used = true;
            return Ok(text_only(token));
        }
        let parsed = self.whole(data)?;
        if let Some(token) = &parsed.token
            && is_text_only(&parsed)
            && (self.text.is_none() || self.text_used)
        {
            // A text chunk the template did not read: the bytes around the text have changed
            // (a new creation time), so learn them again.
            self.text = TextTemplate::learn(data, token, |probe, text| {
                let read = Self::default().whole(probe);
                read.is_ok_and(|p| is_text_only(&p) && p.token.as_deref() == Some(text))
            });
            self.text_used = false;
        }
        Ok(parsed)
    }
}

/// Whether a chunk carried text and nothing else.
fn is_text_only(parsed: &Parsed) -> bool {
    let Parsed {
        token,
        extra,
        finish,
        usage,
        done,
    } = parsed;
    token.is_some() && extra.is_none() && finish.is_none() && usage.is_none() && !done
}

fn text_only(token: String) -> Parsed {
    Parsed {
        token: Some(token),
        ..Parsed::default()
    }
}

impl OpenAiDialect {
    /// Reads a chunk by parsing all of it.
    fn whole(&mut self, data: &str) -> Result<Parsed, String> {
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
    Ok(answer.parsed().into_stream())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(data: &str) -> Result<Parsed, String> {
        OpenAiDialect::default().parse(data)
    }

    #[test]
    fn text_chunks_read_from_the_template_are_read_as_a_whole_parse_reads_them() {
        let chunk = |created: u64, delta: Value, finish: Value| {
            json!({
                "id": "c1", "object": "chat.completion.chunk", "created": created, "model": "m",
                "system_fingerprint": "fp",
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
            })
            .to_string()
        };
        let text = |t: &str| chunk(1, json!({"content": t}), Value::Null);
        let mut stream = vec![
            chunk(1, json!({"role": "assistant", "content": ""}), Value::Null),
            text("Hello"),
            text(" \"quoted\" \\ back\nline\t\u{1} héllo ✓"),
            text(r#"","content":""#),
            text("a"),
            text(""),
            chunk(1, json!({"content": "x", "refusal": "no"}), Value::Null),
            // The creation time moves on: the template is learnt again.
            chunk(2, json!({"content": " later"}), Value::Null),
            chunk(2, json!({"content": " again"}), Value::Null),
            chunk(
                2,
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
                Value::Null,
            ),
            chunk(2, json!({"content": "b"}), json!("stop")),
            r#"{"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":9}}"#.into(),
            "[DONE]".into(),
        ];
        // Hand-written spacing differs from serde's, and is still read from its template.
        stream.push(r#"{"choices": [{"delta": {"content" : "s1"}}]}"#.into());
        stream.push(r#"{"choices": [{"delta": {"content" : "s2"}}]}"#.into());
        let mut dialect = OpenAiDialect::default();
        let mut whole = OpenAiDialect::default();
        for data in &stream {
            assert_eq!(dialect.parse(data), whole.whole(data), "{data}");
        }
        assert!(dialect.text_used, "the template read the last chunk");
    }

    #[test]
    fn a_stream_whose_chunks_differ_in_more_than_their_text_stops_learning() {
        let mut dialect = OpenAiDialect::default();
        for n in 0..4 {
            let data = json!({"created": n, "choices": [{"delta": {"content": "t"}}]}).to_string();
            assert_eq!(dialect.parse(&data).unwrap().token.as_deref(), Some("t"));
            assert!(!dialect.text_used);
        }
    }

    #[test]
    fn fields_we_do_not_act_on_are_kept_at_their_level() {
        let chunk = json!({
            "id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "system_fingerprint": "fp",
            "choices": [{
                "index": 0,
                "delta": {"role": "assistant", "content": "hi", "refusal": "no"},
                "logprobs": {"content": [{"token": "hi"}]},
                "finish_reason": "length"
            }]
        });
        let parsed = parse(&chunk.to_string()).unwrap();
        assert_eq!(parsed.token.as_deref(), Some("hi"));
        assert_eq!(parsed.finish, Some(FinishReason::Length));
        let extra = parsed.extra.unwrap();
        assert_eq!(Value::Object(extra.response), json!({"system_fingerprint": "fp"}));
        assert_eq!(
            Value::Object(extra.choice),
            json!({"logprobs": {"content": [{"token": "hi"}]}})
        );
        assert_eq!(Value::Object(extra.message), json!({"refusal": "no"}));
    }

    #[test]
    fn escaped_names_null_choices_and_usage_are_read_and_empty_values_dropped() {
        let parsed =
            parse(r#"{"choices":[{"text":"a","we\u0069rd":1,"logprobs":null}],"tool_calls":[]}"#).unwrap();
        assert_eq!(parsed.token.as_deref(), Some("a"));
        let extra = parsed.extra.unwrap();
        assert_eq!(Value::Object(extra.choice), json!({"weird": 1}));
        assert!(extra.response.is_empty(), "{:?}", extra.response);

        let parsed = parse(r#"{"choices":null,"usage":{"prompt_tokens":3,"completion_tokens":2}}"#).unwrap();
        assert_eq!(parsed.usage, Some(Usage::new(3, 2)));
        assert!(parsed.token.is_none() && parsed.extra.is_none());
    }

    #[test]
    fn what_is_not_an_answer_is_an_error_that_says_what_was_expected() {
        let error = parse("[1, 2]").unwrap_err();
        assert!(error.contains("an OpenAI answer or stream chunk"), "{error}");
        let error = parse(r#"{"choices":[{"message":"hi"}]}"#).unwrap_err();
        assert!(error.contains("a message (an object)"), "{error}");
    }
}
