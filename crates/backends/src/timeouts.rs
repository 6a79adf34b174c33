//! Time limits of one upstream call, shared by every HTTP backend.

use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

/// Time limits of one upstream call; each can be turned off with 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutConfig {
    /// Establishing the TCP (and TLS) connection.
    pub connect_ms: u64,
    /// From sending the request to the first token (prompt processing and queueing upstream), for
    /// streams; a whole answer arrives at once, when generation ends, within `total_ms`.
    pub first_token_ms: u64,
    /// Longest silence between two tokens of a stream.
    pub between_tokens_ms: u64,
    /// The whole call.
    pub total_ms: u64,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self {
            connect_ms: 5_000,
            first_token_ms: 60_000,
            between_tokens_ms: 30_000,
            total_ms: 600_000,
        }
    }
}

/// [`TimeoutConfig`] as durations; `None` where a limit is off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Option<Duration>,
    pub first_token: Option<Duration>,
    pub between_tokens: Option<Duration>,
    pub total: Option<Duration>,
}

impl From<TimeoutConfig> for Timeouts {
    fn from(c: TimeoutConfig) -> Self {
        let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
        Self {
            connect: ms(c.connect_ms),
            first_token: ms(c.first_token_ms),
            between_tokens: ms(c.between_tokens_ms),
            total: ms(c.total_ms),
        }
    }
}

/// The earlier of two optional instants.
pub fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
