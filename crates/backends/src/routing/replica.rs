//! One backend as the router sees it: its worker, breaker, concurrency limit, in-flight count,
//! and the outcome of every call.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use futures_util::stream::{self, StreamExt};
use metrics::{Counter, counter};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_prompt_orchestrator::trace::{RequestTrace, SpanRecord, SpanValue, new_span_id};
use tokio_prompt_orchestrator::{InferenceCall, ModelWorker, TokenStream, WorkerError};
use tokio_util::sync::CancellationToken;

use crate::http::MAX_RETRY_AFTER;

use super::balance::Candidate;
use super::breaker::{Breaker, BreakerConfig, BreakerState};
use super::health::HealthState;

pub const BACKEND_CALLS: &str = "orchestrator_backend_calls_total";

/// How a call ended: the `outcome` label of [`BACKEND_CALLS`].
#[derive(Clone, Copy)]
enum Outcome {
    Success,
    Failure,
    Cut,
    /// Ended by our side before its end: the caller went away, the deadline passed, shutdown.
    Cancelled,
    Skipped,
}

impl Outcome {
    /// How many there are: the last variant's index, plus one.
    const COUNT: usize = Outcome::Skipped as usize + 1;

    fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Cut => "cut",
            Outcome::Cancelled => "cancelled",
            Outcome::Skipped => "skipped",
        }
    }
}

/// Routing settings of one backend: `weight`, `max_in_flight`, `breaker`.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicaConfig {
    /// Share of traffic under `balancing = "weighted"`.
    pub weight: u32,
    /// Calls in flight at most (0: no limit); a full backend is passed over for another.
    pub max_in_flight: usize,
    pub breaker: BreakerConfig,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        Self {
            weight: 1,
            max_in_flight: 0,
            breaker: BreakerConfig::default(),
        }
    }
}

pub struct Replica {
    name: Arc<str>,
    worker: Arc<dyn ModelWorker>,
    weight: u32,
    limit: Option<Arc<Semaphore>>,
    breaker: Breaker,
    outstanding: AtomicUsize,
    /// Set from an upstream's `Retry-After`: no calls before then.
    resting_until: Mutex<Option<Instant>>,
    health: HealthState,
    /// Another node of a cluster finds this backend down: calls avoid it while another replica
    /// can take them, so that every node sends a session to the same replica.
    down_elsewhere: AtomicBool,
    /// This replica's [`BACKEND_CALLS`] counters, by [`Outcome`], each registered on its first
    /// use: not in `new`, because the exporter is installed after the router is built and a
    /// handle taken before counts nowhere; not on every call, because a lookup builds the label
    /// set and hashes it.
    calls: [OnceLock<Counter>; Outcome::COUNT],
}

/// Why a replica was passed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    Unhealthy,
    CircuitOpen,
    DownElsewhere,
    Resting,
    Full,
}

impl Unavailable {
    pub fn describe(self) -> &'static str {
        match self {
            Unavailable::Unhealthy => "skipped: failing its health checks",
            Unavailable::CircuitOpen => "skipped: its circuit breaker is open after repeated failures",
            Unavailable::DownElsewhere => "skipped: another node of the cluster finds it down",
            Unavailable::Resting => "skipped: waiting out its Retry-After",
            Unavailable::Full => "skipped: at its max_in_flight",
        }
    }
}

