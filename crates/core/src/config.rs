//! Pipeline settings: queue capacities and full-queue policies, per-stage concurrency, shards.
//!
//! These structs are what a `[pipeline]` table in `pipeline.toml` deserialises into; unknown keys
//! are rejected, and capacities are non-zero by type so nothing is left to check at run time.

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Stage;

/// What an edge does when the queue it feeds is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenFull {
    /// End the request at once with `Overloaded { stage }`; the caller hears it immediately.
    Shed,
    /// Wait for room; pressure flows upstream to the previous stage and finally to the input.
    Block,
}

/// One bounded queue in front of a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Total capacity, split evenly over the shards (each shard's lane gets `ceil(capacity / shards)`).
    pub capacity: NonZeroUsize,
    pub when_full: WhenFull,
}

/// One stage: its input queue and how many requests it works on at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    pub queue: QueueConfig,
    /// Requests in this stage at once, over all shards. For Inference this is the number of
    /// model calls in flight; for Post and Stream, the number of streams being relayed.
    pub concurrency: NonZeroUsize,
}

/// Everything the core pipeline can be told.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Number of shards a session key hashes to; each stage runs one lane task per shard.
    pub shards: NonZeroUsize,
    /// The RAG stage; its queue is the pipeline's input queue.
    pub rag: StageConfig,
    pub assemble: StageConfig,
    pub inference: StageConfig,
    pub post: StageConfig,
    pub stream: StageConfig,
    /// Capacity of the output stream that fire-and-forget requests are delivered on.
    pub output_capacity: NonZeroUsize,
    /// Capacity of each request's token channels between the streaming stages and to its caller.
    pub token_buffer: NonZeroUsize,
    /// Deadline of requests that set none, from admission to their final event; `None` or 0:
    /// no deadline.
    pub default_timeout_ms: Option<u64>,
}

/// The default deadline: a minute, so a hung upstream is answered (504) rather than waited on
/// for ever, and a fallback is reached within it.
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;

fn nz(n: usize) -> NonZeroUsize {
    // Only called with literal non-zero defaults below.
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

fn stage(capacity: usize, when_full: WhenFull, concurrency: usize) -> StageConfig {
    StageConfig {
        queue: QueueConfig {
            capacity: nz(capacity),
            when_full,
        },
        concurrency: nz(concurrency),
    }
}

impl Default for PipelineConfig {
    /// The original design's queue sizes. The input queue sheds (overload is answered at once at
    /// the edge, where the caller can retry or go elsewhere); inner queues block, so a request that
    /// was admitted is never thrown away because a later stage is momentarily busy.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        Self {
            shards: nz(cores),
            rag: stage(1024, WhenFull::Shed, 64),
            assemble: stage(512, WhenFull::Block, 64),
            inference: stage(512, WhenFull::Block, 256),
            post: stage(1024, WhenFull::Block, 1024),
            stream: stage(512, WhenFull::Block, 1024),
            output_capacity: nz(1024),
            token_buffer: nz(64),
            default_timeout_ms: Some(DEFAULT_TIMEOUT_MS),
        }
    }
}

impl PipelineConfig {
    /// The deadline of requests that set none.
    pub fn default_timeout(&self) -> Option<Duration> {
        self.default_timeout_ms
            .filter(|&ms| ms > 0)
            .map(Duration::from_millis)
    }

    /// The settings of one stage.
    pub fn stage(&self, stage: Stage) -> &StageConfig {
        match stage {
            Stage::Rag => &self.rag,
            Stage::Assemble => &self.assemble,
            Stage::Inference => &self.inference,
            Stage::Post => &self.post,
            Stage::Stream => &self.stream,
        }
    }

    /// The settings of one stage, to change.
    pub fn stage_mut(&mut self, stage: Stage) -> &mut StageConfig {
        match stage {
            Stage::Rag => &mut self.rag,
            Stage::Assemble => &mut self.assemble,
            Stage::Inference => &mut self.inference,
            Stage::Post => &mut self.post,
            Stage::Stream => &mut self.stream,
        }
    }

    pub fn with_shards(mut self, shards: NonZeroUsize) -> Self {
        self.shards = shards;
        self
    }

    pub fn with_queue(mut self, stage: Stage, capacity: NonZeroUsize, when_full: WhenFull) -> Self {
        self.stage_mut(stage).queue = QueueConfig { capacity, when_full };
        self
    }

    pub fn with_concurrency(mut self, stage: Stage, concurrency: NonZeroUsize) -> Self {
        self.stage_mut(stage).concurrency = concurrency;
        self
    }

    /// Capacity of one shard's lane of `stage`'s queue.
    pub(crate) fn lane_capacity(&self, stage: Stage) -> usize {
        self.stage(stage).queue.capacity.get().div_ceil(self.shards.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design() {
        let c = PipelineConfig::default();
        assert_eq!(c.assemble.queue.capacity.get(), 512);
        assert_eq!(c.inference.queue.capacity.get(), 512);
        assert_eq!(c.post.queue.capacity.get(), 1024);
        assert_eq!(c.stream.queue.capacity.get(), 512);
        assert_eq!(c.rag.queue.when_full, WhenFull::Shed);
        for s in [Stage::Assemble, Stage::Inference, Stage::Post, Stage::Stream] {
            assert_eq!(c.stage(s).queue.when_full, WhenFull::Block);
        }
    }

    #[test]
    fn requests_have_a_minute_by_default_and_zero_turns_the_deadline_off() {
        let mut c = PipelineConfig::default();
        assert_eq!(c.default_timeout(), Some(Duration::from_secs(60)));
        c.default_timeout_ms = Some(0);
        assert_eq!(c.default_timeout(), None);
        c.default_timeout_ms = None;
        assert_eq!(c.default_timeout(), None);
    }

    #[test]
    fn lane_capacity_rounds_up() {
        let c = PipelineConfig::default()
            .with_shards(nz(3))
            .with_queue(Stage::Post, nz(10), WhenFull::Block);
        assert_eq!(c.lane_capacity(Stage::Post), 4);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = serde_json::from_str::<PipelineConfig>(r#"{"shardz": 2}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `shardz`"), "{err}");
    }
}
