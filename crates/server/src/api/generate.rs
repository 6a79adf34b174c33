//! `POST /v1/chat/completions` and `POST /v1/completions`: read and check the body, pick the
//! session key, submit to the pipeline, answer with one JSON body or an SSE stream.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::time::Instant;
use tokio_prompt_orchestrator::{
    Completion, InferenceRequest, PipelineError, Priority, ResponseHandle, SessionId, Stage,
};

use super::AppState;
use super::access::RequestContext;
use super::body::{BodyLimits, parse_json, read_limited};
use super::error::ApiError;
use super::middleware::{Authorized, DisconnectGuard};
use super::outcome::{Draft, Outcome};
use super::request::{Delivery, GenerationRequest};
use super::wire::{Endpoint, Header};
use super::{sources, sse};
use crate::auth::Caller;
use crate::dlq::entry::unix_ms;
use crate::limits::KeyLimits;
use crate::live::Live;

/// Time spent in the gateway, excluding the backend's own time, in milliseconds.
pub const OVERHEAD_HEADER: HeaderName = HeaderName::from_static("x-orchestrator-overhead-ms");
// Names, not strings: `HeaderMap::get` with a `&str` parses the name first, about 300
// instructions a lookup.
const SESSION_HEADER: HeaderName = HeaderName::from_static("x-session-id");
/// `X-Dedup: on` lets identical non-deterministic requests in flight share one upstream call.
const DEDUP_HEADER: HeaderName = HeaderName::from_static("x-dedup");
/// `X-Priority: high|normal|low` orders requests waiting for a place in the pipeline.
const PRIORITY_HEADER: HeaderName = HeaderName::from_static("x-priority");
const RAG_QUERY_HEADER: HeaderName = HeaderName::from_static("x-rag-query");
const RAG_SOURCES_HEADER: HeaderName = HeaderName::from_static("x-rag-sources");
/// Longest `X-Session-Id` accepted.
const MAX_SESSION_ID_BYTES: usize = 256;

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
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
    State(state): State<Arc<AppState>>,
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
    state: Arc<AppState>,
    ctx: &RequestContext,
    caller: Option<Caller>,
    headers: HeaderMap,
    body: Body,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    let limits = caller.as_ref().and_then(|c| c.limits.clone());
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
    let received_at_ms = unix_ms(SystemTime::now());
    // The body is read before the running config is taken: an upload that stalls must not keep
    // a replaced config's pipeline alive.
    let body_limits = BodyLimits::from(&state.live().config.server);
    let (bytes, body_share) = read_limited(&headers, body, body_limits, &state.body_budget).await?;
    // The running config admits the request; after a reload, the next request gets the new one.
    let live = state.live();
    let hints = Hints::from_headers(&headers)?;
    // The header values (and the body, below) are slices of the connection's read buffer: held
    // while the request waits, they would keep that buffer alive beside the next one.
    drop(headers);
    let key = caller.as_ref().map(|c| &*c.id.0);
    let default_priority = caller.as_ref().map(|c| c.priority).unwrap_or_default();
    let (request, delivery) = prepare(&live, &bytes, endpoint, &hints, key, default_priority, &ctx.id)?;
    let prompt = limits
        .as_ref()
        .filter(|l| l.counts_tokens())
        .map(|_| request.input.clone());
    let mut outcome = Outcome {
        limits,
        prompt,
        permit: None,
        dead_letter: draft(&live, &request, endpoint, key, &hints, bytes, received_at_ms),
        default_timeout: None,
        body_share: Some(body_share),
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
        let mut response = sse::respond(
            handle,
            header,
            delivery.include_usage,
            ctx.start,
            guard,
            outcome,
            hints.rag_sources,
        )
        .await?;
        response.headers_mut().extend(limit_headers);
        return Ok(response);
    }
    let response = match handle.into_response().await {
        Ok(response) => response,
        Err(error) => return Err(outcome.failed(error).await),
    };
    let completion = response.completion;
    outcome.completed(&completion);
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
    http.headers_mut().extend(limit_headers);
    Ok(http)
}

/// What a request's headers add to its body.
#[derive(Debug, Default, Clone)]
pub struct Hints {
    /// `X-Session-Id`.
    pub session: Option<String>,
    /// `X-Priority`; without it, the key's default.
    pub priority: Option<Priority>,
    /// `X-Dedup: on`.
    pub dedup: bool,
    /// `X-Rag-Query`: what to search for instead of the last user message.
    pub rag_query: Option<String>,
    /// `X-Rag-Sources: true`: the answer lists the retrieved context it used.
    pub rag_sources: bool,
}

impl Hints {
    /// # Errors
    /// 400 naming the header when one is malformed.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        // The rule is text only when a header is at fault: formatting it up front cost every
        // request about 500 instructions.
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
        Ok(Self {
            session,
            priority,
            dedup: dedup.unwrap_or(false),
            rag_query,
            rag_sources: rag_sources.unwrap_or(false),
        })
    }
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

