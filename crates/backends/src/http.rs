//! What every HTTP backend shares: the pooled client with its headers and key, posting a JSON
//! body within the time limits, and turning upstream failures into `WorkerError`s that name the
//! backend, its status and its own words.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Deserialize;
use tokio::time::Instant;
use tokio_prompt_orchestrator::{Cores, WorkerError};

use crate::timeouts::{Timeouts, earliest};
use crate::transport;

/// An upstream's answer, its body read as it arrives.
pub type Response = http::Response<Either<Incoming, reqwest::Body>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// Longest error body read from an upstream: enough for any message, bounded against floods.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// Longest answer to a health probe (vLLM's `/metrics`, llama.cpp's `/slots` with its slots'
/// prompts): a longer one is a failed probe rather than memory without bound.
const MAX_PROBE_BODY: usize = 1024 * 1024;
/// The W3C trace context header sent with a traced call.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Why a backend could not be built from its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError(pub String);

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BuildError {}

/// The longest `Retry-After` taken from an upstream: a backend asking for more rests this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// A `Retry-After` value, in seconds or as an HTTP date (`Wed, 21 Oct 2026 07:28:00 GMT`),
/// as a wait from `now` of at most [`MAX_RETRY_AFTER`]; a date already past means no wait.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// One upstream server reached over HTTP.
pub struct HttpBackend {
    pub name: Arc<str>,
    base_url: String,
    client: Client,
    pub timeouts: Timeouts,
}

type Pooled = hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How requests reach the upstream.
enum Client {
    /// Straight to the server, on hyper's pooled client (HTTP/2 when TLS offers it): reqwest's
    /// layers over the same client cost CPU on every request (docs/benchmarks/history.md).
    Direct {
        client: Box<Pooled>,
        /// On the core threads of a per-core runtime, a pool of each core's own: a connection
        /// is driven by the thread that opened it, so one shared pool would send a request's
        /// bytes across threads. Made on the first call from a core thread.
        per_core: OnceLock<Box<[Pooled]>>,
        connector: HttpsConnector<HttpConnector>,
        /// On every request: the key and the configured headers.
        headers: HeaderMap,
    },
    /// Through the proxy the environment names for this server (`HTTPS_PROXY`, `HTTP_PROXY`,
    /// `ALL_PROXY`, less `NO_PROXY`), which reqwest's client speaks.
    Proxied(reqwest::Client),
}

impl Client {
    /// The client for `base_url`: through the proxy `proxies` give for it, else direct.
    fn new(
        base_url: &Uri,
        headers: HeaderMap,
        connect: Option<Duration>,
        proxies: &Matcher,
    ) -> Result<Self, String> {
        if let Some(proxy) = proxies.intercept(base_url) {
            let mut via = reqwest::Proxy::all(proxy.uri().to_string())
                .map_err(|e| format!("the proxy {}: {e}", proxy.uri()))?;
            if let Some(auth) = proxy.basic_auth() {
                via = via.custom_http_auth(auth.clone());
            }
            let mut client = reqwest::Client::builder()
                .proxy(via)
                .default_headers(headers)
                .tcp_nodelay(true)
                .pool_max_idle_per_host(1024)
                .pool_idle_timeout(POOL_IDLE)
                // As the direct client: an upstream's redirect is its answer, not followed.
                .redirect(reqwest::redirect::Policy::none());
            if let Some(connect) = connect {
                client = client.connect_timeout(connect);
            }
            return client.build().map(Client::Proxied).map_err(|e| e.to_string());
        }
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(connect);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .try_with_platform_verifier()
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        Ok(Client::Direct {
            client: Box::new(pool(https.clone())),
            per_core: OnceLock::new(),
            connector: https,
            headers: with_host(headers, base_url),
        })
    }

