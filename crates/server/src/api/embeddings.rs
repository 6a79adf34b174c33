//! `POST /v1/embeddings`, OpenAI's embeddings API, for models of `kind = "embedding"`.
//!
//! Through the same edge as generation (`api::accept`: the key's limits, the response cache,
//! admission by priority, dead letters): the inputs travel as one pipeline request whose answer
//! is their vectors. The model's batcher (`orchestrator_backends::batch`) splits long lists into
//! upstream calls and shares inputs already in flight. Vectors go out as numbers, or as base64 of
//! their little-endian `f32`s when the client asks (`encoding_format: "base64"`).

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio_prompt_orchestrator::{
    EmbedInput, InferenceRequest, PromptInput, Response as Answer, SamplingParams, Usage,
};

use super::accept::{Accepted, Admitted, Hit, accept};
use super::access::RequestContext;
use super::body::parse_json;
use super::cached::{CACHE_HEADER, HIT, MISS};
use super::error::ApiError;
use super::json_body;
use super::middleware::Authorized;
use super::request::{pipeline_request, raw, required_model};
use crate::gateway::cache::Cached;
use crate::gateway::{Delivery, Format, Gateway};

pub const EMBEDDINGS: &str = "/v1/embeddings";

/// Inputs one request may send, as OpenAI allows.
const MAX_INPUTS: usize = 2048;
/// The longest vector a request may ask for: beyond any model's, and a bound on what one
/// request makes a backend (the echo one included) allocate.
const MAX_DIMENSIONS: u32 = 16_384;

/// `POST /v1/embeddings`.
pub struct Embeddings;

#[derive(Debug, Deserialize)]
struct EmbeddingsRequest {
    model: Option<String>,
    /// Read by hand: its four shapes are told apart with errors that name the item at fault.
    input: Option<Value>,
    encoding_format: Option<String>,
    dimensions: Option<u32>,
    user: Option<String>,
}

impl Format for Embeddings {
    fn read(&self, _path: &str, body: &[u8]) -> Result<(InferenceRequest, Delivery), ApiError> {
        let parsed: EmbeddingsRequest = parse_json(body)?;
        let model = required_model(parsed.model)?;
        let input = inputs(parsed.input)?;
        let base64 = match parsed.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(ApiError::invalid(
                    "encoding_format",
                    format!("must be `float` or `base64` (got `{other}`)"),
                ));
            }
        };
        let mut extra = Map::new();
        match parsed.dimensions {
            Some(d) if d == 0 || d > MAX_DIMENSIONS => {
                return Err(ApiError::invalid(
                    "dimensions",
                    format!("must be from 1 to {MAX_DIMENSIONS} (got {d})"),
                ));
            }
            Some(d) => {
                extra.insert("dimensions".into(), json!(d));
            }
            None => {}
        }
        let user = parsed.user.filter(|u| !u.is_empty());
        if let Some(user) = &user {
            extra.insert("user".into(), json!(user));
        }
        let delivery = Delivery {
            model: model.clone(),
            stream: false,
            include_usage: false,
            user,
            turn: None,
            base64,
        };
        let params = SamplingParams::default();
        let request = pipeline_request(model, PromptInput::Embed(input), params, false, raw(extra));
        Ok((request, delivery))
    }

    fn answer(&self, _path: &str, _request_id: &str, delivery: Delivery, response: &Answer) -> Value {
        let vectors = response
            .passthrough
            .as_ref()
            .and_then(|p| p.embeddings.as_deref())
            .unwrap_or_default();
        serde_json::from_str(&list(&delivery, vectors, response.completion.usage)).unwrap_or_default()
    }
}

/// `input`: a string, a list of strings, a list of token ids, or a list of lists of token ids.
fn inputs(input: Option<Value>) -> Result<Vec<EmbedInput>, ApiError> {
    const SHAPES: &str =
        "must be a string, a list of strings, a list of token ids, or a list of lists of token ids";
    let items = match input {
        None => return Err(ApiError::invalid("input", format!("is required: it {SHAPES}"))),
        Some(Value::String(text)) if text.is_empty() => {
            return Err(ApiError::invalid("input", "must not be empty"));
        }
        Some(Value::String(text)) => return Ok(vec![EmbedInput::Text(text)]),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ApiError::invalid("input", SHAPES)),
    };
    if items.is_empty() {
        return Err(ApiError::invalid("input", "must hold at least one input"));
    }
    // A list of numbers is one input of token ids.
    if items.iter().all(Value::is_number) {
        return Ok(vec![EmbedInput::Tokens(token_ids(&items, "input")?)]);
    }
    if items.len() > MAX_INPUTS {
        return Err(ApiError::invalid(
            "input",
            format!(
                "holds {} inputs; at most {MAX_INPUTS} are allowed in one request",
                items.len()
            ),
        ));
    }
    let first_is_text = items[0].is_string();
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("input[{i}]");
            match item {
                Value::String(text) if first_is_text && !text.is_empty() => Ok(EmbedInput::Text(text)),
                Value::String(_) if first_is_text => Err(ApiError::invalid(at, "must not be empty")),
                Value::Array(ids) if !first_is_text && !ids.is_empty() => {
                    Ok(EmbedInput::Tokens(token_ids(&ids, &at)?))
                }
                Value::Array(_) if !first_is_text => {
                    Err(ApiError::invalid(at, "must hold at least one token id"))
                }
                _ if first_is_text => Err(ApiError::invalid(at, "must be a string, as the first input is")),
                _ => Err(ApiError::invalid(
                    at,
                    "must be a list of token ids, as the first input is",
                )),
            }
        })
        .collect()
}

