//! Command-line options and the start-up of the systems under test.

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use orchestrator_bench::config;
use orchestrator_bench::procs::{self, Server};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Open loop: fixed request rates (`--rates`), latency from each scheduled start.
    Rate,
    /// Closed loop: a fixed number of requests in flight (`--concurrency`).
    Concurrency,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Peer {
    /// LiteLLM proxy (install with scripts/setup-litellm.sh).
    Litellm,
    /// Portkey's AI gateway on Node.js (install with scripts/setup-portkey.sh); routed to the
    /// upstream by request headers.
    Portkey,
    /// A bare forwarding proxy (hyper server, hyper client, no JSON): the floor of the HTTP
    /// work alone (`orchestrator-forwarder`, built with this harness).
    Forwarder,
}

/// Load harness: the gateway against its upstream alone (and LiteLLM) in one run.
#[derive(Debug, Parser)]
#[command(version)]
pub struct Args {
    #[arg(long, value_enum, default_value_t = Mode::Rate)]
    pub mode: Mode,
    /// Offered rates, req/s, for `--mode rate`.
    #[arg(long, value_delimiter = ',', default_value = "500,2000")]
    pub rates: Vec<f64>,
    /// Requests in flight, for `--mode concurrency` (a list measures each).
    #[arg(long, value_delimiter = ',', default_value = "32")]
    pub concurrency: Vec<usize>,
    /// Measured time of each run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Warm-up before each measured run (same load, not counted).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub warmup: Duration,
    /// Ask for streamed answers (SSE) and measure TTFT and inter-token latency.
    #[arg(long)]
    pub stream: bool,
    /// Use this running upstream (`http://host:port`) instead of starting the mock.
    #[arg(long)]
    pub upstream_url: Option<String>,
    /// Use running gateways instead of starting one: `URL`, or `NAME=URL` to name the row, or
    /// `NAME=URL+URL+...` for several nodes taken in turn; several targets separated by commas.
    #[arg(long, value_delimiter = ',')]
    pub gateway_url: Vec<String>,
    /// A header sent to the gateways (`NAME: VALUE`, e.g. an API key), not to the upstream.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// The `orchestrator` binary [default: next to this executable].
    #[arg(long)]
    pub orchestrator_bin: Option<PathBuf>,
    /// Also measure these peers (a list: `--peer litellm,forwarder`).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub peer: Vec<Peer>,
    /// The `litellm` executable [default: .venv-litellm/bin/litellm].
    #[arg(long, default_value = ".venv-litellm/bin/litellm")]
    pub litellm_bin: PathBuf,
    /// Portkey's server script [default: the one scripts/setup-portkey.sh installs].
    #[arg(
        long,
        default_value = ".portkey/node_modules/@portkey-ai/gateway/build/start-server.js"
    )]
    pub portkey_server: PathBuf,
    /// The Node.js executable that runs Portkey.
    #[arg(long, default_value = "node")]
    pub node: PathBuf,
    /// Open loop: offer a system no rate above this (`--max-rate portkey=1000,litellm=150`), so a
    /// slow peer is measured up to its saturation and not queued to the timeout at every rate.
    #[arg(long, value_name = "SYSTEM=REQ_S", value_delimiter = ',', value_parser = parse_max_rate)]
    pub max_rate: Vec<(String, f64)>,
    /// Model name sent in requests (and served by the mock).
    #[arg(long, default_value = "mock")]
    pub model: String,
    /// Mock upstream: completion length in tokens.
    #[arg(long, default_value_t = 16)]
    pub mock_tokens: u32,
    /// Mock upstream: delay before each answer, ms.
    #[arg(long, default_value_t = 0)]
    pub mock_latency_ms: u64,
    /// Mock upstream: pace of streamed tokens (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub mock_tokens_per_second: u32,
    /// RUST_LOG of the gateway (`info` keeps its access log on, as deployed).
    #[arg(long, default_value = "info")]
    pub gateway_log: String,
    /// Gateway: requests it holds at once (admission, and the streaming stages' concurrency and
    /// queues), for loads above its defaults (256 in the pipeline), e.g. 1,000 open streams.
    #[arg(long, value_name = "N")]
    pub gateway_capacity: Option<usize>,
    /// Open loop: most requests in flight; beyond it requests wait (and that wait is latency).
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: usize,
    /// Per-request deadline.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub timeout: Duration,
    /// Results directory [default: bench-results/bench-<UTC time>/].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Held (flock) while measuring, so benchmarks on a shared machine do not overlap.
    #[arg(long, default_value = "/tmp/bench.lock")]
    pub lock: PathBuf,
    /// Do not draw the PNG chart.
    #[arg(long)]
    pub no_chart: bool,
}

