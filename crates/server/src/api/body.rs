//! Reading a JSON request body: size limit (413), pace (408), compression (415 for codings not
//! taken), UTF-8 (400), syntax and types (400 naming the field, e.g. `messages[0].role`).

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::encoding;
use super::error::ApiError;
use crate::config::ServerConfig;
use crate::gateway::budget::{BodyBudget, BodyShare};
use crate::words::{self, Format};

/// How much of a body is read, and how fast it must come.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    pub max_bytes: usize,
    /// Time the body gets, plus a second per `min_bytes_per_sec` bytes received; `None`: no limit.
    pub timeout: Option<Duration>,
    pub min_bytes_per_sec: u64,
}

impl From<&ServerConfig> for BodyLimits {
    fn from(server: &ServerConfig) -> Self {
        Self {
            max_bytes: server.max_body_bytes,
            timeout: (server.body_read_timeout_ms > 0)
                .then(|| Duration::from_millis(server.body_read_timeout_ms)),
            min_bytes_per_sec: server.body_min_bytes_per_sec.max(1),
        }
    }
}

impl BodyLimits {
    /// When the rest of the body must have come, `received` bytes in.
    fn deadline(&self, start: Instant, received: usize) -> Option<Instant> {
        let earned = Duration::from_secs_f64(received as f64 / self.min_bytes_per_sec as f64);
        self.timeout.map(|t| start + t + earned)
    }

    fn too_slow(&self, received: usize, declared: Option<u64>, start: Instant) -> ApiError {
        let of = declared.map_or(String::new(), |n| format!(" of {n}"));
        ApiError::body_timeout(format!(
            "The request body stopped arriving: {received}{of} bytes in {} ms. A body gets \
             server.body_read_timeout_ms ({} ms) plus a second per server.body_min_bytes_per_sec \
             ({}) bytes received; send it without pauses.",
            start.elapsed().as_millis(),
            self.timeout.unwrap_or_default().as_millis(),
            self.min_bytes_per_sec,
        ))
    }
}

/// Reads the whole body, refusing more than `limits.max_bytes` bytes, more than `budget` has
/// free, or a body that comes too slowly, and decodes it when it is compressed (`encoding`). The
/// share of the budget is held as long as the body (or what is made of it) is.
///
/// # Errors
/// 413 over the limit (checked against `Content-Length` first, so an honest large upload is
/// refused before it is read); 429 when the budget is spent; 408 when the body stops coming; 400
/// when it cannot be read.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limits: BodyLimits,
    budget: &BodyBudget,
) -> Result<(Bytes, BodyShare), ApiError> {
    let limit = limits.max_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::body_too_large(limit));
    }
    // The declared size is taken before reading, so a burst of large uploads is refused before
    // it is held; a body without one takes its share as it arrives.
    let mut share = budget.take(declared.map_or(0, |n| n as usize))?;
    let start = Instant::now();
    let mut body = Limited::new(body, limit);
    // Most bodies come in one piece, which is kept as it is (a slice of the read buffer).
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    let mut received = 0;
    loop {
        let frame = match limits.deadline(start, received) {
            None => body.frame().await,
            Some(deadline) => tokio::time::timeout_at(deadline, body.frame())
                .await
                .map_err(|_| limits.too_slow(received, declared, start))?,
        };
        let data = match frame {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue, // trailers
            },
            Some(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(ApiError::body_too_large(limit));
            }
            Some(Err(e)) => {
                return Err(ApiError::invalid_body(format!(
                    "The request body could not be read: {e}"
                )));
            }
        };
        received += data.len();
        if received > share.bytes() {
            budget.grow(&mut share, received)?;
        }
        match first.take() {
            None if rest.is_empty() => first = Some(data),
            held => {
                if let Some(held) = held {
                    rest.extend_from_slice(&held);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    let bytes = encoding::decode(headers, first.unwrap_or_else(|| rest.freeze()), limit)?;
    budget.grow(&mut share, bytes.len())?;
    Ok((bytes, share))
}

/// Parses `bytes` as the JSON object `T`, naming the field at fault in every error.
///
/// # Errors
/// 400 for an empty body, invalid UTF-8, invalid JSON, a body that is not an object, or a field
/// of the wrong type or value.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid_body(
            "The request body is empty; send a JSON object.",
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::invalid_body(format!(
            "The request body is not valid UTF-8 (invalid byte at offset {}).",
            e.valid_up_to()
        ))
    })?;
    // serde would read a struct from an array too (fields by position); the API takes objects.
    if !text.trim_start().starts_with('{') {
        return Err(ApiError::invalid_body("The request body must be a JSON object."));
    }
    // Tracking the path costs on every field, so it is only done to describe a failure.
    if let Ok(value) = serde_json::from_str(text) {
        return Ok(value);
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::invalid_body(format!("The request body is not valid JSON: {inner}."))
        } else if path == "." {
            // serde's message here names our Rust type, which means nothing to a client.
            ApiError::invalid_body("The request body must be a JSON object.")
        } else {
            let (param, message) = words::field_error(&path, &inner.to_string(), Format::Json);
            ApiError::invalid(param, message)
        }
    })?;
    // Trailing characters after the object are a malformed body too.
    deserializer
        .end()
        .map_err(|e| ApiError::invalid_body(format!("The request body is not valid JSON: {e}.")))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Sample {
        #[allow(dead_code)]
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    struct Item {
        #[allow(dead_code)]
        n: u32,
    }

    fn message(bytes: &[u8]) -> String {
        parse_json::<Sample>(bytes).unwrap_err().message
    }

    #[test]
    fn errors_name_the_field() {
        let err = parse_json::<Sample>(br#"{"items": [{"n": 1}, {"n": "x"}]}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("items[1].n"));
        assert_eq!(
            err.message,
            "items[1].n: must be a whole number from 0 to 4294967295 (got \"x\")"
        );
    }

    #[test]
    fn malformed_bodies_are_described() {
        assert_eq!(message(b""), "The request body is empty; send a JSON object.");
        assert_eq!(
            message(b"{\"items\": \xff}"),
            "The request body is not valid UTF-8 (invalid byte at offset 10)."
        );
        assert_eq!(
            message(b"{\"items\": [}"),
            "The request body is not valid JSON: expected value at line 1 column 12."
        );
        assert_eq!(message(b"[1]"), "The request body must be a JSON object.");
        assert_eq!(
            message(br#"{"items": []} x"#),
            "The request body is not valid JSON: trailing characters at line 1 column 15."
        );
    }
}
