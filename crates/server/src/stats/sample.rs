//! Reading the gateway into a [`Snapshot`]: counts as they are, rates over the last few ticks,
//! percentiles over the last few seconds, and the cluster and dead-letter queue now and again
//! (they are reads over the network or from disk).

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use orchestrator_backends::routing::breaker::BreakerState;
use orchestrator_backends::routing::replica::Replica;
use tokio::time::Instant;
use tokio_prompt_orchestrator::{LatencyCounts, LevelStats, PipelineStats, PriorityGate, StageStats};

use super::INTERVAL;
use super::snapshot::{
    Admission, BackendView, ClusterView, Latency, ModelView, NodeView, Point, PriorityView, Requests,
    Snapshot, StageView,
};
use crate::cluster::membership::Role;
use crate::dlq::entry::unix_ms;
use crate::gateway::Gateway;
use crate::gateway::live::Live;

/// Points of history kept: five minutes of ticks.
pub const HISTORY: usize = 600;
/// Rates are over this many ticks.
const RATE_TICKS: usize = 4;
/// Latency readings are kept every `WINDOW_STEP` ticks, `WINDOW_STEPS` of them: percentiles
/// cover the last 10 to 12 seconds.
const WINDOW_STEP: u64 = 4;
const WINDOW_STEPS: usize = 5;
/// The cluster and the dead-letter queue are read every this many ticks, each for at most
/// `SLOW_READ` (a broker that does not answer must not hold the ticks up).
const SLOW_EVERY: u64 = 4;
const SLOW_READ: Duration = Duration::from_millis(400);

/// Counts at one tick, for rates.
#[derive(Clone)]
struct Counts {
    at: Instant,
    requests: PipelineStats,
    gate_shed: u64,
    /// (completed, failed, shed) per stage.
    stages: Vec<(u64, u64, u64)>,
}

/// Latency readings at one tick, for windows.
struct Readings {
    at: Instant,
    /// (queue wait, work) per stage.
    stages: Vec<(LatencyCounts, LatencyCounts)>,
    ttft: LatencyCounts,
}

pub struct Sampler {
    node: String,
    started: Instant,
    ticks: u64,
    /// The pipeline the rings were read from: a reload starts a new one, whose counts start at 0.
    generation: u64,
    counts: VecDeque<Counts>,
    readings: VecDeque<Readings>,
    cluster: Option<ClusterView>,
    dlq: Option<u64>,
}

impl Sampler {
    pub fn new(node: String) -> Self {
        Self {
            node,
            started: Instant::now(),
            ticks: 0,
            generation: 0,
            counts: VecDeque::new(),
            readings: VecDeque::new(),
            cluster: None,
            dlq: None,
        }
    }

