//! The router: a `ModelWorker` that sends each call to a backend of its model, by the model's
//! balancing policy, retrying elsewhere before the first token and falling back to the next group
//! when a group is exhausted.
//!
//! - [`balance`]: the order replicas are tried in (session affinity, least outstanding, ...).
//! - [`breaker`]: per-backend circuit breakers.
//! - [`health`]: active health checks that take failing backends out of rotation.
//! - [`retry`]: how many retries, and the backoff between them.
//! - [`replica`]: one backend with its limit, breaker and outcome counting.
//!
//! Retries happen only before the first token: a replica's first stream item is awaited before
//! the stream is handed on, so an early failure can still go elsewhere; after that, a failure
//! ends the caller's stream with an error.

pub mod balance;
pub mod breaker;
pub mod health;
pub mod replica;
pub mod retry;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use tokio_prompt_orchestrator::{BackendAttempt, InferenceCall, ModelWorker, TokenStream, WorkerError};

use self::balance::{Balancing, order};
use self::replica::{Budget, Replica};
use self::retry::RetryConfig;

/// Replicas of one model tried together, by one balancing policy.
pub struct Group {
    replicas: Vec<Arc<Replica>>,
    balancing: Balancing,
    turn: AtomicUsize,
}

impl Group {
    pub fn new(replicas: Vec<Arc<Replica>>, balancing: Balancing) -> Self {
        Self {
            replicas,
            balancing,
            turn: AtomicUsize::new(0),
        }
    }
}

/// How one model is served: its groups in order (the first, then the fallbacks) and its retries.
pub struct Route {
    groups: Vec<Group>,
    retry: RetryConfig,
}

impl Route {
    pub fn new(groups: Vec<Group>, retry: RetryConfig) -> Self {
        Self { groups, retry }
    }
}

/// Model name -> route.
#[derive(Default)]
pub struct Router {
    /// Looked up for every request. The keys come from the config, not from clients, so the
    /// default hasher's guard against keys chosen to collide (SipHash) buys nothing here.
    routes: HashMap<String, Route, foldhash::fast::RandomState>,
    names: Vec<String>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `model` by `route` (replacing an earlier route of the same name).
    pub fn insert(&mut self, model: &str, route: Route) {
        if self.routes.insert(model.to_string(), route).is_none() {
            self.names.push(model.to_string());
        }
    }

    /// Serves `model` by one worker alone: no retries, no breaker (there is nowhere else to go).
    pub fn insert_worker(&mut self, model: &str, worker: Arc<dyn ModelWorker>) {
        let config = replica::ReplicaConfig {
            breaker: breaker::BreakerConfig {
                consecutive_failures: 0,
                error_rate: 0.0,
                ..breaker::BreakerConfig::default()
            },
            ..replica::ReplicaConfig::default()
        };
        let replica = Arc::new(Replica::new(model, worker, config));
        let retry = RetryConfig {
            max: 0,
            ..RetryConfig::default()
        };
        self.insert(
            model,
            Route::new(vec![Group::new(vec![replica], Balancing::default())], retry),
        );
    }

    pub fn contains(&self, model: &str) -> bool {
        self.routes.contains_key(model)
    }

    /// Model names, in the order they were added.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The backends of `model`: its first group's, then each fallback group's, in config order.
    pub fn model_replicas(&self, model: &str) -> Vec<Arc<Replica>> {
        self.routes
            .get(model)
            .into_iter()
            .flat_map(|r| &r.groups)
            .flat_map(|g| g.replicas.iter().cloned())
            .collect()
    }

    /// Every backend of every model, once each (a backend serving several models is one
    /// replica), in the order models were added.
    pub fn replicas(&self) -> Vec<Arc<Replica>> {
        let mut seen: Vec<Arc<Replica>> = Vec::new();
        let groups = self
            .names
            .iter()
            .filter_map(|m| self.routes.get(m))
            .flat_map(|r| &r.groups);
        for replica in groups.flat_map(|g| &g.replicas) {
            if !seen.iter().any(|s| Arc::ptr_eq(s, replica)) {
                seen.push(replica.clone());
            }
        }
        seen
    }
}

