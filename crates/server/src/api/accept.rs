//! What every generation endpoint does before it writes its answer, whatever the API's shape:
//! the key's rate limits, the body, the request read by the edge's own [`Format`], the response
//! cache, the dead-letter draft, and admission into the pipeline. The edge then writes the
//! answer (or the refusal) in its own shape.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use tokio_prompt_orchestrator::ResponseHandle;

use super::access::RequestContext;
use super::body::{BodyLimits, read_limited};
use super::error::ApiError;
use super::hints::hints;
use crate::dlq::entry::unix_ms;
use crate::gateway::admit::{Origin, admit, draft};
use crate::gateway::auth::Caller;
use crate::gateway::cache::{Cached, Fill, Lookup};
use crate::gateway::outcome::Outcome;
use crate::gateway::{Delivery, Format, Gateway, Hints};
use crate::stored::continue_turn;

/// A request the pipeline has taken.
pub struct Admitted {
    pub handle: ResponseHandle,
    /// Settled when the answer ends (tokens charged, place freed, a failure kept).
    pub outcome: Outcome,
    pub delivery: Delivery,
    pub hints: Hints,
    /// Where the answer goes in the response cache, when it is to be kept.
    pub fill: Option<Fill>,
    /// The key's rate-limit headers, for the answer.
    pub limit_headers: HeaderMap,
}

/// A request the response cache answers.
pub struct Hit {
    pub answer: Arc<Cached>,
    pub delivery: Delivery,
    pub limit_headers: HeaderMap,
}

// Returned once per request and taken apart at once: boxing the common variant would cost an
// allocation per request to save a move.
#[allow(clippy::large_enum_variant)]
pub enum Accepted {
    Admitted(Admitted),
    Hit(Hit),
}

/// Why a request was not taken, and the headers its answer carries (a rate limit's).
pub struct Refusal {
    pub error: ApiError,
    pub headers: HeaderMap,
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Self {
            error,
            headers: HeaderMap::new(),
        }
    }
}

impl IntoResponse for Refusal {
    /// In OpenAI's shape; other edges write `error` their own way.
    fn into_response(self) -> Response {
        let mut response = self.error.into_response();
        response.headers_mut().extend(self.headers);
        response
    }
}

/// Takes a generation request received on `path` as far as the pipeline, or to the cache's
/// answer.
///
/// # Errors
/// The refusal: over a rate limit, a body too large or malformed (as `format` reads it), an
/// unknown model, no place in the pipeline.
pub async fn accept(
    state: &Arc<Gateway>,
    ctx: &RequestContext,
    caller: Option<Caller>,
    headers: HeaderMap,
    body: Body,
    format: &dyn Format,
    path: &'static str,
) -> Result<Accepted, Refusal> {
    let limits = caller.as_ref().and_then(|c| c.limits.clone());
    // Over its rate limit, a request is refused before anything is read.
    let limit_headers = match limits.as_deref() {
        None => HeaderMap::new(),
        Some(limits) => match limits.admit() {
            Ok(headers) => limits.admit_cluster().await.map(|()| headers),
            Err(refusal) => Err(refusal),
        }
        .map_err(|refusal| Refusal {
            error: ApiError::rate_limited(refusal.which, refusal.retry_after),
            headers: refusal.headers,
        })?,
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
    let (mut request, mut delivery) = format.prepare(&live, path, &bytes, &origin)?;
    continue_turn(state.responses.as_ref(), key, &hints, &mut delivery, &mut request).await?;
    // Answers the request shows its sources in are not kept: the sources are not.
    let fill = match live
        .cache
        .lookup(path, &request, key, hints.no_cache || hints.rag_sources)
    {
        Lookup::Hit(answer) => {
            return Ok(Accepted::Hit(Hit {
                answer,
                delivery,
                limit_headers,
            }));
        }
        Lookup::Miss(fill) => Some(fill),
        Lookup::Off => None,
    };
    let prompt = limits
        .as_ref()
        .filter(|l| l.counts_tokens())
        .map(|_| request.input.clone());
    let trace = state
        .tracing
        .as_ref()
        .and_then(|tracing| tracing.begin(hints.traceparent.as_deref(), path, &request));
    request.trace = trace.as_ref().map(|t| t.trace.clone());
    let mut outcome = Outcome {
        limits,
        prompt,
        permit: None,
        dead_letter: draft(&live, &request, path, key, &hints, bytes, received_at_ms),
        default_timeout: None,
        body_share: Some(body_share),
        reservation: None,
        trace,
    };
    let handle = admit(&live, request, &mut outcome).await?;
    // Admitted: a replaced pipeline may now close its intake once nobody else is being admitted.
    drop(live);
    Ok(Accepted::Admitted(Admitted {
        handle,
        outcome,
        delivery,
        hints,
        fill,
        limit_headers,
    }))
}
