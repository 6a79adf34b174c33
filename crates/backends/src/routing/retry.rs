//! Retries before the first token: how many, and how long to wait between them.

use std::time::Duration;

use serde::Deserialize;

/// `retries = { max = 2, initial_backoff_ms = 100, max_backoff_ms = 2000 }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Further attempts after the first, within one backend group.
    pub max: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max: 2,
            initial_backoff_ms: 100,
            max_backoff_ms: 2_000,
        }
    }
}

impl RetryConfig {
    /// The wait before retry number `retry` (1-based): exponential, with full jitter (a uniform
    /// draw up to the exponential bound, so retries of many callers spread out). An upstream's
    /// `Retry-After` is honoured by the router instead, by keeping that backend out meanwhile.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1).min(20);
        let bound = self
            .initial_backoff_ms
            .saturating_mul(1 << exponent)
            .min(self.max_backoff_ms);
        Duration::from_millis(fastrand::u64(0..=bound))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let retry = RetryConfig {
            max: 5,
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
        };
        for _ in 0..200 {
            assert!(retry.backoff(1) <= Duration::from_millis(100));
            assert!(retry.backoff(3) <= Duration::from_millis(400));
            assert!(retry.backoff(10) <= Duration::from_millis(1000));
        }
    }
}
