//! Server-Sent Events written straight into the response body's buffer, and the body that sends
//! them: every event that is ready when the connection can take more goes out as one write, and
//! none waits for another.
//!
//! A stream's events are written here rather than through axum's `Sse`, which builds each event
//! in a buffer of its own, copies the data in through a formatter, and sends each event as a
//! write of its own.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use http_body::Frame;
use serde::Serialize;
use tokio::time::{Instant, Sleep, sleep_until};

/// Events written and not yet sent.
#[derive(Default)]
pub struct Frames {
    buf: BytesMut,
}

impl Frames {
    /// An event with only data.
    pub fn data(&mut self, data: &str) {
        self.lines("data", data);
        self.buf.put_u8(b'\n');
    }

    /// An event of type `name`.
    pub fn event(&mut self, name: &str, data: &str) {
        self.lines("event", name);
        self.data(data);
    }

    /// An event of type `name` (or with only data) whose data is `value` as JSON, serialised in
    /// place.
    pub fn json<T: Serialize + ?Sized>(&mut self, name: Option<&str>, value: &T) {
        if let Some(name) = name {
            self.lines("event", name);
        }
        // Compact JSON holds no line break (one in a string is escaped), so it is one data line.
        self.data_line(|buf| {
            // Writing into memory fails only for a value that cannot be JSON, which ours are not.
            let _ = serde_json::to_writer(buf.writer(), value);
        });
    }

    /// One `data:` line whose text `write` puts in the buffer; the text must hold no line break.
    pub fn data_line(&mut self, write: impl FnOnce(&mut BytesMut)) {
        // Room for a typical chunk, so that it is not copied on the way to its size.
        self.buf.reserve(256);
        self.buf.put_slice(b"data: ");
        write(&mut self.buf);
        self.buf.put_slice(b"\n\n");
    }

    /// A comment, which clients skip.
    pub fn comment(&mut self, text: &str) {
        self.lines("", text);
        self.buf.put_u8(b'\n');
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// What was written, leaving the buffer empty. The buffer goes with it: a stream waits
    /// between tokens far longer than it writes, and holds no memory while it waits.
    pub fn take(&mut self) -> Bytes {
        std::mem::take(&mut self.buf).freeze()
    }

    /// `text` as `field: line` lines, one per line of it (the format has no other way to carry
    /// a line break).
    fn lines(&mut self, field: &str, text: &str) {
        self.buf.reserve(field.len() + text.len() + 3);
        let mut rest = text;
        loop {
            let end = rest.find(['\n', '\r']).unwrap_or(rest.len());
            self.buf.put_slice(field.as_bytes());
            self.buf.put_slice(b": ");
            self.buf.put_slice(&rest.as_bytes()[..end]);
            self.buf.put_u8(b'\n');
            if end == rest.len() {
                return;
            }
            let breaks = if rest[end..].starts_with("\r\n") { 2 } else { 1 };
            rest = &rest[end + breaks..];
        }
    }
}

/// A stream whose events are all written: one body.
pub fn whole(mut frames: Frames) -> Response {
    response(Body::from(frames.take()))
}

/// A stream whose events come from `source`, each item every event ready at the time; a
/// comment goes out after `keep_alive` without one, so idle proxies keep the connection and a
/// client that went away is noticed between tokens.
pub fn live<S>(source: S, keep_alive: Duration) -> Response
where
    S: Stream<Item = Bytes> + Send + Unpin + 'static,
{
    let now = Instant::now();
    response(Body::new(LiveBody {
        source,
        keep_alive,
        timer: Box::pin(sleep_until(now + keep_alive)),
        last_sent: now,
    }))
}

fn response(body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

struct LiveBody<S> {
    source: S,
    keep_alive: Duration,
    timer: Pin<Box<Sleep>>,
    /// When the last bytes went out. The timer is not moved for every write: when it fires
    /// early it is set again from here.
    last_sent: Instant,
}

impl<S: Stream<Item = Bytes> + Unpin> http_body::Body for LiveBody<S> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if let Poll::Ready(next) = Pin::new(&mut this.source).poll_next(cx) {
            if next.is_some() {
                this.last_sent = Instant::now();
            }
            return Poll::Ready(next.map(|bytes| Ok(Frame::data(bytes))));
        }
        loop {
            ready!(this.timer.as_mut().poll(cx));
            let due = this.last_sent + this.keep_alive;
            let now = Instant::now();
            if due > now {
                this.timer.as_mut().reset(due);
                continue;
            }
            this.last_sent = now;
            this.timer.as_mut().reset(now + this.keep_alive);
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b":\n\n")))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(write: impl FnOnce(&mut Frames)) -> String {
        let mut frames = Frames::default();
        write(&mut frames);
        String::from_utf8(frames.take().to_vec()).unwrap()
    }

    #[test]
    fn events_are_written_in_the_format() {
        assert_eq!(written(|f| f.data("[DONE]")), "data: [DONE]\n\n");
        assert_eq!(
            written(|f| f.event("error", "{\"a\":1}")),
            "event: error\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(
            written(|f| f.json(Some("ping"), &serde_json::json!({"text": "a\nb"}))),
            "event: ping\ndata: {\"text\":\"a\\nb\"}\n\n"
        );
        assert_eq!(written(|f| f.comment("note 1")), ": note 1\n\n");
    }

    #[test]
    fn a_line_break_in_data_becomes_another_data_line() {
        assert_eq!(written(|f| f.data("a\nb")), "data: a\ndata: b\n\n");
        assert_eq!(written(|f| f.comment("a\r\nb\rc")), ": a\n: b\n: c\n\n");
    }
}
