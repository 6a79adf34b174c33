//! The response object of the Responses API: its output items (a `message` with the text, a
//! `function_call` per tool call), status, usage and the request fields it repeats; and keeping
//! it in the stored responses when the client asked for that.

use std::time::SystemTime;

use serde_json::{Map, Value, json};
use tokio_prompt_orchestrator::{ChatMessage, Completion, FinishReason, Passthrough, Role};

use crate::api::error::ApiError;
use crate::api::request::raw;
use crate::dlq::entry::unix_ms;
use crate::gateway::Delivery;
use crate::stored::{STORE_FAILURES, StoredResponse, StoredResponses, Turn};

/// What a response object says about its request.
pub struct Head {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub turn: Turn,
    /// Whether the answer is stored: asked for, and a store to keep it in.
    pub stored: bool,
    /// The API key's name, the stored answer's owner.
    pub owner: Option<String>,
}

impl Head {
    pub fn new(
        id: String,
        created: u64,
        delivery: Delivery,
        store: Option<&StoredResponses>,
        owner: Option<String>,
    ) -> Self {
        let turn = delivery.turn.map(|t| *t).unwrap_or_else(|| Turn {
            input: Vec::new(),
            previous: None,
            store: false,
            echo: Map::new(),
            session: String::new(),
        });
        Self {
            stored: turn.store && store.is_some(),
            id,
            created,
            model: delivery.model,
            turn,
            owner,
        }
    }

    /// The id of the answer's message item.
    pub fn message_id(&self) -> String {
        format!("msg_{}", self.id.trim_start_matches("resp_"))
    }

    /// The response object with `status`, its `output` items, and the usage once known.
    pub fn object(&self, status: Status<'_>, output: Vec<Value>, completion: Option<&Completion>) -> Value {
        let mut object = Map::new();
        object.insert("id".into(), json!(self.id));
        object.insert("object".into(), json!("response"));
        object.insert("created_at".into(), json!(self.created));
        object.insert("status".into(), json!(status.name()));
        object.insert("error".into(), Value::Null);
        object.insert("incomplete_details".into(), Value::Null);
        object.insert("model".into(), json!(self.model));
        object.insert("output".into(), Value::Array(output));
        object.insert("previous_response_id".into(), json!(self.turn.previous));
        object.insert("store".into(), json!(self.stored));
        object.insert("text".into(), json!({"format": {"type": "text"}}));
        object.insert("truncation".into(), json!("disabled"));
        object.insert("usage".into(), Value::Null);
        object.extend(self.turn.echo.clone());
        match status {
            Status::Incomplete(reason) => {
                object.insert("incomplete_details".into(), json!({"reason": reason}));
            }
            Status::Failed(error) => {
                object.insert(
                    "error".into(),
                    json!({"code": error.code, "message": error.message}),
                );
            }
            Status::InProgress | Status::Completed => {}
        }
        if let Some(completion) = completion {
            let usage = completion.usage;
            object.insert(
                "usage".into(),
                json!({
                    "input_tokens": usage.prompt_tokens,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": usage.completion_tokens,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": usage.prompt_tokens + usage.completion_tokens,
                }),
            );
        }
        Value::Object(object)
    }

    /// Keeps the answer when the client asked for that; whether it was kept. A store that fails
    /// does not fail the answer: it is logged and counted.
    pub async fn keep(&self, store: Option<&StoredResponses>, object: Value, answer: ChatMessage) -> bool {
        let Some(store) = store.filter(|_| self.stored) else {
            return false;
        };
        let mut turn = self.turn.input.clone();
        turn.push(answer);
        let stored = StoredResponse {
            object,
            turn,
            previous: self.turn.previous.clone(),
            owner: self.owner.clone(),
            session: self.turn.session.clone(),
            stored_ms: unix_ms(SystemTime::now()),
        };
        match store.put(&self.id, &stored).await {
            Ok(()) => true,
            Err(error) => {
                metrics::counter!(STORE_FAILURES).increment(1);
                tracing::warn!(id = %self.id, %error, "A response could not be stored; it cannot be continued.");
                false
            }
        }
    }

