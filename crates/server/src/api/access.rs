//! What wraps every request: the request id (`X-Request-Id`, echoed or generated), the access
//! log line and the HTTP metrics.
//!
//! A tower layer with its own future rather than axum's `from_fn`: that boxes one more future
//! and clones and boxes the inner service for every request.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use metrics::SharedString;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::AppState;
use super::error::ApiError;
use super::generate::format_ms;
use super::middleware::DisconnectGuard;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest client-chosen request id accepted.
const MAX_REQUEST_ID_BYTES: usize = 128;

pub const HTTP_REQUESTS: &str = "orchestrator_http_requests_total";
pub const HTTP_DURATION: &str = "orchestrator_http_request_duration_seconds";

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
#[derive(Clone)]
pub struct AccessLayer(pub Arc<AppState>);

impl<S> Layer<S> for AccessLayer {
    type Service = Access<S>;

    fn layer(&self, inner: S) -> Access<S> {
        Access {
            inner,
            state: self.0.clone(),
        }
    }
}

/// The service [`AccessLayer`] makes.
#[derive(Clone)]
pub struct Access<S> {
    inner: S,
    state: Arc<AppState>,
}

impl<S> Service<Request> for Access<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Logged<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let start = Instant::now();
        let id = match request.headers().get(&REQUEST_ID) {
            Some(value) => match valid_request_id(value) {
                Some(id) => id,
                None => {
                    let refusal = ApiError::invalid(
                        "X-Request-Id",
                        format!("must be 1 to {MAX_REQUEST_ID_BYTES} visible ASCII characters"),
                    );
                    return Logged::Refused {
                        response: Some(refusal.into_response()),
                    };
                }
            },
            None => Arc::from(uuid::Uuid::new_v4().simple().to_string()),
        };
        let entry = Entry {
            route: route_label(request.extensions().get::<MatchedPath>()),
            method: request.method().clone(),
            id: id.clone(),
            start,
            // Dropped unfinished if the client goes away while the handler works (the server
            // drops the whole request future then).
            guard: DisconnectGuard::new(self.state.clone(), "response_head"),
        };
        request.extensions_mut().insert(RequestContext { id, start });
        Logged::Running {
            inner: self.inner.call(request),
            entry: Some(entry),
        }
    }
}

pin_project! {
    /// The future of [`Access`]: the request's own, then its log line.
    #[project = LoggedProj]
    pub enum Logged<F> {
        Running { #[pin] inner: F, entry: Option<Entry> },
        /// The request id was malformed: answered at once, without running the request.
        Refused { response: Option<Response> },
    }
}

impl<F> Future for Logged<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            LoggedProj::Running { inner, entry } => {
                let Ok(response) = ready!(inner.poll(cx));
                let entry = entry.take().expect("Logged polled after it completed");
                Poll::Ready(Ok(entry.finish(response)))
            }
            LoggedProj::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("Logged polled after it completed")))
            }
        }
    }
}

/// What the access log line needs from the request.
pub struct Entry {
    route: SharedString,
    method: Method,
    id: Arc<str>,
    start: Instant,
    guard: DisconnectGuard,
}

impl Entry {
    /// Stamps the id on `response` and records its line and metrics.
    fn finish(mut self, mut response: Response) -> Response {
        self.guard.disarm();
        if let Ok(value) = HeaderValue::from_str(&self.id) {
            response.headers_mut().insert(REQUEST_ID, value);
        }
        let status = response.status();
        let elapsed = self.start.elapsed();
        let route = self.route;
        // For streams this is the time to the response head; the stream itself is logged by the
        // pipeline's metrics.
        metrics::counter!(HTTP_REQUESTS, "route" => route.clone(), "status" => status_label(status))
            .increment(1);
        metrics::histogram!(HTTP_DURATION, "route" => route.clone()).record(elapsed.as_secs_f64());
        tracing::info!(
            target: crate::logsink::ACCESS_TARGET,
            request_id = %self.id,
            method = %self.method,
            route = &*route,
            status = status.as_u16(),
            elapsed_ms = %format_ms(elapsed),
        );
        response
    }
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
