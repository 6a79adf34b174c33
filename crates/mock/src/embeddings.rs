//! The mock's `POST /v1/embeddings`: a vector per input made from the input alone (so the same
//! input always gets the same vector), listed in reverse order with their `index` (as a server
//! may), which a client must put back in order. While [`Behaviour::hold_embeddings`] is set,
//! answers wait: a test holds calls in flight, then lets them go.
//!
//! [`Behaviour::hold_embeddings`]: crate::Behaviour::hold_embeddings

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::openai::Prompt;
use super::reply;
use super::state::Shared;

/// The length of a vector when the request names no `dimensions`.
const DIMENSIONS: usize = 8;

#[derive(Deserialize)]
struct Request {
    input: Option<Prompt>,
    model: Option<String>,
    dimensions: Option<usize>,
}

#[derive(Serialize)]
struct Answer {
    object: &'static str,
    data: Vec<Item>,
    model: String,
    usage: Usage,
}

#[derive(Serialize)]
struct Item {
    object: &'static str,
    index: usize,
    embedding: Vec<f32>,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    total_tokens: u64,
}

/// `POST /v1/embeddings`.
pub(crate) async fn embeddings(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.counters.embeddings.fetch_add(1, Ordering::Relaxed);
    let request = serde_json::from_slice::<Request>(&body).ok();
    let inputs: Option<Vec<Prompt>> = match request.as_ref().and_then(|r| r.input.clone()) {
        Some(Prompt::Many(items)) if items.iter().all(|i| matches!(i, Prompt::Token(_))) => {
            Some(vec![Prompt::Many(items)])
        }
        Some(Prompt::Many(items)) if !items.is_empty() => Some(items),
        Some(one @ Prompt::Text(_)) => Some(vec![one]),
        _ => None,
    };
    // Counted before the request is admitted, which wakes whoever waits on the counters.
    let count = inputs.as_ref().map_or(0, Vec::len) as u64;
    shared
        .counters
        .embedding_inputs
        .fetch_add(count, Ordering::Relaxed);
    let behaviour = shared.behaviour();
    let admission = shared.admit("/v1/embeddings", &headers, &body, &behaviour);
    if admission.fail {
        return reply::injected(&behaviour);
    }
    let (Some(request), Some(inputs)) = (request, inputs) else {
        return reply::bad_request(&shared, "`input` is required: a string or a list", Some("input"));
    };
    shared.hold_embeddings().await;
    reply::delay(&shared, &behaviour).await;
    let dimensions = request.dimensions.unwrap_or(DIMENSIONS);
    let data = inputs
        .iter()
        .enumerate()
        .rev()
        .map(|(index, input)| Item {
            object: "embedding",
            index,
            embedding: vector(&serde_json::to_string(input).unwrap_or_default(), dimensions),
        })
        .collect();
    let tokens = inputs.iter().map(Prompt::tokens).sum();
    let answer = Answer {
        object: "list",
        data,
        model: request.model.unwrap_or_else(|| shared.default_model.clone()),
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    };
    reply::json(StatusCode::OK, &answer)
}

/// A vector that depends on `input` alone.
fn vector(input: &str, dimensions: usize) -> Vec<f32> {
    (0..dimensions)
        .map(|i| {
            let mut hasher = DefaultHasher::new();
            (input, i).hash(&mut hasher);
            (hasher.finish() >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}
