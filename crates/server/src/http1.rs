//! The accept loop: every connection served as HTTP/1.1 by hyper, closed gracefully on shutdown.
//!
//! This is what `axum::serve` does, minus its protocol detection. That detection reads the first
//! 24 bytes of every connection on their own (to look for an HTTP/2 preface) and hands them back
//! to the HTTP/1 parser, which then has to grow its 8 KiB read buffer to 16 KiB to read the rest
//! of the head: 8 KiB more per open connection, held as long as the connection lives (about 8 MB
//! with 1,000 streams open; BENCHMARKS.md, "1,000 concurrent streams"). The gateway speaks
//! HTTP/1.1 only, so it does not need the detection.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long to wait before accepting again after an error that is not one connection's own
/// (out of file descriptors, say), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `stop` completes; then stops accepting, lets each connection
/// finish the response it is writing, and returns when every connection has closed. Dropping the
/// future (aborting its task) closes every connection at once.
pub async fn serve(listener: TcpListener, app: axum::Router, stop: impl Future<Output = ()>) {
    // Cancelled when this future ends or is dropped: connections still open then are cut.
    let cut = CancellationToken::new();
    let _cut_on_drop = cut.clone().drop_guard();
    // Cancelled when `stop` completes, and by `cut`: a connection's steady state waits on this
    // one token alone (each wait polled costs a lock, on every wake-up of the connection).
    let closing = cut.child_token();
    let connections = TaskTracker::new();
    let mut stop = pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    accept_failed(&error).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // Small SSE frames must leave at once, not wait for Nagle's algorithm.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, "Could not set TCP_NODELAY on a connection.");
        }
        let service = TowerToHyperService::new(app.clone());
        let (closing, cut) = (closing.clone(), cut.clone());
        connections.spawn(async move {
            // No timer, as with `axum::serve`: hyper's request-head timeout would arm one for
            // every request, idle keep-alive waits included.
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            let mut connection = pin!(connection);
            let result = tokio::select! {
                biased;
                result = connection.as_mut() => result,
                () = closing.cancelled() => {
                    if cut.is_cancelled() {
                        return;
                    }
                    connection.as_mut().graceful_shutdown();
                    tokio::select! {
                        result = connection => result,
                        () = cut.cancelled() => return,
                    }
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, "A connection ended with an error.");
            }
        });
    }
    drop(listener);
    closing.cancel();
    connections.close();
    connections.wait().await;
}

/// Errors of one connection (reset before it was accepted) need no pause; others do.
async fn accept_failed(error: &io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "Could not accept a connection; retrying in a second.");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::mpsc;

    use super::*;

    #[tokio::test]
    async fn aborting_the_server_closes_its_open_connections() {
        // One route that says it was called, then never answers.
        let (called, mut calls) = mpsc::unbounded_channel::<()>();
        let app = axum::Router::new().route(
            "/hang",
            get(move || {
                let _ = called.send(());
                std::future::pending::<&'static str>()
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, app, std::future::pending()));
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /hang HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        calls.recv().await.unwrap();

        server.abort();
        let mut buf = [0u8; 64];
        // Bounded only so that a regression fails instead of hanging the suite.
        let read = tokio::time::timeout(Duration::from_secs(30), client.read(&mut buf))
            .await
            .expect("the connection stayed open after the server was aborted");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}
