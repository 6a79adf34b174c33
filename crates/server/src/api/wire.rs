//! The OpenAI response bodies: whole completions, stream chunks, and the model list.
//!
//! Bodies are typed structs; what an upstream answered besides text (tool calls, logprobs,
//! `system_fingerprint`: a [`Passthrough`]) is merged in as they are written ([`Grafted`]).

use bytes::{BufMut, BytesMut};
use serde::Serialize;
use tokio_prompt_orchestrator::{Extra, FinishReason, Passthrough, Usage};

use super::graft::Grafted;

/// Which endpoint a response belongs to; decides the object names and the choice shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
}

impl Endpoint {
    /// The route it is served on.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completion => "/v1/completions",
        }
    }

    /// The endpoint served on `path`.
    pub fn from_path(path: &str) -> Option<Self> {
        [Endpoint::Chat, Endpoint::Completion]
            .into_iter()
            .find(|e| e.path() == path)
    }

    /// The prefix of response ids.
    pub fn id_prefix(self) -> &'static str {
        match self {
            Endpoint::Chat => "chatcmpl-",
            Endpoint::Completion => "cmpl-",
        }
    }
}

/// What every body of one response shares.
#[derive(Clone, Debug)]
pub struct Header {
    pub endpoint: Endpoint,
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    pub model: String,
}

pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
    }
}

#[derive(Serialize)]
struct Body<'a, C: Serialize> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: C,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize)]
struct ChatChoice<'a> {
    index: u32,
    message: Grafted<'a, Message<'a>>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: Option<&'a str>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Grafted<'a, Delta<'a>>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

#[derive(Serialize)]
struct TextChoice<'a> {
    index: u32,
    text: &'a str,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

/// The parts of `extra` for the response, its choice and its message.
fn parts(extra: Option<&Passthrough>) -> (Option<&Extra>, Option<&Extra>, Option<&Extra>) {
    (
        extra.map(|e| &e.response),
        extra.map(|e| &e.choice),
        extra.map(|e| &e.message),
    )
}

impl Header {
    /// A body with `choices`, and the upstream's top-level fields `extra`.
    fn body<C: Serialize>(
        &self,
        object: &'static str,
        choices: C,
        usage: Option<Usage>,
        extra: Option<&Extra>,
    ) -> String {
        let body = Grafted {
            own: Body {
                id: &self.id,
                object,
                created: self.created,
                model: &self.model,
                choices,
                usage,
            },
            extra,
        };
        // Strings, numbers and JSON values always serialise.
        serde_json::to_string(&body).unwrap_or_default()
    }

    /// The whole, non-streamed response, with what the upstream sent besides text.
    pub fn complete(
        &self,
        text: &str,
        reason: FinishReason,
        usage: Usage,
        extra: Option<&Passthrough>,
    ) -> String {
        let reason = finish_reason(reason);
        // A chat answer that only called tools has `content: null`, as OpenAI sends it.
        let content = (!text.is_empty() || !extra.is_some_and(|e| e.message.contains_key("tool_calls")))
            .then_some(text);
        let (response, choice, message) = parts(extra);
        match self.endpoint {
            Endpoint::Chat => self.body(
                "chat.completion",
                [Grafted {
                    own: ChatChoice {
                        index: 0,
                        message: Grafted {
                            own: Message {
                                role: "assistant",
                                content,
                            },
                            extra: message,
                        },
                        logprobs: None,
                        finish_reason: reason,
                    },
                    extra: choice,
                }],
                Some(usage),
                response,
            ),
            Endpoint::Completion => self.body(
                "text_completion",
                [Grafted {
                    own: TextChoice {
                        index: 0,
                        text,
                        logprobs: None,
                        finish_reason: Some(reason),
                    },
                    extra: choice,
                }],
                Some(usage),
                response,
            ),
        }
    }

    /// The opening chunk of a chat stream: the assistant role, no text yet. Completions have
    /// none.
    pub fn role_chunk(&self) -> Option<String> {
        (self.endpoint == Endpoint::Chat).then(|| self.chat_chunk(Some("assistant"), Some(""), None, None))
    }

