//! What a generation request's headers add to its body: the session key, priority, dedup,
//! retrieval query and sources, the cache's bypass and the W3C trace context, for every edge.

use std::fmt;

use axum::http::{HeaderMap, HeaderName, header};

use super::error::ApiError;
use crate::gateway::Hints;

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
