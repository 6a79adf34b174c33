//! Hyper's own refusals in the API's words: the 400, 414 and 431 that hyper writes by itself for
//! a request it cannot parse have empty bodies, and this connection wrapper puts an OpenAI-shaped
//! JSON error in their place.
//!
//! Hyper writes such a refusal as a bare head (`content-length: 0`) and then closes the
//! connection, so the wrapper can swap the whole write for its own response. The handlers' own
//! 400s always carry a body, so they never match.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use pin_project_lite::pin_project;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The refusals the accept loop and hyper make, written once per server.
pub struct Refusals {
    bad_request: Bytes,
    uri_too_long: Bytes,
    head_too_large: Bytes,
    /// For a connection over `server.max_connections`.
    pub too_many_connections: Bytes,
}

impl Refusals {
    pub fn new(max_header_bytes: usize) -> Self {
        Self {
            too_many_connections: response(
                "503 Service Unavailable\r\nretry-after: 1",
                "The gateway has server.max_connections connections open; retry shortly, or \
                 raise the setting.",
                "too_many_connections",
            ),
            bad_request: response(
                "400 Bad Request",
                "The request is not valid HTTP/1.1: its request line or a header could not be \
                 parsed.",
                "invalid_http",
            ),
            uri_too_long: response(
                "414 URI Too Long",
                "The request URI is too long; send the data in the body.",
                "uri_too_long",
            ),
            head_too_large: response(
                "431 Request Header Fields Too Large",
                &format!(
                    "The request head (request line and headers) is larger than \
                     server.max_header_bytes ({max_header_bytes} bytes); send smaller headers, or \
                     raise the setting."
                ),
                "headers_too_large",
            ),
        }
    }

    /// Our response in place of `head`, when `head` is one of hyper's bodiless refusals.
    fn replacing(&self, head: &[u8]) -> Option<&Bytes> {
        let rest = head.strip_prefix(b"HTTP/1.1 ")?;
        let refusal = match rest.get(..4)? {
            b"400 " => &self.bad_request,
            b"414 " => &self.uri_too_long,
            b"431 " => &self.head_too_large,
            _ => return None,
        };
        let bodiless = head
            .windows(19)
            .any(|w| w.eq_ignore_ascii_case(b"content-length: 0\r\n"));
        bodiless.then_some(refusal)
    }
}

/// A whole response that closes the connection; `status` may carry extra header lines.
fn response(status: &str, message: &str, code: &str) -> Bytes {
    let kind = if status.starts_with('5') {
        "server_error"
    } else {
        "invalid_request_error"
    };
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}}).to_string();
    Bytes::from(format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    ))
}

pin_project! {
    /// A connection whose hyper refusals are rewritten (see the module docs).
    pub struct WithRefusals<S> {
        #[pin]
        inner: S,
        refusals: Arc<Refusals>,
        // A replacement being written: its bytes, how many are out, and the length of hyper's
        // write it stands for (reported once the replacement is out).
        swap: Option<(Bytes, usize, usize)>,
    }
}

impl<S> WithRefusals<S> {
    pub fn new(inner: S, refusals: Arc<Refusals>) -> Self {
        Self {
            inner,
            refusals,
            swap: None,
        }
    }
}

impl<S: AsyncWrite> WithRefusals<S> {
    /// Writes the replacement in progress; `Ready(n)` with the length hyper wrote once it is out.
    fn poll_swap(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        while let Some((bytes, written, stands_for)) = this.swap.as_mut() {
            if *written == bytes.len() {
                let n = *stands_for;
                // Hyper closes the connection after a refusal; anything it still writes is
                // dropped, never sent after our body.
                *stands_for = 0;
                return Poll::Ready(Ok(n));
            }
            let n = ready!(this.inner.as_mut().poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(0))
    }
}

impl<S: AsyncRead> AsyncRead for WithRefusals<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for WithRefusals<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.swap.is_none() {
            match self.refusals.replacing(buf).cloned() {
                Some(ours) => *self.as_mut().project().swap = Some((ours, 0, buf.len())),
                None => return self.project().inner.poll_write(cx, buf),
            }
        }
        match ready!(self.as_mut().poll_swap(cx))? {
            // The replacement went out before: drop what follows it.
            0 => Poll::Ready(Ok(buf.len())),
            n => Poll::Ready(Ok(n)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // A refusal is a head alone, so it arrives as the first slice.
        let first = bufs.iter().find(|b| !b.is_empty());
        if self.swap.is_none() && first.is_none_or(|b| self.refusals.replacing(b).is_none()) {
            return self.project().inner.poll_write_vectored(cx, bufs);
        }
        let first = first.map_or(&[][..], |b| &**b);
        self.poll_write(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    async fn written(hyper_wrote: &[u8]) -> String {
        let mut out = WithRefusals::new(Vec::new(), Arc::new(Refusals::new(4096)));
        out.write_all(hyper_wrote).await.unwrap();
        String::from_utf8(out.inner).unwrap()
    }

    #[tokio::test]
    async fn a_bodiless_refusal_gets_a_json_body() {
        let out =
            written(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n")
                .await;
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "headers_too_large");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("server.max_header_bytes (4096 bytes)"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn responses_with_bodies_pass_unchanged() {
        let ours =
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(written(ours.as_bytes()).await, ours);
        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(written(ok.as_bytes()).await, ok);
    }
}
