//! What comes back: token events, the one final event, and the joined output of fire-and-forget
//! requests.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{PipelineError, Stage};
use crate::request::{Extra, Meta, RequestId, SessionId};
use crate::stages::rag::RetrievedChunk;

/// One event of a submitted request: any number of tokens, then exactly one `Done` or `Error`.
///
/// The final events are boxed so the event stays small (24 bytes): every request's pipes queue
/// tokens by value, and each open stream holds a few of those slots.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseEvent {
    /// Text produced by the model, after post-processing.
    Token(String),
    /// What the model answered besides text (tool calls, logprobs, ...), passed on unread.
    Passthrough(Box<Passthrough>),
    /// The context the RAG stage retrieved, sent once before the first output when there was any.
    Sources(Arc<[RetrievedChunk]>),
    /// The request completed.
    Done(Box<Completion>),
    /// The request failed; after a token this means the stream was cut, never a quiet truncation.
    Error(Box<PipelineError>),
}

impl ResponseEvent {
    /// Whether this is the request's final event.
    pub fn is_final(&self) -> bool {
        matches!(self, ResponseEvent::Done(_) | ResponseEvent::Error(_))
    }
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model finished, or a stop sequence was reached.
    #[default]
    Stop,
    /// The token limit was reached.
    Length,
    /// The model called tools (`message.tool_calls`).
    ToolCalls,
    /// The upstream withheld content by its policy.
    ContentFilter,
}

/// The parts of an OpenAI-style answer the pipeline does not act on but hands to the caller
/// intact: tool calls, logprobs, refusals, `system_fingerprint`, ...
///
/// A streamed answer brings them as deltas; [`Passthrough::merge`] folds deltas into the whole,
/// the way OpenAI clients accumulate a stream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Passthrough {
    /// Fields of the message (or streamed delta) besides its text: `tool_calls`, `refusal`, ...
    #[serde(default, skip_serializing_if = "Extra::is_empty")]
    pub message: Extra,
    /// Fields of the choice besides its message: `logprobs`.
    #[serde(default, skip_serializing_if = "Extra::is_empty")]
    pub choice: Extra,
    /// Top-level fields of the answer: `system_fingerprint`.
    #[serde(default, skip_serializing_if = "Extra::is_empty")]
    pub response: Extra,
    /// An embedding request's vectors, one per input in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<Arc<[Vec<f32>]>>,
}

impl Passthrough {
    /// An embedding request's answer.
    pub fn embeddings(vectors: impl Into<Arc<[Vec<f32>]>>) -> Self {
        Self {
            embeddings: Some(vectors.into()),
            ..Self::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.message.is_empty()
            && self.choice.is_empty()
            && self.response.is_empty()
            && self.embeddings.is_none()
    }

    /// Folds a later delta into this one: strings are appended (a tool call's `arguments`
    /// arrive in pieces) except the ones that name things (`id`, `name`, `type`, `index`), lists of objects with an `index` are merged by index (each tool call
    /// is its own entry), other lists are appended (logprobs), objects are merged field by field,
    /// and other values are replaced. Top-level fields are not deltas (every chunk repeats its
    /// `system_fingerprint`): the latest wins.
    pub fn merge(&mut self, later: Passthrough) {
        merge_fields(&mut self.message, later.message);
        merge_fields(&mut self.choice, later.choice);
        self.response.extend(later.response);
        if later.embeddings.is_some() {
            self.embeddings = later.embeddings;
        }
    }
}

fn merge_fields(into: &mut Extra, later: Extra) {
    for (key, value) in later {
        match into.get_mut(&key) {
            // `index` places an entry in a list, `type` names its kind, and a tool call's `id` and
            // `name` name it: they come whole (OpenAI sends them once; some servers, such as
            // llama-cpp-python, repeat them in every delta), never in pieces.
            Some(existing)
                if matches!(key.as_str(), "index" | "type" | "id" | "name") || existing.is_null() =>
            {
                *existing = value;
            }
            Some(existing) => merge_value(existing, value),
            None => {
                into.insert(key, value);
            }
        }
    }
}

fn merge_value(into: &mut serde_json::Value, later: serde_json::Value) {
    use serde_json::Value;
    match (into, later) {
        (Value::String(a), Value::String(b)) => a.push_str(&b),
        (Value::Object(a), Value::Object(b)) => merge_fields(a, b),
        (Value::Array(a), Value::Array(b)) => {
            for item in b {
                let index = item.get("index").filter(|i| !i.is_null()).cloned();
                let same = index.and_then(|i| a.iter_mut().find(|e| e.get("index") == Some(&i)));
                match same {
                    Some(entry) => merge_value(entry, item),
                    None => a.push(item),
                }
            }
        }
        (into, later) => *into = later,
    }
}

/// Token counts, as the upstream reported them or, failing that, as counted by the pipeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    /// Counted by the pipeline because the backend reported none (its prompt count is the
    /// assembler's when it counted, else words); not part of any wire format.
    #[serde(skip)]
    pub estimated: bool,
}

