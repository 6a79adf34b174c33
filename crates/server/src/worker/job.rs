//! One job on a worker: read it, answer it through the worker's router, and settle it with the
//! broker.
//!
//! What is acknowledged when: the job stays the broker's (unacknowledged, with progress sent
//! every third of the hold) until its first output reaches the gateway node; then it is
//! acknowledged, and so removed from the queue. A worker that dies before that point leaves the
//! job to be delivered again; after it, the gateway node ends the caller's stream with an error.
//! A job that cannot run (malformed, another protocol, a model not served here, expired) is
//! acknowledged with an error reply, as retrying it elsewhere would fail the same way.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Interval};
use tokio_prompt_orchestrator::{
    InferenceCall, ModelWorker, RequestId, TokenStream, WorkerChunk, WorkerError,
};
use tokio_util::sync::CancellationToken;

use super::{Outcome, Running, Shared};
use crate::cluster::Cluster;
use crate::cluster::jobs::wire::{Job, JobHeader, PROTOCOL, Reply, ReplyEvent};
use crate::dlq::entry::unix_ms;

/// Runs the job in `message`, holding `permit` (one slot) until it ends.
pub async fn run(
    shared: Arc<Shared>,
    cluster: Arc<Cluster>,
    message: jetstream::Message,
    model: String,
    permit: OwnedSemaphorePermit,
) {
    let mut running = Running::start(&shared, model, permit);
    running.end(answer(&shared, &cluster, &message).await);
}

async fn answer(shared: &Arc<Shared>, cluster: &Cluster, message: &jetstream::Message) -> Outcome {
    // Read whole at once; only a job that cannot be read whole is read again for where to say so.
    let job: Job = match serde_json::from_slice::<Job>(&message.payload) {
        Ok(job) if job.protocol == PROTOCOL => job,
        read => {
            let Ok(header) = serde_json::from_slice::<JobHeader>(&message.payload) else {
                // Nobody to tell: the job does not say where its replies go.
                tracing::warn!(subject = %message.subject, "A malformed job without a reply subject; dropped.");
                settle(message, AckKind::Ack).await;
                return Outcome::Refused;
            };
            let node = &shared.name;
            let error = match read {
                Ok(_) => format!(
                    "worker {node} speaks job protocol {PROTOCOL}, and job {} is protocol {}: run \
                     gateways and workers of one version",
                    header.id, header.protocol
                ),
                Err(e) if header.protocol != PROTOCOL => format!(
                    "worker {node} speaks job protocol {PROTOCOL}, and job {} is protocol {}: run \
                     gateways and workers of one version ({e})",
                    header.id, header.protocol
                ),
                Err(e) => format!("worker {node} cannot read job {}: {e}", header.id),
            };
            let mut replier = Replier::new(cluster, header.reply_to);
            return refuse(message, &mut replier, WorkerError::new(error).with_status(400)).await;
        }
    };
    let mut replier = Replier::new(cluster, job.reply_to.clone());
    if !shared.router.contains(&job.model) {
        let error = format!(
            "worker {} does not serve the model `{}` (it serves {})",
            shared.name,
            job.model,
            shared.models.join(", ")
        );
        return refuse(message, &mut replier, WorkerError::new(error).with_status(404)).await;
    }
    if unix_ms(SystemTime::now()) > job.start_by_ms {
        // The gateway node has given up on it already.
        settle(message, AckKind::Ack).await;
        return Outcome::Expired;
    }
    let cancel = shared.abort.child_token();
    let Some(_running) = shared.cancels.start(&job.id, cancel.clone()) else {
        settle(message, AckKind::Ack).await;
        return Outcome::Cancelled;
    };
    replier
        .send(ReplyEvent::Started {
            name: shared.name.clone(),
        })
        .await;
    let deadline = job.deadline_ms.map(|ms| {
        let left = ms.saturating_sub(unix_ms(SystemTime::now()));
        Instant::now() + Duration::from_millis(left)
    });
    let mut request = job.request;
    request.model = job.model;
    let call = InferenceCall {
        id: RequestId(job.request_id),
        request: Arc::new(request),
        prompt: job.prompt.into(),
        prompt_templated: job.prompt_templated,
        messages: job.messages.map(Into::into),
        prefix_key: job.prefix_key,
        cancel: cancel.clone(),
        deadline,
        // The gateway's context travels in the request's metadata, and is passed on from there.
        traceparent: None,
    };
    stream(shared, cluster, message, replier, call, cancel).await
}

