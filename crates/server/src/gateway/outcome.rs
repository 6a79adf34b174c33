//! How a request's ending is accounted for, whichever way its answer goes out (one body, a
//! stream, a replay): the caller's token budget is charged, its place in the pipeline goes to the
//! next waiting request, and a failure is kept in the dead-letter queue when the config says so.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use orchestrator_context::assemble::{Encoding, MESSAGE_OVERHEAD_TOKENS};
use tokio_prompt_orchestrator::{
    Completion, EmbedInput, GatePermit, PipelineError, Priority, PromptInput, Stage,
};

use super::budget::BodyShare;
use super::error::ApiError;
use crate::dlq::entry::unix_ms;
use crate::dlq::{Attempt, DeadLetter, DlqStore, Reason};
use crate::gateway::limits::KeyLimits;
use crate::gateway::token_budget::Reservation;
use crate::telemetry::otlp::TracedRequest;

/// What is settled when one request ends.
#[derive(Default)]
pub struct Outcome {
    /// The caller's key's limits, charged with the tokens used.
    pub limits: Option<Arc<KeyLimits>>,
    /// The request's prompt, kept when the key has a token budget: if the backend reports no
    /// usage, it is counted with a real tokenizer (only then, as counting is costly).
    pub prompt: Option<PromptInput>,
    /// The request's place inside the pipeline; let go when it ends.
    pub permit: Option<GatePermit>,
    /// What to keep if it fails; `None` when the dead-letter queue is off.
    pub dead_letter: Option<Box<Draft>>,
    /// The deadline the request got from `pipeline.default_timeout_ms`, named when it passes.
    pub default_timeout: Option<Duration>,
    /// The request body's share of `server.max_body_bytes_in_flight`; given back when it ends.
    pub body_share: Option<BodyShare>,
    /// The tokens the key's token budget holds for it, settled when it ends.
    pub reservation: Option<Reservation>,
    /// The request's trace, when it is traced; exported when it ends.
    pub trace: Option<Box<TracedRequest>>,
}

impl Outcome {
    pub fn completed(&mut self, completion: &Completion) {
        if let Some(limits) = &self.limits {
            let usage = completion.usage;
            let tokens = match &self.prompt {
                // The pipeline's own prompt count may be words; the tokenizer's is better.
                Some(prompt) if usage.estimated => {
                    estimate_prompt_tokens(prompt).saturating_add(usage.completion_tokens)
                }
                _ => usage.total_tokens,
            };
            limits.charge(tokens);
            if let Some(reservation) = self.reservation.take() {
                reservation.settle(u64::from(tokens));
            }
        }
        self.permit = None;
        self.dead_letter = None;
        self.body_share = None;
        if let Some(mut trace) = self.trace.take() {
            trace.completed(completion);
        }
    }

    /// Keeps the failure when the config says so, and returns what the caller is told.
    pub async fn failed(&mut self, error: PipelineError) -> ApiError {
        self.permit = None;
        if let Some(mut trace) = self.trace.take() {
            trace.failed(&error);
        }
        // A failed request is not charged to the key's budget.
        if let Some(reservation) = self.reservation.take() {
            reservation.release();
        }
        let mut told = ApiError::from(&error);
        if let (PipelineError::Timeout { stage }, Some(limit)) = (&error, self.default_timeout) {
            told.message = format!(
                "No answer within the request's deadline, pipeline.default_timeout_ms ({} ms); it \
                 passed in the {stage} stage. Raise the setting for longer generations (0 turns \
                 it off), or retry.",
                limit.as_millis()
            );
        }
        if let Some(draft) = self.dead_letter.take() {
            // Boxed: keeping a dead letter is rare, and its state (over a kilobyte) would
            // otherwise sit inside every request's future, failing or not.
            Box::pin(draft.keep(&error, &told.message)).await;
        }
        self.body_share = None;
        told
    }
}

/// A request as received, ready to become a dead letter if it fails.
pub struct Draft {
    pub store: DlqStore,
    /// The endings the config keeps.
    pub record: Vec<Reason>,
    pub received_at_ms: u64,
    /// The path it came in on, which names its [`Format`](super::Format).
    pub endpoint: &'static str,
    pub model: String,
    pub key: Option<String>,
    pub priority: Priority,
    pub session: Option<String>,
    /// The body exactly as received; parsed again only if the request fails.
    pub body: Bytes,
}