    /// One snapshot of `state` now, and its point of history.
    pub async fn sample(&mut self, state: &Gateway) -> (Snapshot, Point) {
        let live = state.live();
        if live.generation != self.generation {
            self.generation = live.generation;
            self.counts.clear();
            self.readings.clear();
        }
        if self.ticks.is_multiple_of(SLOW_EVERY) {
            self.read_slow(state, &live).await;
        }
        let now = Instant::now();
        let pipeline = &live.pipeline;
        let requests = pipeline.stats();
        let stages = pipeline.stage_stats();
        let levels = live.gate.levels();
        let counts = Counts {
            at: now,
            requests,
            gate_shed: levels.iter().map(|l| l.shed).sum(),
            stages: stages.iter().map(|s| (s.completed, s.failed, s.shed)).collect(),
        };
        let readings = Readings {
            at: now,
            stages: stages
                .iter()
                .map(|s| (s.queue_wait.clone(), s.work.clone()))
                .collect(),
            ttft: pipeline.time_to_first_token(),
        };
        self.counts.push_back(counts.clone());
        if self.counts.len() > RATE_TICKS + 1 {
            self.counts.pop_front();
        }
        let (earlier, seconds) = match self.counts.front() {
            Some(first) if first.at < now => (first.clone(), (now - first.at).as_secs_f64()),
            _ => (counts.clone(), 1.0),
        };
        let per_second = |now: u64, then: u64| now.saturating_sub(then) as f64 / seconds;
        let window = self.readings.front().unwrap_or(&readings);
        let window_s = (now - window.at).as_secs_f64();

        let stage_views = stages
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (done, failed, shed) = counts.stages[i];
                let (done_then, failed_then, shed_then) = earlier.stages[i];
                let (wait_then, work_then) = &window.stages[i];
                let rates = [
                    per_second(done, done_then),
                    per_second(failed, failed_then),
                    per_second(shed, shed_then),
                ];
                let latencies = [s.queue_wait.since(wait_then), s.work.since(work_then)];
                stage_view(s, rates, latencies)
            })
            .collect();
        let ttft = latency(&readings.ttft.since(&window.ttft));
        let shed = requests.shed + counts.gate_shed;
        let requests = Requests {
            admitted: requests.admitted,
            completed: requests.completed,
            failed: requests.failed,
            cancelled: requests.cancelled,
            shed,
            in_flight: requests.in_flight,
            rate: per_second(requests.completed, earlier.requests.completed),
            failed_rate: per_second(requests.failed, earlier.requests.failed),
            shed_rate: per_second(shed, earlier.requests.shed + earlier.gate_shed),
        };
        let admission = admission(&live.gate, &levels);

        if self.ticks.is_multiple_of(WINDOW_STEP) {
            self.readings.push_back(readings);
            if self.readings.len() > WINDOW_STEPS {
                self.readings.pop_front();
            }
        }
        self.ticks += 1;

        let at_ms = unix_ms(SystemTime::now());
        let point = Point {
            at_ms,
            rate: requests.rate,
            failed_rate: requests.failed_rate,
            shed_rate: requests.shed_rate,
            in_flight: requests.in_flight,
            queued: stages.iter().map(|s| s.queued).sum::<usize>() + admission.queued,
            ttft_p50_ms: ttft.p50_ms,
            ttft_p99_ms: ttft.p99_ms,
        };
        let snapshot = Snapshot {
            node: self.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            at_ms,
            uptime_s: self.started.elapsed().as_secs(),
            interval_ms: INTERVAL.as_millis() as u64,
            window_s,
            generation: live.generation,
            requests,
            stages: stage_views,
            ttft,
            admission,
            models: models(&live),
            dlq: self.dlq,
            cluster: self.cluster.clone(),
            history: Vec::new(),
        };
        (snapshot, point)
    }

    /// The dead-letter queue's size and the cluster's nodes, each read within `SLOW_READ`; a read
    /// that fails or takes longer keeps what the last one found.
    async fn read_slow(&mut self, state: &Gateway, live: &Live) {
        self.dlq = match &live.dlq {
            None => None,
            Some(store) => match tokio::time::timeout(SLOW_READ, store.len()).await {
                Ok(Ok(len)) => Some(len),
                _ => self.dlq,
            },
        };
        let Some(cluster) = &state.cluster else {
            self.cluster = None;
            return;
        };
        let read = async {
            if !cluster.link.state().connected {
                return Err("NATS is unreachable".to_string());
            }
            match tokio::time::timeout(SLOW_READ, cluster.members().live()).await {
                Ok(Ok((members, _))) => Ok(members),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("reading the cluster's nodes took too long".to_string()),
            }
        };
        let view = self.cluster.get_or_insert_with(ClusterView::default);
        match read.await {
            Ok(members) => {
                view.error = None;
                view.nodes = members
                    .into_iter()
                    .map(|m| {
                        let r = m.record;
                        NodeView {
                            role: match r.role {
                                Role::Worker => "worker",
                                Role::Gateway => "gateway",
                            }
                            .to_string(),
                            name: r.name,
                            address: r.address,
                            version: r.version,
                            models: r.models,
                            in_flight: r.in_flight,
                            queued: r.queued,
                            load: r.load,
                            slots: r.slots,
                            down_backends: r.down_backends,
                        }
                    })
                    .collect();
            }
            Err(error) => view.error = Some(error),
        }
    }
}

/// The priority gate now, and each level's counts.
fn admission(gate: &PriorityGate, levels: &[LevelStats]) -> Admission {
    let (in_flight, queued) = gate.load();
    let config = gate.config();
    Admission {
        in_flight,
        max_in_flight: config.max_in_flight.get(),
        queued,
        max_queued: config.max_queued,
        priorities: levels
            .iter()
            .map(|l| PriorityView {
                priority: l.priority.as_str().to_string(),
                queued: l.queued,
                admitted: l.admitted,
                shed: l.shed,
            })
            .collect(),
    }
}

/// A stage as it is now, with its rates (completed, failed, shed) and the latencies of the window
/// (queue wait, work).
fn stage_view(
    s: &StageStats,
    [rate, failed_rate, shed_rate]: [f64; 3],
    [wait, work]: [LatencyCounts; 2],
) -> StageView {
    StageView {
        name: s.stage.as_str().to_string(),
        queued: s.queued,
        capacity: s.capacity,
        in_flight: s.in_flight,
        concurrency: s.concurrency,
        admitted: s.admitted,
        completed: s.completed,
        failed: s.failed,
        cancelled: s.cancelled,
        shed: s.shed,
        rate,
        failed_rate,
        shed_rate,
        queue_wait: latency(&wait),
        work: latency(&work),
    }
}

fn latency(counts: &LatencyCounts) -> Latency {
    let ms = |q| counts.quantile(q).map(|d: Duration| d.as_secs_f64() * 1000.0);
    Latency {
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        count: counts.count(),
    }
}

fn models(live: &Live) -> Vec<ModelView> {
    live.models
        .names()
        .iter()
        .map(|name| ModelView {
            kind: if live.embedding_models.contains(name) {
                "embedding"
            } else {
                "chat"
            }
            .to_string(),
            backends: live
                .models
                .model_replicas(name)
                .iter()
                .map(|r| backend(r))
                .collect(),
            name: name.clone(),
        })
        .collect()
}

fn backend(replica: &Replica) -> BackendView {
    let health = replica.health();
    BackendView {
        name: replica.name().to_string(),
        healthy: health.is_healthy(),
        problem: health.problem(),
        breaker: match replica.breaker_state() {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
        .to_string(),
        in_flight: replica.calls_in_flight(),
        upstream_waiting: health.waiting(),
        resting_ms: replica.rest_left().map(|d| d.as_millis() as u64),
        down_elsewhere: replica.down_elsewhere(),
    }
}
