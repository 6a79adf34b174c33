//! The pull loop: a worker takes a job from the broker only when it has a free slot, from the
//! queue it should serve next.
//!
//! Each (model, priority, partition) is one durable consumer. The worker learns which may hold
//! jobs from the doorbell gateway nodes ring after each publish, and from a scan of the stream's
//! subject counts every heartbeat (which catches a bell that was lost, and jobs queued before the
//! worker started); [`Pending`] says which to pull from next.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::Subscriber;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, stream};
use futures_util::stream::SelectAll;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use tokio::sync::watch;
use tokio::time::{Instant, Interval};
use tokio_util::sync::CancellationToken;

use super::ownership::Owned;
use super::pending::{Pending, Queue};
use super::{Shared, job};
use crate::cluster::Cluster;
use crate::cluster::jobs::{self, PRIORITIES};
use crate::dlq::entry::unix_ms;

pub struct Puller {
    shared: Arc<Shared>,
    cluster: Arc<Cluster>,
    /// Each served model's doorbell subject, by the model's index.
    doorbells: Vec<String>,
    stream: stream::Stream,
    consumers: HashMap<Queue, PullConsumer>,
    pending: Pending,
    owned: watch::Receiver<Owned>,
}

impl Puller {
    pub fn new(
        shared: Arc<Shared>,
        cluster: Arc<Cluster>,
        owned: watch::Receiver<Owned>,
        starvation_bound: u32,
    ) -> Self {
        Self {
            doorbells: shared.models.iter().map(|m| jobs::doorbell(m)).collect(),
            stream: cluster.jobs.stream.clone(),
            cluster,
            consumers: HashMap::new(),
            pending: Pending::new(starvation_bound, Duration::from_millis(shared.config.handoff_ms)),
            owned,
            shared,
        }
    }

    /// Pulls and starts jobs until `stop`; running jobs go on (the caller waits for them).
    pub async fn run(mut self, stop: CancellationToken) {
        let client = self.cluster.jetstream.client();
        let mut bells = Vec::new();
        for doorbell in &self.doorbells {
            match client.subscribe(doorbell.clone()).await {
                Ok(bell) => bells.push(bell),
                Err(e) => tracing::warn!(error = %e, "Cannot hear the doorbell; jobs are found by scanning."),
            }
        }
        let mut bells = futures_util::stream::select_all(bells);
        let mut scan = tokio::time::interval(Duration::from_millis(self.cluster.config.heartbeat_ms));
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // A slot first: a job is never taken that could not start at once.
            let permit = tokio::select! {
                permit = self.shared.slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                () = stop.cancelled() => return,
            };
            let Some((message, queue)) = self.next_job(&mut bells, &mut scan, &stop).await else {
                return;
            };
            let model = self.shared.models[queue.model].clone();
            if let Ok(info) = message.info() {
                let published_ms = (info.published.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
                let waited_ms = unix_ms(SystemTime::now()).saturating_sub(published_ms);
                metrics::histogram!("orchestrator_worker_job_wait_seconds", "model" => model.clone())
                    .record(waited_ms as f64 / 1000.0);
                if info.pending == 0 {
                    self.pending.forget(&queue);
                }
            }
            if !self.owned.borrow().contains(queue.model, queue.partition) {
                metrics::counter!("orchestrator_worker_handoffs_total", "model" => model.clone())
                    .increment(1);
            }
            tokio::spawn(job::run(
                self.shared.clone(),
                self.cluster.clone(),
                message,
                model,
                permit,
            ));
        }
    }

    /// Waits for a job this worker should take now, and takes it; `None` at `stop`.
    async fn next_job(
        &mut self,
        bells: &mut SelectAll<Subscriber>,
        scan: &mut Interval,
        stop: &CancellationToken,
    ) -> Option<(jetstream::Message, Queue)> {
        loop {
            while let Some(Some(bell)) = bells.next().now_or_never() {
                self.ring(&bell.subject, &bell.payload);
            }
            let picked = self.pending.pick(Instant::now(), &self.owned.borrow());
            if let Some(queue) = picked {
                match self.fetch(queue).await {
                    Ok(Some(message)) => return Some((message, queue)),
                    Ok(None) => self.pending.forget(&queue),
                    Err(e) => {
                        tracing::warn!(error = %e, "Cannot pull a job; trying again on the next scan.");
                        self.pending.forget(&queue);
                    }
                }
                continue;
            }
            // Nothing to take now: wait for a bell, the next scan, a change of owners, or the
            // moment another worker's job may be taken.
            let handoff_at = self.pending.next_handoff(&self.owned.borrow());
            tokio::select! {
                bell = bells.next(), if !bells.is_empty() => {
                    if let Some(bell) = bell {
                        self.ring(&bell.subject, &bell.payload);
                    }
                }
                _ = scan.tick() => self.scan().await,
                () = sleep_until(handoff_at) => {}
                changed = self.owned.changed() => match changed {
                    Ok(()) => self.scan().await,
                    Err(_) => return None,
                },
                () = stop.cancelled() => return None,
            }
        }
    }

    /// Notes the queue a doorbell names (`<priority>.<partition>` on a model's bell subject).
    fn ring(&mut self, subject: &str, payload: &[u8]) {
        let Some(model) = self.doorbells.iter().position(|d| d == subject) else {
            return;
        };
        let Some((priority, partition)) = std::str::from_utf8(payload)
            .ok()
            .and_then(|p| p.split_once('.'))
            .and_then(|(priority, partition)| {
                let priority = PRIORITIES.into_iter().find(|p| p.as_str() == priority)?;
                Some((priority, partition.parse::<u32>().ok()?))
            })
        else {
            return;
        };
        let queue = Queue {
            model,
            priority,
            partition,
        };
        self.pending.note(queue, Instant::now());
    }

    /// Notes every queue the broker counts jobs in.
    async fn scan(&mut self) {
        for (index, model) in self.shared.models.iter().enumerate() {
            let counts = async {
                let info = self.stream.info_with_subjects(jobs::model_filter(model)).await?;
                info.try_collect::<Vec<(String, usize)>>()
                    .await
                    .map_err(Into::into)
            };
            let counts: Result<Vec<(String, usize)>, async_nats::Error> = counts.await;
            match counts {
                Ok(counts) => {
                    for (subject, count) in counts {
                        if let (Some((priority, partition)), true) =
                            (jobs::parse_subject(model, &subject), count > 0)
                        {
                            let queue = Queue {
                                model: index,
                                priority,
                                partition,
                            };
                            self.pending.note(queue, Instant::now());
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "Cannot scan the job queue."),
            }
        }
    }

    /// Takes one job from `queue`, if it holds one.
    async fn fetch(&mut self, queue: Queue) -> Result<Option<jetstream::Message>, String> {
        let consumer = match self.consumers.get(&queue) {
            Some(consumer) => consumer,
            None => {
                let model = &self.shared.models[queue.model];
                let consumer = jobs::consumer(
                    &self.stream,
                    model,
                    queue.priority,
                    queue.partition,
                    // A taken job stays this worker's without news for a node's timeout.
                    Duration::from_millis(self.cluster.config.node_timeout_ms),
                )
                .await?;
                self.consumers.entry(queue).or_insert(consumer)
            }
        };
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        match batch.next().await {
            Some(Ok(message)) => Ok(Some(message)),
            Some(Err(e)) => Err(e.to_string()),
            None => Ok(None),
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
