//! `kind = "cluster"`: a backend whose calls run on `orchestrator worker` processes. Each call
//! is published as a job to the broker; the first reply that carries output makes its worker the
//! one the caller hears, and the rest of its replies become the call's token stream.
//!
//! Until the first token the job belongs to the broker: a worker that dies before it is replaced
//! by the broker redelivering the job, and the caller only waits longer. After it, a silent or
//! broken worker ends the stream with an error (the pipeline then dead-letters the request).
//! A call that is dropped (caller gone, deadline) takes its job out of the queue, or tells its
//! worker to stop.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_nats::HeaderMap;
use async_trait::async_trait;
use futures_util::stream::{self, StreamExt};
use orchestrator_backends::routing::replica::ReplicaConfig;
use serde::Deserialize;
use tokio::time::Instant;
use tokio_prompt_orchestrator::{
    InferenceCall, InferenceRequest, ModelWorker, RequestId, SessionId, TokenStream, WorkerChunk, WorkerError,
};

use super::replies::Inbox;
use super::wire::{Cancel, Job, PROTOCOL, Reply, ReplyEvent};
use super::{cancel_subject, doorbell, partition, subject};
use crate::cluster::Cluster;
use crate::dlq::entry::unix_ms;

/// `[[backends]]` with `kind = "cluster"`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    pub name: String,
    /// The model name the workers serve; by default the name the client asked for.
    #[serde(default)]
    pub model: Option<String>,
    /// How long a job may wait in the broker for a worker to take it, when the request's
    /// deadline is not sooner; then the call fails with 503 and `Retry-After`.
    #[serde(default = "RemoteConfig::default_queue_timeout_ms")]
    pub queue_timeout_ms: u64,
    /// What picks a job's partition, and so its worker: the session key, or the prompt's prefix
    /// key (made by the Assemble stage; the session key when there is none).
    #[serde(default)]
    pub affinity: Affinity,
    #[serde(default)]
    pub routing: ReplicaConfig,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Affinity {
    #[default]
    Session,
    Prefix,
}

impl RemoteConfig {
    fn default_queue_timeout_ms() -> u64 {
        30_000
    }
}

/// A job gives up this long before the request's deadline, so the caller hears that no worker
/// took it (503) rather than a bare timeout.
const BEFORE_DEADLINE: Duration = Duration::from_millis(50);

/// The gateway's side of remote work.
pub struct RemoteWorker {
    cluster: Arc<Cluster>,
    config: RemoteConfig,
}

impl RemoteWorker {
    pub fn new(cluster: Arc<Cluster>, config: RemoteConfig) -> Self {
        Self { cluster, config }
    }
}

#[async_trait]
impl ModelWorker for RemoteWorker {
    async fn infer(&self, prompt: &str) -> Result<Vec<String>, WorkerError> {
        let model = self
            .config
            .model
            .clone()
            .unwrap_or_else(|| self.config.name.clone());
        let request = InferenceRequest::text(SessionId::new(""), prompt).with_model(model);
        let mut tokens = self
            .infer_stream(InferenceCall::new(RequestId(0), request, prompt))
            .await?;
        let mut out = Vec::new();
        while let Some(chunk) = tokens.next().await {
            if let WorkerChunk::Token(text) = chunk? {
                out.push(text);
            }
        }
        Ok(out)
    }

    async fn infer_stream(&self, call: InferenceCall) -> Result<TokenStream, WorkerError> {
        let mut job = Queued::publish(self, &call).await?;
        let first = job.first(&call).await?;
        let rest = stream::unfold(job, |mut job| async move {
            let item = job.next_after_start().await?;
            Some((item, job))
        });
        Ok(stream::iter(first.map(Ok)).chain(rest).boxed())
    }
}

/// Numbers the jobs of this process, for their ids.
static JOBS: AtomicU64 = AtomicU64::new(0);

/// A published job and what its replies have said so far.
struct Queued {
    cluster: Arc<Cluster>,
    id: String,
    model: String,
    /// The job's sequence number in the stream, to take it out while it waits.
    sequence: u64,
    /// When the job stops waiting for a worker.
    give_up: Instant,
    inbox: Inbox,
    /// The next reply number expected from each worker that has answered.
    seen: HashMap<String, u64>,
    /// The worker whose output the caller hears (once `started`), or the latest to take it.
    runner: Option<String>,
    started: bool,
    finished: bool,
    /// Silence from the runner longer than this means it has gone.
    silence: Duration,
}

