//! Pieces every mock endpoint shares: the generated text, the completion plan, JSON and error
//! responses, and the slot a request runs on.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::Serialize;

use super::config::Behaviour;
use super::state::Shared;

/// `system_fingerprint` of every OpenAI-shaped answer.
pub(crate) const FINGERPRINT: &str = "fp_mock";

/// The text of token `index`: "tok0", " tok1", " tok2", ... so a completion reads
/// "tok0 tok1 tok2" and a test can predict it exactly.
pub(crate) fn token_text(index: u64, out: &mut String) {
    use std::fmt::Write;
    if index > 0 {
        out.push(' ');
    }
    // Writing to a String cannot fail.
    let _ = write!(out, "tok{index}");
}

/// The whole completion of `tokens` tokens.
pub(crate) fn completion_text(tokens: u64) -> String {
    let mut text = String::with_capacity(tokens as usize * 6);
    for i in 0..tokens {
        token_text(i, &mut text);
    }
    text
}

/// The mock's tokenizer: whitespace-separated words.
pub(crate) fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// How one request's completion goes, fixed when it arrives.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub prompt_tokens: u64,
    /// Tokens to produce.
    pub tokens: u64,
    /// The request's limit cut the completion short (`finish_reason: "length"`).
    pub limited: bool,
    pub ttft: Duration,
    /// Time between streamed tokens; zero sends them as fast as possible.
    pub interval: Duration,
    pub cut_after: Option<u64>,
}

impl Plan {
    /// `limit` is the request's `max_tokens` (or `n_predict`), if any.
    pub fn new(behaviour: &Behaviour, prompt_tokens: u64, limit: Option<u64>) -> Self {
        let tokens = limit.map_or(behaviour.tokens, |l| l.min(behaviour.tokens));
        let interval = if behaviour.tokens_per_second > 0.0 {
            Duration::try_from_secs_f64(1.0 / behaviour.tokens_per_second).unwrap_or(Duration::ZERO)
        } else {
            Duration::ZERO
        };
        Self {
            prompt_tokens,
            tokens,
            limited: tokens < behaviour.tokens,
            ttft: Duration::from_millis(behaviour.ttft_ms),
            interval,
            cut_after: behaviour.cut_after,
        }
    }

    pub fn finish_reason(&self) -> &'static str {
        if self.limited { "length" } else { "stop" }
    }

    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.tokens,
            total_tokens: self.prompt_tokens + self.tokens,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// Waits `latency_ms` (the time before a generated answer), on tokio's clock so tests may
/// pause it. A client that goes away meanwhile drops this future, which counts the request in
/// `requests_abandoned`: the non-streaming counterpart of an abandoned stream.
pub(crate) async fn delay(shared: &Shared, behaviour: &Behaviour) {
    if behaviour.latency_ms == 0 {
        return;
    }
    let mut waiting = Waiting { shared, done: false };
    tokio::time::sleep(Duration::from_millis(behaviour.latency_ms)).await;
    waiting.done = true;
}

struct Waiting<'a> {
    shared: &'a Shared,
    done: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.done {
            let counters = &self.shared.counters;
            counters.requests_abandoned.fetch_add(1, Ordering::Relaxed);
            self.shared.notify();
        }
    }
}

/// A JSON response from a serialisable value.
pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    // Serialising these plain structs into memory cannot fail.
    let body = serde_json::to_vec(value).unwrap_or_default();
    json_bytes(status, body)
}

pub(crate) fn json_bytes(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

/// OpenAI's error object; `code` is the status as a number, as llama-server sends it.
#[derive(Serialize)]
struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'a str>,
    code: u16,
}

/// An error response with llama-server's `type` for `status`.
pub(crate) fn error(status: StatusCode, message: &str, param: Option<&str>) -> Response {
    let kind = match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        501 => "not_supported_error",
        503 => "unavailable_error",
        _ => "server_error",
    };
    let body = ErrorBody {
        error: ErrorObject {
            message,
            kind,
            param,
            code: status.as_u16(),
        },
    };
    json(status, &body)
}

/// The message of every injected error.
pub(crate) const INJECTED_MESSAGE: &str = "The mock upstream injected this error.";

/// The answer to a request picked for an injected error.
pub(crate) fn injected(behaviour: &Behaviour) -> Response {
    let mut response = error(behaviour.error_status, INJECTED_MESSAGE, None);
    if let Some(secs) = behaviour.retry_after_secs {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// A 400 naming the field at fault.
pub(crate) fn bad_request(shared: &Shared, message: &str, param: Option<&str>) -> Response {
    shared.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
    error(StatusCode::BAD_REQUEST, message, param)
}

/// A request's hold on a llama.cpp slot: the slot shows `is_processing` until it is dropped.
pub(crate) struct SlotLease {
    shared: Arc<Shared>,
    pub id: usize,
}

impl SlotLease {
    /// Takes slot `id_slot`, or with none (or -1) an idle slot, falling back to spreading by
    /// request number when all are busy. `Err` names a slot that does not exist.
    pub fn take(shared: &Arc<Shared>, id_slot: Option<i64>, n: u64) -> Result<Self, String> {
        let count = shared.slots.len();
        let id = match id_slot {
            Some(id) if id >= 0 => {
                shared.record_id_slot(id);
                usize::try_from(id)
                    .ok()
                    .filter(|&id| id < count)
                    .ok_or_else(|| format!("id_slot {id} does not exist (slots: 0 to {})", count - 1))?
            }
            other => {
                if let Some(id) = other {
                    shared.record_id_slot(id);
                }
                let idle = shared
                    .slots
                    .iter()
                    .position(|s| s.processing.load(Ordering::Relaxed) == 0);
                idle.unwrap_or((n % count as u64) as usize)
            }
        };
        let slot = &shared.slots[id];
        slot.processing.fetch_add(1, Ordering::Relaxed);
        slot.served.fetch_add(1, Ordering::Relaxed);
        Ok(Self {
            shared: shared.clone(),
            id,
        })
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        self.shared.slots[self.id]
            .processing
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_plan_follow_the_behaviour() {
        assert_eq!(completion_text(3), "tok0 tok1 tok2");
        assert_eq!(completion_text(0), "");
        assert_eq!(words("  a b\n c "), 3);
        let behaviour = Behaviour {
            tokens: 10,
            tokens_per_second: 4.0,
            ..Behaviour::default()
        };
        let plan = Plan::new(&behaviour, 2, Some(3));
        assert_eq!((plan.tokens, plan.finish_reason()), (3, "length"));
        assert_eq!(plan.interval, Duration::from_millis(250));
        let plan = Plan::new(&behaviour, 2, Some(50));
        assert_eq!((plan.tokens, plan.finish_reason()), (10, "stop"));
        assert_eq!(plan.usage().total_tokens, 12);
    }
}
