//! Admission: an edge's [`Format`] turns a body into a pipeline request with the request's
//! [`Hints`]; [`admit`] waits for its place by priority within its deadline and submits it; a
//! [`draft`] of its dead letter is kept in case it fails.

use bytes::Bytes;
use tokio::time::Instant;
use tokio_prompt_orchestrator::{
    InferenceRequest, PipelineError, Priority, PromptInput, Response, ResponseHandle, SessionId, Stage,
};

use super::error::ApiError;
use super::live::Live;
use super::outcome::{Draft, Outcome};
use crate::stored::Turn;

/// An API shape an edge serves (the OpenAI endpoints in `api` are one): how a body received on one
/// of its paths becomes a pipeline request, and how a whole answer is written. Dead-letter replay
/// uses it to send a kept request through again exactly as it first came in.
pub trait Format: Send + Sync {
    /// Checks `body`, received on `path`, and builds the pipeline request (its session is set by
    /// [`prepare`](Self::prepare)).
    ///
    /// # Errors
    /// What the client is told: the field at fault, a path not served.
    fn read(&self, path: &str, body: &[u8]) -> Result<(InferenceRequest, Delivery), ApiError>;

    /// [`read`](Self::read), for a model `live` serves, with what the request's headers add.
    ///
    /// # Errors
    /// What the client is told: the field at fault, an unknown model, a path not served.
    fn prepare(
        &self,
        live: &Live,
        path: &str,
        body: &[u8],
        origin: &Origin<'_>,
    ) -> Result<(InferenceRequest, Delivery), ApiError> {
        let (mut request, delivery) = self.read(path, body)?;
        if !live.models.contains(&delivery.model) {
            return Err(ApiError::model_not_found(&delivery.model));
        }
        let embedding = !live.embedding_models.is_empty() && live.embedding_models.contains(&delivery.model);
        if embedding != matches!(request.input, PromptInput::Embed(_)) {
            return Err(ApiError::wrong_kind(&delivery.model, embedding));
        }
        origin.hints.apply(&mut request, &delivery, origin);
        Ok((request, delivery))
    }

    /// The whole answer to a request received on `path`, as JSON.
    fn answer(
        &self,
        path: &str,
        request_id: &str,
        delivery: Delivery,
        response: &Response,
    ) -> serde_json::Value;
}

/// Who sent a request and what it asked of the gateway besides its body.
pub struct Origin<'a> {
    pub hints: &'a Hints,
    /// The API key's name, when keys are configured.
    pub key: Option<&'a str>,
    /// The key's priority, for a request that names none.
    pub default_priority: Priority,
    pub request_id: &'a str,
}

/// How the answer goes out, as the body asked.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    /// The `user` field: a session key when `X-Session-Id` is absent.
    pub user: Option<String>,
    /// A Responses request's turn of a conversation: what is stored with its answer, and the
    /// stored answer it continues.
    pub turn: Option<Box<Turn>>,
    /// An embedding request's vectors go out as base64 (`encoding_format`), not as numbers.
    pub base64: bool,
}

/// What a request's headers add to its body.
#[derive(Debug, Default, Clone)]
pub struct Hints {
    /// `X-Session-Id`.
    pub session: Option<String>,
    /// `X-Priority`; without it, the key's default.
    pub priority: Option<Priority>,
    /// `X-Dedup: on`.
    pub dedup: bool,
    /// `X-Rag-Query`: what to search for instead of the last user message.
    pub rag_query: Option<String>,
    /// `X-Rag-Sources: true`: the answer lists the retrieved context it used.
    pub rag_sources: bool,
    /// The client's W3C `traceparent`, kept in the request's metadata so that it travels with
    /// the request (to remote workers too).
    pub traceparent: Option<String>,
    /// `Cache-Control: no-cache` (or `no-store`): the answer is neither taken from the cache nor
    /// kept in it.
    pub no_cache: bool,
}