/// What the next reply means for the call.
enum Heard {
    Chunk(WorkerChunk),
    Failed(WorkerError),
    End,
    Nothing,
}

impl Queued {
    /// Publishes `call` as a job and rings the model's doorbell.
    ///
    /// # Errors
    /// 413 when the job is larger than the broker takes; 503 with `Retry-After` when the broker
    /// does not store it (full, unreachable) in time.
    async fn publish(remote: &RemoteWorker, call: &InferenceCall) -> Result<Self, WorkerError> {
        let cluster = &remote.cluster;
        let model = remote
            .config
            .model
            .clone()
            .unwrap_or_else(|| call.request.model.clone());
        let inbox = cluster.jobs.replies.register();
        let now = Instant::now();
        let give_up = now + Duration::from_millis(remote.config.queue_timeout_ms);
        let give_up = call.deadline.map_or(give_up, |d| {
            give_up.min(d.checked_sub(BEFORE_DEADLINE).unwrap_or(d))
        });
        let id = format!("{}-{}", cluster.instance, JOBS.fetch_add(1, Ordering::Relaxed));
        let job = job(cluster, call, &id, &model, &inbox.subject, (now, give_up));
        let payload =
            serde_json::to_vec(&job).map_err(|e| WorkerError::new(format!("cannot encode the job: {e}")))?;
        let client = cluster.jetstream.client();
        let max = client.server_info().max_payload;
        if max > 0 && payload.len() > max {
            return Err(WorkerError::new(format!(
                "the request is {} bytes as a job for the workers of model `{model}`, more than the \
                 NATS server takes in one message (max_payload, {max} bytes): send a smaller \
                 request, or raise max_payload in nats-server's config",
                payload.len()
            ))
            .with_status(413));
        }
        let key = match (remote.config.affinity, call.prefix_key) {
            (Affinity::Prefix, Some(prefix)) => format!("prefix:{prefix:016x}"),
            _ => call.request.session.as_str().to_owned(),
        };
        let (priority, part) = (call.request.priority, partition(&key));
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        let published = async {
            cluster
                .jetstream
                .publish_with_headers(subject(&model, priority, part), headers, payload.into())
                .await?
                .await
        };
        // Given up before the broker confirmed: the job may be stored all the same, so the workers
        // are told to skip it.
        let ack = tokio::select! {
            ack = published => ack.map_err(|e| unqueued(&model, &e))?,
            () = tokio::time::sleep_until(give_up) => {
                stop_job(cluster, &id, None);
                return Err(unqueued(&model, &"the broker did not confirm in time"));
            }
            () = call.cancel.cancelled() => {
                stop_job(cluster, &id, None);
                return Err(WorkerError::new("cancelled while queueing the job"));
            }
        };
        metrics::counter!("orchestrator_jobs_published_total", "model" => model.clone()).increment(1);
        // The job is stored: ringing after the broker's confirmation means a worker that hears
        // the bell finds it.
        let _ = client
            .publish(doorbell(&model), format!("{}.{part}", priority.as_str()).into())
            .await;
        Ok(Self {
            cluster: cluster.clone(),
            id,
            model,
            sequence: ack.sequence,
            give_up,
            inbox,
            seen: HashMap::new(),
            runner: None,
            started: false,
            finished: false,
            silence: Duration::from_millis(cluster.config.node_timeout_ms),
        })
    }

