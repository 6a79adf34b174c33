//! What wraps every request: the request id (`X-Request-Id`, echoed or generated), the access
//! log line and the HTTP metrics.
//!
//! A tower layer with its own future rather than axum's `from_fn`: that boxes one more future
//! and clones and boxes the inner service for every request.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Histogram, SharedString, counter, histogram};
use pin_project_lite::pin_project;
use serde::{Serialize, Serializer};
use tokio::time::Instant;
use tower::{Layer, Service};
use tracing::Level;

use super::error::ApiError;
use super::middleware::DisconnectGuard;
use super::timing::Millis;
use crate::gateway::Gateway;
use crate::logsink::{self, ACCESS_TARGET};
use crate::telemetry::{self, Timestamp};

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
pub struct AccessLayer {
    state: Arc<Gateway>,
    metrics: Arc<HttpMetrics>,
}

impl AccessLayer {
    pub fn new(state: Arc<Gateway>) -> Self {
        Self {
            state,
            metrics: Arc::default(),
        }
    }
}

impl<S> Layer<S> for AccessLayer {
    type Service = Access<S>;

    fn layer(&self, inner: S) -> Access<S> {
        Access {
            inner,
            state: self.state.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`AccessLayer`] makes.
#[derive(Clone)]
pub struct Access<S> {
    inner: S,
    state: Arc<Gateway>,
    metrics: Arc<HttpMetrics>,
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
            None => Arc::from(&*uuid::Uuid::new_v4().simple().encode_lower(&mut [0; 32])),
        };
        let (route, known) = route_label(request.extensions().get::<MatchedPath>());
        let entry = Entry {
            route,
            known,
            metrics: self.metrics.clone(),
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
    /// The route's place in [`ROUTES`], if it is one of them.
    known: Option<usize>,
    metrics: Arc<HttpMetrics>,
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
        self.metrics.record(&route, self.known, status, elapsed);
        AccessLine {
            request_id: &self.id,
            method: self.method.as_str(),
            route: &route,
            status: status.as_u16(),
            elapsed_ms: Millis(elapsed),
        }
        .log();
        response
    }
}

/// One access-log line's fields.
#[derive(Serialize)]
struct AccessLine<'a> {
    request_id: &'a str,
    method: &'a str,
    route: &'a str,
    status: u16,
    #[serde(serialize_with = "millis")]
    elapsed_ms: Millis,
}

impl AccessLine<'_> {
    /// Logs the line at INFO under [`ACCESS_TARGET`].
    ///
    /// When the process logs JSON lines, the line is written here, in the shape of the
    /// subscriber's own lines: tracing's JSON formatter made this one line a large share of the
    /// gateway's work per request (a `str` check per write, each field through a visitor and a
    /// formatting pass). `RUST_LOG` still decides whether it is written.
    fn log(&self) {
        if !telemetry::json_lines() {
            self.trace();
        } else if tracing::enabled!(target: ACCESS_TARGET, Level::INFO) {
            // Nothing to do about a log that cannot be written.
            let _ = logsink::stderr().hold_with(|buf| self.write_json(buf, SystemTime::now()));
        }
    }

    fn trace(&self) {
        // Strings recorded as `&str`, not through `Display`: each `%` field costs a formatting
        // pass.
        tracing::info!(
            target: ACCESS_TARGET,
            request_id = self.request_id,
            method = self.method,
            route = self.route,
            status = self.status,
            elapsed_ms = %self.elapsed_ms,
        );
    }

    /// Appends the line as the JSON subscriber would write it, at `now`.
    fn write_json(&self, buf: &mut Vec<u8>, now: SystemTime) -> io::Result<()> {
        let line = JsonLine {
            timestamp: Timestamp(now),
            level: "INFO",
            fields: self,
            target: ACCESS_TARGET,
        };
        serde_json::to_writer(&mut *buf, &line)?;
        buf.push(b'\n');
        Ok(())
    }
}

/// tracing-subscriber's JSON line: these keys, in this order.
#[derive(Serialize)]
struct JsonLine<'a> {
    #[serde(serialize_with = "as_string")]
    timestamp: Timestamp,
    level: &'static str,
    fields: &'a AccessLine<'a>,
    target: &'static str,
}

fn as_string<S: Serializer>(value: &impl fmt::Display, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

fn millis<S: Serializer>(value: &Millis, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&value.text())
}

/// The HTTP metrics' handles for the known routes and common statuses, each registered on first
/// use (when the exporter is installed): looking a handle up builds and hashes its label set on
/// every request. Other routes and statuses are looked up each time.
#[derive(Default)]
pub struct HttpMetrics {
    routes: [RouteMetrics; ROUTES.len()],
}

#[derive(Default)]
struct RouteMetrics {
    duration: OnceLock<Histogram>,
    /// By the status's place in [`COMMON_STATUSES`].
    requests: [OnceLock<Counter>; COMMON_STATUSES.len()],
}