impl Usage {
    pub fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            estimated: false,
        }
    }
}

/// Time a request spent waiting in one stage's queue and being worked on by it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageTiming {
    pub queued: Duration,
    pub active: Duration,
}

/// Where a request's time went, stage by stage, plus admission-to-final-event.
///
/// The streaming stages (Inference, Post, Stream) overlap: each is active for the whole stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageTimings {
    pub stages: [StageTiming; 5],
    /// Admission until the Stream stage produced the final event.
    pub total: Duration,
    /// Admission until the first token reached the Stream stage.
    pub first_token: Option<Duration>,
}

impl StageTimings {
    pub fn stage(&self, stage: Stage) -> &StageTiming {
        &self.stages[stage.index()]
    }

    pub(crate) fn stage_mut(&mut self, stage: Stage) -> &mut StageTiming {
        &mut self.stages[stage.index()]
    }

    /// Time spent in the pipeline that was not the model worker's own: total minus the
    /// Inference stage's active time.
    pub fn overhead(&self) -> Duration {
        self.total.saturating_sub(self.stage(Stage::Inference).active)
    }
}

/// The final event of a request that completed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub timings: StageTimings,
}

/// A complete answer: the joined text, what came with it, and how it ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub text: String,
    /// The context retrieved for the request; `None` without any (and then nothing is allocated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Arc<[RetrievedChunk]>>,
    /// Tool calls, logprobs and the like, merged over the stream; `None` when there were none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passthrough: Option<Box<Passthrough>>,
    pub completion: Completion,
}

/// The outcome of a fire-and-forget request, delivered on the pipeline's output stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptOutput {
    pub id: RequestId,
    pub session: SessionId,
    pub meta: Meta,
    pub result: Result<Response, PipelineError>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_event_is_as_small_as_a_token() {
        // Each open stream queues events in three pipes; a large variant would widen every slot.
        assert_eq!(size_of::<ResponseEvent>(), size_of::<String>());
    }

    fn delta(message: serde_json::Value, choice: serde_json::Value) -> Passthrough {
        let fields = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
        Passthrough {
            message: fields(message),
            choice: fields(choice),
            response: fields(json!({"system_fingerprint": "fp_1"})),
            embeddings: None,
        }
    }

    #[test]
    fn streamed_tool_calls_and_logprobs_merge_into_the_whole_answer() {
        let mut whole = Passthrough::default();
        let deltas = [
            delta(
                json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                       "function": {"name": "get_weather", "arguments": ""}}]}),
                json!({"logprobs": {"content": [{"token": "a", "logprob": -0.1}]}}),
            ),
            delta(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": "}}]}),
                json!({"logprobs": {"content": [{"token": "b", "logprob": -0.2}]}}),
            ),
            delta(
                json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                       "function": {"name": "get_time", "arguments": "{}"}}]}),
                json!({}),
            ),
            // A server that repeats a call's id and name in every delta (llama-cpp-python).
            delta(
                json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                       "function": {"name": "get_time", "arguments": ""}}]}),
                json!({}),
            ),
            // The same piece twice in a row is two pieces, not one.
            delta(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Oslo\"}"}}]}),
                json!({}),
            ),
        ];
        for d in deltas {
            whole.merge(d);
        }
        assert_eq!(
            serde_json::to_value(&whole).unwrap(),
            json!({
                "message": {"tool_calls": [
                    {"index": 0, "id": "call_a", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}},
                    {"index": 1, "id": "call_b", "type": "function",
                     "function": {"name": "get_time", "arguments": "{}"}},
                ]},
                "choice": {"logprobs": {"content": [
                    {"token": "a", "logprob": -0.1}, {"token": "b", "logprob": -0.2},
                ]}},
                "response": {"system_fingerprint": "fp_1"},
            })
        );
    }
}