fn parse_max_rate(s: &str) -> Result<(String, f64), String> {
    let (system, rate) = s
        .split_once('=')
        .ok_or_else(|| format!("expected SYSTEM=REQ_S, got {s:?}"))?;
    let rate: f64 = rate.parse().map_err(|e| format!("{rate:?} is not a rate: {e}"))?;
    Ok((system.to_owned(), rate))
}

/// `bench-results/bench-20261125T120000Z`.
pub fn default_out() -> PathBuf {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let stamp: String = now.chars().filter(|c| *c != '-' && *c != ':').collect();
    PathBuf::from(format!("bench-results/bench-{stamp}"))
}

/// The `orchestrator` binary: `--orchestrator-bin`, or the one next to this executable
/// (target/<profile>/ holds it after `cargo build -p orchestrator-server -p orchestrator-bench`).
///
/// # Errors
/// When neither exists.
pub fn orchestrator_bin(args: &Args) -> Result<PathBuf> {
    if let Some(bin) = &args.orchestrator_bin {
        return Ok(bin.clone());
    }
    sibling("orchestrator", "orchestrator-server")
        .context("the orchestrator binary (or pass --orchestrator-bin)")
}

/// The binary `name` of `package`, built next to this executable (`target/<profile>/`).
fn sibling(name: &str, package: &str) -> Result<PathBuf> {
    let bin = std::env::current_exe()?.with_file_name(name);
    anyhow::ensure!(
        bin.exists(),
        "no {name} binary at {}: build it (cargo build --release -p {package})",
        bin.display()
    );
    Ok(bin)
}

/// The `mock-upstream` binary next to this executable.
///
/// # Errors
/// When it has not been built.
pub fn mock_bin() -> Result<PathBuf> {
    sibling("mock-upstream", "orchestrator-mock")
}

/// Starts the mock upstream (`bin`) on a free port and waits until it answers.
///
/// # Errors
/// When it does not start or answer within 30 s.
pub async fn start_mock(bin: &Path, args: &Args, out: &Path) -> Result<Server> {
    let mut cmd = Command::new(bin);
    cmd.args(["--log-format", "json", "--listen", "127.0.0.1:0"])
        .args(["--tokens", &args.mock_tokens.to_string()])
        .args(["--latency-ms", &args.mock_latency_ms.to_string()])
        .args(["--tokens-per-second", &args.mock_tokens_per_second.to_string()])
        .args(["--model", &args.model])
        .env("RUST_LOG", "warn,mock_upstream=info,orchestrator_mock=info");
    let log = out.join("mock.log");
    let (mut child, pid) = procs::spawn("mock upstream", cmd, &log)?;
    let addr = procs::bound_addr("mock upstream", &mut child, &log, Duration::from_secs(30)).await?;
    let base = format!("http://{addr}");
    Server::new("mock upstream", child, pid, base)
        .ready("/v1/models", &log, Duration::from_secs(30))
        .await
}

