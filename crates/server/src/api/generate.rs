//! `POST /v1/chat/completions` and `POST /v1/completions`: read and check the body, pick the
//! session key, submit to the pipeline, answer with one JSON body or an SSE stream.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName};
use axum::response::{IntoResponse, Response};

use super::accept::{Accepted, Admitted, accept};
use super::access::RequestContext;
use super::error::ApiError;
use super::format::OpenAi;
use super::middleware::{Authorized, DisconnectGuard};
use super::timing::{overhead, overhead_value};
use super::wire::{Endpoint, Header};
use super::{cached, json_body, sources, sse};
use crate::gateway::auth::Caller;
use crate::gateway::{Gateway, unix_now};

/// Time spent in the gateway, excluding the backend's own time, in milliseconds.
pub const OVERHEAD_HEADER: HeaderName = HeaderName::from_static("x-orchestrator-overhead-ms");
pub async fn chat_completions(
    State(state): State<Arc<Gateway>>,
    Extension(ctx): Extension<RequestContext>,
    Authorized(caller): Authorized,
    headers: HeaderMap,
    body: Body,
) -> Response {
    generate(state, &ctx, caller, headers, body, Endpoint::Chat)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub async fn completions(
    State(state): State<Arc<Gateway>>,
    Extension(ctx): Extension<RequestContext>,
    Authorized(caller): Authorized,
    headers: HeaderMap,
    body: Body,
) -> Response {
    generate(state, &ctx, caller, headers, body, Endpoint::Completion)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn generate(
    state: Arc<Gateway>,
    ctx: &RequestContext,
    caller: Option<Caller>,
    headers: HeaderMap,
    body: Body,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    let admitted = match accept(&state, ctx, caller, headers, body, &OpenAi, endpoint.path()).await {
        Ok(Accepted::Admitted(admitted)) => admitted,
        Ok(Accepted::Hit(hit)) => {
            let mut http = cached::respond(endpoint, &hit.delivery, &hit.answer);
            http.headers_mut().extend(hit.limit_headers);
            return Ok(http);
        }
        Err(refusal) => return Ok(refusal.into_response()),
    };
    let Admitted {
        handle,
        mut outcome,
        delivery,
        hints,
        fill,
        limit_headers,
    } = admitted;
    let header = Header {
        endpoint,
        id: [endpoint.id_prefix(), &ctx.id].concat(),
        created: unix_now(),
        model: delivery.model,
    };
    if delivery.stream {
        let guard = DisconnectGuard::new(state, "stream");
        let cached = fill.is_some();
        let plan = sse::Plan {
            writer: sse::OpenAiChunks::new(header, delivery.include_usage),
            start: ctx.start,
            show_sources: hints.rag_sources,
            fill,
        };
        let mut response = sse::respond(handle, plan, guard, outcome).await?;
        if cached {
            response.headers_mut().insert(cached::CACHE_HEADER, cached::MISS);
        }
        response.headers_mut().extend(limit_headers);
        return Ok(response);
    }
    let response = match handle.into_response().await {
        Ok(response) => response,
        Err(error) => return Err(outcome.failed(error).await),
    };
    let completion = response.completion;
    outcome.completed(&completion);
    let cached = fill.is_some();
    if let Some(fill) = fill {
        cached::keep(fill, &header, &response);
    }
    let mut body = header.complete(
        &response.text,
        completion.finish_reason,
        completion.usage,
        response.passthrough.as_deref(),
    );
    let shown = response.sources.as_deref().filter(|_| hints.rag_sources);
    if let Some(shown) = shown {
        body = sources::with_field(body, shown);
    }
    let mut http = json_body(body);
    if let Some(shown) = shown {
        http.headers_mut()
            .insert(sources::SOURCES_HEADER, sources::header(shown));
    }
    http.headers_mut().insert(
        OVERHEAD_HEADER,
        overhead_value(overhead(ctx.start.elapsed(), &completion)),
    );
    if cached {
        http.headers_mut().insert(cached::CACHE_HEADER, cached::MISS);
    }
    http.headers_mut().extend(limit_headers);
    Ok(http)
}
