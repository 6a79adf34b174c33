//! llama-server's native API in the mock: `POST /completion` (with `id_slot`, `cache_prompt`,
//! `n_predict`, `stream`), `GET /health` and `GET /slots`, in the shapes llama-server uses.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::openai::Prompt;
use super::reply::{self, Plan, SlotLease};
use super::state::Shared;
use super::stream::{self, Frames, data};

#[derive(Deserialize)]
struct Request<'a> {
    prompt: Option<Prompt>,
    /// -1 (or absent): no limit beyond the mock's `tokens`.
    n_predict: Option<i64>,
    stream: Option<bool>,
    // `cache_prompt` is only recorded with the body: the mock keeps no KV cache, so
    // `tokens_cached` is always 0.
    id_slot: Option<i64>,
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
}

/// A streamed token: llama-server sends only these fields until the end.
#[derive(Serialize)]
struct Partial<'a> {
    index: u32,
    content: &'a str,
    tokens: [u64; 1],
    stop: bool,
    id_slot: usize,
    tokens_predicted: u64,
    tokens_evaluated: u64,
}

/// The whole answer, or the last event of a stream (whose `content` is then empty).
#[derive(Serialize)]
struct Final<'a> {
    index: u32,
    content: &'a str,
    tokens: [u64; 0],
    id_slot: usize,
    stop: bool,
    model: &'a str,
    tokens_predicted: u64,
    tokens_evaluated: u64,
    generation_settings: Settings,
    has_new_line: bool,
    truncated: bool,
    stop_type: &'static str,
    stopping_word: &'static str,
    tokens_cached: u64,
    timings: Timings,
}

#[derive(Serialize)]
struct Settings {
    n_predict: i64,
    stream: bool,
}

#[derive(Serialize)]
struct Timings {
    cache_n: u64,
    prompt_n: u64,
    predicted_n: u64,
}

struct Llama {
    model: String,
    slot: usize,
    n_predict: i64,
}

impl Llama {
    fn last<'a>(&'a self, plan: &Plan, content: &'a str, stream: bool) -> Final<'a> {
        Final {
            index: 0,
            content,
            tokens: [],
            id_slot: self.slot,
            stop: true,
            model: &self.model,
            tokens_predicted: plan.tokens,
            tokens_evaluated: plan.prompt_tokens,
            generation_settings: Settings {
                n_predict: self.n_predict,
                stream,
            },
            has_new_line: false,
            truncated: false,
            stop_type: if plan.limited { "limit" } else { "eos" },
            stopping_word: "",
            tokens_cached: 0,
            timings: Timings {
                cache_n: 0,
                prompt_n: plan.prompt_tokens,
                predicted_n: plan.tokens,
            },
        }
    }
}

impl Frames for Llama {
    fn token(&self, plan: &Plan, index: u64, out: &mut Vec<u8>) {
        let mut content = String::with_capacity(12);
        reply::token_text(index, &mut content);
        let partial = Partial {
            index: 0,
            content: &content,
            tokens: [index],
            stop: false,
            id_slot: self.slot,
            tokens_predicted: index + 1,
            tokens_evaluated: plan.prompt_tokens,
        };
        data(&partial, out);
    }

    /// llama-server's native stream has no `[DONE]`: the `stop: true` object ends it.
    fn closing(&self, plan: &Plan, out: &mut Vec<u8>) {
        data(&self.last(plan, "", true), out);
    }
}

/// `POST /completion`.
pub(crate) async fn completion(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let counters = &shared.counters;
    counters.llama_completions.fetch_add(1, Ordering::Relaxed);
    let behaviour = shared.behaviour();
    let admission = shared.admit("/completion", &headers, &body, &behaviour);
    if admission.fail {
        return reply::injected(&behaviour);
    }
    let request: Request<'_> = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return reply::bad_request(&shared, &format!("Invalid body: {e}"), None),
    };
    let Some(prompt) = &request.prompt else {
        return reply::bad_request(&shared, "`prompt` is required.", Some("prompt"));
    };
    let lease = match SlotLease::take(&shared, request.id_slot, admission.n) {
        Ok(lease) => lease,
        Err(message) => return reply::bad_request(&shared, &message, Some("id_slot")),
    };
    let n_predict = request.n_predict.unwrap_or(-1);
    let limit = u64::try_from(n_predict).ok();
    let plan = Plan::new(&behaviour, prompt.tokens(), limit);
    let llama = Llama {
        model: request
            .model
            .as_deref()
            .unwrap_or(&shared.default_model)
            .to_owned(),
        slot: lease.id,
        n_predict,
    };
    let streaming = request.stream.unwrap_or(false);
    reply::delay(&shared, &behaviour).await;
    if streaming {
        stream::respond(&shared, plan, llama, Some(lease))
    } else {
        let text = reply::completion_text(plan.tokens);
        reply::json(StatusCode::OK, &llama.last(&plan, &text, false))
    }
}

/// `GET /health`: `{"status":"ok"}`, or llama-server's 503 "Loading model" when the behaviour
/// says unhealthy.
pub(crate) async fn health(State(shared): State<Arc<Shared>>) -> Response {
    shared.counters.health.fetch_add(1, Ordering::Relaxed);
    shared.notify();
    if shared.behaviour().healthy {
        reply::json_bytes(StatusCode::OK, &b"{\"status\":\"ok\"}"[..])
    } else {
        reply::error(StatusCode::SERVICE_UNAVAILABLE, "Loading model", None)
    }
}

#[derive(Serialize)]
struct SlotView {
    id: usize,
    id_task: i64,
    n_ctx: u32,
    speculative: bool,
    is_processing: bool,
    /// Not in llama-server: requests this slot has served, so tests can see affinity.
    n_served: u64,
    next_token: NextToken,
}

#[derive(Serialize)]
struct NextToken {
    has_next_token: bool,
    has_new_line: bool,
    n_remain: i64,
    n_decoded: u64,
}

/// `GET /slots`; with `?fail_on_no_slot=1`, 503 when every slot is busy, as llama-server does.
pub(crate) async fn slots(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    shared.counters.slots.fetch_add(1, Ordering::Relaxed);
    let views: Vec<SlotView> = shared
        .slots
        .iter()
        .enumerate()
        .map(|(id, slot)| {
            let busy = slot.processing.load(Ordering::Relaxed) > 0;
            SlotView {
                id,
                id_task: -1,
                n_ctx: 4096,
                speculative: false,
                is_processing: busy,
                n_served: slot.served.load(Ordering::Relaxed),
                next_token: NextToken {
                    has_next_token: busy,
                    has_new_line: false,
                    n_remain: -1,
                    n_decoded: 0,
                },
            }
        })
        .collect();
    let fail_on_no_slot = query
        .as_deref()
        .is_some_and(|q| q.split('&').any(|pair| pair == "fail_on_no_slot=1"));
    if fail_on_no_slot && views.iter().all(|v| v.is_processing) {
        return reply::error(StatusCode::SERVICE_UNAVAILABLE, "no slot available", None);
    }
    reply::json(StatusCode::OK, &views)
}
