//! `[telemetry.statsd]`: every metric also sent to a StatsD or DogStatsD agent over UDP, labels as
//! tags (`metrics-exporter-statsd`, over `cadence`). Lines are buffered into datagrams and the
//! buffer is flushed every `flush_ms`, so a quiet gateway's last figures still leave.

use std::collections::BTreeMap;
use std::io;
use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

use cadence::{BufferedUdpMetricSink, MetricSink, QueuingMetricSink};
use metrics_exporter_statsd::{StatsdBuilder, StatsdRecorder};
use serde::Deserialize;

/// Bytes of metric lines gathered into one datagram: under a typical 1,500-byte MTU.
const DATAGRAM_BYTES: usize = 1_432;
/// Metric lines waiting for the sending thread; beyond it new ones are dropped, never waited for.
const QUEUE: usize = 10_000;

/// `[telemetry.statsd]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsdConfig {
    /// The agent, `host:port` (DogStatsD and StatsD listen on 8125).
    pub address: String,
    /// Put before every metric name, with a dot (default: none; names start `orchestrator_`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// How histograms (latencies, in seconds) are sent.
    #[serde(default)]
    pub histograms: HistogramKind,
    /// Tags added to every metric (`env = "prod"`), beside each metric's own labels.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// How often the buffered lines are sent even when a datagram is not full.
    #[serde(default = "StatsdConfig::default_flush_ms")]
    pub flush_ms: u64,
}

impl StatsdConfig {
    fn default_flush_ms() -> u64 {
        1_000
    }

    /// The agent's host and port, when `address` is `host:port`.
    pub fn host_port(&self) -> Option<(&str, u16)> {
        let (host, port) = self.address.rsplit_once(':')?;
        let port = port.parse().ok().filter(|&p| p > 0)?;
        (!host.is_empty()).then_some((host, port))
    }
}

/// A histogram as StatsD types it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistogramKind {
    /// `|h`, in the metric's unit (seconds).
    #[default]
    Histogram,
    /// `|d`, DogStatsD's distribution, in seconds.
    Distribution,
    /// `|ms`, in milliseconds.
    Timer,
}

/// The recorder sending to `config`'s agent, and a thread flushing its buffer every `flush_ms`.
///
/// # Errors
/// When the address is not `host:port`, or no local UDP socket can be opened.
pub fn recorder(config: &StatsdConfig) -> Result<StatsdRecorder, String> {
    let failed = |e: &dyn std::fmt::Display| format!("telemetry.statsd: {e}");
    let (host, port) = config
        .host_port()
        .ok_or_else(|| failed(&format!("address {:?} is not host:port", config.address)))?;
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| failed(&e))?;
    socket.set_nonblocking(true).map_err(|e| failed(&e))?;
    let udp =
        BufferedUdpMetricSink::with_capacity((host, port), socket, DATAGRAM_BYTES).map_err(|e| failed(&e))?;
    let sink = Arc::new(QueuingMetricSink::with_capacity(udp, QUEUE));
    let flushed = Arc::downgrade(&sink);
    let every = Duration::from_millis(config.flush_ms.max(1));
    std::thread::Builder::new()
        .name("statsd-flush".into())
        .spawn(move || {
            while let Some(sink) = flushed.upgrade() {
                // A datagram that cannot be sent now is dropped, as UDP metrics are.
                let _ = sink.flush();
                drop(sink);
                std::thread::sleep(every);
            }
        })
        .map_err(|e| failed(&e))?;
    let mut builder = StatsdBuilder::from(host, port).with_sink(Shared(sink));
    builder = match config.histograms {
        HistogramKind::Histogram => builder,
        HistogramKind::Distribution => builder.histogram_is_distribution(),
        HistogramKind::Timer => builder.histogram_is_timer(),
    };
    for (key, value) in &config.tags {
        builder = builder.with_default_tag(key, value);
    }
    builder.build(config.prefix.as_deref()).map_err(|e| failed(&e))
}

/// The queue shared by the recorder and the flushing thread.
struct Shared(Arc<QueuingMetricSink>);

impl MetricSink for Shared {
    fn emit(&self, metric: &str) -> io::Result<usize> {
        self.0.emit(metric)
    }

    fn flush(&self) -> io::Result<()> {
        self.0.flush()
    }
}
