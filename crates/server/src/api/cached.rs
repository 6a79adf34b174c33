//! Answers from the response cache (`crate::gateway::cache`), in the shape the client asked for:
//! the same body as the first time (same id and creation time), or that answer as a stream.

use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use tokio_prompt_orchestrator::{Completion, Response as Answer};

use super::frames::{self, Frames};
use super::json_body;
use super::sse::Writer;
use super::wire::{Endpoint, Header};
use crate::gateway::Delivery;
use crate::gateway::cache::{Cached, Fill};

/// `X-Cache: hit` on an answer from the cache, `miss` on one that will be kept.
pub const CACHE_HEADER: HeaderName = HeaderName::from_static("x-cache");
pub const HIT: HeaderValue = HeaderValue::from_static("hit");
pub const MISS: HeaderValue = HeaderValue::from_static("miss");

/// Keeps a completed answer, unless it carries more than text and top-level fields (tool calls
/// and other message fields are not kept: a stream could not replay them as their deltas).
pub fn keep(fill: Fill, header: &Header, answer: &Answer) {
    let calls = answer.passthrough.as_ref();
    if calls.is_some_and(|p| !p.message.is_empty() || !p.choice.is_empty()) {
        return;
    }
    fill.put(Cached::of(header.id.clone(), header.created, answer));
}

/// The kept answer `hit` to a request on `endpoint`, as the request's `delivery` asks.
pub fn respond(endpoint: Endpoint, delivery: &Delivery, hit: &Cached) -> Response {
    let header = Header {
        endpoint,
        id: hit.id.clone(),
        created: hit.created,
        model: delivery.model.clone(),
    };
    let extra = hit.passthrough.as_deref();
    let mut response = if delivery.stream {
        let mut frames = Frames::default();
        if let Some(role) = header.role_chunk() {
            frames.data(&role);
        }
        if !hit.text.is_empty() {
            frames.data(&header.text_chunk(&hit.text, None));
        }
        frames.data(&header.finish_chunk(hit.finish_reason, extra));
        if delivery.include_usage {
            frames.data(&header.usage_chunk(hit.usage));
        }
        frames.data("[DONE]");
        frames::whole(frames)
    } else {
        let body = header.complete(&hit.text, hit.finish_reason, hit.usage, extra);
        json_body(body)
    };
    response.headers_mut().insert(CACHE_HEADER, HIT);
    response
}

/// The kept answer `hit` as the stream `writer` writes (for the APIs whose streams are written
/// by a [`Writer`]).
pub async fn replayed<W: Writer>(mut writer: W, hit: &Cached) -> Response {
    let mut frames = Frames::default();
    writer.opening(None, &mut frames);
    if !hit.text.is_empty() {
        writer.token(&hit.text, &mut frames);
    }
    if let Some(extra) = hit.passthrough.clone() {
        writer.passthrough(extra, &mut frames);
    }
    let completion = Completion {
        finish_reason: hit.finish_reason,
        usage: hit.usage,
        ..Completion::default()
    };
    if let Some(work) = writer.finishing(&completion) {
        work.await;
    }
    writer.done(&completion, std::time::Duration::ZERO, &mut frames);
    let mut response = frames::whole(frames);
    response.headers_mut().insert(CACHE_HEADER, HIT);
    response
}
