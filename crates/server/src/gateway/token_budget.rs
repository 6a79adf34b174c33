//! A key's token budget: `token_budget` tokens per `budget_period_hours`, a bucket of that size
//! refilled continuously over the period (so never more than one budget at once, and no double
//! budget around a reset). Correct for streams: a request reserves its prompt (a quick estimate)
//! and `max_tokens` (or `reserve_tokens`) at admission, before any byte of an answer, and is
//! refused then, with 429 and `Retry-After`, if the budget cannot cover it; at the end the
//! reservation is settled with the real usage. A running stream is never cut: an answer longer
//! than its reservation (an upstream that ignores `max_tokens`) is charged after, as a debt.
//!
//! On a node alone the bucket is here; in cluster mode it is the cluster's
//! ([`crate::cluster::limits`]), so the budget is spent once across all nodes, and while NATS is
//! away each node enforces the whole budget with its own bucket.

use std::num::{NonZeroU32, NonZeroU64};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_prompt_orchestrator::{EmbedInput, InferenceRequest, PromptInput};

use super::error::ApiError;
use super::gcra::{Gcra, now_us};
use crate::cluster::Cluster;
use crate::cluster::limits::{SharedBucket, Taken, key_part};

/// Tokens reserved for the answer of a request that sets no `max_tokens`, by default.
pub const DEFAULT_RESERVE_TOKENS: u32 = 1024;
/// The budget's period, by default: a day.
pub const DEFAULT_PERIOD_HOURS: u32 = 24;

/// A key's token budget.
pub struct TokenBudget {
    /// This node's own bucket: the budget on a node alone, and in cluster mode while NATS is
    /// away (each node then enforces the whole budget on its own).
    local: LocalBucket,
    /// The cluster's, in cluster mode.
    shared: Option<Arc<SharedBucket>>,
    total: u64,
    period_hours: u32,
    reserve: u32,
}

/// A bucket kept here: its `tat`, in microseconds since the epoch.
struct LocalBucket {
    gcra: Gcra,
    tat: Mutex<f64>,
}

impl LocalBucket {
    fn take(&self, cells: f64) -> Result<(), Duration> {
        let mut tat = self.tat.lock().unwrap_or_else(PoisonError::into_inner);
        let (new, _) = self.gcra.take(*tat, now_us(), cells, cells)?;
        *tat = new;
        Ok(())
    }

    /// Gives back `unused` cells, or charges them when negative.
    fn settle(&self, unused: f64) {
        let mut tat = self.tat.lock().unwrap_or_else(PoisonError::into_inner);
        *tat = if unused >= 0.0 {
            self.gcra.give_back(*tat, now_us(), unused)
        } else {
            self.gcra.force(*tat, now_us(), -unused)
        };
    }
}

/// Which bucket holds a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Local,
    Shared,
}

impl TokenBudget {
    pub fn new(total: NonZeroU64, period_hours: Option<NonZeroU32>, reserve: Option<NonZeroU32>) -> Self {
        let period_hours = period_hours.map_or(DEFAULT_PERIOD_HOURS, NonZeroU32::get);
        let capacity = total.get() as f64;
        Self {
            local: LocalBucket {
                gcra: Gcra::new(capacity, capacity / (f64::from(period_hours) * 3600.0)),
                tat: Mutex::new(0.0),
            },
            shared: None,
            total: total.get(),
            period_hours,
            reserve: reserve.map_or(DEFAULT_RESERVE_TOKENS, NonZeroU32::get),
        }
    }

    /// The same budget, counted across the cluster under the key `id`.
    pub fn shared(mut self, cluster: &Cluster, id: &str) -> Self {
        let capacity = self.total as f64;
        let per_second = capacity / (f64::from(self.period_hours) * 3600.0);
        let key = format!("{}.budget", key_part(id));
        self.shared = Some(SharedBucket::new(cluster, key, capacity, per_second));
        self
    }

