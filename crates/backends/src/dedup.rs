//! In-flight deduplication (singleflight): identical requests in flight at the same time share
//! one upstream call.
//!
//! A request qualifies when its model shares calls (per-model setting) and it is deterministic
//! (temperature 0) or its caller opted in (`meta["dedup"] = "on"`, the gateway's `X-Dedup: on`).
//! Identical means the same model, input, sampling parameters and pass-through fields.
//!
//! The first such request starts the call on a task of its own; every caller, the first
//! included, reads the call's items from a shared log from the start, so one that joins late
//! gets the tokens produced so far, then the live ones. A caller going away does not stop the
//! call while others still read it; the last one leaving cancels it. Once the call has ended,
//! the next identical request starts a new one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream;
use metrics::counter;
use tokio::sync::Notify;
use tokio_prompt_orchestrator::{InferenceCall, ModelWorker, TokenStream, WorkerChunk, WorkerError};
use tokio_util::sync::CancellationToken;

pub const DEDUP_HITS: &str = "orchestrator_dedup_hits_total";

/// Shares identical in-flight calls to `inner` for the models in `models`.
pub struct Dedup {
    inner: Arc<dyn ModelWorker>,
    /// The config's model names, looked up for every request (see `Router::routes`).
    models: HashSet<String, foldhash::fast::RandomState>,
    flights: Arc<Mutex<HashMap<String, Weak<Flight>>>>,
}

/// One shared upstream call: its items so far, whether it has ended, and who reads it.
struct Flight {
    log: Mutex<Log>,
    changed: Notify,
    /// Cancels the upstream call; fired when the last reader goes.
    cancel: CancellationToken,
}

#[derive(Default)]
struct Log {
    items: Vec<Result<WorkerChunk, WorkerError>>,
    ended: bool,
}

impl Drop for Flight {
    fn drop(&mut self) {
        // The last reader is gone (readers hold the only strong references).
        self.cancel.cancel();
    }
}

impl Dedup {
    pub fn new(inner: Arc<dyn ModelWorker>, models: impl IntoIterator<Item = String>) -> Self {
        Self {
            inner,
            models: models.into_iter().collect(),
            flights: Arc::default(),
        }
    }

    /// The sharing key of `call`, when it qualifies.
    fn key(&self, call: &InferenceCall) -> Option<String> {
        let request = &call.request;
        if !self.models.contains(&request.model) {
            return None;
        }
        let opted_in = request.meta.get("dedup").is_some_and(|v| v == "on");
        let deterministic = request.params.temperature == Some(0.0);
        if !(opted_in || deterministic) {
            return None;
        }
        // The rendered prompt stands for the input and whatever RAG added to it.
        let key = serde_json::json!([
            request.model,
            request.input,
            call.prompt,
            request.params,
            request.extra,
            request.stream
        ]);
        Some(key.to_string())
    }

    /// The running flight for `key`, or a new one started with `call`; whether it was joined.
    fn flight(&self, key: String, call: InferenceCall) -> (Arc<Flight>, bool) {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(flight) = flights.get(&key).and_then(Weak::upgrade) {
            return (flight, true);
        }
        let flight = Arc::new(Flight {
            log: Mutex::new(Log::default()),
            changed: Notify::new(),
            cancel: CancellationToken::new(),
        });
        flights.insert(key.clone(), Arc::downgrade(&flight));
        tokio::spawn(drive(
            self.inner.clone(),
            call,
            Arc::downgrade(&flight),
            flight.cancel.clone(),
            key,
            self.flights.clone(),
        ));
        (flight, false)
    }
}

/// Runs the upstream call, appending its items to the flight's log until it ends or the last
/// reader leaves.
async fn drive(
    inner: Arc<dyn ModelWorker>,
    mut call: InferenceCall,
    flight: Weak<Flight>,
    cancel: CancellationToken,
    key: String,
    flights: Arc<Mutex<HashMap<String, Weak<Flight>>>>,
) {
    // The call belongs to every reader now, not to the caller who happened to start it.
    call.cancel = cancel.clone();
    let run = async {
        let mut upstream = match inner.infer_stream(call).await {
            Ok(stream) => stream,
            Err(e) => stream::once(async move { Err(e) }).boxed(),
        };
        while let Some(item) = upstream.next().await {
            let Some(flight) = flight.upgrade() else { return };
            let last = item.is_err() || matches!(item, Ok(WorkerChunk::Finish { .. }));
            flight
                .log
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .items
                .push(item);
            flight.changed.notify_waiters();
            if last {
                break;
            }
        }
    };
    tokio::select! {
        () = cancel.cancelled() => {}
        () = run => {}
    }
    if let Some(flight) = flight.upgrade() {
        flight.log.lock().unwrap_or_else(PoisonError::into_inner).ended = true;
        flight.changed.notify_waiters();
    }
    // Later identical requests start afresh.
    let mut flights = flights.lock().unwrap_or_else(PoisonError::into_inner);
    if flights
        .get(&key)
        .is_some_and(|entry| Weak::ptr_eq(entry, &flight))
    {
        flights.remove(&key);
    }
}

/// One reader's view of a flight: every item from the first.
fn read(flight: Arc<Flight>) -> TokenStream {
    stream::unfold((flight, 0usize), |(flight, next)| async move {
        loop {
            // Register before looking, so an item appended in between is not missed.
            let changed = flight.changed.notified();
            {
                let log = flight.log.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(item) = log.items.get(next) {
                    return Some((item.clone(), (flight.clone(), next + 1)));
                }
                if log.ended {
                    return None;
                }
            }
            changed.await;
        }
    })
    .boxed()
}

#[async_trait]
impl ModelWorker for Dedup {
    async fn infer(&self, prompt: &str) -> Result<Vec<String>, WorkerError> {
        self.inner.infer(prompt).await
    }

    async fn infer_stream(&self, call: InferenceCall) -> Result<TokenStream, WorkerError> {
        let Some(key) = self.key(&call) else {
            return self.inner.infer_stream(call).await;
        };
        let model = call.request.model.clone();
        let (flight, joined) = self.flight(key, call);
        if joined {
            counter!(DEDUP_HITS, "model" => model).increment(1);
        }
        let mut items = read(flight);
        // A failure before any output is the caller's error, as without sharing.
        match items.next().await {
            Some(Err(e)) => Err(e),
            Some(Ok(first)) => Ok(stream::once(async move { Ok(first) }).chain(items).boxed()),
            None => Err(WorkerError::new("the shared call ended without output")),
        }
    }
}
