//! What the fuzz targets share: running the project's token streams to their end without a
//! runtime, and the properties every token stream, answer and request must have.
//!
//! Each target in `fuzz_targets/` calls one of the project's public entry points with the
//! fuzzer's bytes and then checks its result here; a failed check is a crash to libFuzzer.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::stream::{self, StreamExt};
use http_body_util::Either;
use orchestrator_backends::sse::{self, Dialect};
use orchestrator_backends::timeouts::Timeouts;
use orchestrator_server::api::error::ApiError;
use orchestrator_server::config::ConfigError;
use orchestrator_server::gateway::Delivery;
use tokio_prompt_orchestrator::extra::empty;
use tokio_prompt_orchestrator::{
    Extra, InferenceRequest, Passthrough, PromptInput, TokenStream, WorkerChunk, WorkerError,
};

/// One item of a token stream.
pub type Item = Result<WorkerChunk, WorkerError>;

/// The backend name the targets give; every error a backend makes starts with it.
pub const BACKEND: &str = "up";

/// Every item of `tokens`, in order.
///
/// # Panics
/// When an item waits: the streams here read from memory, so waiting would be a bug (it would
/// hang a real stream too, with nothing to wake it).
pub fn drain(mut tokens: TokenStream) -> Vec<Item> {
    let mut items = Vec::new();
    while let Some(item) = tokens
        .next()
        .now_or_never()
        .expect("an in-memory stream never waits")
    {
        items.push(item);
    }
    items
}

/// The token stream `dialect` makes of an upstream SSE body that arrives in `pieces`.
///
/// No time limits: the fuzzer's pace is not an upstream's, and without them the relay never
/// touches a timer, so no runtime is needed.
pub fn relay<D: Dialect>(pieces: Vec<Bytes>, dialect: D) -> Vec<Item> {
    let body = reqwest::Body::wrap_stream(stream::iter(pieces.into_iter().map(Ok::<_, Infallible>)));
    let response = http::Response::new(Either::Right(body));
    let off = Timeouts {
        connect: None,
        first_token: None,
        between_tokens: None,
        total: None,
    };
    drain(sse::relay(response, dialect, Arc::from(BACKEND), off, None))
}

/// The shape every token stream has: text and pass-through fields, then exactly one end (a
/// finish or an error) as its last item. Tokens are never empty, and errors name the backend.
pub fn assert_shape(items: &[Item]) {
    let (last, before) = items.split_last().expect("a token stream says how it ended");
    match last {
        Ok(WorkerChunk::Finish { .. }) => {}
        Err(error) => assert_backend_error(error),
        Ok(_) => panic!("a token stream ended without a finish or an error: {items:?}"),
    }
    for item in before {
        match item {
            Ok(WorkerChunk::Token(text)) => assert!(!text.is_empty(), "an empty token: {items:?}"),
            Ok(WorkerChunk::Passthrough(_)) => {}
            _ => panic!("an end before the last item: {items:?}"),
        }
    }
}

/// An error made by the backend [`BACKEND`]: its message says which backend failed.
pub fn assert_backend_error(error: &WorkerError) {
    assert!(
        error.message.starts_with(&format!("{BACKEND}: ")),
        "an error that does not name its backend: {error:?}"
    );
}

/// What the OpenAI readers keep for the caller: no field they read themselves or the gateway
/// sets (those would be sent twice), and no empty value (a plain text chunk carries none).
pub fn assert_openai_fields(extra: &Passthrough) {
    check_fields(
        &extra.response,
        &["id", "object", "created", "model", "choices", "usage", "error"],
    );
    check_fields(
        &extra.choice,
        &["index", "delta", "message", "text", "finish_reason"],
    );
    check_fields(&extra.message, &["role", "content"]);
}

fn check_fields(fields: &Extra, read: &[&str]) {
    for (name, value) in fields {
        assert!(
            !read.contains(&name.as_str()),
            "`{name}` was read and passed on: {fields:?}"
        );
        assert!(!empty(value), "`{name}` is empty but was passed on: {fields:?}");
    }
}

/// The pass-through fields of every item of an OpenAI token stream, checked.
pub fn assert_openai_stream_fields(items: &[Item]) {
    for item in items {
        if let Ok(WorkerChunk::Passthrough(extra)) = item {
            assert_openai_fields(extra);
        }
    }
}

/// The names of the request fields the gateway reads; anything else is passed to the backend.
const REQUEST_FIELDS: &[&str] = &[
    "model",
    "messages",
    "prompt",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "stream",
    "stream_options",
    "user",
    "seed",
    "n",
];

/// A request the API accepted: every check it documents holds for what it built.
pub fn assert_accepted(request: &InferenceRequest, delivery: &Delivery, chat: bool) {
    assert!(!delivery.model.trim().is_empty(), "a blank model was accepted");
    assert_eq!(request.model, delivery.model);
    assert_eq!(request.stream, delivery.stream);
    assert!(
        delivery.stream || !delivery.include_usage,
        "usage asked for without a stream"
    );
    assert!(
        delivery.user.as_ref().is_none_or(|u| !u.is_empty()),
        "an empty user kept"
    );
    let params = &request.params;
    assert!(
        params.temperature.is_none_or(|t| (0.0..=2.0).contains(&t)),
        "{params:?}"
    );
    assert!(
        params.top_p.is_none_or(|p| (0.0..=1.0).contains(&p)),
        "{params:?}"
    );
    assert_ne!(params.max_tokens, Some(0));
    assert!(params.stop.len() <= 16, "{params:?}");
    assert!(params.stop.iter().all(|s| !s.is_empty()), "{params:?}");
    for name in REQUEST_FIELDS {
        assert!(
            !request.extra.contains_key(*name),
            "`{name}` was read and passed on"
        );
    }
    match &request.input {
        PromptInput::Chat(messages) => {
            assert!(chat, "a completion request became a chat");
            assert!(!messages.is_empty(), "a chat without messages was accepted");
            for message in messages {
                assert!(!message.extra.contains_key("role") && !message.extra.contains_key("content"));
            }
        }
        PromptInput::Text(_) => assert!(!chat, "a chat request became a completion"),
        PromptInput::Embed(_) => panic!("a generation request became an embedding request"),
    }
}

/// A request the API refused: a 400 that says what is wrong.
pub fn assert_refused(error: &ApiError) {
    assert_eq!(error.status.as_u16(), 400, "{error:?}");
    assert!(!error.message.is_empty(), "{error:?}");
    assert!(error.param.as_ref().is_none_or(|p| !p.is_empty()), "{error:?}");
}

/// A config that does not load: at least one problem, each placed inside the text when placed.
pub fn assert_problems(text: &str, error: &ConfigError) {
    assert!(!error.problems.is_empty(), "an error without problems");
    let lines: Vec<&str> = text.split('\n').collect();
    for problem in &error.problems {
        assert!(!problem.message.is_empty(), "{problem:?}");
        if let Some((line, column)) = problem.location {
            assert!(
                (1..=lines.len()).contains(&line),
                "{problem:?} in {} lines",
                lines.len()
            );
            assert!((1..=lines[line - 1].len() + 1).contains(&column), "{problem:?}");
        }
    }
    // The message `orchestrator validate` prints.
    assert!(!error.to_string().is_empty());
}
