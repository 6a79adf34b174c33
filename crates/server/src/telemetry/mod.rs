//! Logs (tracing to stderr, text or JSON) and the process-wide metrics recorder: Prometheus, and
//! StatsD beside it when `[telemetry.statsd]` says where to send ([`statsd`]); traces over OTLP
//! when `[telemetry.otlp]` does ([`otlp`]).

pub mod otlp;
pub mod statsd;

use std::fmt;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use metrics_util::layers::FanoutBuilder;
use serde::Deserialize;

use self::statsd::StatsdConfig;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`, the NATS client's at `warn`); access-log lines are written in
/// batches (see [`crate::logsink`]), so call [`crate::logsink::flush`] before exiting.
pub fn init_logging(format: LogFormat) {
    // The NATS client logs every connection event at `info`; the cluster's link reports the ones
    // that matter in its own words.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn"));
    // Colours only on a terminal: escape codes in a log file or a collector's pipe are noise, and
    // writing them cost a measurable part of each request's access-log line.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_timer(Rfc3339Micros)
        .with_writer(crate::logsink::stderr());
    // A second initialisation (tests start several servers) keeps the first subscriber.
    match format {
        LogFormat::Text => {
            let _ = builder.try_init();
        }
        LogFormat::Json => {
            if builder.json().try_init().is_ok() {
                JSON_LINES.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Set once the process's subscriber writes JSON lines to [`crate::logsink::stderr`].
static JSON_LINES: AtomicBool = AtomicBool::new(false);

/// Whether log lines are JSON lines on the batched stderr: the access log then writes its lines
/// there itself, in the same shape (see [`crate::api::access`]).
pub fn json_lines() -> bool {
    JSON_LINES.load(Ordering::Relaxed)
}

/// Line timestamps as tracing-subscriber's default writes them (RFC 3339 in UTC, microseconds:
/// `2026-11-29T15:08:57.123456Z`), written from a byte buffer: the default formats seven padded
/// integers per line, a noticeable part of each request's access line.
struct Rfc3339Micros;

impl FormatTime for Rfc3339Micros {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        write!(w, "{}", Timestamp(SystemTime::now()))
    }
}

/// A log line's timestamp: RFC 3339 in UTC with microseconds, as tracing-subscriber writes
/// them. A clock set before 1970 shows the epoch.
pub struct Timestamp(pub SystemTime);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // humantime panics on times before the epoch.
        let at = self.0.max(UNIX_EPOCH);
        fmt::Display::fmt(&humantime::format_rfc3339_micros(at), f)
    }
}

/// Histogram buckets, in seconds: from 50 µs (pipeline stages) to 2 minutes (long generations).
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0,
];

/// `[telemetry]`: where metrics go besides `/metrics`, and where traces go. Read at start only:
/// the process has one recorder, and a server one exporter.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Every metric also sent to a StatsD or DogStatsD agent; `None`: not sent.
    pub statsd: Option<StatsdConfig>,
    /// Traces exported over OTLP; `None`: no request is traced.
    pub otlp: Option<otlp::OtlpConfig>,
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The Prometheus recorder's handle, for `/metrics`; the recorders are installed on first use
/// without StatsD (see [`install_metrics`]).
pub fn prometheus() -> &'static PrometheusHandle {
    match install_metrics(&TelemetryConfig::default()) {
        Ok(handle) => handle,
        // Only StatsD can fail, and it is not asked for here.
        Err(_) => unreachable!("a Prometheus recorder alone always installs"),
    }
}

/// Installs the process's metrics recorder as `config` says, the first time it is called: the
/// Prometheus recorder, and StatsD beside it when configured. Later calls return the handle of
/// the first: the `metrics` facade has one recorder per process, which every server in it (tests
/// run several) shares.
///
/// # Errors
/// When StatsD is configured but cannot be set up (its address is not `host:port`).
pub fn install_metrics(config: &TelemetryConfig) -> Result<&'static PrometheusHandle, String> {
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(handle) = HANDLE.get() {
        if config.statsd.is_some() {
            tracing::warn!(
                "The metrics recorder was installed before [telemetry.statsd] was read; metrics are not sent to StatsD."
            );
        }
        return Ok(handle);
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        // Only fails for an empty bucket list, and the list above is not empty.
        .expect("non-empty bucket list")
        .build_recorder();
    let handle = recorder.handle();
    let installed = match &config.statsd {
        None => metrics::set_global_recorder(recorder).is_ok(),
        Some(statsd) => {
            let statsd = statsd::recorder(statsd)?;
            let both = FanoutBuilder::default()
                .add_recorder(recorder)
                .add_recorder(statsd)
                .build();
            metrics::set_global_recorder(both).is_ok()
        }
    };
    if !installed {
        tracing::warn!("A metrics recorder was already installed; /metrics shows only its own figures.");
    }
    // Histograms keep raw samples until upkeep folds them into buckets.
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            }
        })
        .ok();
    Ok(HANDLE.get_or_init(|| handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_the_default_format() {
        let at = UNIX_EPOCH + Duration::new(1_795_964_937, 123_456_789);
        assert_eq!(Timestamp(at).to_string(), "2026-11-29T15:08:57.123456Z");
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(Timestamp(before).to_string(), "1970-01-01T00:00:00.000000Z");
    }
}