    /// Reserves what `request` may use: its prompt, estimated, and its `max_tokens` (or the
    /// configured reserve).
    ///
    /// # Errors
    /// 429 `insufficient_quota` with `Retry-After` when the budget cannot cover it now; 400 when
    /// it never could (the reservation is larger than the whole budget).
    pub async fn reserve(self: &Arc<Self>, request: &InferenceRequest) -> Result<Reservation, ApiError> {
        let answer = request.params.max_tokens.unwrap_or(self.reserve);
        let tokens = rough_tokens(&request.input).saturating_add(u64::from(answer));
        if tokens > self.total {
            return Err(ApiError::invalid(
                "max_tokens",
                format!(
                    "this request reserves {tokens} tokens (its prompt and max_tokens {answer}), \
                     more than this API key's whole token budget ({} per {} h); lower max_tokens \
                     or shorten the prompt",
                    self.total, self.period_hours
                ),
            ));
        }
        let cells = tokens as f64;
        let held = match &self.shared {
            Some(shared) => match shared.take(cells).await {
                Ok(Taken::Counted) => Ok(Held::Shared),
                // NATS is away or slow: this node's own bucket decides.
                Ok(Taken::Uncounted) => self.local.take(cells).map(|()| Held::Local),
                Err(wait) => Err(wait),
            },
            None => self.local.take(cells).map(|()| Held::Local),
        };
        match held {
            Ok(held) => Ok(Reservation {
                budget: self.clone(),
                tokens,
                held,
            }),
            Err(wait) => Err(self.exhausted(tokens, wait)),
        }
    }

    fn exhausted(&self, tokens: u64, wait: Duration) -> ApiError {
        let message = format!(
            "This API key's token budget ({} tokens per {} h) cannot cover this request's \
             {tokens} tokens (its prompt and max_tokens) now; it refills continuously, enough in \
             {} s.",
            self.total,
            self.period_hours,
            wait.as_secs_f64().ceil().max(1.0)
        );
        ApiError::insufficient_quota(message, wait)
    }

    /// Gives back to the bucket that holds a reservation the tokens it did not use, or charges
    /// those used beyond it (negative).
    fn settle(&self, held: Held, unused: f64) {
        match (held, &self.shared) {
            (Held::Shared, Some(shared)) if unused >= 0.0 => shared.give_back(unused),
            (Held::Shared, Some(shared)) => shared.charge(-unused),
            _ => self.local.settle(unused),
        }
    }
}

/// Tokens held for one request. [`settle`](Self::settle) charges the real usage; dropped
/// unsettled (the caller went away mid-answer), the whole reservation stays charged, as the
/// upstream may have produced it all.
pub struct Reservation {
    budget: Arc<TokenBudget>,
    tokens: u64,
    held: Held,
}

impl Reservation {
    /// Charges `used` tokens instead of the reservation.
    pub fn settle(self, used: u64) {
        self.budget.settle(self.held, self.tokens as f64 - used as f64);
    }

    /// Gives the whole reservation back: the request was refused or failed before an answer.
    pub fn release(self) {
        self.budget.settle(self.held, self.tokens as f64);
    }
}

/// A quick, generous estimate of a prompt's tokens (about three bytes a token, where tokenizers
/// average about four for English), good enough to reserve with: the settlement is exact.
fn rough_tokens(input: &PromptInput) -> u64 {
    let bytes = match input {
        PromptInput::Text(text) => text.len(),
        PromptInput::Chat(messages) => messages.iter().map(|m| m.content.len() + 12).sum(),
        // A token id is about three bytes of text.
        PromptInput::Embed(inputs) => inputs
            .iter()
            .map(|input| match input {
                EmbedInput::Text(text) => text.len(),
                EmbedInput::Tokens(ids) => ids.len() * 3,
            })
            .sum(),
    };
    (bytes as u64).div_ceil(3)
}
