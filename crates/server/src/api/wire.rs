//! The OpenAI response bodies: whole completions, stream chunks, and the model list.

use serde::Serialize;
use tokio_prompt_orchestrator::{FinishReason, Usage};

/// Which endpoint a response belongs to; decides the object names and the choice shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
}

impl Endpoint {
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
    message: Message<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
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

impl Header {
    fn body<C: Serialize>(&self, object: &'static str, choices: C, usage: Option<Usage>) -> String {
        let body = Body {
            id: &self.id,
            object,
            created: self.created,
            model: &self.model,
            choices,
            usage,
        };
        // Plain structs of strings and numbers always serialise.
        serde_json::to_string(&body).unwrap_or_default()
    }

    /// The whole, non-streamed response.
    pub fn complete(&self, text: &str, reason: FinishReason, usage: Usage) -> String {
        let reason = finish_reason(reason);
        match self.endpoint {
            Endpoint::Chat => self.body(
                "chat.completion",
                [ChatChoice {
                    index: 0,
                    message: Message {
                        role: "assistant",
                        content: text,
                    },
                    logprobs: None,
                    finish_reason: reason,
                }],
                Some(usage),
            ),
            Endpoint::Completion => self.body(
                "text_completion",
                [TextChoice {
                    index: 0,
                    text,
                    logprobs: None,
                    finish_reason: Some(reason),
                }],
                Some(usage),
            ),
        }
    }

    /// The opening chunk of a chat stream: the assistant role, no text yet. Completions have
    /// none.
    pub fn role_chunk(&self) -> Option<String> {
        (self.endpoint == Endpoint::Chat).then(|| self.chat_chunk(Some("assistant"), Some(""), None))
    }

    /// A chunk carrying `text`.
    pub fn text_chunk(&self, text: &str) -> String {
        match self.endpoint {
            Endpoint::Chat => self.chat_chunk(None, Some(text), None),
            Endpoint::Completion => self.text_completion_chunk(text, None),
        }
    }

    /// The chunk that says why the stream ended.
    pub fn finish_chunk(&self, reason: FinishReason) -> String {
        let reason = Some(finish_reason(reason));
        match self.endpoint {
            Endpoint::Chat => self.chat_chunk(None, None, reason),
            Endpoint::Completion => self.text_completion_chunk("", reason),
        }
    }

    /// The usage chunk sent last when `stream_options.include_usage` is set: no choices.
    pub fn usage_chunk(&self, usage: Usage) -> String {
        let object = match self.endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completion => "text_completion",
        };
        self.body(object, [(); 0], Some(usage))
    }

    fn chat_chunk(
        &self,
        role: Option<&'static str>,
        content: Option<&str>,
        reason: Option<&'static str>,
    ) -> String {
        self.body(
            "chat.completion.chunk",
            [ChunkChoice {
                index: 0,
                delta: Delta { role, content },
                logprobs: None,
                finish_reason: reason,
            }],
            None,
        )
    }

    fn text_completion_chunk(&self, text: &str, reason: Option<&'static str>) -> String {
        self.body(
            "text_completion",
            [TextChoice {
                index: 0,
                text,
                logprobs: None,
                finish_reason: reason,
            }],
            None,
        )
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
    use super::*;

    fn header(endpoint: Endpoint) -> Header {
        Header {
            endpoint,
            id: "chatcmpl-1".into(),
            created: 7,
            model: "echo".into(),
        }
    }

    #[test]
    fn chat_shapes() {
        let h = header(Endpoint::Chat);
        assert_eq!(
            h.complete("hi", FinishReason::Stop, Usage::new(1, 2)),
            r#"{"id":"chatcmpl-1","object":"chat.completion","created":7,"model":"echo","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#
        );
        assert_eq!(
            h.role_chunk().unwrap(),
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"echo","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#
        );
        assert_eq!(
            h.finish_chunk(FinishReason::Length),
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
            h.text_chunk(" once"),
            r#"{"id":"chatcmpl-1","object":"text_completion","created":7,"model":"echo","choices":[{"index":0,"text":" once","logprobs":null,"finish_reason":null}]}"#
        );
    }
}
