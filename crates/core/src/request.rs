//! What a caller submits: the simple `PromptRequest` and the full `InferenceRequest` it becomes.
//!
//! Every stage carries the caller's structure unchanged (model, messages or prompt, sampling
//! parameters, session, priority, timeout, metadata); stages add their own results beside it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::trace::RequestTrace;

/// Free-form key/value metadata that travels with a request and comes back with its output.
pub type Meta = BTreeMap<String, String>;

/// Fields of an upstream's answer the pipeline does not act on (`tool_calls`, `logprobs`,
/// `system_fingerprint`, ...), passed to the client; a stream's deltas are merged as values.
pub type Extra = serde_json::Map<String, serde_json::Value>;

/// Fields of a client's request the pipeline does not act on but a backend may understand
/// (`tools`, `response_format`, `tool_call_id`, ...), kept as the JSON text the client sent and
/// passed on unchanged. Text, not a parsed tree: a tree of a large array costs many times the
/// bytes of its text for as long as the request waits.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawExtra(BTreeMap<String, Box<RawValue>>);

impl RawExtra {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The field `name` parsed, for the few the pipeline looks into (`tools`, `response_format`).
    pub fn parsed(&self, name: &str) -> Option<serde_json::Value> {
        serde_json::from_str(self.0.get(name)?.get()).ok()
    }
}

impl std::ops::Deref for RawExtra {
    type Target = BTreeMap<String, Box<RawValue>>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for RawExtra {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// The same fields with the same text.
impl PartialEq for RawExtra {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|((k, v), (ok, ov))| k == ok && v.get() == ov.get())
    }
}

impl<'a> IntoIterator for &'a RawExtra {
    type Item = (&'a String, &'a Box<RawValue>);
    type IntoIter = std::collections::btree_map::Iter<'a, String, Box<RawValue>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// `value` as raw JSON text, for building a [`RawExtra`] in code.
pub fn raw(value: &serde_json::Value) -> Box<RawValue> {
    // A `Value` always serializes.
    serde_json::value::to_raw_value(value).expect("a JSON value serializes")
}

/// The affinity key: one session's requests land on one shard and keep their order.
///
/// Cheap to clone (a shared string), so it can be copied into every stage and event.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId {
    key: Arc<str>,
    /// A key of one request alone ([`per_request`](Self::per_request)).
    #[serde(skip)]
    alone: bool,
}

impl SessionId {
    /// Wraps any string as a session key.
    pub fn new(id: impl AsRef<str>) -> Self {
        Self {
            key: Arc::from(id.as_ref()),
            alone: false,
        }
    }

    /// The key of a request with no session: no order to keep with other requests, so in a
    /// per-core layout it runs on the shard of the core that submits it (no thread to cross);
    /// elsewhere it lands on the shard its key hashes to, as any key does.
    pub fn per_request(id: impl AsRef<str>) -> Self {
        Self {
            alone: true,
            ..Self::new(id)
        }
    }

    /// Whether this is the key of a request alone ([`per_request`](Self::per_request)).
    pub fn is_per_request(&self) -> bool {
        self.alone
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.key
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.key, f)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

/// The pipeline's own number for an admitted request, unique within one pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "req-{}", self.0)
    }
}

/// The simple request form: one user input for one session.
///
/// It becomes an [`InferenceRequest`] whose only message is `input` from the user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptRequest {
    /// Affinity and ordering key.
    pub session: SessionId,
    /// The user's text.
    pub input: String,
    /// Caller metadata, returned with the output.
    pub meta: Meta,
}

/// Who wrote a chat message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    /// The OpenAI wire name of the role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One message of a chat conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    /// The message's other fields (`tool_calls`, `tool_call_id`, `name`), for the backend.
    #[serde(default, skip_serializing_if = "RawExtra::is_empty")]
    pub extra: RawExtra,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            extra: RawExtra::new(),
        }
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
}

/// What the model is asked: a chat conversation, a raw prompt for completion-style backends, or
/// inputs to embed (answered with one vector each, in [`Passthrough::embeddings`]).
///
/// [`Passthrough::embeddings`]: crate::Passthrough::embeddings
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptInput {
    Chat(Vec<ChatMessage>),
    Text(String),
    Embed(Vec<EmbedInput>),
}

