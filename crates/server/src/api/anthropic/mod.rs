//! The Anthropic Messages API: `POST /v1/messages` and `POST /v1/messages/count_tokens`, so that
//! the Anthropic SDKs and the agents built on them talk to the gateway as they would to Anthropic.
//!
//! A thin edge: the body is read into the one request the pipeline knows ([`request`]), goes
//! through the same admission, limits, cache, pipeline and dead letters as an OpenAI request
//! (`api::accept`), and the answer is written back as a `message` ([`message`]) or Anthropic's
//! event stream ([`stream`]), errors in Anthropic's shape. Keys are read from `x-api-key` as well
//! as from `Authorization: Bearer`.

pub mod message;
pub mod request;
pub mod stream;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use orchestrator_context::assemble::Encoding;
use serde_json::json;
use tokio_prompt_orchestrator::{InferenceRequest, PromptInput, Response as Answer};

use self::message::{error_response, message};
use self::request::MessagesRequest;
use self::stream::AnthropicEvents;
use super::accept::{Accepted, Admitted, Refusal, accept};
use super::access::RequestContext;
use super::body::{BodyLimits, parse_json, read_limited};
use super::cached::{CACHE_HEADER, HIT, MISS, replayed};
use super::error::ApiError;
use super::json_body;
use super::middleware::{Authorized, DisconnectGuard};
use super::sse;
use crate::gateway::cache::Cached;
use crate::gateway::{Delivery, Format, Gateway, unix_now};

pub const MESSAGES: &str = "/v1/messages";

/// `POST /v1/messages`.
pub struct Anthropic;

impl Format for Anthropic {
    fn read(&self, _path: &str, body: &[u8]) -> Result<(InferenceRequest, Delivery), ApiError> {
        parse_json::<MessagesRequest>(body)?.into_request()
    }

    fn answer(
        &self,
        _path: &str,
        request_id: &str,
        delivery: Delivery,
        response: &Answer,
    ) -> serde_json::Value {
        let completion = response.completion;
        let text = message(
            &message_id(request_id),
            &delivery.model,
            &response.text,
            completion.finish_reason,
            completion.usage,
            response.passthrough.as_deref(),
        );
        serde_json::from_str(&text).unwrap_or_default()
    }
}

fn message_id(request_id: &str) -> String {
    format!("msg_{request_id}")
}

/// `POST /v1/messages`.
pub async fn messages(
    State(state): State<Arc<Gateway>>,
    Extension(ctx): Extension<RequestContext>,
    caller: Result<Authorized, ApiError>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Authorized(caller) = match caller {
        Ok(caller) => caller,
        Err(error) => return error_response(&error, HeaderMap::new()),
    };
    let admitted = match accept(&state, &ctx, caller, headers, body, &Anthropic, MESSAGES).await {
        Ok(Accepted::Admitted(admitted)) => admitted,
        Ok(Accepted::Hit(hit)) => {
            let mut response = from_cache(&hit.delivery, &hit.answer).await;
            response.headers_mut().extend(hit.limit_headers);
            return response;
        }
        Err(Refusal { error, headers }) => return error_response(&error, headers),
    };
    answer(state, &ctx, admitted).await
}

/// Writes an admitted request's answer.
async fn answer(state: Arc<Gateway>, ctx: &RequestContext, admitted: Admitted) -> Response {
    let Admitted {
        handle,
        mut outcome,
        delivery,
        hints,
        fill,
        limit_headers,
    } = admitted;
    let id = message_id(&ctx.id);
    let kept = fill.is_some();
    let mut response = if delivery.stream {
        let plan = sse::Plan {
            writer: AnthropicEvents::new(id, unix_now(), delivery.model),
            start: ctx.start,
            show_sources: hints.rag_sources,
            fill,
        };
        let guard = DisconnectGuard::new(state, "stream");
        match sse::respond(handle, plan, guard, outcome).await {
            Ok(response) => response,
            Err(error) => return error_response(&error, limit_headers),
        }
    } else {
        let answer = match handle.into_response().await {
            Ok(answer) => answer,
            Err(error) => return error_response(&outcome.failed(error).await, limit_headers),
        };
        outcome.completed(&answer.completion);
        // Tool calls are kept too: Anthropic's stream replays them as whole blocks.
        if let Some(fill) = fill {
            fill.put(Cached::of(id.clone(), unix_now(), &answer));
        }
        let completion = answer.completion;
        let body = message(
            &id,
            &delivery.model,
            &answer.text,
            completion.finish_reason,
            completion.usage,
            answer.passthrough.as_deref(),
        );
        json_body(body)
    };
    if kept {
        response.headers_mut().insert(CACHE_HEADER, MISS);
    }
    response.headers_mut().extend(limit_headers);
    response
}

/// A kept answer, as a message or as Anthropic's event stream.
async fn from_cache(delivery: &Delivery, hit: &Cached) -> Response {
    if delivery.stream {
        let writer = AnthropicEvents::new(hit.id.clone(), hit.created, delivery.model.clone());
        return replayed(writer, hit).await;
    }
    let body = message(
        &hit.id,
        &delivery.model,
        &hit.text,
        hit.finish_reason,
        hit.usage,
        hit.passthrough.as_deref(),
    );
    let mut response = json_body(body);
    response.headers_mut().insert(CACHE_HEADER, HIT);
    response
}

/// `POST /v1/messages/count_tokens`: the request's input tokens, counted with the o200k_base
/// tokenizer (the model's own may count a little differently).
pub async fn count_tokens(
    State(state): State<Arc<Gateway>>,
    caller: Result<Authorized, ApiError>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(error) = caller {
        return error_response(&error, HeaderMap::new());
    }
    let limits = BodyLimits::from(&state.live().config.server);
    let counted = async {
        let (bytes, _share) = read_limited(&headers, body, limits, &state.body_budget).await?;
        // The same checks as a message, but `max_tokens` is not needed to count.
        let parsed: MessagesRequest = parse_json(&bytes)?;
        let (request, delivery) = parsed.for_counting().into_request()?;
        if !state.live().models.contains(&delivery.model) {
            return Err(ApiError::model_not_found(&delivery.model));
        }
        Ok::<_, ApiError>(input_tokens(&request))
    };
    match counted.await {
        Ok(tokens) => Json(json!({"input_tokens": tokens})).into_response(),
        Err(error) => error_response(&error, HeaderMap::new()),
    }
}

fn input_tokens(request: &InferenceRequest) -> usize {
    let encoding = Encoding::O200kBase;
    let mut tokens = 0;
    if let PromptInput::Chat(messages) = &request.input {
        for message in messages {
            // A few tokens a message for its role and framing, as chat templates add.
            tokens += 4 + encoding.count_tokens(&message.content);
            for (_, value) in message.extra.iter() {
                tokens += encoding.count_tokens(value.get());
            }
        }
    }
    for (_, value) in request.extra.iter() {
        tokens += encoding.count_tokens(value.get());
    }
    tokens
}