    /// The whole answer's response object, kept when the client asked for that (and saying
    /// `"store": false` when that failed).
    pub async fn finish(
        &self,
        store: Option<&StoredResponses>,
        output: &Output,
        completion: &Completion,
    ) -> Value {
        let mut object = self.object(
            Status::of(completion.finish_reason),
            output.items(&self.message_id()),
            Some(completion),
        );
        if self.stored && !self.keep(store, object.clone(), output.message()).await {
            object["store"] = Value::Bool(false);
        }
        object
    }
}

/// A response's status.
pub enum Status<'a> {
    InProgress,
    Completed,
    /// Cut short: `max_output_tokens` or `content_filter`.
    Incomplete(&'static str),
    Failed(&'a ApiError),
}

impl Status<'_> {
    /// How an answer that ended with `reason` stands.
    pub fn of(reason: FinishReason) -> Self {
        match reason {
            FinishReason::Length => Status::Incomplete("max_output_tokens"),
            FinishReason::ContentFilter => Status::Incomplete("content_filter"),
            FinishReason::Stop | FinishReason::ToolCalls => Status::Completed,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Incomplete(_) => "incomplete",
            Status::Failed(_) => "failed",
        }
    }

    /// The stream event that ends a response with this status.
    pub fn event(&self) -> &'static str {
        match self {
            Status::Incomplete(_) => "response.incomplete",
            Status::Failed(_) => "response.failed",
            Status::InProgress | Status::Completed => "response.completed",
        }
    }
}

/// What the model answered: its text and its tool calls.
#[derive(Debug, Default)]
pub struct Output {
    pub text: String,
    pub calls: Vec<Call>,
}

#[derive(Debug, Default)]
pub struct Call {
    pub call_id: String,
    pub name: String,
    pub arguments: String,
}

impl Call {
    pub fn item_id(&self) -> String {
        format!("fc_{}", self.call_id)
    }

    /// The `function_call` item, `status` `in_progress` or `completed`.
    pub fn item(&self, status: &str) -> Value {
        json!({
            "type": "function_call", "id": self.item_id(), "call_id": self.call_id,
            "name": self.name, "arguments": self.arguments, "status": status,
        })
    }
}

impl Output {
    /// A whole answer's output, its tool calls from OpenAI's `tool_calls`.
    pub fn of(text: &str, extra: Option<&Passthrough>) -> Self {
        let mut output = Output {
            text: text.to_owned(),
            calls: Vec::new(),
        };
        if let Some(Value::Array(calls)) = extra.and_then(|e| e.message.get("tool_calls")) {
            for call in calls {
                output.calls.push(Call {
                    call_id: call["id"].as_str().unwrap_or_default().to_owned(),
                    name: call["function"]["name"].as_str().unwrap_or_default().to_owned(),
                    arguments: call["function"]["arguments"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                });
            }
        }
        output
    }

    /// The output items: the message (when there is text, or nothing else) and the calls.
    pub fn items(&self, message_id: &str) -> Vec<Value> {
        let mut items = Vec::with_capacity(1 + self.calls.len());
        if !self.text.is_empty() || self.calls.is_empty() {
            items.push(message_item(message_id, &self.text, "completed"));
        }
        items.extend(self.calls.iter().map(|c| c.item("completed")));
        items
    }

    /// The answer as the assistant's message of the conversation.
    pub fn message(&self) -> ChatMessage {
        let mut message = ChatMessage::new(Role::Assistant, self.text.clone());
        if !self.calls.is_empty() {
            let calls = self
                .calls
                .iter()
                .map(|c| {
                    json!({"id": c.call_id, "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments}})
                })
                .collect();
            message.extra = raw(Map::from_iter([("tool_calls".to_owned(), Value::Array(calls))]));
        }
        message
    }
}

/// A `message` item with `text` (none yet while `in_progress`).
pub fn message_item(id: &str, text: &str, status: &str) -> Value {
    let content = if status == "in_progress" {
        json!([])
    } else {
        json!([{"type": "output_text", "text": text, "annotations": []}])
    };
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
}