    async fn send(&self, request: Request<Bytes>) -> Result<Response, BoxError> {
        match self {
            Client::Direct {
                client,
                per_core,
                connector,
                headers,
            } => {
                let client = match Cores::current() {
                    Some((core, cores)) => {
                        let pools =
                            per_core.get_or_init(|| (0..cores).map(|_| pool(connector.clone())).collect());
                        &pools[core % pools.len()]
                    }
                    None => client,
                };
                let (mut parts, body) = request.into_parts();
                for (name, value) in headers {
                    parts.headers.entry(name).or_insert_with(|| value.clone());
                }
                let response = client
                    .request(Request::from_parts(parts, Full::new(body)))
                    .await?;
                Ok(response.map(Either::Left))
            }
            Client::Proxied(client) => {
                let response = client.execute(reqwest::Request::try_from(request)?).await?;
                Ok(http::Response::from(response).map(Either::Right))
            }
        }
    }
}

/// A pool of kept-alive connections through `connector`.
fn pool(connector: HttpsConnector<HttpConnector>) -> Pooled {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(1024)
        .build(connector)
}

impl HttpBackend {
    /// The upstream's `host:port`.
    pub fn address(&self) -> Option<String> {
        let url: Uri = self.base_url.parse().ok()?;
        url.authority().map(|a| a.as_str().to_string())
    }

    /// A client for `base_url`, with the key from the variable `api_key_env` (read now) and
    /// `headers` on every request. Connections are pooled and kept alive. A proxy named by the
    /// environment for this URL (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, read now,
    /// as curl reads them) is used.
    ///
    /// # Errors
    /// When the URL or the key's variable is unusable, a header is invalid, or the client cannot
    /// start.
    pub fn new(
        name: &str,
        base_url: &str,
        api_key_env: Option<&str>,
        headers: &BTreeMap<String, String>,
        timeouts: Timeouts,
    ) -> Result<Self, BuildError> {
        Self::with_proxies(
            name,
            base_url,
            api_key_env,
            headers,
            timeouts,
            &Matcher::from_system(),
        )
    }