/// Permission to call a replica: its concurrency slot, held until the call's stream ends.
pub struct Admission {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Replica {
    pub fn new(name: &str, worker: Arc<dyn ModelWorker>, config: ReplicaConfig) -> Self {
        Self {
            name: Arc::from(name),
            worker,
            weight: config.weight,
            limit: (config.max_in_flight > 0).then(|| Arc::new(Semaphore::new(config.max_in_flight))),
            breaker: Breaker::new(config.breaker),
            outstanding: AtomicUsize::new(0),
            resting_until: Mutex::new(None),
            health: HealthState::default(),
            down_elsewhere: AtomicBool::new(false),
            calls: Default::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn worker(&self) -> &Arc<dyn ModelWorker> {
        &self.worker
    }

    /// What the active health checks last concluded.
    pub fn health(&self) -> &HealthState {
        &self.health
    }

    /// This node's calls in flight there now.
    pub fn calls_in_flight(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// How much longer this backend rests after a `Retry-After`, if it does.
    pub fn rest_left(&self) -> Option<Duration> {
        let until = *self
            .resting_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        until
            .and_then(|until| until.checked_duration_since(Instant::now()))
            .filter(|left| !left.is_zero())
    }

    /// Whether this node finds the backend down: failing its health checks, or its breaker
    /// open. What a cluster node tells the others.
    pub fn down_here(&self) -> bool {
        !self.health.is_healthy() || self.breaker.state() == BreakerState::Open
    }

    /// Notes whether another node of the cluster finds this backend down.
    pub fn set_down_elsewhere(&self, down: bool) {
        self.down_elsewhere.store(down, Ordering::Relaxed);
    }

    pub fn down_elsewhere(&self) -> bool {
        self.down_elsewhere.load(Ordering::Relaxed)
    }

    /// Takes a slot now, or says why not. `shared` honours the other nodes' verdict (see
    /// [`set_down_elsewhere`](Self::set_down_elsewhere)).
    pub fn try_admit(&self, shared: bool) -> Result<Admission, Unavailable> {
        if !self.health.is_healthy() {
            return Err(Unavailable::Unhealthy);
        }
        if shared && self.down_elsewhere() {
            return Err(Unavailable::DownElsewhere);
        }
        if self.rest_left().is_some() {
            return Err(Unavailable::Resting);
        }
        let permit = match &self.limit {
            Some(limit) => Some(limit.clone().try_acquire_owned().map_err(|_| Unavailable::Full)?),
            None => None,
        };
        if !self.breaker.try_acquire() {
            return Err(Unavailable::CircuitOpen);
        }
        Ok(Admission { _permit: permit })
    }

    /// Waits for a slot (when every replica is full, the preferred one is waited for).
    pub async fn admit_waiting(&self) -> Admission {
        let permit = match &self.limit {
            // The semaphore is never closed, so acquiring only ever waits.
            Some(limit) => limit.clone().acquire_owned().await.ok(),
            None => None,
        };
        Admission { _permit: permit }
    }

    fn count(&self, outcome: Outcome) {
        self.calls[outcome as usize]
            .get_or_init(
                || counter!(BACKEND_CALLS, "backend" => self.name.to_string(), "outcome" => outcome.label()),
            )
            .increment(1);
    }

    pub fn record_skip(&self) {
        self.count(Outcome::Skipped);
    }

    /// Calls the backend and waits for its first item, so that a failure before the first token
    /// comes back as an `Err` the router can retry elsewhere. Records the outcome in the breaker.
    /// `budget` bounds the wait for the first item (this attempt's share of the request's
    /// deadline); running out of it is a retryable failure of this backend.
    pub async fn call(
        self: &Arc<Self>,
        mut call: InferenceCall,
        admission: Admission,
        budget: Option<Budget>,
    ) -> Result<TokenStream, WorkerError> {
        let mut tracker = InFlight::new(self.clone(), admission, call.cancel.clone());
        if let Some(trace) = &call.request.trace {
            let attempt = AttemptSpan::begin(trace.clone(), self, &call.request.model);
            call.traceparent = Some(trace.parent.child(attempt.span_id));
            tracker.span = Some(attempt);
        }
        let first = async {
            let mut upstream = self.worker.infer_stream(call).await?;
            let first = upstream.next().await;
            Ok::<_, WorkerError>((upstream, first))
        };
        let started = match budget {
            None => first.await,
            Some(budget) => match tokio::time::timeout(budget.wait, first).await {
                Ok(started) => started,
                Err(_) => Err(budget.exceeded(&self.name)),
            },
        };
        let (upstream, first) = match started {
            Ok(started) => started,
            Err(e) => return Err(tracker.fail(e)),
        };
        match first {
            Some(Err(e)) => Err(tracker.fail(e)),
            None => {
                tracker.succeed();
                Ok(stream::empty().boxed())
            }
            Some(Ok(first)) => {
                // The stream carries the tracker: the slot is held and the outcome recorded
                // when the stream ends (or is dropped by a caller who went away).
                let mut tracker = Some(tracker);
                let rest = upstream.map(move |item| {
                    if let Err(e) = &item
                        && let Some(t) = tracker.take()
                    {
                        t.cut(e);
                    }
                    item
                });
                Ok(stream::once(async move { Ok(first) }).chain(rest).boxed())
            }
        }
    }
}

/// How long one attempt may wait for its first item: its share of the time left before the
/// request's deadline, so that the attempts after it (another replica, a fallback) still get one.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub wait: Duration,
    /// The time that was left before the deadline when the attempt began.
    pub left: Duration,
}

impl Budget {
    fn exceeded(&self, backend: &str) -> WorkerError {
        WorkerError::retryable(format!(
            "{backend}: no answer within {} ms, this attempt's share of the {} ms that were left \
             before the request's deadline (the rest is kept for the backends after it)",
            self.wait.as_millis(),
            self.left.as_millis()
        ))
        .with_status(504)
    }
}

impl Candidate for Arc<Replica> {
    fn name(&self) -> &str {
        &self.name
    }
    /// Our calls in flight there, plus the upstream's own queue when its health checks report
    /// it (other clients' work counts too).
    fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed) + self.health.waiting()
    }
    fn weight(&self) -> u32 {
        self.weight
    }
}

/// One call in flight: counted in `outstanding`, holding its slot; its outcome reaches the
/// breaker once.
struct InFlight {
    replica: Arc<Replica>,
    _admission: Admission,
    /// The request's token: cancelled when the call is dropped because the request ended on our
    /// side (caller gone, deadline, shutdown), not because the backend finished.
    cancel: CancellationToken,
    settled: bool,
    /// The call's span, when the request is traced; recorded when the call ends.
    span: Option<AttemptSpan>,
}

impl InFlight {
    fn new(replica: Arc<Replica>, admission: Admission, cancel: CancellationToken) -> Self {
        replica.outstanding.fetch_add(1, Ordering::Relaxed);
        Self {
            replica,
            _admission: admission,
            cancel,
            settled: false,
            span: None,
        }
    }