    /// A chunk carrying `text`, and `extra` from the upstream if any.
    pub fn text_chunk(&self, text: &str, extra: Option<&Passthrough>) -> String {
        match self.endpoint {
            Endpoint::Chat => self.chat_chunk(None, Some(text), None, extra),
            Endpoint::Completion => self.text_completion_chunk(text, None, extra),
        }
    }

    /// The stream's plain text chunks, written from a template made once (see [`TextChunks`]).
    pub fn text_chunks(&self) -> TextChunks {
        let quoted = serde_json::to_string(TEMPLATE_SLOT).unwrap_or_default();
        let chunk = self.text_chunk(TEMPLATE_SLOT, None);
        // The slot's quoted form appears once: every other string in the chunk is quoted too,
        // so a model name or id holding the same letters shows them with quotes escaped.
        let key = match self.endpoint {
            Endpoint::Chat => "\"content\":",
            Endpoint::Completion => "\"text\":",
        };
        let at = chunk
            .find(&format!("{key}{quoted}"))
            .map_or(0, |at| at + key.len());
        TextChunks {
            prefix: chunk[..at].to_string(),
            suffix: chunk[at + quoted.len()..].to_string(),
        }
    }

    /// A chunk carrying what the upstream streamed besides text: a tool-call delta, logprobs.
    pub fn passthrough_chunk(&self, extra: &Passthrough) -> String {
        match self.endpoint {
            Endpoint::Chat => self.chat_chunk(None, None, None, Some(extra)),
            Endpoint::Completion => self.text_completion_chunk("", None, Some(extra)),
        }
    }

    /// The chunk that says why the stream ended.
    pub fn finish_chunk(&self, reason: FinishReason, extra: Option<&Passthrough>) -> String {
        let reason = Some(finish_reason(reason));
        match self.endpoint {
            Endpoint::Chat => self.chat_chunk(None, None, reason, extra),
            Endpoint::Completion => self.text_completion_chunk("", reason, extra),
        }
    }

    /// The usage chunk sent last when `stream_options.include_usage` is set: no choices.
    pub fn usage_chunk(&self, usage: Usage) -> String {
        let object = match self.endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completion => "text_completion",
        };
        self.body(object, [(); 0], Some(usage), None)
    }

    fn chat_chunk(
        &self,
        role: Option<&'static str>,
        content: Option<&str>,
        reason: Option<&'static str>,
        extra: Option<&Passthrough>,
    ) -> String {
        let (response, choice, message) = parts(extra);
        self.body(
            "chat.completion.chunk",
            [Grafted {
                own: ChunkChoice {
                    index: 0,
                    delta: Grafted {
                        own: Delta { role, content },
                        extra: message,
                    },
                    logprobs: None,
                    finish_reason: reason,
                },
                extra: choice,
            }],
            None,
            response,
        )
    }

    fn text_completion_chunk(
        &self,
        text: &str,
        reason: Option<&'static str>,
        extra: Option<&Passthrough>,
    ) -> String {
        let (response, choice, _) = parts(extra);
        self.body(
            "text_completion",
            [Grafted {
                own: TextChoice {
                    index: 0,
                    text,
                    logprobs: None,
                    finish_reason: reason,
                },
                extra: choice,
            }],
            None,
            response,
        )
    }
}

/// What a text chunk's text is put in place of to make [`TextChunks`]' template.
const TEMPLATE_SLOT: &str = "orchestrator-text-slot";

/// A stream's chunks that carry text and nothing else (most of a stream): the same bytes as
/// [`Header::text_chunk`] without extras, from the chunk's JSON before and after its text,
/// written once, so that a token costs the escaping of its own text and two copies.
pub struct TextChunks {
    prefix: String,
    suffix: String,
}

impl TextChunks {
    /// Writes the chunk that carries `text`.
    pub fn write(&self, text: &str, out: &mut BytesMut) {
        out.reserve(self.prefix.len() + text.len() + 2 + self.suffix.len() + 2);
        out.put_slice(self.prefix.as_bytes());
        // Writing a string into memory cannot fail.
        let _ = serde_json::to_writer(out.writer(), text);
        out.put_slice(self.suffix.as_bytes());
    }
}