impl HttpMetrics {
    fn record(&self, route: &SharedString, known: Option<usize>, status: StatusCode, elapsed: Duration) {
        let requests = || counter!(HTTP_REQUESTS, "route" => route.clone(), "status" => status_label(status));
        let duration = || histogram!(HTTP_DURATION, "route" => route.clone());
        let seconds = elapsed.as_secs_f64();
        let Some(cached) = known.map(|i| &self.routes[i]) else {
            requests().increment(1);
            duration().record(seconds);
            return;
        };
        match COMMON_STATUSES
            .iter()
            .position(|(code, _)| *code == status.as_u16())
        {
            Some(i) => cached.requests[i].get_or_init(requests).increment(1),
            None => requests().increment(1),
        }
        cached.duration.get_or_init(duration).record(seconds);
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

/// The metric label of the route a request matched, and its place in [`ROUTES`].
fn route_label(matched: Option<&MatchedPath>) -> (SharedString, Option<usize>) {
    let Some(path) = matched.map(MatchedPath::as_str) else {
        return (SharedString::const_str("unmatched"), None);
    };
    match ROUTES.iter().position(|known| *known == path) {
        Some(i) => (SharedString::const_str(ROUTES[i]), Some(i)),
        None => (SharedString::from_owned(path.to_owned()), None),
    }
}

/// The statuses whose label needs no allocation and whose counters are kept.
const COMMON_STATUSES: &[(u16, &str)] = &[
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

/// The metric label of a status code, without an allocation for the common ones.
fn status_label(status: StatusCode) -> SharedString {
    match COMMON_STATUSES.iter().find(|(code, _)| *code == status.as_u16()) {
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

    /// A writer into a shared buffer, for a test subscriber.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The text of `line` with its timestamp's value blanked.
    fn without_timestamp(line: &str) -> String {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let at = value["timestamp"].as_str().unwrap();
        line.replacen(at, "", 1)
    }

    #[test]
    fn the_json_line_written_directly_is_the_subscribers_own() {
        let line = AccessLine {
            request_id: "id-\"quoted\"",
            method: "POST",
            route: "/v1/chat/completions",
            status: 200,
            elapsed_ms: Millis(std::time::Duration::from_micros(1_234)),
        };
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || line.trace());
        let traced = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();

        let mut direct = Vec::new();
        line.write_json(&mut direct, SystemTime::now()).unwrap();
        let direct = String::from_utf8(direct).unwrap();

        assert!(direct.ends_with('\n') && direct.lines().count() == 1, "{direct}");
        assert_eq!(without_timestamp(&direct), without_timestamp(&traced));
        assert!(direct.contains(r#""elapsed_ms":"1.234""#), "{direct}");
    }

    #[test]
    fn http_metrics_count_every_request_with_a_kept_handle_or_not() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};

        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let http = HttpMetrics::default();
        let chat = ROUTES.iter().position(|r| *r == "/v1/chat/completions");
        metrics::with_local_recorder(&recorder, || {
            let record = |route: &'static str, known, code| {
                let status = StatusCode::from_u16(code).unwrap();
                http.record(
                    &SharedString::const_str(route),
                    known,
                    status,
                    Duration::from_millis(1),
                );
            };
            record("/v1/chat/completions", chat, 200);
            record("/v1/chat/completions", chat, 200);
            record("/v1/chat/completions", chat, 418);
            record("/custom", None, 200);
        });
        let snapshot = snapshotter.snapshot().into_hashmap();
        let value = |name: &str, labels: &[(&str, &str)]| {
            snapshot
                .iter()
                .find(|(key, _)| {
                    let key = key.key();
                    key.name() == name
                        && key.labels().count() == labels.len()
                        && labels
                            .iter()
                            .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
                })
                .map(|(_, (_, _, value))| value)
        };
        let requests = |route, status| value(HTTP_REQUESTS, &[("route", route), ("status", status)]);
        assert_eq!(
            requests("/v1/chat/completions", "200"),
            Some(&DebugValue::Counter(2))
        );
        assert_eq!(
            requests("/v1/chat/completions", "418"),
            Some(&DebugValue::Counter(1))
        );
        assert_eq!(requests("/custom", "200"), Some(&DebugValue::Counter(1)));
        let samples = |route| match value(HTTP_DURATION, &[("route", route)]) {
            Some(DebugValue::Histogram(samples)) => samples.len(),
            other => panic!("no histogram for {route}: {other:?}"),
        };
        assert_eq!(samples("/v1/chat/completions"), 3);
        assert_eq!(samples("/custom"), 1);
    }

    #[test]
    fn status_labels_are_the_code_whether_common_or_not() {
        for code in [200, 429, 418, 507] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(&*status_label(status), code.to_string());
        }
    }
}
