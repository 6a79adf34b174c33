//! One dead letter: a request the gateway could not answer, with what it needs to be inspected
//! and replayed, stored as JSON by [`DlqStore`](super::DlqStore).

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// `time` in unix milliseconds, the unit of a dead letter's timestamps (0 before 1970).
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// A request that failed at the gateway, as recorded in the dead-letter queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Assigned by the store on append: strictly increasing and never reused, even after a purge,
    /// so an operator's "replayed up to id N" stays meaningful. Ignored by `append`.
    pub id: u64,
    /// Unix time in milliseconds when the failure was recorded.
    pub recorded_at_ms: u64,
    /// Unix time in milliseconds when the gateway received the request.
    pub received_at_ms: u64,
    /// The route it came in on: `/v1/chat/completions` or `/v1/completions`.
    pub endpoint: String,
    /// The model the caller asked for.
    pub model: String,
    /// The caller's API key name, when keys are configured; replay charges the same key.
    pub key: Option<String>,
    /// `high`, `normal` or `low`.
    pub priority: String,
    /// The caller's `X-Session-Id`, so a replay lands on the same shard and backend affinity.
    pub session: Option<String>,
    /// The request body exactly as received (parsed), so a replay sends what the caller sent.
    pub request: serde_json::Value,
    /// Why the request ended.
    pub reason: Reason,
    /// The pipeline stage the failure happened in, when known.
    pub stage: Option<String>,
    /// The error message the caller got.
    pub error: String,
    /// The error's stable kind label (`worker`, `timeout`, `overloaded`, ...), as in metrics.
    pub error_kind: String,
    /// Each backend tried and how it failed, in order.
    pub attempts: Vec<Attempt>,
    /// How many replays of this entry have failed so far.
    pub replays: u32,
    /// The error of the latest failed replay.
    pub last_replay_error: Option<String>,
}

/// One backend tried for a request, and how it failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub backend: String,
    pub error: String,
}

/// Why a request ended up in the dead-letter queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// Every backend tried failed (after retries and fallbacks).
    Failed,
    /// The request's deadline passed.
    Timeout,
    /// The gateway shed it under overload (recorded only when configured to).
    Shed,
}

impl Reason {
    /// The lowercase name, as in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Failed => "failed",
            Reason::Timeout => "timeout",
            Reason::Shed => "shed",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not `failed`, `timeout` or `shed`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown dead-letter reason `{0}` (expected failed, timeout or shed)")]
pub struct UnknownReason(pub String);

impl FromStr for Reason {
    type Err = UnknownReason;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "failed" => Ok(Reason::Failed),
            "timeout" => Ok(Reason::Timeout),
            "shed" => Ok(Reason::Shed),
            other => Err(UnknownReason(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_names_round_trip_through_str_and_json() {
        for reason in [Reason::Failed, Reason::Timeout, Reason::Shed] {
            assert_eq!(reason.as_str().parse::<Reason>(), Ok(reason));
            assert_eq!(reason.to_string(), reason.as_str());
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                serde_json::Value::from(reason.as_str())
            );
        }
        assert_eq!(
            "Failed".parse::<Reason>().unwrap_err().to_string(),
            "unknown dead-letter reason `Failed` (expected failed, timeout or shed)"
        );
    }
}
