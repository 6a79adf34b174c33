//! The Responses API: `POST /v1/responses`, and `GET` / `DELETE /v1/responses/{id}` for stored
//! answers, so that OpenAI's newer client code talks to the gateway as it would to OpenAI.
//!
//! A thin edge, like the Anthropic one: the body is read into the one request the pipeline knows
//! ([`request`]); a conversation continued with `previous_response_id` gets its earlier turns
//! from the stored responses (`crate::stored`) in `api::accept`; the request goes through the same
//! admission, limits, cache, pipeline and dead letters as every other; the answer is written as
//! a response object ([`object`]) or the Responses event stream ([`stream`]), and stored unless
//! the client says `store: false`. Errors are in OpenAI's shape.

pub mod object;
pub mod request;
pub mod stream;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;
use tokio_prompt_orchestrator::{InferenceRequest, Response as Answer};

use self::object::{Head, Output, Status};
use self::request::ResponsesRequest;
use self::stream::ResponseEvents;
use super::accept::{Accepted, Admitted, Hit, accept};
use super::access::RequestContext;
use super::body::parse_json;
use super::cached::{CACHE_HEADER, HIT, MISS, replayed};
use super::error::ApiError;
use super::json_body;
use super::middleware::{Authorized, DisconnectGuard};
use super::sse;
use crate::gateway::cache::Cached;
use crate::gateway::{Delivery, Format, Gateway, unix_now};

pub const RESPONSES: &str = "/v1/responses";

/// Ids a client may name: what the gateway makes (`resp_` and hex), within reason.
pub fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `POST /v1/responses`.
pub struct Responses;

impl Format for Responses {
    fn read(&self, _path: &str, body: &[u8]) -> Result<(InferenceRequest, Delivery), ApiError> {
        parse_json::<ResponsesRequest>(body)?.into_request()
    }

    fn answer(
        &self,
        _path: &str,
        request_id: &str,
        delivery: Delivery,
        response: &Answer,
    ) -> serde_json::Value {
        let head = Head::new(format!("resp_{request_id}"), unix_now(), delivery, None, None);
        let output = Output::of(&response.text, response.passthrough.as_deref());
        let completion = &response.completion;
        let object = head.object(Status::of(completion.finish_reason), &output, Some(completion));
        serde_json::to_value(&object).unwrap_or_default()
    }
}

/// A new response's id. Not the request id, which a client may choose.
fn new_id() -> String {
    format!("resp_{}", uuid::Uuid::new_v4().simple())
}

/// `POST /v1/responses`.
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
    let owner = caller.as_ref().map(|c| c.id.0.to_string());
    match accept(&state, &ctx, caller, headers, body, &Responses, RESPONSES).await {
        Ok(Accepted::Admitted(admitted)) => answer(state, &ctx, admitted, owner).await,
        Ok(Accepted::Hit(hit)) => from_cache(&state, hit, owner).await,
        Err(refusal) => refusal.into_response(),
    }
}

/// Writes an admitted request's answer, and stores it.
async fn answer(
    state: Arc<Gateway>,
    ctx: &RequestContext,
    admitted: Admitted,
    owner: Option<String>,
) -> Response {
    let Admitted {
        handle,
        mut outcome,
        delivery,
        fill,
        limit_headers,
        ..
    } = admitted;
    let kept = fill.is_some();
    let store = state.responses.clone();
    let stream = delivery.stream;
    let head = Head::new(new_id(), unix_now(), delivery, store.as_ref(), owner);
    let mut response = if !stream {
        let answer = match handle.into_response().await {
            Ok(answer) => answer,
            Err(error) => return with_headers(outcome.failed(error).await.into_response(), limit_headers),
        };
        outcome.completed(&answer.completion);
        if let Some(fill) = fill {
            fill.put(Cached::of(head.id.clone(), head.created, &answer));
        }
        let output = Output::of(&answer.text, answer.passthrough.as_deref());
        json_body(head.finish(store.as_ref(), &output, &answer.completion).await)
    } else {
        let plan = sse::Plan {
            writer: ResponseEvents::new(head, store),
            start: ctx.start,
            show_sources: false,
            fill,
        };
        let guard = DisconnectGuard::new(state, "stream");
        match sse::respond(handle, plan, guard, outcome).await {
            Ok(response) => response,
            Err(error) => return with_headers(error.into_response(), limit_headers),
        }
    };
    if kept {
        response.headers_mut().insert(CACHE_HEADER, MISS);
    }
    with_headers(response, limit_headers)
}

/// A kept answer, as a new response (stored like any other) or its event stream.
async fn from_cache(state: &Gateway, hit: Hit, owner: Option<String>) -> Response {
    let Hit {
        answer,
        delivery,
        limit_headers,
    } = hit;
    let store = state.responses.clone();
    let stream = delivery.stream;
    let head = Head::new(new_id(), unix_now(), delivery, store.as_ref(), owner);
    let response = if stream {
        replayed(ResponseEvents::new(head, store), &answer).await
    } else {
        let output = Output::of(&answer.text, answer.passthrough.as_deref());
        let completion = tokio_prompt_orchestrator::Completion {
            finish_reason: answer.finish_reason,
            usage: answer.usage,
            ..Default::default()
        };
        let mut response = json_body(head.finish(store.as_ref(), &output, &completion).await);
        response.headers_mut().insert(CACHE_HEADER, HIT);
        response
    };
    with_headers(response, limit_headers)
}

fn with_headers(mut response: Response, headers: HeaderMap) -> Response {
    response.headers_mut().extend(headers);
    response
}

/// `GET /v1/responses/{id}`: a stored response, to the key that asked for it.
pub async fn get(
    State(state): State<Arc<Gateway>>,
    caller: Result<Authorized, ApiError>,
    Path(id): Path<String>,
) -> Response {
    match stored(&state, caller, &id).await {
        Ok(stored) => json_body(stored.object.get().to_owned()),
        Err(error) => error.into_response(),
    }
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete(
    State(state): State<Arc<Gateway>>,
    caller: Result<Authorized, ApiError>,
    Path(id): Path<String>,
) -> Response {
    let deleted = async {
        stored(&state, caller, &id).await?;
        let store = state.responses.as_ref().ok_or_else(none_kept)?;
        store.delete(&id).await.map_err(ApiError::store_unavailable)?;
        Ok::<_, ApiError>(Json(json!({"id": id, "object": "response", "deleted": true})))
    };
    match deleted.await {
        Ok(answer) => answer.into_response(),
        Err(error) => error.into_response(),
    }
}

/// The response stored as `id`, when the caller may see it.
async fn stored(
    state: &Gateway,
    caller: Result<Authorized, ApiError>,
    id: &str,
) -> Result<crate::stored::StoredResponse, ApiError> {
    let Authorized(caller) = caller?;
    let store = state.responses.as_ref().ok_or_else(none_kept)?;
    let missing = || {
        ApiError::not_found(
            "response_id",
            format!("No response with id {id:?} is stored (it may have expired or been deleted)."),
        )
    };
    if !valid_id(id) {
        return Err(missing());
    }
    let owner = caller.as_ref().map(|c| &*c.id.0);
    store
        .get(id)
        .await
        .map_err(ApiError::store_unavailable)?
        .filter(|s| s.visible_to(owner))
        .ok_or_else(missing)
}

fn none_kept() -> ApiError {
    ApiError::not_found(
        "response_id",
        "No responses are stored here: configure [responses] to store them.",
    )
}