/// Starts the gateway with a generated config (written to `out/gateway.toml`) in front of
/// `upstream` and waits for /readyz.
///
/// # Errors
/// When it does not start or become ready within 30 s.
pub async fn start_gateway(bin: &Path, args: &Args, upstream: &str, out: &Path) -> Result<Server> {
    let config = out.join("gateway.toml");
    std::fs::write(
        &config,
        config::gateway_toml(upstream, &args.model, args.gateway_capacity),
    )?;
    let mut cmd = Command::new(bin);
    cmd.args([
        "serve",
        "--log-format",
        "json",
        "--listen",
        "127.0.0.1:0",
        "--config",
    ])
    .arg(&config)
    .env("RUST_LOG", &args.gateway_log);
    let log = out.join("gateway.log");
    let (mut child, pid) = procs::spawn("gateway", cmd, &log)?;
    let addr = procs::bound_addr("gateway", &mut child, &log, Duration::from_secs(30)).await?;
    let base = format!("http://{addr}");
    Server::new("gateway", child, pid, base)
        .ready("/readyz", &log, Duration::from_secs(30))
        .await
}

/// Starts the LiteLLM proxy with a generated config (`out/litellm.yaml`) routing the model to
/// `upstream`, and waits for /health/readiness (its start takes seconds).
///
/// # Errors
/// When the executable is missing, or it does not become ready within 180 s.
pub async fn start_litellm(args: &Args, upstream: &str, out: &Path) -> Result<Server> {
    let bin = &args.litellm_bin;
    anyhow::ensure!(
        bin.exists(),
        "no litellm at {}: run scripts/setup-litellm.sh",
        bin.display()
    );
    let config = out.join("litellm.yaml");
    std::fs::write(&config, config::litellm_yaml(upstream, &args.model))?;
    let port = procs::free_port()?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(&config)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("NO_PROXY", "127.0.0.1,localhost");
    let log = out.join("litellm.log");
    let (child, pid) = procs::spawn("litellm", cmd, &log).context("starting litellm")?;
    let base = format!("http://127.0.0.1:{port}");
    Server::new("litellm", child, pid, base)
        .ready("/health/readiness", &log, Duration::from_secs(180))
        .await
}

/// Starts Portkey's gateway (`node start-server.js --headless`) on a free port and waits until
/// it answers. It needs no configuration: each request names its provider and upstream in
/// headers ([`config::portkey_headers`]).
///
/// # Errors
/// When the server script is missing, or it does not answer within 60 s.
pub async fn start_portkey(args: &Args, out: &Path) -> Result<Server> {
    let script = &args.portkey_server;
    anyhow::ensure!(
        script.exists(),
        "no Portkey server at {}: run scripts/setup-portkey.sh",
        script.display()
    );
    let port = procs::free_port()?;
    let mut cmd = Command::new(&args.node);
    // --headless: no web console, which would also keep every request's log in memory.
    cmd.arg(script)
        .args([format!("--port={port}").as_str(), "--headless"])
        .env("NODE_ENV", "production");
    let log = out.join("portkey.log");
    let (child, pid) = procs::spawn("portkey", cmd, &log).context("starting portkey")?;
    let base = format!("http://127.0.0.1:{port}");
    Server::new("portkey", child, pid, base)
        .ready("/", &log, Duration::from_secs(60))
        .await
}

/// Starts `orchestrator-forwarder` (built next to this executable) in front of `upstream` and
/// waits until a request passes through it.
///
/// # Errors
/// When the binary is missing, or it does not forward within 30 s.
pub async fn start_forwarder(upstream: &str, out: &Path) -> Result<Server> {
    let port = procs::free_port()?;
    let mut cmd = Command::new(sibling("orchestrator-forwarder", "orchestrator-bench")?);
    cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--upstream", upstream]);
    let log = out.join("forwarder.log");
    let (child, pid) = procs::spawn("forwarder", cmd, &log)?;
    let base = format!("http://127.0.0.1:{port}");
    Server::new("forwarder", child, pid, base)
        .ready("/v1/models", &log, Duration::from_secs(30))
        .await
}
