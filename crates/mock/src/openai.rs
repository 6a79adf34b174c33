//! The OpenAI-compatible endpoints of the mock: `POST /v1/chat/completions`,
//! `POST /v1/completions` and `GET /v1/models`, as JSON bodies or SSE streams; and vLLM's
//! `GET /metrics` queue length.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::reply::{self, FINGERPRINT, Plan, SlotLease, Usage};
use super::state::{Shared, unix_now};
use super::stream::{self, DONE, Frames, data};
use super::tools;

/// The fields of both request kinds the mock acts on; serde skips the rest.
#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    /// Chat only.
    #[serde(borrow)]
    messages: Option<Vec<Message<'a>>>,
    /// Completions only.
    prompt: Option<Prompt>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    /// Offered tools, read only when the mock may call one (see `tools`): a body full of odd
    /// `tools` is another test's load, not a mistake.
    #[serde(borrow)]
    tools: Option<&'a serde_json::value::RawValue>,
    /// llama-server honours its native fields on the OpenAI routes too (its `kind = "llamacpp"`
    /// backend sends chat there): `id_slot` picks the slot. `cache_prompt` is only recorded with
    /// the body, as on `/completion`: the mock keeps no KV cache.
    id_slot: Option<i64>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<Content<'a>>,
}

impl Message<'_> {
    fn tokens(&self) -> u64 {
        match &self.content {
            Some(Content::Text(text)) => reply::words(text),
            Some(Content::Parts(parts)) => {
                let texts = parts.iter().filter_map(|p| p.text.as_deref());
                texts.map(reply::words).sum()
            }
            None => 0,
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Parts(Vec<Part<'a>>),
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
}

/// A prompt as OpenAI and llama.cpp accept it: text, token ids, or lists of either.
#[derive(Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub(crate) enum Prompt {
    Text(String),
    // The id is only validated: any number counts as one token.
    Token(#[allow(dead_code)] i64),
    Many(Vec<Prompt>),
}

impl Prompt {
    /// Whitespace-separated words, counting a token id as one.
    pub fn tokens(&self) -> u64 {
        match self {
            Prompt::Text(text) => reply::words(text),
            Prompt::Token(_) => 1,
            Prompt::Many(parts) => parts.iter().map(Prompt::tokens).sum(),
        }
    }
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

impl Request<'_> {
    fn limit(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    fn include_usage(&self) -> bool {
        let options = self.stream_options.as_ref();
        options.and_then(|o| o.include_usage).unwrap_or(false)
    }
}

/// The fields every OpenAI answer and chunk starts with.
#[derive(Serialize)]
struct Head<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
}

#[derive(Serialize)]
struct Answer<'a, C> {
    #[serde(flatten)]
    head: Head<'a>,
    choices: [C; 1],
    usage: Usage,
}

#[derive(Serialize)]
struct Chunk<'a, C> {
    #[serde(flatten)]
    head: Head<'a>,
    choices: &'a [C],
    /// Absent without `include_usage`; `null` on every chunk but the last one with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<Usage>>,
}

#[derive(Serialize)]
struct ChatChoice<'a> {
    index: u32,
    message: ChatMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: &'a str,
    refusal: Option<()>,
}

#[derive(Serialize)]
struct DeltaChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

#[derive(Serialize)]
struct TextChoice<'a> {
    text: &'a str,
    index: u32,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

/// What an answer needs beyond its plan: which API, and the echoed fields.
struct Openai {
    chat: bool,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
}

impl Openai {
    fn head(&self, chunk: bool) -> Head<'_> {
        let object = match (self.chat, chunk) {
            (true, false) => "chat.completion",
            (true, true) => "chat.completion.chunk",
            (false, _) => "text_completion",
        };
        Head {
            id: &self.id,
            object,
            created: self.created,
            model: &self.model,
            system_fingerprint: FINGERPRINT,
        }
    }

    fn chunk<C: Serialize>(&self, choices: &[C], out: &mut Vec<u8>) {
        let usage = self.include_usage.then_some(None);
        let head = self.head(true);
        data(&Chunk { head, choices, usage }, out);
    }

    /// A chunk carrying `content` (chat) or `text` (completions).
    fn piece(&self, text: &str, role: Option<&'static str>, finish: Option<&'static str>, out: &mut Vec<u8>) {
        if self.chat {
            // The closing chunk carries only the finish reason.
            let delta = Delta {
                role,
                content: finish.is_none().then_some(text),
            };
            self.chunk(
                &[DeltaChoice {
                    index: 0,
                    delta,
                    logprobs: None,
                    finish_reason: finish,
                }],
                out,
            );
        } else {
            self.chunk(
                &[TextChoice {
                    text,
                    index: 0,
                    logprobs: None,
                    finish_reason: finish,
                }],
                out,
            );
        }
    }

    fn whole(&self, plan: &Plan) -> Response {
        let text = reply::completion_text(plan.tokens);
        let (head, usage, finish_reason) = (self.head(false), plan.usage(), plan.finish_reason());
        if self.chat {
            let message = ChatMessage {
                role: "assistant",
                content: &text,
                refusal: None,
            };
            let choices = [ChatChoice {
                index: 0,
                message,
                logprobs: None,
                finish_reason,
            }];
            reply::json(StatusCode::OK, &Answer { head, choices, usage })
        } else {
            let choice = TextChoice {
                text: &text,
                index: 0,
                logprobs: None,
                finish_reason: Some(finish_reason),
            };
            reply::json(
                StatusCode::OK,
                &Answer {
                    head,
                    choices: [choice],
                    usage,
                },
            )
        }
    }
}

