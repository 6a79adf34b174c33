//! What every HTTP backend shares: the pooled client with its headers and key, posting a JSON
//! body within the time limits, and turning upstream failures into `WorkerError`s that name the
//! backend, its status and its own words.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde::Deserialize;
use tokio::time::Instant;
use tokio_prompt_orchestrator::WorkerError;

use crate::timeouts::{Timeouts, earliest};

/// Longest error body read from an upstream: enough for any message, bounded against floods.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// Longest answer to a health probe (vLLM's `/metrics`, llama.cpp's `/slots` with its slots'
/// prompts): a longer one is a failed probe rather than memory without bound.
const MAX_PROBE_BODY: usize = 1024 * 1024;

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
    client: reqwest::Client,
    pub timeouts: Timeouts,
}

impl HttpBackend {
    /// A client for `base_url`, with the key from the variable `api_key_env` (read now) and
    /// `headers` on every request. Connections are pooled and kept alive.
    ///
    /// # Errors
    /// When the key's variable is unset, a header is invalid, or the client cannot start.
    pub fn new(
        name: &str,
        base_url: &str,
        api_key_env: Option<&str>,
        headers: &BTreeMap<String, String>,
        timeouts: Timeouts,
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
        let mut client = reqwest::Client::builder()
            .default_headers(defaults)
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1024);
        if let Some(connect) = timeouts.connect {
            client = client.connect_timeout(connect);
        }
        let client = client
            .build()
            .map_err(|e| BuildError(format!("cannot start the HTTP client: {e}")))?;
        Ok(Self {
            name: Arc::from(name),
            base_url: base_url.trim_end_matches('/').to_string(),
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
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {url} failed: {}", error_chain(&e)))?;
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

    /// Posts `body` to `url` (from [`url`](Self::url)) and waits for a successful response head
    /// within `deadline` and, for a stream, the first-token limit. A whole (non-streamed)
    /// answer's head only comes when the generation has ended, so only the deadline bounds it.
    ///
    /// # Errors
    /// Connection failures and timeouts (retryable), and error statuses with the upstream's
    /// message (retryable for 429 and 5xx, with its `Retry-After`).
    pub async fn post(
        &self,
        url: &Url,
        body: serde_json::Value,
        deadline: Option<Instant>,
        streamed: bool,
    ) -> Result<reqwest::Response, WorkerError> {
        let request = self.client.post(url.clone()).json(&body).send();
        // Serialised now: the tree goes before the wait for the upstream, not after it.
        drop(body);
        let first_token = self
            .timeouts
            .first_token
            .filter(|_| streamed)
            .map(|t| Instant::now() + t);
        let response = match earliest(first_token, deadline) {
            Some(at) => tokio::time::timeout_at(at, request).await.map_err(|_| {
                let message = if first_token == Some(at) {
                    "no answer within the first-token timeout"
                } else {
                    "the call took longer than its total timeout"
                };
                self.error(message, true)
            })?,
            None => request.await,
        }
        .map_err(|e| self.error(&format!("request failed: {}", error_chain(&e)), true))?;
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
        response: reqwest::Response,
        deadline: Option<Instant>,
    ) -> Result<Bytes, WorkerError> {
        let read = response.bytes();
        match deadline {
            Some(at) => tokio::time::timeout_at(at, read)
                .await
                .map_err(|_| self.error("the call took longer than its total timeout", true))?,
            None => read.await,
        }
        .map_err(|e| self.error(&format!("reading the answer failed: {}", error_chain(&e)), true))
    }

    /// The address of `path` under the base URL. Workers resolve their endpoints once, when
    /// built: parsing a URL for every call cost about 4% of a request's CPU time in the gateway.
    ///
    /// # Errors
    /// When the base URL and `path` do not make a valid URL.
    pub fn url(&self, path: &str) -> Result<Url, BuildError> {
        let text = format!("{}{path}", self.base_url);
        Url::parse(&text).map_err(|e| BuildError(format!("base_url: {text:?} is not a valid URL ({e})")))
    }

    /// An error naming this backend.
    pub fn error(&self, message: &str, retryable: bool) -> WorkerError {
        WorkerError {
            retryable,
            ..WorkerError::new(format!("{}: {message}", self.name))
        }
    }
}

/// Reads at most [`MAX_ERROR_BODY`] bytes of an error response.
async fn read_capped(response: reqwest::Response) -> Vec<u8> {
    read_up_to(response, MAX_ERROR_BODY).await.0
}

/// At most `limit` bytes of the body, and whether there was more.
async fn read_up_to(mut response: reqwest::Response, limit: usize) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() > limit {
            body.truncate(limit);
            return (body, true);
        }
    }
    (body, false)
}

/// An error with its causes: reqwest's own message alone rarely says what went wrong.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
    use super::*;

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
