//! The five stages: what each does with one request, behind the common `StageLogic` trait that
//! the lane loop drives.
//!
//! RAG and Assemble transform the request and hand it on. Inference, Post and Stream hand the
//! request on as soon as they start it, with a channel its tokens will flow through, and keep a
//! per-request job relaying those tokens: tokens move stage to stage as they are produced.

pub mod assemble;
pub mod inference;
pub mod post;
pub mod rag;
pub mod stream;

use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use crate::error::{PipelineError, Stage};
use crate::event::{FinishReason, Passthrough, Usage};
use crate::pipeline::envelope::Envelope;
use crate::pipeline::limit::LimitPermit;
use crate::pipeline::pipe::PipeRx;

/// What starting one request in a stage produced.
pub(crate) enum Start<Out> {
    /// Hand this to the next stage now; the lane times and counts the stage's (synchronous) work.
    Forward(Out),
    /// Hand this on now, and keep `job` (the token relay) running in the lane.
    Stream(Out, BoxFuture<'static, ()>),
    /// Keep `job` running in the lane; nothing to hand on (the last stage).
    Work(BoxFuture<'static, ()>),
    /// Hand on what `job` yields, keeping arrival order.
    Later(BoxFuture<'static, Option<Out>>),
}

/// One stage's work on one request.
pub(crate) trait StageLogic: Send + Sync + 'static {
    const STAGE: Stage;
    type In: Carries;
    type Out: Carries;

    /// Starts `item`; `permit` is its place under the stage's concurrency limit and must live
    /// as long as the stage works on it. `now` is when the lane started it: a job times its
    /// stage's work from there (one clock reading per request and stage fewer).
    fn start(&self, item: Self::In, permit: Place, now: Instant) -> Start<Self::Out>;

    /// Whether `start` always answers `Forward`: the lane then has at most one request of this
    /// stage in hand at a time, so a concurrency limit of at least the number of lanes cannot
    /// bind and is not enforced (taking and giving back a place costs two atomic operations and a
    /// `Notify` check per request).
    fn synchronous(&self) -> bool {
        false
    }
}

/// A request's place under its stage's concurrency limit, held while the stage works on it;
/// `None` where the limit cannot bind (see [`StageLogic::synchronous`]).
pub(crate) type Place = Option<LimitPermit>;

/// Anything that carries a request's envelope between stages.
pub(crate) trait Carries: Send + 'static {
    fn envelope_mut(&mut self) -> &mut Envelope;
    fn into_envelope(self) -> Envelope;
}

impl Carries for Envelope {
    fn envelope_mut(&mut self) -> &mut Envelope {
        self
    }

    fn into_envelope(self) -> Envelope {
        self
    }
}

/// A request in the streaming half, with the pipe its tokens arrive on.
pub(crate) struct Handoff {
    pub env: Envelope,
    pub pieces: PipeRx<Piece>,
}

impl Carries for Handoff {
    fn envelope_mut(&mut self) -> &mut Envelope {
        &mut self.env
    }

    fn into_envelope(self) -> Envelope {
        self.env
    }
}

/// What flows between the streaming stages: tokens, then exactly one end marker.
///
/// A channel that closes without an end marker means the sender stopped because the request was
/// aborted (caller gone, deadline, shutdown); the receiver then asks the envelope why.
///
/// The end marker is boxed so a piece stays as small as a token: each open stream holds two of
/// these pipes.
pub(crate) enum Piece {
    Token(String),
    Passthrough(Box<Passthrough>),
    End(Box<StreamEnd>),
}

/// How a stream ended, and how long the stages upstream of the receiver were active on it.
pub(crate) struct StreamEnd {
    pub result: Result<Finished, (Stage, PipelineError)>,
    pub inference_active: Duration,
    pub post_active: Duration,
}

/// A normal end of generation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Finished {
    pub reason: FinishReason,
    /// As reported by the worker, if it did.
    pub usage: Option<Usage>,
}
