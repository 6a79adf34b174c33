//! The response object of the Responses API: its output items (a `message` with the text, a
//! `function_call` per tool call), status, usage and the request fields it repeats, written from
//! typed fields (as every answer is); and keeping it in the stored responses when the client
//! asked for that.

use std::time::SystemTime;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use tokio_prompt_orchestrator::{ChatMessage, Completion, FinishReason, Passthrough, Role};

use crate::api::error::ApiError;
use crate::api::request::raw;
use crate::api::sse::tool_calls;
use crate::dlq::entry::unix_ms;
use crate::gateway::Delivery;
use crate::stored::{Echo, STORE_FAILURES, StoredResponse, StoredResponses, Turn};

/// What a response object says about its request.
pub struct Head {
    pub id: String,
    /// The id of the answer's message item.
    pub message_id: String,
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
            echo: Echo::default(),
            session: String::new(),
        });
        Self {
            message_id: format!("msg_{}", id.trim_start_matches("resp_")),
            stored: turn.store && store.is_some(),
            id,
            created,
            model: delivery.model,
            turn,
            owner,
        }
    }

    /// The response object with `status`, `output`'s items, and the usage once known.
    pub fn object<'a>(
        &'a self,
        status: Status<'a>,
        output: &'a Output,
        completion: Option<&Completion>,
    ) -> Object<'a> {
        let (incomplete_details, error) = match status {
            Status::Incomplete(reason) => (Some(Incomplete { reason }), None),
            Status::Failed(error) => (
                None,
                Some(Failure {
                    code: error.code,
                    message: &error.message,
                }),
            ),
            Status::InProgress | Status::Completed => (None, None),
        };
        Object {
            id: &self.id,
            object: "response",
            created_at: self.created,
            status: status.name(),
            error,
            incomplete_details,
            model: &self.model,
            // Items are listed once the answer is complete (or failed).
            output: match status {
                Status::InProgress => Vec::new(),
                _ => output.items(&self.message_id),
            },
            previous_response_id: self.turn.previous.as_deref(),
            store: self.stored,
            text: TextConfig {
                format: Format { kind: "text" },
            },
            truncation: "disabled",
            usage: completion.map(ObjectUsage::of),
            echo: &self.turn.echo,
        }
    }

    /// Keeps the answer, written as `object`, when the client asked for that; whether it was
    /// kept. A store that fails does not fail the answer: it is logged and counted.
    pub async fn keep(&self, store: Option<&StoredResponses>, object: &str, answer: ChatMessage) -> bool {
        let Some(store) = store.filter(|_| self.stored) else {
            return false;
        };
        let Ok(object) = RawValue::from_string(object.to_owned()) else {
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

    /// The whole answer's response object as JSON, kept when the client asked for that (and
    /// saying `"store": false` when that failed).
    pub async fn finish(
        &self,
        store: Option<&StoredResponses>,
        output: &Output,
        completion: &Completion,
    ) -> String {
        let mut object = self.object(Status::of(completion.finish_reason), output, Some(completion));
        let text = object.to_json();
        if !self.stored || self.keep(store, &text, output.message()).await {
            return text;
        }
        object.store = false;
        object.to_json()
    }
}

/// A response's status.
#[derive(Clone, Copy)]
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

/// The response object.
#[derive(Serialize)]
pub struct Object<'a> {
    id: &'a str,
    object: &'static str,
    created_at: u64,
    status: &'static str,
    error: Option<Failure<'a>>,
    incomplete_details: Option<Incomplete>,
    model: &'a str,
    output: Vec<Item<'a>>,
    previous_response_id: Option<&'a str>,
    pub store: bool,
    text: TextConfig,
    truncation: &'static str,
    usage: Option<ObjectUsage>,
    #[serde(flatten)]
    echo: &'a Echo,
}

impl Object<'_> {
    pub fn to_json(&self) -> String {
        // Strings, numbers and JSON values always serialize.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[derive(Serialize)]
struct Failure<'a> {
    code: &'static str,
    message: &'a str,
}

#[derive(Serialize)]
struct Incomplete {
    reason: &'static str,
}

#[derive(Serialize)]
struct TextConfig {
    format: Format,
}

#[derive(Serialize)]
struct Format {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct ObjectUsage {
    input_tokens: u32,
    input_tokens_details: CachedTokens,
    output_tokens: u32,
    output_tokens_details: ReasoningTokens,
    total_tokens: u32,
}

#[derive(Serialize)]
struct CachedTokens {
    cached_tokens: u32,
}

#[derive(Serialize)]
struct ReasoningTokens {
    reasoning_tokens: u32,
}

impl ObjectUsage {
    fn of(completion: &Completion) -> Self {
        let usage = completion.usage;
        Self {
            input_tokens: usage.prompt_tokens,
            input_tokens_details: CachedTokens { cached_tokens: 0 },
            output_tokens: usage.completion_tokens,
            output_tokens_details: ReasoningTokens { reasoning_tokens: 0 },
            total_tokens: usage.prompt_tokens + usage.completion_tokens,
        }
    }
}

/// An output item.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Item<'a> {
    Message {
        id: &'a str,
        status: &'static str,
        role: &'static str,
        content: Vec<OutputText<'a>>,
    },
    FunctionCall {
        id: String,
        call_id: &'a str,
        name: &'a str,
        arguments: &'a str,
        status: &'static str,
    },
}

#[derive(Serialize)]
pub struct OutputText<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
    annotations: [u8; 0],
}

impl<'a> OutputText<'a> {
    pub fn new(text: &'a str) -> Self {
        Self {
            kind: "output_text",
            text,
            annotations: [],
        }
    }
}

/// The `message` item with `text` (no content yet while `in_progress`).
pub fn message_item<'a>(id: &'a str, text: &'a str, status: &'static str) -> Item<'a> {
    let content = if status == "in_progress" {
        Vec::new()
    } else {
        vec![OutputText::new(text)]
    };
    Item::Message {
        id,
        status,
        role: "assistant",
        content,
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
    pub fn item(&self, status: &'static str) -> Item<'_> {
        Item::FunctionCall {
            id: self.item_id(),
            call_id: &self.call_id,
            name: &self.name,
            arguments: &self.arguments,
            status,
        }
    }
}

impl Output {
    /// A whole answer's output, its tool calls from OpenAI's `tool_calls`.
    pub fn of(text: &str, extra: Option<&Passthrough>) -> Self {
        let mut output = Output {
            text: text.to_owned(),
            calls: Vec::new(),
        };
        if let Some(extra) = extra {
            output.calls = tool_calls(extra)
                .map(|call| Call {
                    call_id: call.id.to_owned(),
                    name: call.name.to_owned(),
                    arguments: call.arguments.to_owned(),
                })
                .collect();
        }
        output
    }

    /// The output items: the message (when there is text, or nothing else) and the calls.
    pub fn items<'a>(&'a self, message_id: &'a str) -> Vec<Item<'a>> {
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
