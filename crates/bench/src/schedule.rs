//! The open-loop schedule: request `i` of a run at `rate` req/s is due at `i / rate` seconds.
//!
//! The load loop asks [`Schedule::due`] how many requests are due by now and sends them, each
//! stamped with its scheduled instant ([`Schedule::offset`]); latency is measured from that
//! instant, so a stall in the target (or in the generator) shows up as latency instead of as
//! requests that were quietly never sent (coordinated omission).

use std::time::Duration;

/// Fixed-interval arrival times for one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Requests per second; positive and finite (checked by [`Schedule::new`]).
    rate: f64,
    /// Requests in the run: those whose scheduled instant falls inside the duration.
    count: u64,
}

impl Schedule {
    /// The schedule of `rate` requests/s over `duration`; `None` if the rate is not a positive
    /// finite number.
    pub fn new(rate: f64, duration: Duration) -> Option<Self> {
        if !(rate.is_finite() && rate > 0.0) {
            return None;
        }
        // Offsets 0, 1/rate, 2/rate, ... strictly before the end: ceil(duration * rate).
        let count = (duration.as_secs_f64() * rate - 1e-9).ceil().max(0.0) as u64;
        Some(Self { rate, count })
    }

    /// How many requests the run sends.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// When request `i` is due, from the start of the run.
    pub fn offset(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// How many requests are due `elapsed` after the start (all of those with an offset at or
    /// before it), never more than [`Schedule::count`].
    pub fn due(&self, elapsed: Duration) -> u64 {
        // The small epsilon keeps an offset computed as exactly `elapsed` from being lost to
        // rounding (i / rate * rate can land just below i).
        let due = (elapsed.as_secs_f64() * self.rate + 1e-9).floor() as u64 + 1;
        due.min(self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_requests_inside_the_duration() {
        assert_eq!(
            Schedule::new(500.0, Duration::from_secs(10)).unwrap().count(),
            5_000
        );
        assert_eq!(
            Schedule::new(2.0, Duration::from_millis(1_250)).unwrap().count(),
            3
        );
        assert_eq!(Schedule::new(3.0, Duration::from_secs(1)).unwrap().count(), 3);
        assert_eq!(Schedule::new(10.0, Duration::ZERO).unwrap().count(), 0);
        assert!(Schedule::new(0.0, Duration::from_secs(1)).is_none());
        assert!(Schedule::new(f64::NAN, Duration::from_secs(1)).is_none());
    }

    #[test]
    fn offsets_are_evenly_spaced() {
        let s = Schedule::new(2_000.0, Duration::from_secs(1)).unwrap();
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(1), Duration::from_micros(500));
        assert_eq!(s.offset(2_000), Duration::from_secs(1));
        assert_eq!(s.offset(3).as_nanos(), 1_500_000);
    }

    #[test]
    fn due_counts_offsets_at_or_before_now_and_is_capped() {
        let s = Schedule::new(4.0, Duration::from_secs(1)).unwrap(); // 0, 250, 500, 750 ms
        assert_eq!(s.due(Duration::ZERO), 1);
        assert_eq!(s.due(Duration::from_millis(249)), 1);
        assert_eq!(s.due(Duration::from_millis(250)), 2);
        assert_eq!(s.due(Duration::from_millis(999)), 4);
        assert_eq!(s.due(Duration::from_secs(60)), 4);
        // Every offset is due exactly at its own instant.
        let s = Schedule::new(2_000.0, Duration::from_secs(2)).unwrap();
        for i in 0..s.count() {
            assert_eq!(s.due(s.offset(i)), i + 1, "request {i}");
        }
    }
}