/// What the router learnt trying one model's backends: each failure, in order.
#[derive(Default)]
struct Attempts {
    /// What each backend said, once per distinct note, with how many times it was said.
    notes: Vec<(String, u32)>,
    tried: Vec<BackendAttempt>,
    last: Option<WorkerError>,
    /// The shortest rest left of the backends passed over for their `Retry-After`.
    soonest_back: Option<Duration>,
}

impl Attempts {
    fn failed(&mut self, replica: &Replica, error: WorkerError) {
        self.note(&error.message);
        self.tried.push(BackendAttempt {
            backend: replica.name().to_owned(),
            error: error.message.clone(),
        });
        self.last = Some(error);
    }

    /// A failure not worth retrying ends the request with its own status and message, followed
    /// by what was tried before it.
    fn fatal(mut self, replica: &Replica, mut error: WorkerError) -> WorkerError {
        self.tried.push(BackendAttempt {
            backend: replica.name().to_owned(),
            error: error.message.clone(),
        });
        if !self.notes.is_empty() {
            error.message = format!("{} (tried before: {})", error.message, self.summary());
        }
        error.attempts = self.tried.into_boxed_slice();
        error
    }

    fn skipped(&mut self, replica: &Replica, why: replica::Unavailable) {
        replica.record_skip();
        if let Some(left) = replica.rest_left() {
            self.soonest_back = Some(self.soonest_back.map_or(left, |soonest| soonest.min(left)));
        }
        let mut detail = why.describe().to_owned();
        if let (replica::Unavailable::Unhealthy, Some(problem)) = (why, replica.health().problem()) {
            detail = format!("{detail} ({problem})");
        }
        // A replica passed over on several tries is named once.
        let note = format!("{}: {detail}", replica.name());
        if !self.notes.iter().any(|(said, _)| *said == note) {
            self.notes.push((note, 1));
            self.tried.push(BackendAttempt {
                backend: replica.name().to_owned(),
                error: detail,
            });
        }
    }

    /// Adds `note`, or counts it again when it was said before.
    fn note(&mut self, note: &str) {
        match self.notes.iter_mut().find(|(said, _)| said == note) {
            Some((_, times)) => *times += 1,
            None => self.notes.push((note.to_owned(), 1)),
        }
    }

    /// The notes in order, each once: `a: refused, 3 times; b: circuit open`.
    fn summary(&self) -> String {
        let notes = self.notes.iter().map(|(note, times)| match times {
            1 => note.clone(),
            n => format!("{note}, {n} times"),
        });
        notes.collect::<Vec<_>>().join("; ")
    }

    /// The error the caller gets: every backend tried and why it failed. When backends were
    /// left out for their `Retry-After`, the caller is told when the first comes back.
    fn into_error(mut self, model: &str) -> WorkerError {
        let mut error = self.last.take().unwrap_or_else(|| {
            // Only skips: every backend was unavailable, which is worth retrying later.
            WorkerError::retryable("no backend available").with_status(503)
        });
        if let Some(soonest) = self.soonest_back {
            error.retry_after = Some(error.retry_after.map_or(soonest, |own| own.min(soonest)));
        }
        error.message = format!("Every backend of model `{model}` failed: {}", self.summary());
        error.attempts = self.tried.into_boxed_slice();
        error
    }
}

#[async_trait]
impl ModelWorker for Router {
    /// The one-shot form has no model name: it goes to the first model's first backend.
    async fn infer(&self, prompt: &str) -> Result<Vec<String>, WorkerError> {
        let replica = self
            .names
            .first()
            .and_then(|m| self.routes.get(m))
            .and_then(|r| r.groups.first())
            .and_then(|g| g.replicas.first())
            .ok_or_else(|| WorkerError::new("no models are configured").with_status(404))?;
        replica.worker().infer(prompt).await
    }

