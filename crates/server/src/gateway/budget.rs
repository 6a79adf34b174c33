//! The bytes of request bodies the gateway holds at once, over every request being read, waiting
//! for admission or running: `server.max_body_bytes_in_flight`. Admission counts requests; this
//! counts their size, so a burst of large bodies is refused (429) before it is held, however few
//! requests it is.

use std::sync::Arc;

use http::StatusCode;
use metrics::counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;

/// Requests refused because the body budget was spent (counter).
pub const BODY_BUDGET_REFUSED: &str = "orchestrator_body_budget_refused_total";

/// The budget, shared by every request for the server's life.
#[derive(Clone, Debug)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

/// A request's share of the budget, given back when it is dropped.
#[derive(Debug)]
pub struct BodyShare(Option<OwnedSemaphorePermit>);

impl BodyBudget {
    pub fn new(total: usize) -> Self {
        // A semaphore counts at most `Semaphore::MAX_PERMITS`.
        let total = total.min(Semaphore::MAX_PERMITS);
        Self {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// `bytes` of the budget, or 429 when they are not free now: waiting would hold the
    /// connection, and its bytes, for longer.
    ///
    /// # Errors
    /// 429 `overloaded` with `Retry-After` when the budget cannot cover `bytes`.
    pub fn take(&self, bytes: usize) -> Result<BodyShare, ApiError> {
        if bytes == 0 {
            return Ok(BodyShare(None));
        }
        let permits = u32::try_from(bytes).unwrap_or(u32::MAX);
        match self.bytes.clone().try_acquire_many_owned(permits) {
            Ok(permit) => Ok(BodyShare(Some(permit))),
            Err(_) => {
                counter!(BODY_BUDGET_REFUSED).increment(1);
                Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "overloaded_error",
                    "overloaded",
                    format!(
                        "The gateway already holds server.max_body_bytes_in_flight ({} bytes) of \
                         request bodies; retry shortly.",
                        self.total
                    ),
                )
                .retry_after(1))
            }
        }
    }

    /// Grows `share` to `bytes` (a body larger than it declared, or one that decoded larger).
    ///
    /// # Errors
    /// As [`take`](Self::take).
    pub fn grow(&self, share: &mut BodyShare, bytes: usize) -> Result<(), ApiError> {
        let held = share.bytes();
        if bytes <= held {
            // Give back what the body did not use.
            if let Some(permit) = &mut share.0
                && let Some(unused) = permit.split(held - bytes)
            {
                drop(unused);
            }
            return Ok(());
        }
        let more = self.take(bytes - held)?;
        match (&mut share.0, more.0) {
            (Some(permit), Some(more)) => permit.merge(more),
            (slot, more) => *slot = more,
        }
        Ok(())
    }
}

impl BodyShare {
    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |p| p.num_permits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_refused_past_the_total_and_given_back_when_dropped() {
        let budget = BodyBudget::new(100);
        let a = budget.take(60).unwrap();
        let refused = budget.take(50).unwrap_err();
        assert_eq!(refused.status, 429);
        assert_eq!(
            refused.message,
            "The gateway already holds server.max_body_bytes_in_flight (100 bytes) of request \
             bodies; retry shortly."
        );
        drop(a);
        assert_eq!(budget.take(100).unwrap().bytes(), 100);
    }

    #[test]
    fn a_share_grows_and_shrinks_to_the_body() {
        let budget = BodyBudget::new(100);
        let mut share = budget.take(50).unwrap();
        budget.grow(&mut share, 20).unwrap();
        assert_eq!(share.bytes(), 20);
        budget.grow(&mut share, 90).unwrap();
        assert_eq!(share.bytes(), 90);
        assert!(budget.grow(&mut share, 101).is_err());
        assert_eq!(share.bytes(), 90);
        let mut empty = budget.take(0).unwrap();
        budget.grow(&mut empty, 10).unwrap();
        assert_eq!(empty.bytes(), 10);
    }
}
