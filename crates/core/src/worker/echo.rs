//! `EchoWorker`: answers with its prompt, token by token, for demos, tests and benchmarks; and
//! embedding requests with a vector made from each input alone.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::{self, StreamExt};

use super::{InferenceCall, ModelWorker, TokenStream, WorkerChunk};
use crate::error::WorkerError;
use crate::event::{FinishReason, Passthrough, Usage};
use crate::request::{EmbedInput, PromptInput};

/// Echoes the prompt back, one whitespace-delimited token at a time (each token keeps the
/// whitespace before it, so joining the tokens gives the prompt back).
#[derive(Clone, Debug, Default)]
pub struct EchoWorker {
    token_delay: Option<Duration>,
}

impl EchoWorker {
    /// Answers at once.
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits `delay` before each token, like a model generating at `1 / delay` tokens per second.
    pub fn with_token_delay(delay: Duration) -> Self {
        Self {
            token_delay: Some(delay),
        }
    }
}

/// The tokens of `text`, each starting with the whitespace before it.
fn tokens(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        // A token is leading whitespace, then everything up to the next whitespace.
        let body = rest.len() - rest.trim_start().len();
        let end = rest[body..]
            .find(char::is_whitespace)
            .map_or(rest.len(), |i| body + i);
        let (token, tail) = rest.split_at(end);
        rest = tail;
        Some(token)
    })
}

/// Splits text into tokens that each start with the whitespace before them.
pub(crate) fn split_tokens(text: &str) -> Vec<String> {
    tokens(text).map(str::to_string).collect()
}

/// How many tokens [`split_tokens`] makes of `text`, without allocating: the usage figure when
/// a worker reports none.
pub(crate) fn count_tokens(text: &str) -> usize {
    tokens(text).count()
}

fn count_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[async_trait]
impl ModelWorker for EchoWorker {
    async fn infer(&self, prompt: &str) -> Result<Vec<String>, WorkerError> {
        let tokens = split_tokens(prompt);
        if let Some(delay) = self.token_delay {
            tokio::time::sleep(delay * count_u32(tokens.len())).await;
        }
        Ok(tokens)
    }

    async fn infer_stream(&self, call: InferenceCall) -> Result<TokenStream, WorkerError> {
        if let PromptInput::Embed(inputs) = &call.request.input {
            let dimensions = call
                .request
                .extra
                .parsed("dimensions")
                .and_then(|d| d.as_u64())
                .map_or(DIMENSIONS, |d| d as usize);
            let vectors: Vec<Vec<f32>> = inputs.iter().map(|i| vector(i, dimensions)).collect();
            let prompt_tokens = inputs
                .iter()
                .map(|i| match i {
                    EmbedInput::Text(text) => count_tokens(text),
                    EmbedInput::Tokens(ids) => ids.len(),
                })
                .sum();
            let chunks = [
                WorkerChunk::Passthrough(Box::new(Passthrough::embeddings(vectors))),
                WorkerChunk::Finish {
                    reason: FinishReason::Stop,
                    usage: Some(Usage::new(count_u32(prompt_tokens), 0)),
                },
            ];
            return Ok(stream::iter(chunks.map(Ok)).boxed());
        }
        let mut tokens = split_tokens(&call.prompt);
        let prompt_tokens = count_u32(tokens.len());
        let limit = call.request.params.max_tokens.map_or(usize::MAX, |m| m as usize);
        let reason = if tokens.len() > limit {
            tokens.truncate(limit);
            FinishReason::Length
        } else {
            FinishReason::Stop
        };
        let finish = WorkerChunk::Finish {
            reason,
            usage: Some(Usage::new(prompt_tokens, count_u32(tokens.len()))),
        };
        let chunks = tokens
            .into_iter()
            .map(WorkerChunk::Token)
            .chain(std::iter::once(finish));
        let stream = match self.token_delay {
            None => stream::iter(chunks.map(Ok)).boxed(),
            Some(delay) => stream::iter(chunks)
                .then(move |chunk| async move {
                    if matches!(chunk, WorkerChunk::Token(_)) {
                        tokio::time::sleep(delay).await;
                    }
                    Ok(chunk)
                })
                .boxed(),
        };
        Ok(stream)
    }
}

/// The length of an echo embedding when the request names none.
const DIMENSIONS: usize = 16;

/// A vector of unit length that depends on `input` alone: the same input always gets the same
/// vector, different inputs (almost always) different ones.
fn vector(input: &EmbedInput, dimensions: usize) -> Vec<f32> {
    let mut vector: Vec<f32> = (0..dimensions)
        .map(|i| {
            let mut hasher = DefaultHasher::new();
            (input, i).hash(&mut hasher);
            // The hash's top bits as a number in [-1, 1).
            (hasher.finish() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_join_back_to_the_text() {
        for text in ["Hello world", "  lead", "a  b\nc ", "", "   ", "héllo wörld"] {
            let tokens = split_tokens(text);
            assert_eq!(tokens.concat(), text);
        }
        assert_eq!(split_tokens("Hello big world"), ["Hello", " big", " world"]);
        for text in ["Hello world", "  lead", "a  b\nc ", "", "x"] {
            assert_eq!(count_tokens(text), split_tokens(text).len(), "{text:?}");
        }
    }
}
