//! Latency histograms the pipeline keeps itself, so that live views (a dashboard, `top`) can show
//! percentiles without a metrics exporter.
//!
//! Buckets are log-linear in microseconds: each power of two is split into 8, so a quantile is
//! known within an eighth of its value, from 1 µs to well over an hour. Recording is one atomic
//! add; a reader takes [`LatencyCounts`] now and again and subtracts an earlier reading to get the
//! latencies of a window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two.
const SUB: usize = 8;
const SUB_BITS: u32 = SUB.trailing_zeros();
/// Powers of two covered above the first `SUB` microseconds: up to 2^32 µs (71 minutes).
const OCTAVES: usize = 30;
const BUCKETS: usize = SUB * (OCTAVES + 1);

/// A histogram of durations, shared by the tasks that record into it.
pub(crate) struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl LatencyHistogram {
    pub fn record(&self, duration: Duration) {
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket(micros)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn counts(&self) -> LatencyCounts {
        LatencyCounts {
            buckets: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
        }
    }
}

fn bucket(micros: u64) -> usize {
    if micros < SUB as u64 {
        return micros as usize;
    }
    let top = 63 - micros.leading_zeros();
    let octave = (top - SUB_BITS + 1) as usize;
    let sub = ((micros >> (top - SUB_BITS)) as usize) & (SUB - 1);
    (octave * SUB + sub).min(BUCKETS - 1)
}

/// The lowest duration, in microseconds, that lands in `index`.
fn lower_bound(index: usize) -> u64 {
    let (octave, sub) = (index / SUB, (index % SUB) as u64);
    if octave == 0 {
        sub
    } else {
        (SUB as u64 + sub) << (octave - 1)
    }
}

/// How many durations fell in each bucket: a reading of a histogram, or the difference of two.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencyCounts {
    buckets: Box<[u64]>,
}

impl Default for LatencyCounts {
    fn default() -> Self {
        Self {
            buckets: vec![0; BUCKETS].into(),
        }
    }
}

impl LatencyCounts {
    /// Durations counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// What was recorded after `earlier`, a reading of the same histogram.
    pub fn since(&self, earlier: &LatencyCounts) -> LatencyCounts {
        LatencyCounts {
            buckets: self
                .buckets
                .iter()
                .zip(earlier.buckets.iter())
                .map(|(now, then)| now.saturating_sub(*then))
                .collect(),
        }
    }

    /// The duration below which a share `q` (0 to 1) of the counted durations fall: the middle
    /// of the bucket that holds it. `None` when nothing was counted.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        let index = self.buckets.iter().position(|&n| {
            seen += n;
            seen >= rank
        })?;
        let low = lower_bound(index);
        let high = if index + 1 < BUCKETS {
            lower_bound(index + 1)
        } else {
            low
        };
        Some(Duration::from_micros(low + (high - low) / 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_bounded() {
        let mut last = 0;
        for micros in (0..5000).chain([1 << 20, 1 << 31, u64::MAX]) {
            let b = bucket(micros);
            assert!(b >= last, "bucket of {micros} went down");
            assert!(lower_bound(b) <= micros, "{micros} is below its bucket");
            last = b;
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        for index in 1..BUCKETS {
            assert_eq!(bucket(lower_bound(index)), index);
        }
    }

    #[test]
    fn quantiles_are_within_an_eighth() {
        let h = LatencyHistogram::default();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        let counts = h.counts();
        assert_eq!(counts.count(), 100);
        for (q, want) in [(0.5, 50.0), (0.99, 99.0), (1.0, 100.0), (0.0, 1.0)] {
            let got = counts.quantile(q).expect("counted").as_secs_f64() * 1000.0;
            assert!(
                (got - want).abs() <= want / 8.0,
                "q{q}: {got} ms, want about {want}"
            );
        }
    }

    #[test]
    fn a_window_is_the_difference_of_two_readings() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_secs(10));
        let before = h.counts();
        for _ in 0..3 {
            h.record(Duration::from_micros(3));
        }
        let window = h.counts().since(&before);
        assert_eq!(window.count(), 3);
        assert_eq!(window.quantile(0.99), Some(Duration::from_micros(3)));
        assert_eq!(LatencyCounts::default().quantile(0.5), None);
    }
}