impl Hints {
    /// Puts what the hints say into `request`: session, priority, dedup, retrieval query.
    pub fn apply(&self, request: &mut InferenceRequest, delivery: &Delivery, origin: &Origin<'_>) {
        request.session = session_key(self.session.as_deref(), delivery, origin.key, origin.request_id);
        request.priority = self.priority.unwrap_or(origin.default_priority);
        if self.dedup {
            request.meta.insert("dedup".into(), "on".into());
        }
        if let Some(query) = &self.rag_query {
            request.meta.insert("rag_query".into(), query.clone());
        }
        if let Some(traceparent) = &self.traceparent {
            request.meta.insert("traceparent".into(), traceparent.clone());
        }
    }
}

/// Waits for a place in the pipeline (higher priority first), then submits. The wait counts
/// toward the request's deadline.
///
/// # Errors
/// The request's refusal (`Overloaded`, `Timeout` while waiting, `Closed`), kept in the
/// dead-letter queue when the config says so.
pub async fn admit(
    live: &Live,
    mut request: InferenceRequest,
    outcome: &mut Outcome,
) -> Result<ResponseHandle, ApiError> {
    // The key's token budget is reserved first: a request it cannot cover is refused before it
    // waits for a place, and before any byte of an answer.
    if let Some(budget) = outcome.limits.as_ref().and_then(|l| l.budget.clone()) {
        outcome.reservation = Some(budget.reserve(&request).await?);
    }
    if request.timeout.is_none() {
        outcome.default_timeout = live.config.pipeline.default_timeout();
    }
    let deadline = request.timeout.or(outcome.default_timeout);
    let waited = Instant::now();
    let acquired = match deadline {
        None => live.gate.acquire(request.priority).await,
        Some(limit) => tokio::time::timeout(limit, live.gate.acquire(request.priority))
            .await
            .unwrap_or(Err(PipelineError::Timeout { stage: Stage::Rag })),
    };
    match acquired {
        Ok(permit) => outcome.permit = Some(permit),
        Err(error) => return Err(outcome.failed(error).await),
    }
    request.timeout = deadline.map(|d| d.saturating_sub(waited.elapsed()));
    if let Some(trace) = &mut outcome.trace {
        trace.submitted();
    }
    // Boxed: the submission's state (under a kilobyte, most of it the request, moved at each
    // level) is only needed for a moment, and inline it would size the handler's future for the
    // whole wait for the first token.
    match Box::pin(live.sender.submit(request)).await {
        Ok(handle) => Ok(handle),
        Err(error) => Err(outcome.failed(error).await),
    }
}

/// The dead letter this request becomes if it fails, when the queue is on.
pub fn draft(
    live: &Live,
    request: &InferenceRequest,
    endpoint: &'static str,
    key: Option<&str>,
    hints: &Hints,
    body: Bytes,
    received_at_ms: u64,
) -> Option<Box<Draft>> {
    let (store, config) = (live.dlq.as_ref()?, live.config.dlq.as_ref()?);
    // A copy, so the connection's read buffer is not held for the request's whole life.
    let body = Bytes::copy_from_slice(&body);
    Some(Box::new(Draft {
        store: store.clone(),
        record: config.record.clone(),
        received_at_ms,
        endpoint,
        model: request.model.clone(),
        key: key.map(str::to_owned),
        priority: request.priority,
        session: hints.session.clone(),
        body,
    }))
}

/// The affinity key: `X-Session-Id`, else the `user` field, else the API key's name, else the
/// request id (no affinity).
pub fn session_key(
    session: Option<&str>,
    delivery: &Delivery,
    key: Option<&str>,
    request_id: &str,
) -> SessionId {
    if let Some(session) = session {
        return SessionId::new(session);
    }
    // Prefixes keep the kinds of key apart: a user named like an API key is another session.
    match (&delivery.user, key) {
        (Some(user), _) => SessionId::new(["user:", user].concat()),
        (None, Some(key)) => SessionId::new(["key:", key].concat()),
        (None, None) => SessionId::per_request(["req:", request_id].concat()),
    }
}
