//! The accept loop: every connection served as HTTP/1.1 by hyper, within the edge's limits, and
//! closed gracefully on shutdown.
//!
//! This is what `axum::serve` does, minus its protocol detection. That detection reads the first
//! 24 bytes of every connection on their own (to look for an HTTP/2 preface) and hands them back
//! to the HTTP/1 parser, which then has to grow its 8 KiB read buffer to 16 KiB to read the rest
//! of the head: 8 KiB more per open connection, held as long as the connection lives. The
//! gateway speaks HTTP/1.1 only, so it does not need the detection.
//!
//! The limits ([`Edge`]): a request head must arrive within `header_read_timeout_ms` of the
//! connection opening or going idle ([`idle`]), and be at most `max_header_bytes` (431 otherwise,
//! with a JSON body: [`refusal`]); at most `max_connections` are open at once (one more is
//! answered 503 and closed). Bodies are bounded where they are read (`api::body`).

mod idle;
mod refusal;

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use metrics::{Gauge, counter, gauge};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_prompt_orchestrator::Cores;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::idle::{Connection, Watch, Watched};
use self::refusal::{Refusals, WithRefusals};
use crate::config::ServerConfig;

/// Connections refused because `max_connections` were open (counter).
pub const HTTP_CONNECTIONS_REFUSED: &str = "orchestrator_http_connections_refused_total";
/// Connections open now (gauge).
pub const HTTP_CONNECTIONS_OPEN: &str = "orchestrator_http_connections_open";

/// The limits every connection is served within; from `[server]`, read when the server starts.
#[derive(Clone, Copy, Debug)]
pub struct Edge {
    pub max_header_bytes: usize,
    pub header_read_timeout: Option<Duration>,
    pub max_connections: usize,
}

impl From<&ServerConfig> for Edge {
    fn from(config: &ServerConfig) -> Self {
        Self {
            max_header_bytes: config.max_header_bytes,
            header_read_timeout: (config.header_read_timeout_ms > 0)
                .then(|| Duration::from_millis(config.header_read_timeout_ms)),
            max_connections: config.max_connections,
        }
    }
}

impl Edge {
    fn builder(&self) -> http1::Builder {
        let mut builder = http1::Builder::new();
        builder
            // Hyper's own floor for its read buffer is 8 KiB; the buffer bounds a head that has
            // not ended yet, the header size check one that has.
            .max_buf_size(self.max_header_bytes.max(8192))
            .max_header_size(self.max_header_bytes);
        builder
    }
}

/// How long to wait before accepting again after an error that is not one connection's own
/// (out of file descriptors, say), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `stop` completes; then stops accepting, lets each connection
/// finish the response it is writing, and returns when every connection has closed. Dropping the
/// future (aborting its task) closes every connection at once.
///
/// With `cores`, each connection is handed to the next core thread in turn and served there
/// (round-robin spreads even a few long-lived connections evenly, which the kernel's hash of
/// `SO_REUSEPORT` listeners does not, and one listening socket cannot be shared by mistake with
/// another process); without, on the runtime this runs on.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    edge: Edge,
    cores: Option<Cores>,
    stop: impl Future<Output = ()>,
) {
    // Cancelled when this future ends or is dropped: connections still open then are cut.
    let cut = CancellationToken::new();
    let _cut_on_drop = cut.clone().drop_guard();
    // Cancelled when `stop` completes, and by `cut`. A connection's steady state waits on one
    // token alone, its own child of this one that the head-read watch can also cancel (each
    // wait polled costs a lock, on every wake-up of the connection).
    let closing = cut.child_token();
    let connections = TaskTracker::new();
    let places = Arc::new(Semaphore::new(edge.max_connections));
    let refusals = Arc::new(Refusals::new(edge.max_header_bytes));
    let watch = Watch::new(edge.header_read_timeout);
    tokio::spawn(watch.clone().run(cut.clone()));
    let each = Connections {
        app,
        builder: edge.builder(),
        refusals: refusals.clone(),
        cut: cut.clone(),
        open: gauge!(HTTP_CONNECTIONS_OPEN),
    };
    let mut next_core = 0;
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
        let Ok(place) = places.clone().try_acquire_owned() else {
            refuse(&stream, &refusals);
            continue;
        };
        let watched = watch.open(&closing);
        let Some(cores) = &cores else {
            connections.spawn(each.clone().serve(stream, watched, place));
            continue;
        };
        // Out of this runtime's reactor, into the chosen core's.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "Could not hand a connection to a core thread.");
                continue;
            }
        };
        let each = each.clone();
        let core = &cores.handles()[next_core % cores.len()];
        next_core = next_core.wrapping_add(1);
        connections.spawn_on(
            async move {
                match TcpStream::from_std(stream) {
                    Ok(stream) => each.serve(stream, watched, place).await,
                    Err(error) => tracing::warn!(%error, "A core thread could not take a connection."),
                }
            },
            core,
        );
    }
    drop(listener);
    closing.cancel();
    connections.close();
    connections.wait().await;
}

/// What serving one connection needs, shared by all of them.
#[derive(Clone)]
struct Connections {
    app: axum::Router,
    builder: http1::Builder,
    refusals: Arc<Refusals>,
    /// Cancelled when the server cuts every connection at once.
    cut: CancellationToken,
    open: Gauge,
}

impl Connections {
    /// Serves `stream` as HTTP/1.1 until it closes, is closed gracefully on shutdown, or is cut.
    async fn serve(self, stream: TcpStream, watched: Arc<Connection>, place: OwnedSemaphorePermit) {
        let _place = place;
        // Small SSE frames must leave at once, not wait for Nagle's algorithm.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, "Could not set TCP_NODELAY on a connection.");
        }
        let io = TokioIo::new(WithRefusals::new(stream, self.refusals));
        let service = Watched::new(TowerToHyperService::new(self.app), watched.clone());
        let (cut, open) = (self.cut, self.open);
        let connection = self.builder.serve_connection(io, service);
        open.increment(1.0);
        let mut connection = pin!(connection);
        let result = tokio::select! {
            biased;
            result = connection.as_mut() => result,
            () = watched.cut.cancelled() => {
                // Cut: waited too long for a head, or the server is going away at once.
                if watched.expired() || cut.is_cancelled() {
                    open.decrement(1.0);
                    return;
                }
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    result = connection => result,
                    () = cut.cancelled() => {
                        open.decrement(1.0);
                        return;
                    }
                }
            }
        };
        open.decrement(1.0);
        if let Err(error) = result {
            tracing::debug!(%error, "A connection ended with an error.");
        }
    }
}

/// Answers a connection over `max_connections` with 503 and closes it, without waiting: a
/// socket just accepted has room for these few bytes, and one that has not is simply closed.
fn refuse(stream: &TcpStream, refusals: &Refusals) {
    counter!(HTTP_CONNECTIONS_REFUSED).increment(1);
    let _ = stream.try_write(&refusals.too_many_connections);
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
        let edge = Edge::from(&ServerConfig::default());
        let server = tokio::spawn(serve(listener, app, edge, None, std::future::pending()));
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
