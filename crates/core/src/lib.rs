//! A staged, backpressured tokio pipeline for LLM requests.
//!
//! Every request passes five stages, each a group of lane tasks (one per shard) reading a bounded
//! queue:
//!
//! ```text
//! RequestSender -> [RAG] -> [Assemble] -> [Inference] -> [Post] -> [Stream] -> handle / output
//! ```
//!
//! - [`request`]: what callers submit ([`PromptRequest`], [`InferenceRequest`]).
//! - [`event`]: what comes back ([`ResponseEvent`], [`PromptOutput`]).
//! - [`worker`]: the [`ModelWorker`] extension point and [`EchoWorker`].
//! - [`admission`]: priority admission in front of the pipeline ([`PriorityGate`]).
//! - [`config`]: queue capacities, full-queue policies, concurrency, shards.
//! - [`stages`]: what each stage does; [`Retriever`] plugs into RAG.
//! - `pipeline`: lanes, admission, shutdown ([`spawn_pipeline`], [`Pipeline`]); where the lanes
//!   run ([`Layout`]: the spawning runtime, or a thread per core).
//! - [`shard`]: session -> shard hashing.
//! - [`trace`]: W3C trace context, and the backend calls recorded for a traced request.
//! - [`metrics`]: metric names and the recording functions; [`latency`]: the latency histograms
//!   the pipeline keeps for [`Pipeline::stage_stats`].
//!
//! See ARCHITECTURE.md for how backpressure, ordering, cancellation and shutdown fit together.

pub mod admission;
pub mod config;
pub mod error;
pub mod event;
pub mod extra;
pub mod latency;
pub mod metrics;
mod pipeline;
pub mod request;
pub mod shard;
pub mod stages;
pub mod trace;
pub mod worker;

pub use admission::{AdmissionConfig, GatePermit, LevelStats, PriorityGate};
pub use config::{PipelineConfig, QueueConfig, StageConfig, WhenFull};
pub use error::{BackendAttempt, PipelineError, Stage, WorkerError};
pub use event::{
    Completion, FinishReason, Passthrough, PromptOutput, Response, ResponseEvent, StageTiming, StageTimings,
    Usage,
};
pub use latency::LatencyCounts;
pub use pipeline::{
    Cores, Layout, LayoutError, Pipeline, PipelineBuilder, PipelineHandles, PipelineStats, RequestSender,
    ResponseHandle, ShutdownReport, StageStats, StopOnDrop, spawn_pipeline,
};
pub use request::{
    ChatMessage, EmbedInput, Extra, InferenceRequest, Meta, Priority, PromptInput, PromptRequest, RawExtra,
    RequestId, Role, SamplingParams, SessionId, raw,
};
pub use stages::assemble::{Assembled, Assembler};
pub use stages::post::chain::{PostProcessor, PostStep, Step, StopSequences};
pub use stages::rag::{RetrievedChunk, Retriever};
pub use worker::{EchoWorker, InferenceCall, ModelWorker, TokenStream, WorkerChunk};

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
