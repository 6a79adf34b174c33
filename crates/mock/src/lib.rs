//! A fast fake model server (the `mock-upstream` binary) speaking the OpenAI-compatible API
//! and llama.cpp's native API, so tests, benchmarks and machines without a GPU have an upstream.
//!
//! Its latency, time to first token, token pace, error rate and mid-stream cuts are set by a
//! [`Behaviour`] that a test can change while the server runs ([`MockHandle`]), and counters
//! ([`MockStats`]) show what reached it, including streams whose client went away.
//!
//! - [`config`]: the settings and the command-line flags.
//! - [`state`]: counters, the runtime handle, the seeded error sequence.
//! - `openai`, `llamacpp`: the endpoints (llama-server's chat route is the OpenAI one, taking
//!   llama.cpp's `id_slot` as `/completion` does); `stream`: paced SSE; `reply`: shared pieces;
//! - [`tools`]: tool calls, when a request offers tools; `embeddings`: vectors made from each
//!   input, held while a test says so.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use orchestrator_mock::{MockConfig, MockUpstream};
//! let mock = MockUpstream::start(MockConfig::ephemeral()).await?;
//! let url = mock.url("/v1/chat/completions");
//! mock.handle().update(|b| b.error_rate = 1.0); // every request now fails with 503
//! # Ok(()) }
//! ```

pub mod config;
mod embeddings;
mod llamacpp;
mod openai;
mod reply;
pub mod state;
mod stream;
pub mod tools;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use config::{Behaviour, MockArgs, MockConfig};
pub use state::{MockHandle, MockStats, RecordedRequest};

use state::Shared;

/// A bound, not yet serving, mock upstream.
pub struct MockUpstream {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl MockUpstream {
    /// Binds `config.listen` (port 0 picks a free port).
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(config: MockConfig) -> io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Self {
            listener,
            shared: Arc::new(Shared::new(&config)),
        })
    }

    /// Binds and serves on a task of the current runtime; the server stops when the returned
    /// [`RunningMock`] is dropped.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn start(config: MockConfig) -> io::Result<RunningMock> {
        let mock = Self::bind(config).await?;
        let addr = mock.local_addr()?;
        let handle = mock.handle();
        let task = tokio::spawn(mock.run(std::future::pending()));
        Ok(RunningMock { addr, handle, task })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle to read the counters and change the behaviour while the server runs.
    pub fn handle(&self) -> MockHandle {
        MockHandle {
            shared: self.shared.clone(),
        }
    }

    /// Serves until `shutdown` completes; then stops accepting and waits for open connections.
    ///
    /// # Errors
    /// When the HTTP server fails.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> io::Result<()> {
        // Small SSE frames must leave at once, not wait ~40 ms for Nagle's algorithm.
        let listener = self.listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "Could not set TCP_NODELAY on a connection.");
            }
        });
        axum::serve(listener, router(self.shared))
            .with_graceful_shutdown(shutdown)
            .await
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/models", get(openai::models))
        .route("/metrics", get(openai::metrics))
        .route("/completion", post(llamacpp::completion))
        .route("/health", get(llamacpp::health))
        .route("/slots", get(llamacpp::slots))
        .with_state(shared)
}

/// A mock serving on a background task, for tests. Dropping it stops accepting connections
/// (connections already open run on their own tasks until their client closes them).
pub struct RunningMock {
    addr: SocketAddr,
    handle: MockHandle,
    task: JoinHandle<io::Result<()>>,
}

impl RunningMock {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the base URL of llama.cpp-style clients.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn handle(&self) -> &MockHandle {
        &self.handle
    }
}

impl std::ops::Deref for RunningMock {
    type Target = MockHandle;

    fn deref(&self) -> &MockHandle {
        &self.handle
    }
}

impl Drop for RunningMock {
    fn drop(&mut self) {
        self.task.abort();
    }
}
