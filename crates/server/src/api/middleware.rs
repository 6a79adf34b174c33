//! What guards requests: the API key checks, and the count of clients that leave before their
//! answer.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::gateway::Gateway;
use crate::gateway::auth::{ApiKeys, Caller, bearer_token};

pub const HTTP_DISCONNECTS: &str = "orchestrator_http_client_disconnects_total";

/// Counts a client that went away before its response was complete: armed while a response is
/// being produced, disarmed when it is; a drop while armed is a disconnect.
pub struct DisconnectGuard {
    state: Arc<Gateway>,
    route: &'static str,
    armed: bool,
}

impl DisconnectGuard {
    pub fn new(state: Arc<Gateway>, route: &'static str) -> Self {
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

/// The caller of an API route: `None` when no keys are configured. As an extractor, it refuses
/// a request without a valid bearer key (401) before anything else is read.
///
/// An extractor rather than a middleware layer: a layer wraps every request's future in another
/// boxed future (about a kilobyte each) for its whole life.
pub struct Authorized(pub Option<Caller>);

impl FromRequestParts<Arc<Gateway>> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<Gateway>) -> Result<Self, ApiError> {
        match &state.live().keys {
            None => Ok(Self(None)),
            Some(keys) => authenticate(keys, &parts.headers).map(|caller| Self(Some(caller))),
        }
    }
}

/// Requires a key, as [`Authorized`] does, when the running config protects `/metrics`.
pub async fn require_key_for_metrics(
    State(state): State<Arc<Gateway>>,
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
pub async fn require_admin_key(State(state): State<Arc<Gateway>>, request: Request, next: Next) -> Response {
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
const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");

fn authenticate(keys: &ApiKeys, headers: &HeaderMap) -> Result<Caller, ApiError> {
    // `x-api-key` is how Anthropic's SDKs send it.
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .or_else(|| headers.get(API_KEY_HEADER).and_then(|v| v.to_str().ok()));
    let Some(presented) = presented else {
        return Err(ApiError::unauthorized(
            "Missing API key: send it as `Authorization: Bearer KEY` or `x-api-key: KEY` (the SDKs do \
             this with api_key).",
        ));
    };
    keys.verify(presented)
        .ok_or_else(|| ApiError::unauthorized("Incorrect API key provided."))
}