    fn with_proxies(
        name: &str,
        base_url: &str,
        api_key_env: Option<&str>,
        headers: &BTreeMap<String, String>,
        timeouts: Timeouts,
        proxies: &Matcher,
    ) -> Result<Self, BuildError> {
        let mut defaults = HeaderMap::new();
        if let Some(var) = api_key_env {
            let key = std::env::var(var)
                .ok()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| BuildError(format!("the environment variable {var} is not set or empty")))?;
            let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| BuildError(format!("the key in {var} is not a valid header value")))?;
            // Keeps the key out of debug output.
            value.set_sensitive(true);
            defaults.insert(AUTHORIZATION, value);
        }
        for (name, value) in headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| BuildError(format!("headers: {name:?} is not a valid header name")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| BuildError(format!("headers.{name}: not a valid header value")))?;
            defaults.insert(header, value);
        }
        let base_url = base_url.trim_end_matches('/').to_string();
        let client = Client::new(&parse_url(&base_url)?, defaults, timeouts.connect, proxies)
            .map_err(|e| BuildError(format!("cannot start the HTTP client: {e}")))?;
        Ok(Self {
            name: Arc::from(name),
            base_url,
            client,
            timeouts,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// GETs `url` for a health check: the body of a 2xx answer, or what was wrong. The caller
    /// bounds the time.
    ///
    /// # Errors
    /// A connection failure or an error status, with the upstream's message.
    pub async fn probe(&self, url: &str) -> Result<String, String> {
        let uri = parse_url(url).map_err(|e| e.0)?;
        let response = self
            .client
            .send(request(Method::GET, &uri, Bytes::new()))
            .await
            .map_err(|e| format!("GET {url} failed: {}", transport::describe(&*e)))?;
        let status = response.status();
        if !status.is_success() {
            let body = read_capped(response).await;
            return Err(format!(
                "GET {url} answered {}: {}",
                status.as_u16(),
                error_message(&body)
            ));
        }
        match read_up_to(response, MAX_PROBE_BODY).await {
            (_, true) => Err(format!("GET {url}: the answer is over {MAX_PROBE_BODY} bytes")),
            (body, false) => {
                String::from_utf8(body).map_err(|_| format!("GET {url}: the answer is not UTF-8"))
            }
        }
    }

    /// The deadline of a call starting now.
    pub fn deadline(&self) -> Option<Instant> {
        self.timeouts.total.map(|t| Instant::now() + t)
    }

    /// `body` as JSON, for [`post`](Self::post).
    ///
    /// # Errors
    /// When it cannot be written as JSON (a map with non-string keys; not retryable).
    pub fn encode(&self, body: &impl serde::Serialize) -> Result<Bytes, WorkerError> {
        serde_json::to_vec(body)
            .map(Bytes::from)
            .map_err(|e| self.error(&format!("cannot write the request: {e}"), false))
    }

    /// Posts `body` to `url` (from [`url`](Self::url)) and waits for a successful response head
    /// within `deadline` and, for a stream, the first-token limit. A whole (non-streamed)
    /// answer's head only comes when the generation has ended, so only the deadline bounds it.
    ///
    /// # Errors
    /// Connection failures and timeouts (retryable), and error statuses with the upstream's
    /// message (retryable for 429 and 5xx, with its `Retry-After`).
    pub async fn post(
        &self,
        url: &Uri,
        body: Bytes,
        deadline: Option<Instant>,
        streamed: bool,
        traceparent: Option<String>,
    ) -> Result<Response, WorkerError> {
        let mut post = request(Method::POST, url, body);
        let headers = post.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        // W3C trace context: the upstream's own spans join the request's trace.
        if let Some(value) = traceparent.and_then(|t| HeaderValue::try_from(t).ok()) {
            headers.insert(TRACEPARENT, value);
        }
        let sent = self.client.send(post);
        let first_token = self
            .timeouts
            .first_token
            .filter(|_| streamed)
            .map(|t| Instant::now() + t);
        let response = match earliest(first_token, deadline) {
            Some(at) => tokio::time::timeout_at(at, sent).await.map_err(|_| {
                let message = if first_token == Some(at) {
                    "no answer within the first-token timeout"
                } else {
                    "the call took longer than its total timeout"
                };
                self.error(message, true)
            })?,
            None => sent.await,
        }
        .map_err(|e| self.error(&transport::describe(&*e), true))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, SystemTime::now()));
        let body = read_capped(response).await;
        let retryable = status.as_u16() == 429 || status.is_server_error();
        let mut error = self
            .error(
                &format!("answered {}: {}", status.as_u16(), error_message(&body)),
                retryable,
            )
            .with_status(status.as_u16());
        error.retry_after = retry_after;
        Err(error)
    }

    /// The whole body of a successful response, within `deadline`.
    ///
    /// # Errors
    /// When reading fails or the deadline passes (both retryable: nothing reached the caller).
    pub async fn read_all(
        &self,
        response: Response,
        deadline: Option<Instant>,
    ) -> Result<Bytes, WorkerError> {
        let read = response.into_body().collect();
        match deadline {
            Some(at) => tokio::time::timeout_at(at, read)
                .await
                .map_err(|_| self.error("the call took longer than its total timeout", true))?,
            None => read.await,
        }
        .map(|body| body.to_bytes())
        .map_err(|e| {
            self.error(
                &format!("reading the answer failed: {}", transport::describe(&*e)),
                true,
            )
        })
    }

    /// The address of `path` under the base URL. Workers resolve their endpoints once, when
    /// built: parsing a URL for every call was a measurable part of a request's CPU time.
    ///
    /// # Errors
    /// When the base URL and `path` do not make a valid URL.
    pub fn url(&self, path: &str) -> Result<Uri, BuildError> {
        parse_url(&format!("{}{path}", self.base_url))
    }

    /// An error naming this backend.
    pub fn error(&self, message: &str, retryable: bool) -> WorkerError {
        WorkerError {
            retryable,
            ..WorkerError::new(format!("{}: {message}", self.name))
        }
    }
}

