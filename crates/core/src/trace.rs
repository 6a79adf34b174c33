//! W3C trace context for requests an edge has chosen to trace, and the spans recorded for them
//! where the pipeline cannot see: each call to a backend (an attempt), made by a router.
//!
//! The pipeline itself records nothing per stage for a trace: the edge builds the stage spans,
//! when the request ends, from the timings every request carries ([`StageTimings`]). A request
//! that is not traced carries no [`RequestTrace`] and costs nothing here.
//!
//! [`StageTimings`]: crate::StageTimings

use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

/// A W3C `traceparent`: the trace, the span a receiver's work hangs under, and whether the trace
/// is sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub sampled: bool,
}

impl TraceParent {
    /// Reads a version-00 `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`); `None` when malformed,
    /// or when either id is all zeros (which the spec says to ignore).
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00" || parts.next().is_some() || flags.len() != 2 {
            return None;
        }
        let trace_id: [u8; 16] = hex_bytes(trace)?;
        let parent_id: [u8; 8] = hex_bytes(parent)?;
        let [flags] = hex_bytes::<1>(flags)?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The same trace with `span_id` as the parent: what to send with a call made from that span.
    pub fn child(self, span_id: [u8; 8]) -> Self {
        Self {
            parent_id: span_id,
            ..self
        }
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags = u8::from(self.sampled);
        write!(
            f,
            "00-{}-{}-{flags:02x}",
            Hex(&self.trace_id),
            Hex(&self.parent_id)
        )
    }
}

struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

fn hex_bytes<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A new random span id (never all zeros).
pub fn new_span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

/// A new random trace id (never all zeros).
pub fn new_trace_id() -> [u8; 16] {
    fastrand::u128(1..).to_be_bytes()
}

/// A traced request's context and the spans recorded for it while it runs.
#[derive(Debug)]
pub struct RequestTrace {
    /// The trace, and the span that calls to backends hang under (the edge's Inference span).
    pub parent: TraceParent,
    spans: Mutex<Vec<SpanRecord>>,
}

/// Two requests are equal whatever their traces recorded.
impl PartialEq for RequestTrace {
    fn eq(&self, other: &Self) -> bool {
        self.parent == other.parent
    }
}

impl RequestTrace {
    pub fn new(parent: TraceParent) -> Self {
        Self {
            parent,
            spans: Mutex::new(Vec::new()),
        }
    }

    pub fn record(&self, span: SpanRecord) {
        self.spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(span);
    }

    /// The spans recorded so far, in the order they ended; takes them.
    pub fn take(&self) -> Vec<SpanRecord> {
        std::mem::take(&mut *self.spans.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// One finished span under [`RequestTrace::parent`].
#[derive(Clone, Debug, PartialEq)]
pub struct SpanRecord {
    pub span_id: [u8; 8],
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, SpanValue)>,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// An attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub enum SpanValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_what_the_spec_ignores() {
        let text = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let parsed = TraceParent::parse(text).expect("valid");
        assert!(parsed.sampled);
        assert_eq!(parsed.to_string(), text);
        let child = parsed.child([1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            child.to_string(),
            "00-0af7651916cd43dd8448eb211c80319c-0102030405060708-01"
        );
        for bad in [
            "",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        assert!(
            !TraceParent::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
                .unwrap()
                .sampled
        );
    }
}
