//! What comes back: token events, the one final event, and the joined output of fire-and-forget
//! requests.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{PipelineError, Stage};
use crate::request::{Meta, RequestId, SessionId};

/// One event of a submitted request: any number of tokens, then exactly one `Done` or `Error`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseEvent {
    /// Text produced by the model, after post-processing.
    Token(String),
    /// The request completed.
    Done(Completion),
    /// The request failed; after a token this means the stream was cut, never a quiet truncation.
    Error(PipelineError),
}

impl ResponseEvent {
    /// Whether this is the request's final event.
    pub fn is_final(&self) -> bool {
        !matches!(self, ResponseEvent::Token(_))
    }
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model finished, or a stop sequence was reached.
    #[default]
    Stop,
    /// The token limit was reached.
    Length,
}

/// Token counts, as the upstream reported them or, failing that, as counted by the pipeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

impl Usage {
    pub fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
        }
    }
}

/// Time a request spent waiting in one stage's queue and being worked on by it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageTiming {
    pub queued: Duration,
    pub active: Duration,
}

/// Where a request's time went, stage by stage, plus admission-to-final-event.
///
/// The streaming stages (Inference, Post, Stream) overlap: each is active for the whole stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageTimings {
    pub stages: [StageTiming; 5],
    /// Admission until the Stream stage produced the final event.
    pub total: Duration,
    /// Admission until the first token reached the Stream stage.
    pub first_token: Option<Duration>,
}

impl StageTimings {
    pub fn stage(&self, stage: Stage) -> &StageTiming {
        &self.stages[stage.index()]
    }

    pub(crate) fn stage_mut(&mut self, stage: Stage) -> &mut StageTiming {
        &mut self.stages[stage.index()]
    }

    /// Time spent in the pipeline that was not the model worker's own: total minus the
    /// Inference stage's active time.
    pub fn overhead(&self) -> Duration {
        self.total.saturating_sub(self.stage(Stage::Inference).active)
    }
}

/// The final event of a request that completed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub timings: StageTimings,
}

/// A complete answer: the joined text and how it ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub text: String,
    pub completion: Completion,
}

/// The outcome of a fire-and-forget request, delivered on the pipeline's output stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptOutput {
    pub id: RequestId,
    pub session: SessionId,
    pub meta: Meta,
    pub result: Result<Response, PipelineError>,
}
