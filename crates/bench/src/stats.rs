//! What one run measured: counters by outcome and HDR histograms (microseconds), and their
//! summary in milliseconds, including the gateway's added latency (gateway pN - upstream pN).

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Highest value a histogram keeps, in µs (60 s); longer values are clamped to it.
const MAX_US: u64 = 60_000_000;

/// A histogram of durations in µs, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    // Provably valid bounds (1 <= low, high >= 2 * low, 3 significant figures).
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// Records `d` in µs, clamped to the histogram's range.
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(MAX_US).clamp(1, MAX_US);
    h.saturating_record(us);
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// The summary of `h`; `None` if it is empty.
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1_000.0;
        Some(Self {
            count: h.len(),
            mean_ms: h.mean() / 1_000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        })
    }
}

/// What a system adds to another at each percentile (`self - base`, ms; may be negative when
/// the difference is within the noise).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Added {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

impl Added {
    pub fn between(system: &Percentiles, base: &Percentiles) -> Self {
        Self {
            p50_ms: system.p50_ms - base.p50_ms,
            p90_ms: system.p90_ms - base.p90_ms,
            p99_ms: system.p99_ms - base.p99_ms,
            p999_ms: system.p999_ms - base.p999_ms,
        }
    }
}

/// Everything recorded during one measured run.
#[derive(Debug)]
pub struct Recorder {
    /// Requests started (open loop: scheduled and sent).
    pub sent: u64,
    /// 200 answers read to the end (streams: with `[DONE]`).
    pub ok: u64,
    /// Answers with another status, by status.
    pub status_errors: BTreeMap<u16, u64>,
    /// Connections refused or reset before an answer.
    pub connect_errors: u64,
    /// Requests that hit the per-request timeout.
    pub timeouts: u64,
    /// Other failures: a body cut short, a stream without `[DONE]`, a protocol error.
    pub other_errors: u64,
    /// Latency of successful requests, from the scheduled start (open loop) or the send.
    pub latency: Histogram<u64>,
    /// Streams: time to first token.
    pub ttft: Histogram<u64>,
    /// Streams: gaps between tokens.
    pub itl: Histogram<u64>,
    /// Open loop: how late the generator sent each request after its scheduled instant; a high
    /// tail here means the generator itself could not keep the rate.
    pub send_lag: Histogram<u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            sent: 0,
            ok: 0,
            status_errors: BTreeMap::new(),
            connect_errors: 0,
            timeouts: 0,
            other_errors: 0,
            latency: histogram(),
            ttft: histogram(),
            itl: histogram(),
            send_lag: histogram(),
        }
    }
}

impl Recorder {
    /// Every failed request.
    pub fn errors(&self) -> u64 {
        self.status_errors.values().sum::<u64>() + self.connect_errors + self.timeouts + self.other_errors
    }

    /// Requests that came back one way or another (all started ones once a run has ended).
    pub fn finished(&self) -> u64 {
        self.ok + self.errors()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_a_known_distribution() {
        let mut h = histogram();
        for ms in 1..=1_000u64 {
            record(&mut h, Duration::from_millis(ms));
        }
        let p = Percentiles::of(&h).unwrap();
        assert_eq!(p.count, 1_000);
        // 3 significant digits: values are exact to within 0.1%.
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 1e-9;
        assert!(close(p.p50_ms, 500.0), "{p:?}");
        assert!(close(p.p90_ms, 900.0), "{p:?}");
        assert!(close(p.p99_ms, 990.0), "{p:?}");
        assert!(close(p.p999_ms, 999.0), "{p:?}");
        assert!(close(p.max_ms, 1_000.0), "{p:?}");
        assert!(close(p.mean_ms, 500.5), "{p:?}");
        assert_eq!(Percentiles::of(&histogram()), None);
    }

    #[test]
    fn record_clamps_out_of_range_values() {
        let mut h = histogram();
        record(&mut h, Duration::ZERO);
        record(&mut h, Duration::from_secs(3_600));
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), 1);
        assert!(h.max() >= MAX_US && h.max() <= MAX_US + MAX_US / 1_000);
    }

    #[test]
    fn added_latency_is_the_difference_per_percentile() {
        let p = |p50, p90, p99, p999| Percentiles {
            count: 1,
            mean_ms: 0.0,
            p50_ms: p50,
            p90_ms: p90,
            p99_ms: p99,
            p999_ms: p999,
            max_ms: p999,
        };
        let added = Added::between(&p(1.5, 2.0, 4.0, 9.0), &p(1.0, 1.5, 4.5, 6.0));
        assert_eq!(
            added,
            Added {
                p50_ms: 0.5,
                p90_ms: 0.5,
                p99_ms: -0.5,
                p999_ms: 3.0
            }
        );
    }

    #[test]
    fn errors_and_finished_add_up() {
        let mut r = Recorder {
            ok: 7,
            connect_errors: 1,
            timeouts: 2,
            other_errors: 3,
            ..Default::default()
        };
        r.status_errors.insert(503, 4);
        r.status_errors.insert(429, 5);
        assert_eq!(r.errors(), 15);
        assert_eq!(r.finished(), 22);
    }
}
