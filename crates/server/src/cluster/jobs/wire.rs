//! The messages of remote work: a job as a gateway node publishes it to the broker, and the
//! replies the worker running it sends back to that node. JSON, with a protocol number that a
//! worker checks before it runs anything.

use serde::{Deserialize, Serialize};
use tokio_prompt_orchestrator::{
    ChatMessage, FinishReason, InferenceRequest, Passthrough, Usage, WorkerChunk, WorkerError,
};

/// The job protocol this build speaks. A worker refuses a job of another with a clear error.
pub const PROTOCOL: u32 = 1;

/// One inference call, as it waits in the broker for a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub protocol: u32,
    /// Unique in the cluster: the gateway node's instance and a number of its own. Also the
    /// broker's message id, so a publish that is retried is stored once.
    pub id: String,
    /// The gateway node that waits for the replies, and its request id (for logs).
    pub node: String,
    pub request_id: u64,
    /// The core NATS subject the replies go to.
    pub reply_to: String,
    /// The model as the workers serve it (their `[[models]]` name).
    pub model: String,
    /// The request whole: parameters, session, priority, and its metadata, which carries the
    /// client's W3C `traceparent` when it sent one.
    pub request: InferenceRequest,
    pub prompt: String,
    pub prompt_templated: bool,
    pub messages: Option<Vec<ChatMessage>>,
    pub prefix_key: Option<u64>,
    /// A worker that takes the job after this (Unix ms) drops it: the gateway has given up.
    pub start_by_ms: u64,
    /// The request's deadline (Unix ms), which bounds the run.
    pub deadline_ms: Option<u64>,
}

/// The fields of a job a worker needs to answer even a job it cannot read whole.
#[derive(Debug, Deserialize)]
pub struct JobHeader {
    pub protocol: u32,
    pub id: String,
    pub reply_to: String,
}

/// One message from the worker running a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The worker's instance: a job redelivered to another worker is answered by a new one.
    pub worker: String,
    /// Counts this worker's replies to the job from 0, so a lost one is noticed.
    pub seq: u64,
    pub event: ReplyEvent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyEvent {
    /// The worker has taken the job (`name` is the worker's name in the cluster).
    Started {
        name: String,
    },
    /// The job still runs: sent when nothing else was sent for a heartbeat.
    Alive,
    Token(String),
    Passthrough(Box<Passthrough>),
    Finish {
        reason: FinishReason,
        usage: Option<Usage>,
    },
    /// The job failed: before its first token the gateway's router may try elsewhere; after,
    /// the caller's stream ends with this error.
    Failed(WorkerError),
    /// The job is done; nothing follows.
    End,
}

impl ReplyEvent {
    /// The reply carrying `chunk`.
    pub fn of(chunk: WorkerChunk) -> Self {
        match chunk {
            WorkerChunk::Token(text) => ReplyEvent::Token(text),
            WorkerChunk::Passthrough(p) => ReplyEvent::Passthrough(p),
            WorkerChunk::Finish { reason, usage } => ReplyEvent::Finish { reason, usage },
            // `WorkerChunk` may grow; what this protocol cannot carry is dropped, as a backend
            // that does not know it would.
            _ => ReplyEvent::Alive,
        }
    }

    /// Whether this reply is part of the caller's answer.
    pub fn is_output(&self) -> bool {
        matches!(
            self,
            ReplyEvent::Token(_) | ReplyEvent::Passthrough(_) | ReplyEvent::Finish { .. }
        )
    }

    /// The stream item this reply is, if it is one.
    pub fn chunk(self) -> Option<WorkerChunk> {
        match self {
            ReplyEvent::Token(text) => Some(WorkerChunk::Token(text)),
            ReplyEvent::Passthrough(p) => Some(WorkerChunk::Passthrough(p)),
            ReplyEvent::Finish { reason, usage } => Some(WorkerChunk::Finish { reason, usage }),
            _ => None,
        }
    }
}

/// What a gateway node asks of the workers about one job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cancel {
    /// A worker with this instance keeps running the job (it is the one the caller hears).
    pub keep: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_read_back_as_written() {
        let events = [
            ReplyEvent::Started { name: "w1".into() },
            ReplyEvent::Alive,
            ReplyEvent::Token("hi".into()),
            ReplyEvent::Finish {
                reason: FinishReason::Length,
                usage: Some(Usage::new(3, 4)),
            },
            ReplyEvent::Failed(WorkerError::retryable("upstream down").with_status(502)),
            ReplyEvent::End,
        ];
        for (seq, event) in events.into_iter().enumerate() {
            let reply = Reply {
                worker: "abc".into(),
                seq: seq as u64,
                event,
            };
            let text = serde_json::to_vec(&reply).unwrap();
            assert_eq!(serde_json::from_slice::<Reply>(&text).unwrap(), reply);
        }
    }
}
