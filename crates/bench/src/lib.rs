//! `orchestrator-bench`: a load harness that measures the gateway against its upstream alone
//! (and, optionally, peers: LiteLLM, Portkey, and a bare forwarding proxy) in one run, and prints a
//! markdown table.
//!
//! - [`schedule`]: the open-loop arrival times (latency is measured from them).
//! - [`load`]: one run, open loop (`Load::Rate`) or closed loop (`Load::Concurrency`).
//! - [`sse`]: SSE parsing and token timings (TTFT, ITL) for streamed answers.
//! - [`stats`]: counters and HDR histograms, percentiles, added latency.
//! - [`harness`]: every target under every load, the upstream first, same settings.
//! - [`procs`]: starting, probing and stopping servers; CPU and peak RSS from /proc.
//! - [`forwarder`]: the bare forwarding proxy (`--peer forwarder`).
//! - [`config`]: the generated gateway TOML, LiteLLM YAML, Portkey headers and request bodies.
//! - [`report`]: rows, markdown, JSON; [`chart`]: the PNG.

pub mod chart;
pub mod config;
pub mod forwarder;
pub mod harness;
pub mod load;
pub mod procs;
pub mod report;
pub mod schedule;
pub mod sse;
pub mod stats;
