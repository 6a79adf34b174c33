//! llama-server's native `POST /completion`: the request body, and its answers, whole or
//! streamed (`{"content": ..., "stop": false}` pieces, then one with `stop: true` and the counts;
//! no `[DONE]`).
//!
//! The server applies no chat template on this endpoint: it is sent the prompt exactly as the
//! Assemble stage rendered it. Fields of the client's request meant for OpenAI servers are not
//! passed on here: the native API names them differently.

use bytes::Bytes;
use http::Uri;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;
use tokio_prompt_orchestrator::{FinishReason, InferenceCall, TokenStream, Usage, WorkerError};

use crate::http::HttpBackend;
use crate::sse::{self, Dialect, Parsed};

/// The `/completion` body for `call` on `slot`.
pub fn request_body(call: &InferenceCall, slot: usize, stream: bool) -> CompletionBody<'_> {
    let params = &call.request.params;
    CompletionBody {
        prompt: &call.prompt,
        n_predict: params.max_tokens.map_or(-1, i64::from),
        stream,
        cache_prompt: true,
        id_slot: slot,
        temperature: params.temperature,
        top_p: params.top_p,
        stop: &params.stop,
        seed: params.seed,
    }
}

/// A `/completion` request, borrowed from the call (no JSON tree is built for it).
#[derive(Serialize)]
pub struct CompletionBody<'a> {
    prompt: &'a str,
    /// -1: until the model stops.
    n_predict: i64,
    stream: bool,
    cache_prompt: bool,
    id_slot: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
}

/// A `/completion` answer, whole or one streamed piece of it.
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    content: String,
    #[serde(default)]
    stop: bool,
    stop_type: Option<String>,
    tokens_predicted: Option<u32>,
    tokens_evaluated: Option<u32>,
    error: Option<Value>,
}

impl Answer {
    fn parsed(self) -> Parsed {
        let reason = match self.stop_type.as_deref() {
            Some("limit") => FinishReason::Length,
            _ => FinishReason::Stop,
        };
        let finish = self.stop.then_some(reason);
        let usage = match (self.tokens_evaluated, self.tokens_predicted) {
            (Some(prompt), Some(completion)) if self.stop => Some(Usage::new(prompt, completion)),
            _ => None,
        };
        Parsed {
            token: Some(self.content).filter(|t| !t.is_empty()),
            extra: None,
            finish,
            usage,
            done: self.stop,
        }
    }
}

fn error_text(error: &Value) -> String {
    error
        .get("message")
        .and_then(Value::as_str)
        .map_or_else(|| error.to_string(), String::from)
}

/// llama-server's native stream.
///
/// Public, but not an API: the fuzz targets (`fuzz/`) relay arbitrary streams through it.
#[doc(hidden)]
pub struct LlamaDialect;

impl Dialect for LlamaDialect {
    fn parse(&mut self, data: &str) -> Result<Parsed, String> {
        let answer: Answer =
            serde_json::from_str(data).map_err(|e| format!("an unreadable stream chunk ({e})"))?;
        if let Some(error) = &answer.error {
            return Err(error_text(error));
        }
        Ok(answer.parsed())
    }
}

/// Posts a `/completion` `body` to `url` and reads the answer as a token stream: relayed as it
/// comes when `streamed`, else the whole answer as one token. Dropping the stream closes the
/// connection, which stops the generation on the server.
///
/// # Errors
/// As [`HttpBackend::post`] and [`HttpBackend::read_all`]; a whole answer that is not llama.cpp
/// JSON (retryable), or that carries an `error` (not retryable).
pub(super) async fn send(
    http: &HttpBackend,
    url: &Uri,
    body: Bytes,
    deadline: Option<Instant>,
    streamed: bool,
    traceparent: Option<String>,
) -> Result<TokenStream, WorkerError> {
    let response = http.post(url, body, deadline, streamed, traceparent).await?;
    if streamed {
        return Ok(sse::relay(
            response,
            LlamaDialect,
            http.name.clone(),
            http.timeouts,
            deadline,
        ));
    }
    let bytes = http.read_all(response, deadline).await?;
    answer_stream(&http.name, &bytes)
}

/// A non-streamed `/completion` answer as a token stream: its text as one token, then the finish.
///
/// Public, but not an API: the fuzz targets (`fuzz/`) call it with arbitrary bodies.
///
/// # Errors
/// When the body is not llama.cpp JSON (retryable), or reports an error (not retryable).
#[doc(hidden)]
pub fn answer_stream(backend: &str, body: &[u8]) -> Result<TokenStream, WorkerError> {
    let error = |message: String, retryable| WorkerError {
        retryable,
        ..WorkerError::new(format!("{backend}: {message}"))
    };
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| error(format!("the answer is not llama.cpp JSON ({e})"), true))?;
    if let Some(message) = &answer.error {
        return Err(error(error_text(message), false));
    }
    Ok(answer.parsed().into_stream())
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tokio_prompt_orchestrator::{InferenceRequest, RequestId, SamplingParams, SessionId};

    use super::*;

    fn written(call: &InferenceCall, slot: usize, stream: bool) -> Value {
        serde_json::to_value(request_body(call, slot, stream)).unwrap()
    }

    #[test]
    fn the_body_carries_the_rendered_prompt_slot_and_only_the_params_set() {
        let plain = InferenceCall::new(
            RequestId(1),
            InferenceRequest::text(SessionId::new("s"), "Once"),
            "rendered",
        );
        assert_eq!(
            written(&plain, 2, false),
            json!({"prompt": "rendered", "n_predict": -1, "stream": false, "cache_prompt": true, "id_slot": 2})
        );
        let request = InferenceRequest::text(SessionId::new("s"), "Once").with_params(SamplingParams {
            temperature: Some(0.5),
            top_p: Some(0.25),
            max_tokens: Some(9),
            stop: vec!["END".into()],
            seed: Some(7),
        });
        let call = InferenceCall::new(RequestId(2), request, "rendered");
        assert_eq!(
            written(&call, 0, true),
            json!({"prompt": "rendered", "n_predict": 9, "stream": true, "cache_prompt": true, "id_slot": 0,
                   "temperature": 0.5, "top_p": 0.25, "stop": ["END"], "seed": 7})
        );
    }

    #[test]
    fn the_last_piece_carries_the_finish_and_the_servers_counts() {
        let mut dialect = LlamaDialect;
        let piece = dialect.parse(r#"{"content":"Hi","stop":false}"#).unwrap();
        assert_eq!(
            (piece.token.as_deref(), piece.finish, piece.done),
            (Some("Hi"), None, false)
        );
        let last = dialect
            .parse(
                r#"{"content":"","stop":true,"stop_type":"limit","tokens_predicted":4,"tokens_evaluated":3}"#,
            )
            .unwrap();
        assert_eq!(last.finish, Some(FinishReason::Length));
        assert_eq!(last.usage, Some(Usage::new(3, 4)));
        assert!(last.done && last.token.is_none());
        let error = dialect.parse(r#"{"error":{"message":"slot busy"}}"#).unwrap_err();
        assert_eq!(error, "slot busy");
    }
}