/// Checks a body against `live`'s config and builds the pipeline request.
///
/// # Errors
/// 400 naming the field at fault, 404 for an unknown model.
pub fn prepare(
    live: &Live,
    bytes: &[u8],
    endpoint: Endpoint,
    hints: &Hints,
    key: Option<&str>,
    default_priority: Priority,
    request_id: &str,
) -> Result<(InferenceRequest, Delivery), ApiError> {
    let parsed: GenerationRequest = parse_json(bytes)?;
    let (mut request, delivery) = match endpoint {
        Endpoint::Chat => parsed.into_chat()?,
        Endpoint::Completion => parsed.into_completion()?,
    };
    if !live.models.contains(&delivery.model) {
        return Err(ApiError::model_not_found(&delivery.model));
    }
    request.session = session_key(hints.session.as_deref(), &delivery, key, request_id);
    request.priority = hints.priority.unwrap_or(default_priority);
    if hints.dedup {
        request.meta.insert("dedup".into(), "on".into());
    }
    if let Some(query) = &hints.rag_query {
        request.meta.insert("rag_query".into(), query.clone());
    }
    Ok((request, delivery))
}

/// Waits for a place in the pipeline (higher priority first), then submits. The wait counts
/// toward the request's deadline.
///
/// # Errors
/// The request's refusal (`Overloaded`, `Timeout` while waiting, `Closed`), kept in the
/// dead-letter queue when the config says so.
pub async fn admit(
    live: &Live,
    mut request: InferenceRequest,
    outcome: &mut Outcome,
) -> Result<ResponseHandle, ApiError> {
    if request.timeout.is_none() {
        outcome.default_timeout = live.config.pipeline.default_timeout();
    }
    let deadline = request.timeout.or(outcome.default_timeout);
    let waited = Instant::now();
    let acquired = match deadline {
        None => live.gate.acquire(request.priority).await,
        Some(limit) => tokio::time::timeout(limit, live.gate.acquire(request.priority))
            .await
            .unwrap_or(Err(PipelineError::Timeout { stage: Stage::Rag })),
    };
    match acquired {
        Ok(permit) => outcome.permit = Some(permit),
        Err(error) => return Err(outcome.failed(error).await),
    }
    request.timeout = deadline.map(|d| d.saturating_sub(waited.elapsed()));
    // Boxed: the submission's state (under a kilobyte, most of it the request, moved at each
    // level) is only needed for a moment, and inline it would size the handler's future for the
    // whole wait for the first token.
    match Box::pin(live.sender.submit(request)).await {
        Ok(handle) => Ok(handle),
        Err(error) => Err(outcome.failed(error).await),
    }
}

/// The dead letter this request becomes if it fails, when the queue is on.
fn draft(
    live: &Live,
    request: &InferenceRequest,
    endpoint: Endpoint,
    key: Option<&str>,
    hints: &Hints,
    body: Bytes,
    received_at_ms: u64,
) -> Option<Box<Draft>> {
    let (store, config) = (live.dlq.as_ref()?, live.config.dlq.as_ref()?);
    // A copy, so the connection's read buffer is not held for the request's whole life.
    let body = Bytes::copy_from_slice(&body);
    Some(Box::new(Draft {
        store: store.clone(),
        record: config.record.clone(),
        received_at_ms,
        endpoint,
        model: request.model.clone(),
        key: key.map(str::to_owned),
        priority: request.priority,
        session: hints.session.clone(),
        body,
    }))
}

/// The affinity key: `X-Session-Id`, else the `user` field, else the API key's name, else the
/// request id (no affinity).
fn session_key(session: Option<&str>, delivery: &Delivery, key: Option<&str>, request_id: &str) -> SessionId {
    if let Some(session) = session {
        return SessionId::new(session);
    }
    // Prefixes keep the kinds of key apart: a user named like an API key is another session.
    match (&delivery.user, key) {
        (Some(user), _) => SessionId::new(["user:", user].concat()),
        (None, Some(key)) => SessionId::new(["key:", key].concat()),
        (None, None) => SessionId::new(["req:", request_id].concat()),
    }
}

/// Gateway time that was not the model's: everything since the request arrived, minus the time
/// the Inference stage spent in the model call.
pub fn overhead(elapsed: Duration, completion: &Completion) -> Duration {
    elapsed.saturating_sub(completion.timings.stage(Stage::Inference).active)
}

pub fn overhead_value(overhead: Duration) -> HeaderValue {
    // A formatted number is always a valid header value.
    HeaderValue::try_from(Millis(overhead).text()).unwrap_or(HeaderValue::from_static("0"))
}

/// A duration as milliseconds with three decimals (`1.234`), rounded to the microsecond.
///
/// Written from integers, twice per request (the overhead header and the access line):
/// formatting the `f64` with a precision took about a thousand instructions, `write!` of the
/// integers about six hundred.
pub struct Millis(pub Duration);

impl Millis {
    /// The duration as text: `1.234`.
    pub fn text(&self) -> String {
        let micros = (self.0.as_nanos() + 500) / 1_000;
        let mut text = String::from(itoa::Buffer::new().format(micros / 1_000));
        text.push('.');
        // 1000 to 1999: the fraction's three digits, zeros included, after the leading 1.
        text.push_str(&itoa::Buffer::new().format(1_000 + micros % 1_000)[1..]);
        text
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_have_three_decimals_rounded_to_the_microsecond() {
        let ms = |nanos| Millis(Duration::from_nanos(nanos)).to_string();
        assert_eq!(ms(0), "0.000");
        assert_eq!(ms(499), "0.000");
        assert_eq!(ms(500), "0.001");
        assert_eq!(ms(1_234_567), "1.235");
        assert_eq!(ms(12_000_000_000), "12000.000");
        assert_eq!(ms(1_050_000), "1.050");
    }
}
