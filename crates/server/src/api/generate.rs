//! `POST /v1/chat/completions` and `POST /v1/completions`: read and check the body, pick the
//! session key, submit to the pipeline, answer with one JSON body or an SSE stream.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tokio_prompt_orchestrator::{Completion, SessionId, Stage};

use super::AppState;
use super::body::{parse_json, read_limited};
use super::error::ApiError;
use super::middleware::{DisconnectGuard, RequestContext};
use super::request::{Delivery, GenerationRequest};
use super::sse;
use super::wire::{Endpoint, Header};
use crate::auth::KeyId;
use crate::limits::KeyLimits;

/// Time spent in the gateway, excluding the backend's own time, in milliseconds.
pub const OVERHEAD_HEADER: HeaderName = HeaderName::from_static("x-orchestrator-overhead-ms");
const SESSION_HEADER: &str = "x-session-id";
/// `X-Dedup: on` lets identical non-deterministic requests in flight share one upstream call.
const DEDUP_HEADER: &str = "x-dedup";
/// Longest `X-Session-Id` accepted.
const MAX_SESSION_ID_BYTES: usize = 256;

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<RequestContext>,
    key: Option<Extension<KeyId>>,
    limits: Option<Extension<Arc<KeyLimits>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let caller = (key.map(|k| k.0), limits.map(|l| l.0));
    generate(state, &ctx, caller, &headers, body, Endpoint::Chat)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<RequestContext>,
    key: Option<Extension<KeyId>>,
    limits: Option<Extension<Arc<KeyLimits>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let caller = (key.map(|k| k.0), limits.map(|l| l.0));
    generate(state, &ctx, caller, &headers, body, Endpoint::Completion)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn generate(
    state: Arc<AppState>,
    ctx: &RequestContext,
    (key, limits): (Option<KeyId>, Option<Arc<KeyLimits>>),
    headers: &HeaderMap,
    body: Body,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    // Over its rate limit, a request is refused before anything is read.
    let limit_headers = match limits.as_deref().map(KeyLimits::admit) {
        None => HeaderMap::new(),
        Some(Ok(headers)) => headers,
        Some(Err(refusal)) => {
            let mut response = ApiError::rate_limited(refusal.which, refusal.retry_after).into_response();
            response.headers_mut().extend(refusal.headers);
            return Ok(response);
        }
    };
    // The running config admits the request; after a reload, the next request gets the new one.
    let live = state.live();
    let bytes = read_limited(headers, body, live.config.server.max_body_bytes).await?;
    let parsed: GenerationRequest = parse_json(&bytes)?;
    let (mut request, delivery) = match endpoint {
        Endpoint::Chat => parsed.into_chat()?,
        Endpoint::Completion => parsed.into_completion()?,
    };
    if !live.models.contains(&delivery.model) {
        return Err(ApiError::model_not_found(&delivery.model));
    }
    request.session = session_key(headers, &delivery, key.as_ref(), &ctx.id)?;
    match headers.get(DEDUP_HEADER).map(HeaderValue::as_bytes) {
        None | Some(b"off") => {}
        Some(b"on") => {
            request.meta.insert("dedup".into(), "on".into());
        }
        Some(_) => return Err(ApiError::invalid("X-Dedup", "must be `on` or `off`")),
    }
    let handle = live.sender.submit(request).await?;
    // Admitted: a replaced pipeline may now close its intake once nobody else is being admitted.
    drop(live);
    let header = Header {
        endpoint,
        id: format!("{}{}", endpoint.id_prefix(), ctx.id),
        created: unix_now(),
        model: delivery.model,
    };
    if delivery.stream {
        let guard = DisconnectGuard::new(state, "stream");
        let mut response =
            sse::respond(handle, header, delivery.include_usage, ctx.start, guard, limits).await?;
        response.headers_mut().extend(limit_headers);
        return Ok(response);
    }
    let response = handle.into_response().await?;
    let completion = response.completion;
    if let Some(limits) = &limits {
        limits.charge(completion.usage.total_tokens);
    }
    let body = header.complete(
        &response.text,
        completion.finish_reason,
        completion.usage,
        response.passthrough.as_deref(),
    );
    let mut http = (
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response();
    http.headers_mut().insert(
        OVERHEAD_HEADER,
        overhead_value(overhead(ctx.start.elapsed(), &completion)),
    );
    http.headers_mut().extend(limit_headers);
    Ok(http)
}

/// The affinity key: `X-Session-Id`, else the `user` field, else the API key's name, else the
/// request id (no affinity).
fn session_key(
    headers: &HeaderMap,
    delivery: &Delivery,
    key: Option<&KeyId>,
    request_id: &str,
) -> Result<SessionId, ApiError> {
    if let Some(value) = headers.get(SESSION_HEADER) {
        let bad = || {
            ApiError::invalid(
                "X-Session-Id",
                format!("must be 1 to {MAX_SESSION_ID_BYTES} visible ASCII characters"),
            )
        };
        let text = value.to_str().map_err(|_| bad())?.trim();
        if text.is_empty() || text.len() > MAX_SESSION_ID_BYTES {
            return Err(bad());
        }
        return Ok(SessionId::new(text));
    }
    // Prefixes keep the kinds of key apart: a user named like an API key is another session.
    Ok(match (&delivery.user, key) {
        (Some(user), _) => SessionId::new(format!("user:{user}")),
        (None, Some(key)) => SessionId::new(format!("key:{}", key.0)),
        (None, None) => SessionId::new(format!("req:{request_id}")),
    })
}

/// Gateway time that was not the model's: everything since the request arrived, minus the time
/// the Inference stage spent in the model call.
pub fn overhead(elapsed: Duration, completion: &Completion) -> Duration {
    elapsed.saturating_sub(completion.timings.stage(Stage::Inference).active)
}

pub fn overhead_value(overhead: Duration) -> HeaderValue {
    // A formatted number is always a valid header value.
    HeaderValue::from_str(&format_ms(overhead)).unwrap_or(HeaderValue::from_static("0"))
}

pub fn format_ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
