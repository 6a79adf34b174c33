//! A per-backend circuit breaker: after too many failures the backend is skipped for a cool-down,
//! then one probe call decides whether it is back.

use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

/// `breaker = { consecutive_failures = 5, error_rate = 0.5, window = 20, cooldown_ms = 10000 }`.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Opens after this many failures in a row (0: never on this rule).
    pub consecutive_failures: u32,
    /// Opens when at least this fraction of the last `window` calls failed (0: never).
    pub error_rate: f64,
    /// Calls the error rate looks at; it is only judged once the window is full.
    pub window: u32,
    /// How long an open breaker keeps the backend out before letting one probe through.
    pub cooldown_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            error_rate: 0.5,
            window: 20,
            cooldown_ms: 10_000,
        }
    }
}

/// What the breaker allows now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// Skipped until the cool-down ends.
    Open,
    /// One probe is allowed (or already out); its outcome closes or reopens the breaker.
    HalfOpen,
}

struct Inner {
    state: BreakerState,
    consecutive: u32,
    /// Outcomes of the last `window` calls, true = failure; a ring.
    recent: Vec<bool>,
    next: usize,
    opened_at: Option<Instant>,
    probe_out: bool,
}

pub struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive: 0,
                recent: Vec::with_capacity(config.window as usize),
                next: 0,
                opened_at: None,
                probe_out: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain counters behind; they stay usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The state now (an open breaker whose cool-down has passed reads as half-open).
    pub fn state(&self) -> BreakerState {
        let mut inner = self.lock();
        self.refresh(&mut inner);
        inner.state
    }

    /// Whether a call may go to the backend now; in half-open, only the first caller's does.
    pub fn try_acquire(&self) -> bool {
        let mut inner = self.lock();
        self.refresh(&mut inner);
        match inner.state {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen if inner.probe_out => false,
            BreakerState::HalfOpen => {
                inner.probe_out = true;
                true
            }
        }
    }

    fn refresh(&self, inner: &mut Inner) {
        if inner.state == BreakerState::Open
            && inner
                .opened_at
                .is_some_and(|at| at.elapsed() >= Duration::from_millis(self.config.cooldown_ms))
        {
            inner.state = BreakerState::HalfOpen;
            inner.probe_out = false;
        }
    }

    /// Records a call's outcome.
    pub fn record(&self, success: bool) {
        let mut inner = self.lock();
        let window = self.config.window as usize;
        if window > 0 {
            if inner.recent.len() < window {
                inner.recent.push(!success);
            } else {
                let at = inner.next;
                inner.recent[at] = !success;
            }
            inner.next = (inner.next + 1) % window;
        }
        if success {
            inner.consecutive = 0;
            if inner.state == BreakerState::HalfOpen {
                // The probe came back well: forget the failures that opened the breaker.
                inner.state = BreakerState::Closed;
                inner.recent.clear();
                inner.next = 0;
            }
            return;
        }
        inner.consecutive += 1;
        let too_many =
            self.config.consecutive_failures > 0 && inner.consecutive >= self.config.consecutive_failures;
        let failed = inner.recent.iter().filter(|f| **f).count();
        let too_often = self.config.error_rate > 0.0
            && window > 0
            && inner.recent.len() == window
            && failed as f64 >= self.config.error_rate * window as f64;
        if inner.state == BreakerState::HalfOpen || too_many || too_often {
            inner.state = BreakerState::Open;
            inner.opened_at = Some(Instant::now());
            inner.probe_out = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            consecutive_failures: 3,
            error_rate: 0.5,
            window: 10,
            cooldown_ms: 1000,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_then_probes_and_closes() {
        let b = breaker();
        b.record(false);
        b.record(false);
        assert_eq!(b.state(), BreakerState::Closed);
        b.record(false);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.try_acquire());

        tokio::time::advance(Duration::from_millis(1000)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.try_acquire(), "one probe goes through");
        assert!(!b.try_acquire(), "only one");
        b.record(true);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_acquire());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_another_cooldown() {
        let b = breaker();
        for _ in 0..3 {
            b.record(false);
        }
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert!(b.try_acquire());
        b.record(false);
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_error_rate_without_a_long_streak() {
        let b = breaker();
        // Alternating failures never reach 3 in a row, but fill half the window.
        for i in 0..10 {
            b.record(i % 2 == 0);
        }
        assert_eq!(b.state(), BreakerState::Open);
    }
}