    /// Waits until a worker sends the job's first output: its first chunk, or `None` when the
    /// job ended without any.
    ///
    /// # Errors
    /// When the worker failed the job before its first token, or no worker took it before
    /// `give_up` (503 with `Retry-After`), or the call was cancelled.
    async fn first(&mut self, call: &InferenceCall) -> Result<Option<WorkerChunk>, WorkerError> {
        let mut heard_from = Instant::now();
        let mut lost = 0u32;
        loop {
            // A runner's silence before the first token is not the caller's loss: the broker hands
            // the job to another worker once the runner's hold on it lapses.
            let silent_at = heard_from + self.silence;
            let reply = tokio::select! {
                reply = self.inbox.receiver.recv() => reply,
                () = tokio::time::sleep_until(silent_at), if self.runner.is_some() => {
                    tracing::warn!(job = %self.id, worker = ?self.runner, "A worker went silent before the first token; the job waits for another.");
                    metrics::counter!("orchestrator_jobs_requeued_total", "model" => self.model.clone()).increment(1);
                    self.runner = None;
                    lost += 1;
                    continue;
                }
                () = tokio::time::sleep_until(self.give_up) => return Err(self.not_taken(lost)),
                () = call.cancel.cancelled() => return Err(WorkerError::new("cancelled while the job was queued")),
            };
            let Some(reply) = reply else {
                return Err(self.replies_lost());
            };
            heard_from = Instant::now();
            match self.hear(&reply) {
                Heard::Nothing => {}
                Heard::Chunk(chunk) => return Ok(Some(chunk)),
                Heard::End => return Ok(None),
                Heard::Failed(error) => return Err(error),
            }
        }
    }

    /// The next stream item after the first, or `None` once the job has ended.
    async fn next_after_start(&mut self) -> Option<Result<WorkerChunk, WorkerError>> {
        if self.finished {
            return None;
        }
        loop {
            let reply = tokio::select! {
                reply = self.inbox.receiver.recv() => reply,
                () = tokio::time::sleep(self.silence) => {
                    self.finished = true;
                    return Some(Err(self.went_silent()));
                }
            };
            let Some(reply) = reply else {
                self.finished = true;
                return Some(Err(self.replies_lost()));
            };
            match self.hear(&reply) {
                Heard::Nothing => {}
                Heard::Chunk(chunk) => return Some(Ok(chunk)),
                Heard::End => return None,
                Heard::Failed(error) => return Some(Err(error)),
            }
        }
    }

    /// Takes in one reply.
    fn hear(&mut self, payload: &[u8]) -> Heard {
        let reply: Reply = match serde_json::from_slice(payload) {
            Ok(reply) => reply,
            Err(e) => {
                tracing::warn!(job = %self.id, error = %e, "A malformed reply to a job; ignored.");
                return if self.started {
                    self.finished = true;
                    Heard::Failed(
                        WorkerError::new(format!("the worker sent a malformed reply: {e}")).with_status(502),
                    )
                } else {
                    Heard::Nothing
                };
            }
        };
        // Each worker's replies are numbered from 0: one that skips a number lost a reply on the
        // way, and its output cannot be trusted whole.
        let expected = match self.seen.get_mut(&reply.worker) {
            Some(expected) => expected,
            None => self.seen.entry(reply.worker.clone()).or_insert(0),
        };
        let in_order = reply.seq == *expected;
        *expected = reply.seq + 1;
        let is_runner = self.runner.as_deref() == Some(reply.worker.as_str());
        if self.started && !is_runner {
            // Another worker took the job too (its hold lapsed while the first still ran): the
            // caller hears the first, so the other stops.
            stop_job(&self.cluster, &self.id, self.runner.clone());
            return Heard::Nothing;
        }
        if !in_order && (self.started || reply.event.is_output()) {
            self.finished = true;
            return Heard::Failed(
                WorkerError::new(format!(
                    "replies from worker {} to job {} were lost on the way (NATS dropped them); \
                     the answer is incomplete",
                    reply.worker, self.id
                ))
                .with_status(502),
            );
        }
        match reply.event {
            ReplyEvent::Started { name } => {
                tracing::debug!(job = %self.id, worker = %name, "A worker took the job.");
                self.runner = Some(reply.worker);
                Heard::Nothing
            }
            ReplyEvent::Alive => Heard::Nothing,
            ReplyEvent::Failed(error) => {
                if !is_runner && self.runner.is_some() {
                    return Heard::Nothing;
                }
                self.finished = true;
                Heard::Failed(error)
            }
            ReplyEvent::End => {
                self.finished = true;
                if !self.started {
                    self.runner = Some(reply.worker);
                    self.started = true;
                }
                Heard::End
            }
            event => {
                if !self.started {
                    self.started = true;
                    if !is_runner {
                        self.runner = Some(reply.worker);
                    }
                    if self.seen.len() > 1 {
                        stop_job(&self.cluster, &self.id, self.runner.clone());
                    }
                }
                // After `Finish` the worker has nothing more to run: a caller that stops reading
                // here (the pipeline does) need not tell it to stop.
                if matches!(event, ReplyEvent::Finish { .. }) {
                    self.finished = true;
                }
                event.chunk().map_or(Heard::Nothing, Heard::Chunk)
            }
        }
    }

