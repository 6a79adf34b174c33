//! Admission: `RequestSender` puts requests into their shard's input queue under the input
//! queue's policy (`shed` by default: a full queue answers `Overloaded` at once).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::Shared;
use super::edge::Edge;
use super::envelope::{Envelope, Reply};
use super::handle::ResponseHandle;
use crate::error::{PipelineError, Stage};
use crate::event::PromptOutput;
use crate::request::{InferenceRequest, RequestId};
use crate::shard::shard_for;

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
        let request = request.into();
        let shard = shard_for(&request.session, self.lanes.len());
        let slot = self.lanes[shard]
            .reserve_with_shed()
            .await
            .map_err(|e| self.refused(e))?;
        let id = self.next_id();
        let gate = self.shared.order.admit(shard, &request.session, id);
        let reply = Reply::Output {
            tx: self.output.clone(),
            gate,
        };
        let cancel = self.shared.shard_tokens[shard].child_token();
        self.shared.stats.record_admitted();
        slot.send(Envelope::new(
            self.shared.clone(),
            id,
            request,
            cancel,
            reply,
            None,
        ));
        Ok(id)
    }

    /// Submits `request` and returns the handle its events arrive on. Dropping the handle
    /// cancels the request wherever it is, including the model call.
    ///
    /// # Errors
    /// As for [`send`](Self::send).
    pub async fn submit(&self, request: InferenceRequest) -> Result<ResponseHandle, PipelineError> {
        let shard = shard_for(&request.session, self.lanes.len());
        let slot = self.lanes[shard]
            .reserve_with_shed()
            .await
            .map_err(|e| self.refused(e))?;
        let id = self.next_id();
        let (tokens_tx, tokens_rx) = mpsc::channel(self.shared.config.token_buffer.get());
        let (done_tx, done_rx) = oneshot::channel();
        let cancel = self.shared.shard_tokens[shard].child_token();
        let progress = Arc::new(AtomicU8::new(Stage::Rag as u8));
        let reply = Reply::Handle {
            tokens: tokens_tx,
            done: done_tx,
        };
        let env = Envelope::new(
            self.shared.clone(),
            id,
            request,
            cancel.clone(),
            reply,
            Some(progress.clone()),
        );
        let handle = ResponseHandle::new(id, tokens_rx, done_rx, cancel, env.deadline, progress);
        self.shared.stats.record_admitted();
        slot.send(env);
        Ok(handle)
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
