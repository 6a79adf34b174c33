//! Anthropic's event stream: `message_start`, `ping`, then content blocks (`content_block_start`,
//! `content_block_delta` with `text_delta` or `input_json_delta`, `content_block_stop`), then
//! `message_delta` with the stop reason and usage, and `message_stop`; a failure after the first
//! output is an `error` event.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tokio_prompt_orchestrator::{Completion, Passthrough, RetrievedChunk};

use super::message::{error_body, stop_reason};
use crate::api::error::ApiError;
use crate::api::frames::Frames;
use crate::api::sse::{Writer, tool_calls};

/// The content block being written.
#[derive(Debug, PartialEq)]
enum Open {
    None,
    Text,
    /// A tool call, by its index among the upstream's tool calls.
    Tool(u64),
}

pub struct AnthropicEvents {
    id: String,
    created: u64,
    model: String,
    /// The next block's index.
    next_index: u64,
    open: Open,
}

impl AnthropicEvents {
    pub fn new(id: String, created: u64, model: String) -> Self {
        Self {
            id,
            created,
            model,
            next_index: 0,
            open: Open::None,
        }
    }

    /// Starts a block of `block`'s kind, closing the one before.
    fn start(&mut self, block: Value, open: Open, out: &mut Frames) {
        self.close(out);
        out.json(
            Some("content_block_start"),
            &json!({"type": "content_block_start", "index": self.next_index, "content_block": block}),
        );
        self.open = open;
        self.next_index += 1;
    }

    fn close(&mut self, out: &mut Frames) {
        if self.open != Open::None {
            out.json(
                Some("content_block_stop"),
                &json!({"type": "content_block_stop", "index": self.next_index - 1}),
            );
            self.open = Open::None;
        }
    }

    fn delta(&self, delta: Value, out: &mut Frames) {
        out.json(
            Some("content_block_delta"),
            &json!({"type": "content_block_delta", "index": self.next_index - 1, "delta": delta}),
        );
    }
}

impl Writer for AnthropicEvents {
    fn opening(&mut self, _sources: Option<&[RetrievedChunk]>, out: &mut Frames) {
        out.json(
            Some("message_start"),
            &json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
        );
        out.json(Some("ping"), &json!({"type": "ping"}));
    }

    fn token(&mut self, text: &str, out: &mut Frames) {
        if self.open != Open::Text {
            self.start(json!({"type": "text", "text": ""}), Open::Text, out);
        }
        // Every token: written from typed fields rather than through a JSON tree.
        let delta = TextDelta {
            kind: "content_block_delta",
            index: self.next_index - 1,
            delta: Text {
                kind: "text_delta",
                text,
            },
        };
        out.json(Some(delta.kind), &delta);
    }

    /// Tool-call deltas become `tool_use` blocks and their arguments `input_json_delta`s; other
    /// fields have no place in Anthropic's events.
    fn passthrough(&mut self, extra: Box<Passthrough>, out: &mut Frames) {
        for call in tool_calls(&extra) {
            if self.open != Open::Tool(call.index) {
                let block = json!({"type": "tool_use", "id": call.id, "name": call.name, "input": {}});
                self.start(block, Open::Tool(call.index), out);
            }
            if !call.arguments.is_empty() {
                self.delta(
                    json!({"type": "input_json_delta", "partial_json": call.arguments}),
                    out,
                );
            }
        }
    }

    fn done(&mut self, completion: &Completion, _elapsed: Duration, out: &mut Frames) {
        self.close(out);
        let usage = completion.usage;
        out.json(
            Some("message_delta"),
            &json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason(completion.finish_reason), "stop_sequence": null},
                "usage": {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}}),
        );
        out.json(Some("message_stop"), &json!({"type": "message_stop"}));
    }

    fn failed(&mut self, error: &ApiError, out: &mut Frames) {
        out.event("error", &error_body(error));
    }

    fn identity(&self) -> (String, u64) {
        (self.id.clone(), self.created)
    }
}

/// A `content_block_delta` with text.
#[derive(Serialize)]
struct TextDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u64,
    delta: Text<'a>,
}

#[derive(Serialize)]
struct Text<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}