fn token_ids(ids: &[Value], at: &str) -> Result<Vec<u32>, ApiError> {
    ids.iter()
        .enumerate()
        .map(|(j, id)| {
            id.as_u64().and_then(|id| u32::try_from(id).ok()).ok_or_else(|| {
                ApiError::invalid(format!("{at}[{j}]"), "must be a token id (a whole number from 0)")
            })
        })
        .collect()
}

/// OpenAI's embedding list.
#[derive(Serialize)]
struct List<'a> {
    object: &'static str,
    data: Vec<Item<'a>>,
    model: &'a str,
    usage: ListUsage,
}

#[derive(Serialize)]
struct Item<'a> {
    object: &'static str,
    index: usize,
    embedding: Vector<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Vector<'a> {
    Numbers(&'a [f32]),
    Base64(String),
}

#[derive(Serialize)]
struct ListUsage {
    prompt_tokens: u32,
    total_tokens: u32,
}

/// The list of `vectors`, as numbers or base64 as `delivery` asks.
fn list(delivery: &Delivery, vectors: &[Vec<f32>], usage: Usage) -> String {
    let data = vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| Item {
            object: "embedding",
            index,
            embedding: if delivery.base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Vector::Base64(STANDARD.encode(bytes))
            } else {
                Vector::Numbers(vector)
            },
        })
        .collect();
    let list = List {
        object: "list",
        data,
        model: &delivery.model,
        usage: ListUsage {
            prompt_tokens: usage.prompt_tokens,
            total_tokens: usage.prompt_tokens,
        },
    };
    // Strings and numbers always serialize (a NaN is written as null).
    serde_json::to_string(&list).unwrap_or_default()
}

/// `POST /v1/embeddings`.
pub async fn create(
    State(state): State<Arc<Gateway>>,
    Extension(ctx): Extension<RequestContext>,
    caller: Result<Authorized, ApiError>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Authorized(caller) = match caller {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    let (mut response, headers) =
        match accept(&state, &ctx, caller, headers, body, &Embeddings, EMBEDDINGS).await {
            Ok(Accepted::Admitted(admitted)) => answer(admitted).await,
            Ok(Accepted::Hit(Hit {
                answer,
                delivery,
                limit_headers,
            })) => {
                let vectors = answer
                    .passthrough
                    .as_ref()
                    .and_then(|p| p.embeddings.as_deref())
                    .unwrap_or_default();
                let mut response = json_body(list(&delivery, vectors, answer.usage));
                response.headers_mut().insert(CACHE_HEADER, HIT);
                (response, limit_headers)
            }
            Err(refusal) => return refusal.into_response(),
        };
    response.headers_mut().extend(headers);
    response
}

/// An admitted request's vectors, and the headers they go out with.
async fn answer(admitted: Admitted) -> (Response, HeaderMap) {
    let Admitted {
        handle,
        mut outcome,
        delivery,
        fill,
        limit_headers,
        ..
    } = admitted;
    let answer = match handle.into_response().await {
        Ok(answer) => answer,
        Err(error) => return (outcome.failed(error).await.into_response(), limit_headers),
    };
    outcome.completed(&answer.completion);
    let Some(vectors) = answer.passthrough.as_ref().and_then(|p| p.embeddings.clone()) else {
        let error = ApiError::internal("the backend answered no vectors");
        return (error.into_response(), limit_headers);
    };
    let mut response = json_body(list(&delivery, &vectors, answer.completion.usage));
    if let Some(fill) = fill {
        fill.put(Cached::of(String::new(), 0, &answer));
        response.headers_mut().insert(CACHE_HEADER, MISS);
    }
    (response, limit_headers)
}
