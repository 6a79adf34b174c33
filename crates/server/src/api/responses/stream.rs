//! The Responses API's event stream: `response.created` and `response.in_progress`; per output
//! item `response.output_item.added`, its deltas (`response.output_text.delta` within a
//! `content_part`, or `response.function_call_arguments.delta`) and `.done` events; then
//! `response.completed` (or `response.incomplete`) with the whole response, or
//! `response.failed` when the answer fails after its first output. Every event carries its
//! `sequence_number`.

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio_prompt_orchestrator::{Completion, Passthrough, RetrievedChunk};

use super::object::{Call, Head, Output, Status, message_item};
use crate::api::error::ApiError;
use crate::api::frames::Frames;
use crate::api::sse::{Writer, tool_calls};
use crate::stored::StoredResponses;

/// The output item being written.
#[derive(Debug, PartialEq)]
enum Open {
    None,
    Message,
    /// A tool call, by its index among the upstream's tool calls.
    Call(u64),
}

pub struct ResponseEvents {
    head: std::sync::Arc<Head>,
    store: Option<StoredResponses>,
    sequence: u64,
    output: Output,
    /// Output items started so far.
    items: usize,
    open: Open,
    /// The whole response as JSON, once complete, and the event that ends the stream with it.
    last: Option<(String, &'static str)>,
}

impl ResponseEvents {
    pub fn new(head: Head, store: Option<StoredResponses>) -> Self {
        Self {
            head: std::sync::Arc::new(head),
            store,
            sequence: 0,
            output: Output::default(),
            items: 0,
            open: Open::None,
            last: None,
        }
    }

    fn event(&mut self, kind: &'static str, mut data: Value, out: &mut Frames) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        out.json(Some(kind), &data);
    }

    /// An event carrying the whole response.
    fn response_event<R: Serialize + ?Sized>(&mut self, kind: &'static str, response: &R, out: &mut Frames) {
        let envelope = WithResponse {
            kind,
            sequence_number: self.sequence,
            response,
        };
        self.sequence += 1;
        out.json(Some(kind), &envelope);
    }

    /// Starts an output item, closing the one before.
    fn start(&mut self, item: Value, open: Open, out: &mut Frames) {
        self.close(out);
        let added = json!({"output_index": self.items, "item": item});
        self.event("response.output_item.added", added, out);
        self.items += 1;
        self.open = open;
    }

    fn close(&mut self, out: &mut Frames) {
        let index = self.items.saturating_sub(1);
        match std::mem::replace(&mut self.open, Open::None) {
            Open::None => {}
            Open::Message => {
                let text = &self.output.text;
                let part = json!({"type": "output_text", "text": text, "annotations": []});
                let ids = json!({"item_id": self.head.message_id, "output_index": index, "content_index": 0});
                let mut done = ids.clone();
                done["text"] = json!(text);
                done["logprobs"] = json!([]);
                let mut part_done = ids;
                part_done["part"] = part;
                let item = json!(message_item(&self.head.message_id, text, "completed"));
                self.event("response.output_text.done", done, out);
                self.event("response.content_part.done", part_done, out);
                self.event(
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                    out,
                );
            }
            Open::Call(_) => {
                let Some(call) = self.output.calls.last() else {
                    return;
                };
                let (item_id, arguments, item) = (
                    call.item_id(),
                    call.arguments.clone(),
                    json!(call.item("completed")),
                );
                self.event(
                    "response.function_call_arguments.done",
                    json!({"item_id": item_id, "output_index": index, "arguments": arguments}),
                    out,
                );
                self.event(
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                    out,
                );
            }
        }
    }
}

impl Writer for ResponseEvents {
    fn opening(&mut self, _sources: Option<&[RetrievedChunk]>, out: &mut Frames) {
        let head = self.head.clone();
        let nothing = Output::default();
        let response = head.object(Status::InProgress, &nothing, None);
        self.response_event("response.created", &response, out);
        self.response_event("response.in_progress", &response, out);
    }

    fn token(&mut self, text: &str, out: &mut Frames) {
        if self.open != Open::Message {
            let item = json!(message_item(&self.head.message_id, "", "in_progress"));
            self.start(item, Open::Message, out);
            let part = json!({
                "item_id": self.head.message_id, "output_index": self.items - 1, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []},
            });
            self.event("response.content_part.added", part, out);
        }
        self.output.text.push_str(text);
        // Every token: written from typed fields rather than through a JSON tree.
        let delta = TextDelta {
            kind: "response.output_text.delta",
            sequence_number: self.sequence,
            item_id: &self.head.message_id,
            output_index: self.items - 1,
            content_index: 0,
            delta: text,
            logprobs: [],
        };
        self.sequence += 1;
        out.json(Some(delta.kind), &delta);
    }

    /// Tool-call deltas become `function_call` items and their arguments' deltas; other fields
    /// have no place in the Responses events.
    fn passthrough(&mut self, extra: Box<Passthrough>, out: &mut Frames) {
        for delta in tool_calls(&extra) {
            if self.open != Open::Call(delta.index) {
                self.close(out);
                self.output.calls.push(Call {
                    call_id: delta.id.to_owned(),
                    name: delta.name.to_owned(),
                    arguments: String::new(),
                });
                let item = self
                    .output
                    .calls
                    .last()
                    .map(|c| json!(c.item("in_progress")))
                    .unwrap_or_default();
                self.start(item, Open::Call(delta.index), out);
            }
            if !delta.arguments.is_empty()
                && let Some(call) = self.output.calls.last_mut()
            {
                call.arguments.push_str(delta.arguments);
                let delta = json!({"item_id": call.item_id(), "output_index": self.items - 1, "delta": delta.arguments});
                self.event("response.function_call_arguments.delta", delta, out);
            }
        }
    }

    fn finishing(&mut self, completion: &Completion) -> Option<BoxFuture<'static, ()>> {
        let status = Status::of(completion.finish_reason);
        let response = self.head.object(status, &self.output, Some(completion)).to_json();
        self.last = Some((response.clone(), status.event()));
        let (head, store, message) = (self.head.clone(), self.store.clone(), self.output.message());
        Some(Box::pin(async move {
            head.keep(store.as_ref(), &response, message).await;
        }))
    }

    fn done(&mut self, _completion: &Completion, _elapsed: Duration, out: &mut Frames) {
        self.close(out);
        if let Some((response, event)) = self.last.take()
            && let Ok(response) = RawValue::from_string(response)
        {
            self.response_event(event, &*response, out);
        }
    }

    fn failed(&mut self, error: &ApiError, out: &mut Frames) {
        let head = self.head.clone();
        let output = std::mem::take(&mut self.output);
        let response = head.object(Status::Failed(error), &output, None);
        self.response_event("response.failed", &response, out);
    }

    fn identity(&self) -> (String, u64) {
        (self.head.id.clone(), self.head.created)
    }
}

/// An event carrying the whole response.
#[derive(Serialize)]
struct WithResponse<'a, R: ?Sized> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    response: &'a R,
}

/// A `response.output_text.delta`.
#[derive(Serialize)]
struct TextDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    item_id: &'a str,
    output_index: usize,
    content_index: u32,
    delta: &'a str,
    logprobs: [u8; 0],
}
