//! The `orchestrator` gateway: an OpenAI-compatible HTTP server in front of the
//! tokio-prompt-orchestrator pipeline.
//!
//! - [`config`]: `pipeline.toml`, read and validated.
//! - [`server`]: binding, serving, draining on shutdown; `http1`: the accept loop; [`runtime`]:
//!   work-stealing or a thread per core.
//! - [`live`], [`reload`]: the running config's pipeline, and swapping it for a new one.
//! - [`api`]: the routes, request parsing, responses and error mapping.
//! - [`models`]: the config's backends and models built into the router the pipeline calls.
//! - [`post`]: the config's post-processors (stop, max_chars, redact, json).
//! - [`auth`]: bearer API keys; [`limits`]: their rate limits.
//! - [`cluster`]: several nodes acting as one over NATS JetStream (membership, shared state,
//!   jobs for workers).
//! - [`worker`]: `orchestrator worker`, which runs jobs from the broker on its own backends.
//! - [`dlq`]: the dead-letter queue's file of failed requests, and `orchestrator dlq`.
//! - [`stored`]: the Responses API's stored answers (a redb file, or the cluster's bucket).
//! - [`telemetry`]: logs, the Prometheus recorder and StatsD; [`logsink`]: log lines to stderr,
//!   access lines batched.
//! - [`stats`]: the live stats feed behind `/admin/stats/stream`, the dashboard and
//!   `orchestrator top`.
//! - [`cli`]: the command line.
//! - [`mock`]: a fake OpenAI-compatible and llama.cpp model server for tests and benchmarks.

pub mod api;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dlq;
pub mod gateway;
mod http1;
pub mod logsink;
pub mod models;
pub mod post;
pub mod runtime;
pub mod server;
pub mod stats;
pub mod stored;
pub mod telemetry;
mod words;
pub mod worker;

pub use config::Config;
pub use server::{Server, ServerHandle};
