//! What runs around every request: the request id (`X-Request-Id`, echoed or generated), the
//! access log line and HTTP metrics, and the API key checks.

use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::SharedString;
use tokio::time::Instant;

use super::AppState;
use super::error::ApiError;
use super::generate::format_ms;
use crate::auth::{ApiKeys, Caller, bearer_token};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest client-chosen request id accepted.
const MAX_REQUEST_ID_BYTES: usize = 128;

pub const HTTP_REQUESTS: &str = "orchestrator_http_requests_total";
pub const HTTP_DURATION: &str = "orchestrator_http_request_duration_seconds";
pub const HTTP_DISCONNECTS: &str = "orchestrator_http_client_disconnects_total";

/// Counts a client that went away before its response was complete: armed while a response is
/// being produced, disarmed when it is; a drop while armed is a disconnect.
pub struct DisconnectGuard {
    state: Arc<AppState>,
    route: &'static str,
    armed: bool,
}

impl DisconnectGuard {
    pub fn new(state: Arc<AppState>, route: &'static str) -> Self {
        Self {
            state,
            route,
            armed: true,
        }
    }

    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for DisconnectGuard {
    fn drop(&mut self) {
        if self.armed {
            self.state.record_disconnect();
            metrics::counter!(HTTP_DISCONNECTS, "route" => self.route).increment(1);
        }
    }
}

/// Facts about the request every handler can read.
#[derive(Clone, Debug)]
pub struct RequestContext {
    /// The client's `X-Request-Id`, or one made here.
    pub id: Arc<str>,
    /// When the request reached the gateway.
    pub start: Instant,
}

/// Resolves the request id, runs the request, then stamps the id on the response and records the
/// access log line and metrics.
pub async fn request_context(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let id = match request.headers().get(&REQUEST_ID) {
        Some(value) => match valid_request_id(value) {
            Some(id) => id,
            None => {
                return ApiError::invalid(
                    "X-Request-Id",
                    format!("must be 1 to {MAX_REQUEST_ID_BYTES} visible ASCII characters"),
                )
                .into_response();
            }
        },
        None => Arc::from(uuid::Uuid::new_v4().simple().to_string()),
    };
    let route = route_label(request.extensions().get::<MatchedPath>());
    let method = request.method().clone();
    request.extensions_mut().insert(RequestContext {
        id: id.clone(),
        start,
    });
    // Dropped unfinished if the client goes away while the handler works (the server drops the
    // whole request future then).
    let mut guard = DisconnectGuard::new(state, "response_head");
    let mut response = next.run(request).await;
    guard.disarm();
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let status = response.status();
    let elapsed = start.elapsed();
    // For streams this is the time to the response head; the stream itself is logged by the
    // pipeline's metrics.
    metrics::counter!(HTTP_REQUESTS, "route" => route.clone(), "status" => status_label(status)).increment(1);
    metrics::histogram!(HTTP_DURATION, "route" => route.clone()).record(elapsed.as_secs_f64());
    tracing::info!(
        target: crate::logsink::ACCESS_TARGET,
        request_id = %id,
        %method,
        route = &*route,
        status = status.as_u16(),
        elapsed_ms = %format_ms(elapsed),
    );
    response
}

/// The routes whose metric label needs no allocation per request (any other route still gets
/// its own label, built per request).
const ROUTES: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/v1/models/{*model}",
    "/metrics",
    "/healthz",
    "/readyz",
];

/// The metric label of the route a request matched.
fn route_label(matched: Option<&MatchedPath>) -> SharedString {
    let Some(path) = matched.map(MatchedPath::as_str) else {
        return SharedString::const_str("unmatched");
    };
    match ROUTES.iter().find(|known| **known == path) {
        Some(known) => SharedString::const_str(known),
        None => SharedString::from_owned(path.to_owned()),
    }
}

/// The metric label of a status code, without an allocation for the common ones.
fn status_label(status: StatusCode) -> SharedString {
    const COMMON: &[(u16, &str)] = &[
        (200, "200"),
        (400, "400"),
        (401, "401"),
        (404, "404"),
        (413, "413"),
        (429, "429"),
        (500, "500"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
    ];
    match COMMON.iter().find(|(code, _)| *code == status.as_u16()) {
        Some((_, text)) => SharedString::const_str(text),
        None => SharedString::from_owned(status.as_str().to_owned()),
    }
}

fn valid_request_id(value: &HeaderValue) -> Option<Arc<str>> {
    let text = value.to_str().ok()?;
    (!text.is_empty() && text.len() <= MAX_REQUEST_ID_BYTES && text.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| Arc::from(text))
}

/// The caller of an API route: `None` when no keys are configured. As an extractor, it refuses
/// a request without a valid bearer key (401) before anything else is read.
///
/// An extractor rather than a middleware layer: a layer wraps every request's future in another
/// boxed future (about a kilobyte each) for its whole life.
pub struct Authorized(pub Option<Caller>);

impl FromRequestParts<Arc<AppState>> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        match &state.live().keys {
            None => Ok(Self(None)),
            Some(keys) => authenticate(keys, &parts.headers).map(|caller| Self(Some(caller))),
        }
    }
}

/// Requires a key, as [`Authorized`] does, when the running config protects `/metrics`.
pub async fn require_key_for_metrics(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let live = state.live();
    if let Some(keys) = live.keys.as_ref().filter(|k| k.protect_metrics)
        && let Err(refusal) = authenticate(keys, request.headers())
    {
        return refusal.into_response();
    }
    drop(live);
    next.run(request).await
}

/// Requires a key marked `admin = true` when keys are configured (without keys everything is
/// open, admin endpoints too: keep such a gateway on a private address).
pub async fn require_admin_key(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let live = state.live();
    if let Some(keys) = &live.keys {
        match authenticate(keys, request.headers()) {
            Ok(caller) if caller.admin => {}
            Ok(_) => {
                return ApiError::permission_denied(
                    "This API key may not use admin endpoints: mark a key `admin = true` in [[auth.keys]].",
                )
                .into_response();
            }
            Err(refusal) => return refusal.into_response(),
        }
    }
    drop(live);
    next.run(request).await
}

/// The caller presenting `headers`, or the 401 to answer with. The key itself never appears in
/// a message or log.
fn authenticate(keys: &ApiKeys, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let Some(presented) = presented else {
        return Err(ApiError::unauthorized(
            "Missing API key: send it as `Authorization: Bearer KEY` (the OpenAI SDKs do this with api_key).",
        ));
    };
    keys.verify(presented)
        .ok_or_else(|| ApiError::unauthorized("Incorrect API key provided."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_labels_are_the_code_whether_common_or_not() {
        for code in [200, 429, 418, 507] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(&*status_label(status), code.to_string());
        }
    }
}