    fn not_taken(&self, lost: u32) -> WorkerError {
        let why = if lost > 0 {
            format!("{lost} worker(s) took it and went silent before the first token")
        } else {
            "no worker serving it took the job".to_owned()
        };
        WorkerError::retryable(format!(
            "model `{}`: {why} before the queue timeout or the request's deadline. Start \
             `orchestrator worker` with this model in its [[models]], or raise the backend's \
             queue_timeout_ms",
            self.model
        ))
        .with_status(503)
        .with_retry_after(Duration::from_secs(1))
    }

    fn went_silent(&self) -> WorkerError {
        WorkerError::new(format!(
            "worker {} stopped answering mid-stream (nothing for {} ms, cluster.node_timeout_ms); \
             the answer is incomplete",
            self.runner.as_deref().unwrap_or("?"),
            self.silence.as_millis()
        ))
        .with_status(502)
    }

    fn replies_lost(&self) -> WorkerError {
        WorkerError::new(format!(
            "the replies to job {} came faster than this node took them in; the answer is \
             incomplete",
            self.id
        ))
        .with_status(502)
    }
}

impl Drop for Queued {
    /// A job dropped before it ended (caller gone, deadline, a stop sequence downstream) leaves
    /// the queue, and its worker is told to stop.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let stream = self.cluster.jobs.stream.clone();
        let sequence = (!self.started).then_some(self.sequence);
        stop_job(&self.cluster, &self.id, None);
        if let Some(sequence) = sequence {
            tokio::spawn(async move {
                // Not found: a worker has it, and the stop above reaches it.
                let _ = stream.delete_message(sequence).await;
            });
        }
    }
}

/// The job `id` as a worker gets it: the call, where to reply, and its times as Unix
/// milliseconds (`times` is now and when the gateway gives up, as instants).
fn job(
    cluster: &Cluster,
    call: &InferenceCall,
    id: &str,
    model: &str,
    reply_to: &str,
    times: (Instant, Instant),
) -> Job {
    let (now, give_up) = times;
    let wall = |at: Instant| unix_ms(SystemTime::now() + at.saturating_duration_since(now));
    let mut request = (*call.request).clone();
    // The worker's own calls hang under this one's span when the request is traced.
    if let Some(traceparent) = call.traceparent {
        request.meta.insert("traceparent".into(), traceparent.to_string());
    }
    Job {
        protocol: PROTOCOL,
        id: id.to_owned(),
        node: cluster.node.clone(),
        request_id: call.id.0,
        reply_to: reply_to.to_owned(),
        model: model.to_owned(),
        request,
        prompt: call.prompt.to_string(),
        prompt_templated: call.prompt_templated,
        messages: call.messages.as_deref().map(<[_]>::to_vec),
        prefix_key: call.prefix_key,
        start_by_ms: wall(give_up),
        deadline_ms: call.deadline.map(wall),
    }
}

/// Tells every worker running job `id` (or about to) but `keep` to stop.
fn stop_job(cluster: &Cluster, id: &str, keep: Option<String>) {
    let client = cluster.jetstream.client();
    let subject = cancel_subject(id);
    let Ok(payload) = serde_json::to_vec(&Cancel { keep }) else {
        return;
    };
    tokio::spawn(async move {
        let _ = client.publish(subject, payload.into()).await;
    });
}

/// A job the broker did not take.
fn unqueued(model: &str, error: &dyn std::fmt::Display) -> WorkerError {
    let mut why = error.to_string();
    if why.contains("maximum messages exceeded") || why.contains("maximum bytes exceeded") {
        why = format!(
            "the job queue is full ({why}): add workers for it, or raise the bounds of the stream \
             ORCHESTRATOR_JOBS, which keeps those of [cluster.jobs] of the node that made it"
        );
    }
    WorkerError::retryable(format!(
        "cannot queue the job for model `{model}` in NATS JetStream: {why}"
    ))
    .with_status(503)
    .with_retry_after(Duration::from_secs(1))
}
