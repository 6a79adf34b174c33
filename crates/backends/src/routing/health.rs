//! Active health checks: one task per backend probes it on an interval. After `unhealthy_after`
//! failed probes in a row the backend leaves rotation; after `healthy_after` good ones it comes
//! back. A probe may also report the upstream's own queue (vLLM's load figures), which
//! least-outstanding balancing adds to the calls we have in flight there.
//!
//! Checks complement the circuit breaker: the breaker learns from real calls, so a backend that
//! gets no traffic (a fallback, or one just restarted) is only known to be down by probing it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use metrics::gauge;
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::replica::Replica;

pub const BACKEND_HEALTHY: &str = "orchestrator_backend_healthy";
pub const BACKEND_QUEUE: &str = "orchestrator_backend_upstream_waiting";

/// `health_check = { interval_ms = 5000, timeout_ms = 2000, unhealthy_after = 2, healthy_after = 2 }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Time between probes; 0 turns checks off.
    pub interval_ms: u64,
    /// A probe not answered within this counts as failed.
    pub timeout_ms: u64,
    /// Failed probes in a row that take the backend out of rotation.
    pub unhealthy_after: u32,
    /// Good probes in a row that put it back.
    pub healthy_after: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval_ms: 5_000,
            timeout_ms: 2_000,
            unhealthy_after: 2,
            healthy_after: 2,
        }
    }
}

impl HealthConfig {
    /// No checks.
    pub fn off() -> Self {
        Self {
            interval_ms: 0,
            ..Self::default()
        }
    }
}

/// Asks a backend whether it can serve.
#[async_trait]
pub trait HealthProbe: Send + Sync + 'static {
    /// `Ok` with the number of requests waiting in the upstream's own queue, when it says;
    /// `Err` with what was wrong.
    async fn probe(&self) -> Result<Option<usize>, String>;
}

/// What the checks last concluded about one backend. Healthy until probes say otherwise, so a
/// backend serves from the start.
#[derive(Debug)]
pub struct HealthState {
    healthy: AtomicBool,
    /// Requests waiting upstream, as last reported (0 when the backend does not say).
    waiting: AtomicUsize,
    problem: Mutex<Option<String>>,
}

impl Default for HealthState {
    fn default() -> Self {
        Self {
            healthy: AtomicBool::new(true),
            waiting: AtomicUsize::new(0),
            problem: Mutex::new(None),
        }
    }
}

impl HealthState {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Why the last failed probe failed, while the backend is out of rotation.
    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_problem(&self, problem: Option<String>) {
        *self
            .problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = problem;
    }
}

/// Probe results in a row, of one kind.
#[derive(Default)]
struct Streak {
    good: u32,
    bad: u32,
}

/// Starts checking `replica` with `probe`; `None` when `config` turns checks off. The task ends
/// by itself once the replica is dropped.
pub fn watch(
    replica: &Arc<Replica>,
    probe: Arc<dyn HealthProbe>,
    config: HealthConfig,
) -> Option<JoinHandle<()>> {
    if config.interval_ms == 0 {
        return None;
    }
    gauge!(BACKEND_HEALTHY, "backend" => replica.name().to_string()).set(1.0);
    let replica = Arc::downgrade(replica);
    Some(tokio::spawn(check_loop(replica, probe, config)))
}

async fn check_loop(replica: Weak<Replica>, probe: Arc<dyn HealthProbe>, config: HealthConfig) {
    let mut ticks = tokio::time::interval(Duration::from_millis(config.interval_ms));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let timeout = Duration::from_millis(config.timeout_ms.max(1));
    let mut streak = Streak::default();
    loop {
        ticks.tick().await;
        let result = match tokio::time::timeout(timeout, probe.probe()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        };
        let Some(replica) = replica.upgrade() else {
            return;
        };
        observe(&replica, result, &config, &mut streak);
    }
}

/// Applies one probe result to the replica's state.
fn observe(
    replica: &Replica,
    result: Result<Option<usize>, String>,
    config: &HealthConfig,
    streak: &mut Streak,
) {
    let state = replica.health();
    match result {
        Ok(waiting) => {
            state.waiting.store(waiting.unwrap_or(0), Ordering::Relaxed);
            if let Some(waiting) = waiting {
                gauge!(BACKEND_QUEUE, "backend" => replica.name().to_string()).set(waiting as f64);
            }
            streak.bad = 0;
            streak.good = streak.good.saturating_add(1);
            if !state.is_healthy() && streak.good >= config.healthy_after.max(1) {
                state.set_problem(None);
                state.healthy.store(true, Ordering::Relaxed);
                gauge!(BACKEND_HEALTHY, "backend" => replica.name().to_string()).set(1.0);
                tracing::info!(
                    backend = replica.name(),
                    "Backend passes its health checks again; back in rotation."
                );
            }
        }
        Err(problem) => {
            streak.good = 0;
            streak.bad = streak.bad.saturating_add(1);
            if state.is_healthy() && streak.bad >= config.unhealthy_after.max(1) {
                state.healthy.store(false, Ordering::Relaxed);
                gauge!(BACKEND_HEALTHY, "backend" => replica.name().to_string()).set(0.0);
                tracing::warn!(backend = replica.name(), %problem, "Backend fails its health checks; out of rotation.");
            }
            if !state.is_healthy() {
                state.set_problem(Some(problem));
            }
        }
    }
}
