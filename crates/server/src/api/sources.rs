//! `X-Rag-Sources: true`: the context the RAG stage used, in the response body (a `sources`
//! field; in a stream, on its first chunk) and in an `X-Rag-Sources` response header.

use axum::http::{HeaderName, HeaderValue};
use serde_json::{Value, json};
use tokio_prompt_orchestrator::RetrievedChunk;

pub const SOURCES_HEADER: HeaderName = HeaderName::from_static("x-rag-sources");

/// The `sources` field: each chunk's source, position and score (not its text, which the
/// caller can look up, and which would double the body).
pub fn field(sources: &[RetrievedChunk]) -> Value {
    sources
        .iter()
        .map(|c| json!({"source": c.source, "position": c.position, "score": c.score}))
        .collect()
}

/// Adds the `sources` field to a JSON body built elsewhere.
pub fn with_field(body: String, sources: &[RetrievedChunk]) -> String {
    match serde_json::from_str::<Value>(&body) {
        Ok(Value::Object(mut fields)) => {
            fields.insert("sources".into(), field(sources));
            Value::Object(fields).to_string()
        }
        // Every body this is given is a JSON object; anything else goes out unchanged.
        _ => body,
    }
}

/// The header: `source#position=score` per chunk, comma-separated, with the characters a header
/// cannot hold (and `,`, `#`, `%`, `=`) percent-encoded in the source.
pub fn header(sources: &[RetrievedChunk]) -> HeaderValue {
    let mut text = String::new();
    for (i, chunk) in sources.iter().enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        for byte in chunk.source.bytes() {
            if byte.is_ascii_graphic() && !matches!(byte, b',' | b'#' | b'%' | b'=') {
                text.push(char::from(byte));
            } else {
                text.push_str(&format!("%{byte:02X}"));
            }
        }
        text.push_str(&format!("#{}={:.3}", chunk.position, chunk.score));
    }
    // Only visible ASCII and spaces were written.
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(source: &str, position: u64, score: f32) -> RetrievedChunk {
        RetrievedChunk {
            text: "text".into(),
            source: source.into(),
            position,
            score,
        }
    }

    #[test]
    fn the_header_lists_each_chunk_and_escapes_what_headers_cannot_hold() {
        let value = header(&[chunk("docs/a.md", 3, 4.5), chunk("notes, été#1.txt", 0, 1.25)]);
        assert_eq!(
            value.to_str().unwrap(),
            "docs/a.md#3=4.500, notes%2C%20%C3%A9t%C3%A9%231.txt#0=1.250"
        );
    }

    #[test]
    fn the_field_is_added_to_an_object_body() {
        let body = with_field(r#"{"id":"x"}"#.into(), &[chunk("a.md", 1, 2.0)]);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({"id": "x", "sources": [{"source": "a.md", "position": 1, "score": 2.0}]})
        );
    }
}