/// `GET /v1/models`.
#[derive(Serialize)]
pub struct ModelList<'a> {
    pub object: &'static str,
    pub data: Vec<ModelObject<'a>>,
}

#[derive(Serialize)]
pub struct ModelObject<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn header(endpoint: Endpoint) -> Header {
        Header {
            endpoint,
            id: "chatcmpl-1".into(),
            created: 7,
            model: "echo".into(),
        }
    }

    /// The template writes what the serializer writes, for awkward text and headers too.
    #[test]
    fn text_chunks_from_the_template_are_the_text_chunks() {
        let texts = [
            "",
            "tok0",
            " \"quoted\" \\ back\nline\t\u{1}",
            "héllo ✓",
            "orchestrator-text-slot",
        ];
        for endpoint in [Endpoint::Chat, Endpoint::Completion] {
            for model in ["echo", "orchestrator-text-slot", "m\"content\":\"x"] {
                let h = Header {
                    model: model.into(),
                    ..header(endpoint)
                };
                let chunks = h.text_chunks();
                for text in texts {
                    let mut written = BytesMut::new();
                    chunks.write(text, &mut written);
                    assert_eq!(
                        &written[..],
                        h.text_chunk(text, None).as_bytes(),
                        "{model:?} {text:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn chat_shapes() {
        let h = header(Endpoint::Chat);
        assert_eq!(
            h.complete("hi", FinishReason::Stop, Usage::new(1, 2), None),
            r#"{"id":"chatcmpl-1","object":"chat.completion","created":7,"model":"echo","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#
        );
        assert_eq!(
            h.role_chunk().unwrap(),
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"echo","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#
        );
        assert_eq!(
            h.finish_chunk(FinishReason::Length, None),
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"echo","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"length"}]}"#
        );
        assert_eq!(
            h.usage_chunk(Usage::new(1, 2)),
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"echo","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#
        );
    }

    #[test]
    fn completion_shapes() {
        let h = header(Endpoint::Completion);
        assert!(h.role_chunk().is_none());
        assert_eq!(
            h.text_chunk(" once", None),
            r#"{"id":"chatcmpl-1","object":"text_completion","created":7,"model":"echo","choices":[{"index":0,"text":" once","logprobs":null,"finish_reason":null}]}"#
        );
    }

    fn tool_call() -> Passthrough {
        let mut extra = Passthrough::default();
        extra.message.insert(
            "tool_calls".into(),
            serde_json::json!([{"index": 0, "id": "call_1", "type": "function",
                                "function": {"name": "f", "arguments": "{}"}}]),
        );
        extra
            .choice
            .insert("logprobs".into(), serde_json::json!({"content": []}));
        extra.response.insert("system_fingerprint".into(), "fp_1".into());
        // Never replaces what the gateway says.
        extra.response.insert("model".into(), "upstream-name".into());
        extra
    }

    #[test]
    fn pass_through_fields_are_grafted_into_answers_and_chunks() {
        let h = header(Endpoint::Chat);
        let whole: Value = serde_json::from_str(&h.complete(
            "",
            FinishReason::ToolCalls,
            Usage::new(1, 2),
            Some(&tool_call()),
        ))
        .unwrap();
        assert_eq!(
            whole,
            serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 7,
                "model": "echo", "system_fingerprint": "fp_1",
                "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": {"content": []},
                    "message": {"role": "assistant", "content": null, "tool_calls": [
                        {"index": 0, "id": "call_1", "type": "function",
                         "function": {"name": "f", "arguments": "{}"}}]}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})
        );
        let chunk: Value = serde_json::from_str(&h.passthrough_chunk(&tool_call())).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "echo");
        assert_eq!(chunk["system_fingerprint"], "fp_1");
        assert_eq!(chunk["choices"][0]["delta"]["tool_calls"][0]["id"], "call_1");
        assert_eq!(
            chunk["choices"][0]["logprobs"],
            serde_json::json!({"content": []})
        );
        assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
    }
}