    async fn infer_stream(&self, call: InferenceCall) -> Result<TokenStream, WorkerError> {
        let model = call.request.model.as_str();
        let route = self.routes.get(model).ok_or_else(|| {
            WorkerError::new(format!("the model `{model}` does not exist")).with_status(404)
        })?;
        let mut attempts = Attempts::default();
        let prefix = call.prefix_key.map(|key| format!("prefix:{key:016x}"));
        for (g, group) in route.groups.iter().enumerate() {
            let later_groups = route.groups.len() - g - 1;
            let turn = group.turn.fetch_add(1, Ordering::Relaxed);
            let affinity = match (group.balancing, &prefix) {
                (Balancing::PrefixAffinity, Some(prefix)) => prefix.as_str(),
                _ => call.request.session.as_str(),
            };
            let ranked = order(group.balancing, &group.replicas, affinity, turn);
            // Each try goes to the next available replica in the order, wrapping round.
            let mut cursor = 0;
            for tries in 0..=route.retry.max {
                let Some((replica, admission)) =
                    next_available(group, &ranked, &mut cursor, tries, &mut attempts).await
                else {
                    break; // Nothing left in this group: fall back to the next.
                };
                if tries > 0 {
                    tokio::select! {
                        () = tokio::time::sleep(route.retry.backoff(tries)) => {}
                        () = call.cancel.cancelled() => return Err(WorkerError::new("cancelled while waiting to retry")),
                    }
                }
                // The attempts that may still follow this one on other backends: this group's
                // tries left on replicas not tried yet, and the first try of each fallback group.
                // (A retry on the same replica reserves nothing: it runs if time is left.)
                let later_here = (route.retry.max - tries) as usize;
                let later = later_here.min(ranked.len().saturating_sub(cursor)) + later_groups;
                let budget = budget(call.deadline, later);
                let began = Instant::now();
                match replica.call(call.clone(), admission, budget).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) if e.retryable => {
                        attempts.failed(replica, e);
                        // A backend that used its whole share would use the next one too: once
                        // every replica here has had a try, the fallback gets the time instead.
                        let slow = budget.is_some_and(|b| began.elapsed() >= b.wait);
                        if slow && cursor >= ranked.len() {
                            break;
                        }
                    }
                    Err(e) => return Err(attempts.fatal(replica, e)),
                }
            }
        }
        Err(attempts.into_error(model))
    }
}

/// An attempt's share of the time left before `deadline`, when `later` attempts may follow it:
/// an equal share each, so a hung backend cannot use up the time its fallback needs. `None` when
/// nothing follows (the deadline itself bounds the last attempt) or there is no deadline.
fn budget(deadline: Option<Instant>, later: usize) -> Option<Budget> {
    let left = deadline?.saturating_duration_since(Instant::now());
    if later == 0 {
        return None;
    }
    let share = left / u32::try_from(later + 1).unwrap_or(u32::MAX);
    Some(Budget { wait: share, left })
}

/// The next replica of `ranked` (from `cursor`) that can take a call now. Replicas another node
/// of a cluster finds down are passed over while another can take the call, and tried last
/// otherwise: one node's view never takes a model out of service on the others. When every
/// replica is merely full on the first try, waits for the preferred one: the Inference stage's
/// own concurrency bounds how many wait.
async fn next_available<'g>(
    group: &'g Group,
    ranked: &[usize],
    cursor: &mut usize,
    tries: u32,
    attempts: &mut Attempts,
) -> Option<(&'g Arc<Replica>, replica::Admission)> {
    let mut all_full = true;
    let mut down_elsewhere = None;
    for _ in 0..ranked.len() {
        let index = *cursor % ranked.len();
        let replica = &group.replicas[ranked[index]];
        *cursor += 1;
        match replica.try_admit(true) {
            Ok(admission) => return Some((replica, admission)),
            Err(replica::Unavailable::DownElsewhere) => {
                down_elsewhere.get_or_insert(index);
            }
            Err(why) => {
                all_full &= why == replica::Unavailable::Full;
                attempts.skipped(replica, why);
            }
        }
    }
    if let Some(index) = down_elsewhere {
        let replica = &group.replicas[ranked[index]];
        match replica.try_admit(false) {
            Ok(admission) => return Some((replica, admission)),
            Err(why) => {
                all_full &= why == replica::Unavailable::Full;
                attempts.skipped(replica, why);
            }
        }
    }
    if all_full && tries == 0 {
        let preferred = group.replicas.get(*ranked.first()?)?;
        *cursor = 1;
        return Some((preferred, preferred.admit_waiting().await));
    }
    None
}
