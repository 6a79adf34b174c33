//! Admission: `RequestSender` puts requests into their shard's input queue under the input
//! queue's policy (`shed` by default: a full queue answers `Overloaded` at once).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::edge::Edge;
use super::envelope::{Envelope, Reply};
use super::handle::ResponseHandle;
use super::pipe::pipe;
use crate::error::{PipelineError, Stage};
use crate::event::PromptOutput;
use crate::request::{InferenceRequest, RequestId, SessionId};
use crate::shard::shard_for;

/// A request with its place in the input queue, about to be admitted.
struct Admission<'a> {
    id: RequestId,
    cancel: CancellationToken,
    shard: usize,
    request: InferenceRequest,
    slot: mpsc::Permit<'a, Envelope>,
    shared: &'a Arc<Shared>,
}

impl Admission<'_> {
    /// Counts the request admitted and puts it in the queue; returns its deadline.
    fn enqueue(self, reply: Reply, progress: Option<Arc<AtomicU8>>) -> Option<Instant> {
        let env = Envelope::new(
            self.shared.clone(),
            self.id,
            self.request,
            self.cancel,
            reply,
            progress,
        );
        let deadline = env.deadline;
        self.shared.stats.record_admitted();
        self.slot.send(env);
        deadline
    }
}

/// Admits requests into the pipeline; clone it freely. When every clone is dropped the input
/// closes and admitted work drains.
#[derive(Clone)]
pub struct RequestSender {
    shared: Arc<Shared>,
    /// The RAG stage's queue of each shard: the input queue.
    lanes: Arc<[Edge<Envelope>]>,
    output: mpsc::Sender<PromptOutput>,
}

impl RequestSender {
    pub(crate) fn new(
        shared: Arc<Shared>,
        lanes: Arc<[Edge<Envelope>]>,
        output: mpsc::Sender<PromptOutput>,
    ) -> Self {
        Self {
            shared,
            lanes,
            output,
        }
    }

    /// Fire-and-forget: admits `request`; its joined output arrives on the pipeline's output
    /// stream, after the outputs of the same session's earlier requests.
    ///
    /// # Errors
    /// `Overloaded { stage: Rag }` when the input queue is full (policy `shed`; with `block` this
    /// waits instead), `Closed` once the pipeline is shutting down. Nothing is admitted then.
    pub async fn send(&self, request: impl Into<InferenceRequest>) -> Result<RequestId, PipelineError> {
        let admission = self.admit(request.into()).await?;
        let gate = self
            .shared
            .order
            .admit(admission.shard, &admission.request.session, admission.id);
        let reply = Reply::Output {
            tx: self.output.clone(),
            gate,
        };
        let id = admission.id;
        admission.enqueue(reply, None);
        Ok(id)
    }

    /// Submits `request` and returns the handle its events arrive on. Dropping the handle
    /// cancels the request wherever it is, including the model call.
    ///
    /// # Errors
    /// As for [`send`](Self::send).
    pub async fn submit(&self, request: InferenceRequest) -> Result<ResponseHandle, PipelineError> {
        let admission = self.admit(request).await?;
        let (events_tx, events_rx) = pipe(self.shared.config.token_buffer.get());
        let progress = Arc::new(AtomicU8::new(Stage::Rag as u8));
        let (id, cancel) = (admission.id, admission.cancel.clone());
        let deadline = admission.enqueue(Reply::Handle(Some(events_tx)), Some(progress.clone()));
        Ok(ResponseHandle::new(id, events_rx, cancel, deadline, progress))
    }

    /// Reserves a place in the request's shard's input queue, under the input's policy.
    async fn admit(&self, request: InferenceRequest) -> Result<Admission<'_>, PipelineError> {
        let shard = self.shard_of(&request.session);
        let slot = self.lanes[shard]
            .reserve_with_shed()
            .await
            .map_err(|e| self.refused(e))?;
        Ok(Admission {
            id: self.next_id(),
            cancel: self.shared.shard_tokens[shard].child_token(),
            shard,
            request,
            slot,
            shared: &self.shared,
        })
    }

    /// The shard a request of `session` goes to: the one its key hashes to; but a request alone,
    /// submitted from one of the pipeline's core threads, stays on a shard of that core.
    fn shard_of(&self, session: &SessionId) -> usize {
        let shards = self.lanes.len();
        if session.is_per_request()
            && let Some(cores) = &self.shared.cores
            && let Some(core) = cores.index_of_current()
        {
            // The shards on this core: core, core + threads, core + 2 * threads, ...
            let on_core = shards.saturating_sub(core).div_ceil(cores.len());
            if on_core > 0 {
                return core + cores.len() * shard_for(session, on_core);
            }
        }
        shard_for(session, shards)
    }

    /// Whether intake is still open.
    pub fn is_closed(&self) -> bool {
        self.shared.intake.is_cancelled()
    }

    fn next_id(&self) -> RequestId {
        RequestId(self.shared.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Counts a refusal at the input and passes it to the caller.
    fn refused(&self, error: PipelineError) -> PipelineError {
        match error {
            PipelineError::Overloaded { .. } => {
                self.shared.stats.record_shed();
                self.shared.metrics.stage(Stage::Rag).shed.increment(1);
                tracing::debug!("Input queue full; request shed.");
            }
            // A closed input queue is the pipeline shutting down.
            _ => return PipelineError::Closed,
        }
        error
    }
}
