//! Rate limits per API key: requests per second (a GCRA bucket from `governor`) and tokens per
//! minute (a bucket charged after the answer, when its size is known from the usage).
//!
//! In cluster mode both also count across every node ([`crate::cluster::limits`]).
//!
//! Both are reported OpenAI-style on every response to a limited key
//! (`x-ratelimit-{limit,remaining,reset}-{requests,tokens}`); a request over either limit gets
//! 429 with `Retry-After`.

use std::num::{NonZeroU32, NonZeroU64};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use crate::cluster::Cluster;
use crate::cluster::limits::{SharedBucket, key_part};
use crate::gateway::token_budget::TokenBudget;

/// `rate_limit = { requests_per_second = 10, burst = 20, tokens_per_minute = 100000,
/// token_budget = 1000000 }`; each limit is off when left out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub requests_per_second: Option<NonZeroU32>,
    /// Requests allowed at once above the steady rate (default: the rate itself).
    pub burst: Option<NonZeroU32>,
    pub tokens_per_minute: Option<NonZeroU32>,
    /// Tokens per `budget_period_hours` (see [`super::token_budget`]).
    pub token_budget: Option<NonZeroU64>,
    /// The budget's period (default 24: a day).
    pub budget_period_hours: Option<NonZeroU32>,
    /// Tokens a request that sets no `max_tokens` reserves for its answer (default 1024).
    pub reserve_tokens: Option<NonZeroU32>,
}

type RequestLimiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// One key's limits.
pub struct KeyLimits {
    requests: Option<(RequestLimiter, u32)>,
    tokens: Option<TokensPerMinute>,
    /// The key's token budget per period, reserved at admission.
    pub budget: Option<Arc<TokenBudget>>,
    /// In cluster mode, the same limits counted across every node.
    cluster: Option<ClusterLimits>,
    /// What they were made from.
    pub config: RateLimitConfig,
}

/// A key's buckets in the cluster (see [`crate::cluster::limits`]).
struct ClusterLimits {
    requests: Option<(Arc<SharedBucket>, u32)>,
    tokens: Option<(Arc<SharedBucket>, u32)>,
}

/// Why a request may not run now.
pub struct Refusal {
    pub retry_after: Duration,
    pub which: &'static str,
    pub headers: HeaderMap,
}

impl KeyLimits {
    /// The limits `config` sets; `None` when it sets none.
    pub fn new(config: RateLimitConfig) -> Option<Self> {
        let requests = config.requests_per_second.map(|rate| {
            let burst = config.burst.unwrap_or(rate);
            let quota = Quota::per_second(rate).allow_burst(burst);
            (
                RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>(),
                rate.get(),
            )
        });
        let tokens = config.tokens_per_minute.map(TokensPerMinute::new);
        let budget = token_budget(config).map(Arc::new);
        (requests.is_some() || tokens.is_some() || budget.is_some()).then_some(Self {
            requests,
            tokens,
            budget,
            cluster: None,
            config,
        })
    }

    /// Counts these limits across the cluster too, under the key `id`.
    pub fn shared(mut self, cluster: &Cluster, id: &str) -> Self {
        let config = self.config;
        let bucket = |kind: &str, capacity: u32, per_second: f64| {
            let key = format!("{}.{kind}", key_part(id));
            SharedBucket::new(cluster, key, f64::from(capacity), per_second)
        };
        self.budget = token_budget(config).map(|budget| Arc::new(budget.shared(cluster, id)));
        self.cluster = Some(ClusterLimits {
            requests: config.requests_per_second.map(|rate| {
                let burst = config.burst.unwrap_or(rate);
                (bucket("requests", burst.get(), f64::from(rate.get())), rate.get())
            }),
            tokens: config.tokens_per_minute.map(|per_minute| {
                let per_minute = per_minute.get();
                (
                    bucket("tokens", per_minute, f64::from(per_minute) / 60.0),
                    per_minute,
                )
            }),
        });
        self
    }

    /// In cluster mode, admits one request against the cluster's count of the key's limits (after
    /// [`admit`](Self::admit) let it in here). Usually answered from what this node leased; asks
    /// the broker when that has run out.
    ///
    /// # Errors
    /// The refusal, when the cluster's bucket is empty.
    pub async fn admit_cluster(&self) -> Result<(), Box<Refusal>> {
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        let refused = |which, names, limit, retry_after| {
            let mut headers = HeaderMap::new();
            describe(&mut headers, names, limit, 0.0, retry_after);
            Box::new(Refusal {
                retry_after,
                which,
                headers,
            })
        };
        if let Some((bucket, per_minute)) = &cluster.tokens
            && let Err(wait) = bucket.take(0.0).await
        {
            return Err(refused("tokens", TOKENS, *per_minute, wait));
        }
        if let Some((bucket, rate)) = &cluster.requests
            && let Err(wait) = bucket.take(1.0).await
        {
            return Err(refused("requests", REQUESTS, *rate, wait));
        }
        Ok(())
    }

