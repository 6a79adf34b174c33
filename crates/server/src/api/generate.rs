//! `POST /v1/chat/completions` and `POST /v1/completions`: read and check the body, pick the
//! session key, submit to the pipeline, answer with one JSON body or an SSE stream.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::access::RequestContext;
use super::body::{BodyLimits, read_limited};
use super::error::ApiError;
use super::format::OpenAi;
use super::middleware::{Authorized, DisconnectGuard};
use super::timing::{overhead, overhead_value};
use super::wire::{Endpoint, Header};
use super::{cached, sources, sse};
use crate::dlq::entry::unix_ms;
use crate::gateway::admit::{Origin, admit, draft};
use crate::gateway::auth::Caller;
use crate::gateway::cache::Lookup;
use crate::gateway::outcome::Outcome;
use crate::gateway::{Format, Gateway, Hints, unix_now};

/// Time spent in the gateway, excluding the backend's own time, in milliseconds.
pub const OVERHEAD_HEADER: HeaderName = HeaderName::from_static("x-orchestrator-overhead-ms");
// Names, not strings: `HeaderMap::get` with a `&str` parses the name first, on every lookup.
const SESSION_HEADER: HeaderName = HeaderName::from_static("x-session-id");
/// `X-Dedup: on` lets identical non-deterministic requests in flight share one upstream call.
const DEDUP_HEADER: HeaderName = HeaderName::from_static("x-dedup");
/// `X-Priority: high|normal|low` orders requests waiting for a place in the pipeline.
const PRIORITY_HEADER: HeaderName = HeaderName::from_static("x-priority");
const RAG_QUERY_HEADER: HeaderName = HeaderName::from_static("x-rag-query");
const RAG_SOURCES_HEADER: HeaderName = HeaderName::from_static("x-rag-sources");
const TRACEPARENT_HEADER: HeaderName = HeaderName::from_static("traceparent");
/// Longest `X-Session-Id` accepted.
const MAX_SESSION_ID_BYTES: usize = 256;

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
    let limits = caller.as_ref().and_then(|c| c.limits.clone());
    // Over its rate limit, a request is refused before anything is read.
    let admitted = match limits.as_deref() {
        None => Ok(HeaderMap::new()),
        Some(limits) => match limits.admit() {
            Ok(headers) => limits.admit_cluster().await.map(|()| headers),
            Err(refusal) => Err(refusal),
        },
    };
    let limit_headers = match admitted {
        Ok(headers) => headers,
        Err(refusal) => {
            let mut response = ApiError::rate_limited(refusal.which, refusal.retry_after).into_response();
            response.headers_mut().extend(refusal.headers);
            return Ok(response);
        }
    };
    let received_at_ms = unix_ms(SystemTime::now());
    // The body is read before the running config is taken: an upload that stalls must not keep
    // a replaced config's pipeline alive.
    let body_limits = BodyLimits::from(&state.live().config.server);
    let (bytes, body_share) = read_limited(&headers, body, body_limits, &state.body_budget).await?;
    // The running config admits the request; after a reload, the next request gets the new one.
    let live = state.live();
    let hints = hints(&headers)?;
    // The header values (and the body, below) are slices of the connection's read buffer: held
    // while the request waits, they would keep that buffer alive beside the next one.
    drop(headers);
    let key = caller.as_ref().map(|c| &*c.id.0);
    let origin = Origin {
        hints: &hints,
        key,
        default_priority: caller.as_ref().map(|c| c.priority).unwrap_or_default(),
        request_id: &ctx.id,
    };
    let (request, delivery) = OpenAi.prepare(&live, endpoint.path(), &bytes, &origin)?;
    // Answers the request shows its sources in are not kept: the sources are not.
    let fill = match live.cache.lookup(
        endpoint.path(),
        &request,
        key,
        hints.no_cache || hints.rag_sources,
    ) {
        Lookup::Hit(hit) => {
            let mut http = cached::respond(endpoint, &delivery, &hit);
            http.headers_mut().extend(limit_headers);
            return Ok(http);
        }
        Lookup::Miss(fill) => Some(fill),
        Lookup::Off => None,
    };
    let prompt = limits
        .as_ref()
        .filter(|l| l.counts_tokens())
        .map(|_| request.input.clone());
    let mut outcome = Outcome {
        limits,
        prompt,
        permit: None,
        dead_letter: draft(
            &live,
            &request,
            endpoint.path(),
            key,
            &hints,
            bytes,
            received_at_ms,
        ),
        default_timeout: None,
        body_share: Some(body_share),
        reservation: None,
    };
    let handle = admit(&live, request, &mut outcome).await?;
    // Admitted: a replaced pipeline may now close its intake once nobody else is being admitted.
    drop(live);
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
            header,
            include_usage: delivery.include_usage,
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
    let mut http = (
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response();
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

/// What the request's headers add to its body.
///
/// # Errors
/// 400 naming the header when one is malformed.
pub fn hints(headers: &HeaderMap) -> Result<Hints, ApiError> {
    // The rule is text only when a header is at fault: formatting it up front would cost every
    // request.
    let session = header(
        headers,
        &SESSION_HEADER,
        "X-Session-Id",
        format_args!("must be 1 to {MAX_SESSION_ID_BYTES} visible ASCII characters"),
        |text| {
            let text = text.trim();
            (!text.is_empty() && text.len() <= MAX_SESSION_ID_BYTES).then(|| text.to_owned())
        },
    )?;
    let priority = header(
        headers,
        &PRIORITY_HEADER,
        "X-Priority",
        format_args!("must be `high`, `normal` or `low`"),
        |text| text.parse().ok(),
    )?;
    let dedup = header(
        headers,
        &DEDUP_HEADER,
        "X-Dedup",
        format_args!("must be `on` or `off`"),
        |text| match text {
            "on" => Some(true),
            "off" => Some(false),
            _ => None,
        },
    )?;
    let rag_query = header(
        headers,
        &RAG_QUERY_HEADER,
        "X-Rag-Query",
        format_args!("must be non-empty visible ASCII text"),
        |text| Some(text.trim()).filter(|q| !q.is_empty()).map(str::to_owned),
    )?;
    let rag_sources = header(
        headers,
        &RAG_SOURCES_HEADER,
        "X-Rag-Sources",
        format_args!("must be `true` or `false`"),
        |text| text.parse::<bool>().ok(),
    )?;
    let no_cache = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| matches!(d.trim(), "no-cache" | "no-store"));
    // W3C Trace Context: a malformed `traceparent` is ignored, not refused.
    let traceparent = headers
        .get(TRACEPARENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_traceparent(v))
        .map(str::to_owned);
    Ok(Hints {
        session,
        priority,
        dedup: dedup.unwrap_or(false),
        rag_query,
        rag_sources: rag_sources.unwrap_or(false),
        traceparent,
        no_cache,
    })
}

/// Whether `value` is a W3C `traceparent` of version 00: `00-<32 hex>-<16 hex>-<2 hex>`, with
/// ids that are not all zeros.
fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    matches!(parts.as_slice(), [version, trace, span, flags]
        if *version == "00" && hex(trace, 32) && hex(span, 16) && hex(flags, 2) && nonzero(trace) && nonzero(span))
}

/// Header `name` read by `parse`; `None` when absent. A value that is not visible ASCII, or that
/// `parse` rejects, is a 400 naming `param`: "`param`: `rule`".
fn header<T>(
    headers: &HeaderMap,
    name: &HeaderName,
    param: &str,
    rule: fmt::Arguments<'_>,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<Option<T>, ApiError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(parse)
        .map(Some)
        .ok_or_else(|| ApiError::invalid(param, rule.to_string()))
}

#[cfg(test)]
mod tests {
    use super::is_traceparent;

    #[test]
    fn traceparent_is_read_as_w3c_writes_it() {
        assert!(is_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert!(!is_traceparent(bad), "{bad}");
        }
    }
}