    /// Counts the call's outcome, and records its span with `error` when it is traced.
    fn settle(&mut self, outcome: Outcome, error: Option<&WorkerError>) {
        self.settled = true;
        self.replica.count(outcome);
        if let Some(span) = self.span.take() {
            span.end(outcome, error);
        }
    }

    fn fail(mut self, error: WorkerError) -> WorkerError {
        self.replica.breaker.record(false);
        self.settle(Outcome::Failure, Some(&error));
        if let Some(wait) = error.retry_after {
            let until = Instant::now() + wait.min(MAX_RETRY_AFTER);
            *self
                .replica
                .resting_until
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(until);
        }
        error
    }

    fn succeed(mut self) {
        self.replica.breaker.record(true);
        self.settle(Outcome::Success, None);
    }

    /// The stream failed after its first token.
    fn cut(mut self, error: &WorkerError) {
        self.replica.breaker.record(false);
        self.settle(Outcome::Cut, Some(error));
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.replica.outstanding.fetch_sub(1, Ordering::Relaxed);
        if self.settled {
            return;
        }
        if self.cancel.is_cancelled() {
            // Ended by our side: says nothing about the backend's health either way.
            self.settle(Outcome::Cancelled, None);
        } else {
            // The stream ended cleanly, or a stage downstream ended it early (a stop sequence):
            // the backend did its part.
            self.replica.breaker.record(true);
            self.settle(Outcome::Success, None);
        }
    }
}

/// One call to a backend of a traced request: a span under the request's Inference span, named
/// as the OpenTelemetry GenAI conventions name a client's call (`chat {model}`).
struct AttemptSpan {
    trace: Arc<RequestTrace>,
    span_id: [u8; 8],
    start: SystemTime,
    model: String,
    backend: Arc<str>,
    address: Option<String>,
}

impl AttemptSpan {
    fn begin(trace: Arc<RequestTrace>, replica: &Replica, model: &str) -> Self {
        Self {
            trace,
            span_id: new_span_id(),
            start: SystemTime::now(),
            model: model.to_owned(),
            backend: replica.name.clone(),
            address: replica.worker.address(),
        }
    }

    fn end(self, outcome: Outcome, error: Option<&WorkerError>) {
        let mut attributes = vec![
            ("gen_ai.operation.name", SpanValue::Str("chat".into())),
            ("gen_ai.request.model", SpanValue::Str(self.model.clone())),
            ("orchestrator.backend", SpanValue::Str(self.backend.to_string())),
            (
                "orchestrator.attempt.outcome",
                SpanValue::Str(outcome.label().into()),
            ),
        ];
        if let Some(address) = self.address {
            attributes.push(("server.address", SpanValue::Str(address)));
        }
        if let Some(status) = error.and_then(|e| e.status) {
            attributes.push(("error.type", SpanValue::Str(status.to_string())));
        }
        self.trace.record(SpanRecord {
            span_id: self.span_id,
            name: format!("chat {}", self.model),
            start: self.start,
            end: SystemTime::now(),
            attributes,
            error: error.map(|e| e.message.clone()),
        });
    }
}
