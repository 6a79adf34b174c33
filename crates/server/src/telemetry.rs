//! Logs (tracing to stderr, text or JSON) and the process-wide Prometheus recorder.

use std::fmt;
use std::io::IsTerminal;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
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

/// The Prometheus recorder, installed as the global `metrics` recorder on first use.
///
/// Global because the `metrics` facade has one recorder per process; every server in the
/// process (tests run several) renders the same registry.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            // Only fails for an empty bucket list, and the list above is not empty.
            .expect("non-empty bucket list")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
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
        handle
    })
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