/// One input to embed: a text, or the model's token ids.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbedInput {
    Text(String),
    Tokens(Vec<u32>),
}

impl PromptInput {
    /// What the caller asks now: the last user message of a chat, or the whole prompt text.
    pub fn last_user_text(&self) -> Option<&str> {
        match self {
            PromptInput::Chat(messages) => messages
                .iter()
                .rev()
                .find(|m| m.role == Role::User)
                .map(|m| m.content.as_str()),
            PromptInput::Text(text) => Some(text),
            PromptInput::Embed(_) => None,
        }
    }
}

/// Sampling parameters, passed to the model worker; `stop` and `max_tokens` are also enforced by
/// the Post stage so every backend honours them the same way.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Upper bound on generated tokens; the Post stage ends the output with
    /// `finish_reason = length` when it is reached.
    pub max_tokens: Option<u32>,
    /// Stop sequences: the output ends before the first occurrence of any of them.
    pub stop: Vec<String>,
    pub seed: Option<i64>,
}

/// Scheduling priority of a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

impl Priority {
    /// The lower-case name (`high`, `normal`, `low`): the `X-Priority` value and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Priority {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            other => Err(format!(
                "`{other}` is not a priority; use `high`, `normal` or `low`"
            )),
        }
    }
}

/// The full request form a server submits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferenceRequest {
    /// Model name; empty means the worker's default model.
    pub model: String,
    pub input: PromptInput,
    pub params: SamplingParams,
    /// Affinity and ordering key.
    pub session: SessionId,
    pub priority: Priority,
    /// Whether the caller wants tokens as they are produced; otherwise the Post stage joins them
    /// into one piece of text.
    pub stream: bool,
    /// Time allowed from admission to the final event; past it the request ends with
    /// [`PipelineError::Timeout`](crate::PipelineError::Timeout) instead of being processed late.
    pub timeout: Option<Duration>,
    pub meta: Meta,
    /// Request fields for the backend that the pipeline does not act on.
    #[serde(default, skip_serializing_if = "RawExtra::is_empty")]
    pub extra: RawExtra,
    /// Set when the edge traces this request: routers record each backend call in it. It stays
    /// in this process (a remote worker continues the trace from `meta["traceparent"]`).
    #[serde(skip)]
    pub trace: Option<Arc<RequestTrace>>,
}

impl InferenceRequest {
    /// A streaming chat request with default parameters.
    pub fn chat(session: SessionId, messages: Vec<ChatMessage>) -> Self {
        Self {
            model: String::new(),
            input: PromptInput::Chat(messages),
            params: SamplingParams::default(),
            session,
            priority: Priority::Normal,
            stream: true,
            timeout: None,
            meta: Meta::new(),
            extra: RawExtra::new(),
            trace: None,
        }
    }

    /// A streaming completion request (raw prompt text) with default parameters.
    pub fn text(session: SessionId, prompt: impl Into<String>) -> Self {
        Self {
            input: PromptInput::Text(prompt.into()),
            ..Self::chat(session, Vec::new())
        }
    }

    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    pub fn with_stream(mut self, stream: bool) -> Self {
        self.stream = stream;
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub fn with_params(mut self, params: SamplingParams) -> Self {
        self.params = params;
        self
    }

    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }
}

impl From<PromptRequest> for InferenceRequest {
    /// The simple form asks for one joined answer (not a token stream) to its `input`.
    fn from(req: PromptRequest) -> Self {
        Self {
            meta: req.meta,
            ..Self::chat(req.session, vec![ChatMessage::user(req.input)]).with_stream(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_request_becomes_one_user_message() {
        let mut meta = Meta::new();
        meta.insert("k".into(), "v".into());
        let req: InferenceRequest = PromptRequest {
            session: SessionId::new("s"),
            input: "hi".into(),
            meta: meta.clone(),
        }
        .into();
        assert_eq!(req.input, PromptInput::Chat(vec![ChatMessage::user("hi")]));
        assert_eq!(req.meta, meta);
        assert!(!req.stream);
    }

    #[test]
    fn requests_round_trip_through_json() {
        let req = InferenceRequest::chat(SessionId::new("s"), vec![ChatMessage::system("be brief")])
            .with_model("m")
            .with_timeout(Duration::from_millis(1500));
        let json = serde_json::to_string(&req).unwrap();
        let back: InferenceRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, req);
    }
}