impl Frames for Openai {
    fn opening(&self, _plan: &Plan, out: &mut Vec<u8>) {
        // OpenAI's chat streams open with the role and empty content.
        if self.chat {
            self.piece("", Some("assistant"), None, out);
        }
    }

    fn token(&self, _plan: &Plan, index: u64, out: &mut Vec<u8>) {
        let mut text = String::with_capacity(12);
        reply::token_text(index, &mut text);
        self.piece(&text, None, None, out);
    }

    fn closing(&self, plan: &Plan, out: &mut Vec<u8>) {
        self.piece("", None, Some(plan.finish_reason()), out);
        if self.include_usage {
            let head = self.head(true);
            let choices: &[TextChoice<'_>] = &[];
            data(
                &Chunk {
                    head,
                    choices,
                    usage: Some(Some(plan.usage())),
                },
                out,
            );
        }
        out.extend_from_slice(DONE);
    }
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    shared.counters.chat_completions.fetch_add(1, Ordering::Relaxed);
    handle(shared, &headers, body, true).await
}

/// `POST /v1/completions`.
pub(crate) async fn completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.counters.completions.fetch_add(1, Ordering::Relaxed);
    handle(shared, &headers, body, false).await
}

async fn handle(shared: Arc<Shared>, headers: &HeaderMap, body: Bytes, chat: bool) -> Response {
    let behaviour = shared.behaviour();
    let path = if chat {
        "/v1/chat/completions"
    } else {
        "/v1/completions"
    };
    let admission = shared.admit(path, headers, &body, &behaviour);
    if admission.fail {
        return reply::injected(&behaviour);
    }
    let request: Request<'_> = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return reply::bad_request(&shared, &format!("Invalid body: {e}"), None),
    };
    let Some(model) = &request.model else {
        return reply::bad_request(&shared, "`model` is required.", Some("model"));
    };
    let prompt_tokens = if chat {
        let Some(messages) = &request.messages else {
            return reply::bad_request(&shared, "`messages` is required.", Some("messages"));
        };
        messages.iter().map(Message::tokens).sum()
    } else {
        let Some(prompt) = &request.prompt else {
            return reply::bad_request(&shared, "`prompt` is required.", Some("prompt"));
        };
        prompt.tokens()
    };
    let lease = match SlotLease::take(&shared, request.id_slot, admission.n) {
        Ok(lease) => lease,
        Err(message) => return reply::bad_request(&shared, &message, Some("id_slot")),
    };
    let api = Openai {
        chat,
        id: format!("{}-mock-{}", if chat { "chatcmpl" } else { "cmpl" }, admission.n),
        model: model.clone().into_owned(),
        created: unix_now(),
        include_usage: request.include_usage(),
    };
    let plan = Plan::new(&behaviour, prompt_tokens, request.limit());
    reply::delay(&shared, &behaviour).await;
    let last_role = request.messages.as_ref().and_then(|m| m.last()?.role.as_deref());
    if let Some(name) = tools::to_call(request.tools, last_role).filter(|_| chat) {
        let stream = request.stream.unwrap_or(false);
        return tools::answer(&api.id, &api.model, api.created, &name, stream, api.include_usage);
    }
    if request.stream.unwrap_or(false) {
        stream::respond(&shared, plan, api, Some(lease))
    } else {
        api.whole(&plan)
    }
}

/// `GET /v1/models`.
pub(crate) async fn models(State(shared): State<Arc<Shared>>) -> Response {
    shared.counters.models.fetch_add(1, Ordering::Relaxed);
    reply::json_bytes(StatusCode::OK, shared.models_body.clone())
}

/// vLLM's Prometheus text with the queue length the behaviour sets, per served model.
pub(crate) async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    shared.counters.metrics.fetch_add(1, Ordering::Relaxed);
    shared.notify();
    let waiting = shared.behaviour().queue_waiting;
    let mut text = String::from(
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n\
         # TYPE vllm:num_requests_waiting gauge\n",
    );
    for model in &shared.models {
        text.push_str(&format!(
            "vllm:num_requests_waiting{{engine=\"0\",model_name=\"{model}\"}} {waiting}.0\n"
        ));
    }
    Response::builder()
        .header("content-type", "text/plain; version=0.0.4")
        .body(text.into())
        .unwrap_or_default()
}