    /// Admits one request, or says how long to wait; the headers describe the limits either way.
    ///
    /// # Errors
    /// The refusal, when a limit is reached.
    pub fn admit(&self) -> Result<HeaderMap, Box<Refusal>> {
        let mut headers = HeaderMap::new();
        if let Some(budget) = &self.tokens {
            let (remaining, reset) = budget.state();
            describe(&mut headers, TOKENS, budget.per_minute as u32, remaining, reset);
            if remaining <= 0.0 {
                return Err(Box::new(Refusal {
                    retry_after: reset,
                    which: "tokens",
                    headers,
                }));
            }
        }
        if let Some((limiter, rate)) = &self.requests {
            match limiter.check() {
                Ok(snapshot) => {
                    let remaining = snapshot.remaining_burst_capacity();
                    describe(
                        &mut headers,
                        REQUESTS,
                        *rate,
                        f64::from(remaining),
                        Duration::from_secs_f64(1.0 / f64::from(*rate)),
                    );
                }
                Err(not_until) => {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    describe(&mut headers, REQUESTS, *rate, 0.0, wait);
                    return Err(Box::new(Refusal {
                        retry_after: wait,
                        which: "requests",
                        headers,
                    }));
                }
            }
        }
        Ok(headers)
    }

    /// Whether this key has a token limit (and so needs token counts).
    pub fn counts_tokens(&self) -> bool {
        self.tokens.is_some() || self.budget.is_some()
    }

    /// Charges the tokens a finished request used.
    pub fn charge(&self, tokens: u32) {
        if let Some(budget) = &self.tokens {
            budget.charge(f64::from(tokens));
        }
        if let Some((bucket, _)) = self.cluster.as_ref().and_then(|c| c.tokens.as_ref()) {
            bucket.charge(f64::from(tokens));
        }
    }
}

/// The token budget `config` sets, kept on this node.
fn token_budget(config: RateLimitConfig) -> Option<TokenBudget> {
    let total = config.token_budget?;
    Some(TokenBudget::new(
        total,
        config.budget_period_hours,
        config.reserve_tokens,
    ))
}

/// Tokens per minute, refilled continuously; a request is admitted while the balance is above
/// zero and charged afterwards, so one large answer can take it below zero (a debt the refill
/// pays off before the next request).
///
/// Written here rather than with `governor`, whose buckets cannot charge a cost learnt only
/// after the work is done.
struct TokensPerMinute {
    per_minute: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokensPerMinute {
    fn new(per_minute: NonZeroU32) -> Self {
        let per_minute = f64::from(per_minute.get());
        Self {
            per_minute,
            state: Mutex::new((per_minute, Instant::now())),
        }
    }

    /// The balance now, and how long until it is full again (or positive, when in debt).
    fn state(&self) -> (f64, Duration) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let per_second = self.per_minute / 60.0;
        let now = Instant::now();
        state.0 = (state.0 + now.duration_since(state.1).as_secs_f64() * per_second).min(self.per_minute);
        state.1 = now;
        let target = if state.0 <= 0.0 { 1.0 } else { self.per_minute };
        let reset = Duration::from_secs_f64(((target - state.0) / per_second).max(0.0));
        (state.0, reset)
    }

    fn charge(&self, tokens: f64) {
        self.state();
        self.state.lock().unwrap_or_else(PoisonError::into_inner).0 -= tokens;
    }
}

/// The `x-ratelimit-{limit,remaining,reset}-*` header names of one kind of limit.
struct Names {
    limit: HeaderName,
    remaining: HeaderName,
    reset: HeaderName,
}

const REQUESTS: Names = Names {
    limit: HeaderName::from_static("x-ratelimit-limit-requests"),
    remaining: HeaderName::from_static("x-ratelimit-remaining-requests"),
    reset: HeaderName::from_static("x-ratelimit-reset-requests"),
};

const TOKENS: Names = Names {
    limit: HeaderName::from_static("x-ratelimit-limit-tokens"),
    remaining: HeaderName::from_static("x-ratelimit-remaining-tokens"),
    reset: HeaderName::from_static("x-ratelimit-reset-tokens"),
};

fn describe(headers: &mut HeaderMap, names: Names, limit: u32, remaining: f64, reset: Duration) {
    // Numbers always make valid header values.
    let value = |text: String| HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static("0"));
    headers.insert(names.limit, HeaderValue::from(limit));
    headers.insert(
        names.remaining,
        HeaderValue::from(remaining.max(0.0).floor() as u64),
    );
    headers.insert(names.reset, value(format!("{:.3}s", reset.as_secs_f64())));
}