/// Streams the call's output to the gateway node, settling the job at its first output.
async fn stream(
    shared: &Arc<Shared>,
    cluster: &Cluster,
    message: &jetstream::Message,
    mut replier: Replier,
    call: InferenceCall,
    cancel: CancellationToken,
) -> Outcome {
    let deadline = call.deadline;
    let past_deadline = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(past_deadline);
    let mut alive = tokio::time::interval(Duration::from_millis(cluster.config.heartbeat_ms));
    alive.reset();
    let (mut tokens, mut next) = match until_first(
        (shared, cluster, message),
        &mut replier,
        call,
        &cancel,
        &mut alive,
        &mut past_deadline,
    )
    .await
    {
        Ok(started) => started,
        Err(outcome) => return outcome,
    };
    let mut settled = false;
    loop {
        let ended = match next {
            Some(Ok(chunk)) => {
                replier.send(ReplyEvent::of(chunk)).await;
                None
            }
            Some(Err(error)) => {
                replier.send(ReplyEvent::Failed(error)).await;
                Some(Outcome::Failed)
            }
            None => {
                replier.send(ReplyEvent::End).await;
                Some(Outcome::Completed)
            }
        };
        if !settled {
            // Acknowledged once the first output is on its way: a worker dying between the two
            // leaves the job to be delivered again, and the gateway node keeps this worker's
            // answer (the error it ends with); from here a lost worker is never a second run.
            settle(message, AckKind::Ack).await;
            settled = true;
        }
        if let Some(outcome) = ended {
            return outcome;
        }
        alive.reset();
        next = loop {
            tokio::select! {
                item = tokens.next() => break item,
                _ = alive.tick() => replier.send(ReplyEvent::Alive).await,
                () = cancel.cancelled() => {
                    if shared.abort.is_cancelled() {
                        let error = format!("worker {} shut down before the answer was complete", shared.name);
                        replier.send(ReplyEvent::Failed(WorkerError::new(error))).await;
                        return Outcome::Failed;
                    }
                    return Outcome::Cancelled;
                }
                () = &mut past_deadline => {
                    cancel.cancel();
                    return Outcome::Expired;
                }
            }
        };
    }
}

/// Runs the call until its first stream item. Meanwhile the job stays the broker's (progress
/// every third of the hold) and the gateway node hears that it runs (`Alive` every heartbeat).
///
/// # Errors
/// How the job ended when it ended before any output, settled with the broker.
async fn until_first(
    (shared, cluster, message): (&Arc<Shared>, &Cluster, &jetstream::Message),
    replier: &mut Replier,
    call: InferenceCall,
    cancel: &CancellationToken,
    alive: &mut Interval,
    past_deadline: &mut Pin<&mut impl Future<Output = ()>>,
) -> Result<(TokenStream, Option<Result<WorkerChunk, WorkerError>>), Outcome> {
    let router = shared.router.clone();
    let first = async move {
        let mut tokens = router.infer_stream(call).await?;
        let first = tokens.next().await;
        Ok::<_, WorkerError>((tokens, first))
    };
    tokio::pin!(first);
    // The broker's hold on a taken job is `node_timeout_ms`.
    let mut progress = tokio::time::interval(Duration::from_millis(cluster.config.node_timeout_ms) / 3);
    progress.reset();
    loop {
        tokio::select! {
            result = &mut first => return match result {
                Ok(started) => Ok(started),
                Err(error) => {
                    replier.send(ReplyEvent::Failed(error)).await;
                    settle(message, AckKind::Ack).await;
                    Err(Outcome::Failed)
                }
            },
            _ = progress.tick() => settle(message, AckKind::Progress).await,
            _ = alive.tick() => replier.send(ReplyEvent::Alive).await,
            () = cancel.cancelled() => {
                return Err(if shared.abort.is_cancelled() {
                    // Shutting down past the grace: another worker takes the job at once.
                    settle(message, AckKind::Nak(None)).await;
                    Outcome::Failed
                } else {
                    settle(message, AckKind::Ack).await;
                    Outcome::Cancelled
                });
            }
            () = past_deadline.as_mut() => {
                cancel.cancel();
                settle(message, AckKind::Ack).await;
                return Err(Outcome::Expired);
            }
        }
    }
}

/// Answers a job that cannot run with `error`, and takes it out of the queue.
async fn refuse(message: &jetstream::Message, replier: &mut Replier, error: WorkerError) -> Outcome {
    tracing::warn!(error = %error.message, "Refused a job.");
    replier.send(ReplyEvent::Failed(error)).await;
    settle(message, AckKind::Ack).await;
    Outcome::Refused
}

/// Acknowledges `message` with `kind`; a failure is logged: the broker then delivers the job
/// again after its hold, and the gateway node takes the first worker's answer only.
async fn settle(message: &jetstream::Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        tracing::debug!(error = %e, "Could not settle a job with the broker.");
    }
}

/// Numbered replies to one job, on core NATS.
struct Replier {
    client: async_nats::Client,
    subject: String,
    worker: String,
    seq: u64,
}

impl Replier {
    fn new(cluster: &Cluster, subject: String) -> Self {
        Self {
            client: cluster.jetstream.client(),
            subject,
            worker: cluster.instance.clone(),
            seq: 0,
        }
    }

    /// Sends `event`; the client writes replies in order on one connection, and waits here only
    /// when its outgoing buffer is full (which slows the upstream's reading, as a slow client
    /// would). A reply that cannot be sent is one the gateway node notices missing.
    async fn send(&mut self, event: ReplyEvent) {
        let reply = Reply {
            worker: self.worker.clone(),
            seq: self.seq,
            event,
        };
        self.seq += 1;
        let Ok(mut payload) = serde_json::to_vec(&reply) else {
            return;
        };
        let max = self.client.server_info().max_payload;
        if payload.len() > max {
            // Too large for one message (a batch of long vectors): the gateway gets an error
            // that says so rather than a reply that never comes.
            let error = WorkerError::new(format!(
                "the answer is {} bytes, more than the NATS server takes in one message (max_payload, \
                 {max} bytes): lower the model's batch_size, or raise max_payload in nats-server's config",
                payload.len()
            ));
            let failed = Reply {
                event: ReplyEvent::Failed(error),
                ..reply
            };
            let Ok(smaller) = serde_json::to_vec(&failed) else {
                return;
            };
            payload = smaller;
        }
        if let Err(e) = self
            .client
            .publish(self.subject.clone(), Bytes::from(payload))
            .await
        {
            tracing::debug!(error = %e, "Could not send a reply.");
        }
    }
}