impl Draft {
    /// Appends the dead letter when `error` is an ending the config keeps, and waits until it is
    /// on disk, except for refusals (see below). A caller who went away left no failure to replay.
    async fn keep(self, error: &PipelineError, message: &str) {
        let Some((reason, stage)) = classify(error) else {
            return;
        };
        if !self.record.contains(&reason) {
            return;
        }
        let attempts = match error {
            PipelineError::Worker(e) => e
                .attempts
                .iter()
                .map(|a| Attempt {
                    backend: a.backend.clone(),
                    error: a.error.clone(),
                })
                .collect(),
            _ => Vec::new(),
        };
        // The body was parsed once already, so it is JSON.
        let request = serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null);
        let letter = DeadLetter {
            id: 0,
            recorded_at_ms: unix_ms(SystemTime::now()),
            received_at_ms: self.received_at_ms,
            endpoint: self.endpoint.to_owned(),
            model: self.model,
            key: self.key,
            priority: self.priority.as_str().to_owned(),
            session: self.session,
            request,
            reason,
            stage: stage.map(|s| s.as_str().to_owned()),
            error: message.to_owned(),
            error_kind: error.kind().to_owned(),
            attempts,
            replays: 0,
            last_replay_error: None,
        };
        if reason == Reason::Shed {
            // A refusal must be answered at once, not after a disk sync, and a burst of them must
            // not become a burst of tasks: the entry joins the writer's bounded queue, or is
            // counted as dropped when the queue is full.
            self.store.try_append(letter);
            return;
        }
        match self.store.append(letter).await {
            Ok(id) => tracing::info!(
                id,
                reason = reason.as_str(),
                "Failed request kept in the dead-letter queue."
            ),
            // The caller still gets its error; the operator learns what was not kept.
            Err(e) => {
                tracing::error!(error = %e, "A failed request could not be kept in the dead-letter queue.")
            }
        }
    }
}

/// Why a request ended, as the dead-letter queue files it, and the stage it ended in.
fn classify(error: &PipelineError) -> Option<(Reason, Option<Stage>)> {
    Some(match error {
        PipelineError::Cancelled => return None,
        PipelineError::Overloaded { stage } => (Reason::Shed, Some(*stage)),
        PipelineError::Closed => (Reason::Shed, None),
        PipelineError::Timeout { stage } => (Reason::Timeout, Some(*stage)),
        PipelineError::Retrieval { .. } => (Reason::Failed, Some(Stage::Rag)),
        PipelineError::Worker(_) => (Reason::Failed, Some(Stage::Inference)),
        PipelineError::Output { .. } => (Reason::Failed, Some(Stage::Post)),
        _ => (Reason::Failed, None),
    })
}

/// The tokens of a request's text (messages' contents, the prompt, the inputs to embed) by `o200k_base`, the
/// encoding of current OpenAI models: an estimate for a budget, not a bill.
fn estimate_prompt_tokens(input: &PromptInput) -> u32 {
    let count = |text: &str| Encoding::O200kBase.count_tokens(text);
    let tokens = match input {
        PromptInput::Text(text) => count(text),
        PromptInput::Chat(messages) => messages
            .iter()
            .map(|m| count(&m.content) + MESSAGE_OVERHEAD_TOKENS)
            .sum::<usize>(),
        PromptInput::Embed(inputs) => inputs
            .iter()
            .map(|input| match input {
                EmbedInput::Text(text) => count(text),
                EmbedInput::Tokens(ids) => ids.len(),
            })
            .sum(),
    };
    u32::try_from(tokens).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use tokio_prompt_orchestrator::{ChatMessage, Usage};

    use super::*;
    use crate::gateway::limits::RateLimitConfig;

    fn remaining_tokens(limits: &KeyLimits) -> String {
        let Ok(headers) = limits.admit() else {
            panic!("the budget is not used up")
        };
        headers["x-ratelimit-remaining-tokens"]
            .to_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn without_upstream_usage_a_budget_is_charged_the_tokenizers_count_of_the_prompt() {
        let limits = Arc::new(
            KeyLimits::new(RateLimitConfig {
                tokens_per_minute: NonZeroU32::new(1000),
                ..RateLimitConfig::default()
            })
            .unwrap(),
        );
        // One "word" to a word count, many tokens to a tokenizer.
        let input = PromptInput::Chat(vec![ChatMessage::user("x".repeat(400))]);
        let estimate = estimate_prompt_tokens(&input);
        assert_eq!(
            estimate as usize,
            Encoding::O200kBase.count_tokens(&"x".repeat(400)) + MESSAGE_OVERHEAD_TOKENS
        );
        assert!(estimate > 40, "{estimate}");
        let mut outcome = Outcome {
            limits: Some(limits.clone()),
            prompt: Some(input.clone()),
            ..Outcome::default()
        };
        let pipeline_count = Usage {
            estimated: true,
            ..Usage::new(1, 5)
        };
        outcome.completed(&Completion {
            usage: pipeline_count,
            ..Completion::default()
        });
        assert_eq!(remaining_tokens(&limits), (1000 - estimate - 5).to_string());

        // The upstream's own usage is charged as it is.
        let mut outcome = Outcome {
            limits: Some(limits.clone()),
            prompt: Some(input.clone()),
            ..Outcome::default()
        };
        outcome.completed(&Completion {
            usage: Usage::new(10, 5),
            ..Completion::default()
        });
        assert_eq!(remaining_tokens(&limits), (1000 - estimate - 5 - 15).to_string());
    }
}