/// An absolute `http://` or `https://` URL.
fn parse_url(text: &str) -> Result<Uri, BuildError> {
    let invalid = |why: &str| BuildError(format!("base_url: {text:?} is not a valid URL ({why})"));
    let uri: Uri = text
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(invalid("it must start with http:// or https://"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("it names no host"));
    }
    Ok(uri)
}

/// `headers` with `Host` for a plain-HTTP `base_url` (all of its requests go to one host), unless
/// the config sets one. Left out, hyper's client formats it for every request; over TLS it is
/// left to the client, which may speak HTTP/2 there (`:authority`).
fn with_host(mut headers: HeaderMap, base_url: &Uri) -> HeaderMap {
    if base_url.scheme_str() != Some("http") {
        return headers;
    }
    let host = base_url.host().unwrap_or_default();
    let value = match base_url.port_u16().filter(|&port| port != 80) {
        Some(port) => HeaderValue::from_str(&format!("{host}:{port}")),
        None => HeaderValue::from_str(host),
    };
    if let Ok(value) = value {
        headers.entry(HOST).or_insert(value);
    }
    headers
}

/// A request for `uri` carrying `body`.
fn request(method: Method, uri: &Uri, body: Bytes) -> Request<Bytes> {
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri.clone();
    request
}

/// Reads at most [`MAX_ERROR_BODY`] bytes of an error response.
async fn read_capped(response: Response) -> Vec<u8> {
    read_up_to(response, MAX_ERROR_BODY).await.0
}

/// At most `limit` bytes of the body, and whether there was more.
async fn read_up_to(response: Response, limit: usize) -> (Vec<u8>, bool) {
    let mut body = response.into_body();
    let mut read = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(chunk) = frame.into_data() else { continue };
        read.extend_from_slice(&chunk);
        if read.len() > limit {
            read.truncate(limit);
            return (read, true);
        }
    }
    (read, false)
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorObject,
}

#[derive(Deserialize)]
struct ErrorObject {
    message: Option<String>,
}

/// The message of an upstream error body (`{"error": {"message": ...}}`, as OpenAI, vLLM and
/// llama.cpp send), or the start of the body itself when it is not that.
pub fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody {
            error: ErrorObject { message: Some(m) },
        }) => m,
        _ => String::from_utf8_lossy(body).trim().chars().take(500).collect(),
    }
}

#[cfg(test)]
mod tests {
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::timeouts::TimeoutConfig;

    /// A backend for `base_url` with the key header `x-key: k`, through `proxies`.
    fn backend(base_url: &str, proxies: &Matcher) -> HttpBackend {
        let headers = BTreeMap::from([("x-key".to_string(), "k".to_string())]);
        HttpBackend::with_proxies(
            "up",
            base_url,
            None,
            &headers,
            TimeoutConfig::default().into(),
            proxies,
        )
        .unwrap()
    }

    /// A server answering `POST /v1/x` (with the JSON body and the configured header) with `ok`.
    async fn answering_ok() -> MockServer {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/x"))
            .and(header("content-type", "application/json"))
            .and(header("x-key", "k"))
            .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
            .expect(1)
            .mount(&server)
            .await;
        server
    }

    async fn post(backend: &HttpBackend) -> Result<Bytes, WorkerError> {
        let url = backend.url("/x").unwrap();
        let body = backend.encode(&serde_json::json!({"a": 1}))?;
        let answer = backend.post(&url, body, None, false, None).await?;
        backend.read_all(answer, None).await
    }

    #[tokio::test]
    async fn a_direct_backend_posts_json_with_its_headers() {
        let server = answering_ok().await;
        let direct = backend(&format!("{}/v1/", server.uri()), &Matcher::builder().build());
        assert!(matches!(direct.client, Client::Direct { .. }));
        assert_eq!(post(&direct).await.unwrap(), "ok");
        let seen = &server.received_requests().await.unwrap()[0];
        let authority = server.uri().trim_start_matches("http://").to_string();
        assert_eq!(seen.headers.get("host").unwrap(), authority.as_str());
    }

    #[test]
    fn plain_http_backends_carry_their_host_header_from_the_start() {
        let host = |url: &str, headers: HeaderMap| {
            let headers = with_host(headers, &parse_url(url).unwrap());
            headers.get(HOST).map(|v| v.to_str().unwrap().to_string())
        };
        let none = HeaderMap::new;
        assert_eq!(
            host("http://10.0.0.1:8000/v1", none()).as_deref(),
            Some("10.0.0.1:8000")
        );
        assert_eq!(
            host("http://[::1]:8000/v1", none()).as_deref(),
            Some("[::1]:8000")
        );
        assert_eq!(
            host("http://vllm.internal/v1", none()).as_deref(),
            Some("vllm.internal")
        );
        assert_eq!(
            host("http://vllm.internal:80/v1", none()).as_deref(),
            Some("vllm.internal")
        );
        // Over TLS the client sets it (or HTTP/2's `:authority`).
        assert_eq!(host("https://api.openai.com/v1", none()), None);
        // A `Host` from the backend's `headers` stays.
        let configured = HeaderMap::from_iter([(HOST, HeaderValue::from_static("models.example"))]);
        assert_eq!(
            host("http://10.0.0.1:8000/v1", configured).as_deref(),
            Some("models.example")
        );
    }

    #[tokio::test]
    async fn a_backend_the_environment_proxies_goes_through_the_proxy() {
        // The proxy answers for a host that does not exist: the answer can only come through it.
        let proxy = answering_ok().await;
        let proxies = Matcher::builder().http(proxy.uri()).no("localhost").build();
        let proxied = backend("http://upstream.invalid/v1", &proxies);
        assert!(matches!(proxied.client, Client::Proxied(_)));
        assert_eq!(post(&proxied).await.unwrap(), "ok");
        let seen = &proxy.received_requests().await.unwrap()[0];
        assert_eq!(seen.url.host_str(), Some("upstream.invalid"));
        // NO_PROXY's hosts go direct.
        let direct = backend("http://localhost:1/v1", &proxies);
        assert!(matches!(direct.client, Client::Direct { .. }));
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_retryable_error_naming_the_cause() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base_url = format!("http://{}/v1", closed.local_addr().unwrap());
        drop(closed);
        let error = post(&backend(&base_url, &Matcher::builder().build()))
            .await
            .unwrap_err();
        assert!(error.retryable);
        assert_eq!(
            error.message, "up: could not connect (connection refused)",
            "{}",
            error.message
        );
    }

    #[test]
    fn base_urls_must_be_absolute_http_urls() {
        let no_proxy = Matcher::builder().build();
        let build = |url| {
            HttpBackend::with_proxies(
                "up",
                url,
                None,
                &BTreeMap::new(),
                TimeoutConfig::default().into(),
                &no_proxy,
            )
            .err()
            .map(|e| e.0)
        };
        assert_eq!(build("https://api.openai.com/v1"), None);
        assert_eq!(
            build("localhost:8000"),
            Some(
                "base_url: \"localhost:8000\" is not a valid URL (it must start with http:// or https://)"
                    .into()
            )
        );
        assert_eq!(
            build("http://exa mple.com"),
            Some("base_url: \"http://exa mple.com\" is not a valid URL (invalid uri character)".into())
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2026 07:28:00 GMT").unwrap();
        assert_eq!(retry_after(" 30 ", now), Some(Duration::from_secs(30)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2026 07:30:00 GMT", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            retry_after("Wed, 21 Oct 2026 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("99999999", now), Some(MAX_RETRY_AFTER));
    }
}
