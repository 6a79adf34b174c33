//! The mock's shared state: its current behaviour, the counters tests read, the llama.cpp slots,
//! and the seeded sequence that decides which requests get an injected error.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use bytes::Bytes;
use tokio::sync::Notify;

use super::config::{Behaviour, MockConfig};

/// Counters a test reads to see what reached the upstream. Every stream that started ends as
/// exactly one of completed, abandoned or cut (or is still running).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MockStats {
    /// `POST /v1/chat/completions` requests received (errors included).
    pub chat_completions: u64,
    /// `POST /v1/completions` requests received.
    pub completions: u64,
    /// llama.cpp `POST /completion` requests received.
    pub llama_completions: u64,
    /// `GET /v1/models` requests received.
    pub models: u64,
    /// `GET /health` requests received.
    pub health: u64,
    /// `GET /slots` requests received.
    pub slots: u64,
    /// `GET /metrics` requests received.
    pub metrics: u64,
    /// Streaming answers that began (their response head was sent).
    pub streams_started: u64,
    /// Streams that sent their last frame.
    pub streams_completed: u64,
    /// Streams whose client went away before the end: the proof that a cancellation reached
    /// the upstream.
    pub streams_abandoned: u64,
    /// Streams closed on purpose by `cut_after`.
    pub streams_cut: u64,
    /// Non-streaming requests whose client went away during `latency_ms`.
    pub requests_abandoned: u64,
    /// Requests answered with an injected error status.
    pub errors_injected: u64,
    /// Requests rejected as malformed (400).
    pub bad_requests: u64,
    /// `POST /v1/embeddings` requests received.
    pub embeddings: u64,
    /// Inputs those requests carried.
    pub embedding_inputs: u64,
}

/// What the last generating request carried.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The route, e.g. `/v1/chat/completions`.
    pub path: &'static str,
    /// The body as received.
    pub body: Bytes,
    /// The W3C `traceparent` header, when the request carried one.
    pub traceparent: Option<String>,
}

impl RecordedRequest {
    /// The body as JSON (`Null` if it was not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub chat_completions: AtomicU64,
    pub completions: AtomicU64,
    pub llama_completions: AtomicU64,
    pub models: AtomicU64,
    pub health: AtomicU64,
    pub slots: AtomicU64,
    pub metrics: AtomicU64,
    pub streams_started: AtomicU64,
    pub streams_completed: AtomicU64,
    pub streams_abandoned: AtomicU64,
    pub streams_cut: AtomicU64,
    pub requests_abandoned: AtomicU64,
    pub errors_injected: AtomicU64,
    pub bad_requests: AtomicU64,
    pub embeddings: AtomicU64,
    pub embedding_inputs: AtomicU64,
}

/// One llama.cpp slot.
#[derive(Default)]
pub(crate) struct Slot {
    /// Requests running on the slot now.
    pub processing: AtomicU64,
    /// Requests the slot has served since start.
    pub served: AtomicU64,
}

pub(crate) struct Shared {
    behaviour: RwLock<Arc<Behaviour>>,
    pub counters: Counters,
    pub slots: Box<[Slot]>,
    /// Numbers generating requests: response ids and the injected-error sequence.
    sequence: AtomicU64,
    seed: u64,
    /// The `/v1/models` body, built once.
    pub models_body: Bytes,
    /// `model` of llama.cpp answers to requests that name none.
    pub default_model: String,
    /// The served model names, as `/v1/models` lists them.
    pub models: Vec<String>,
    last_request: Mutex<Option<RecordedRequest>>,
    /// Every `id_slot` value received, with how often.
    id_slots_seen: Mutex<BTreeMap<i64, u64>>,
    /// Wakes [`MockHandle::wait_until`] when a generating request arrives, a stream ends or a
    /// client abandons a request.
    changed: Notify,
    /// Whether anyone waits on `changed`; spares the hot path a lock when nobody does.
    watched: AtomicBool,
    /// Wakes held embedding answers when the behaviour changes.
    released: Notify,
}

impl Shared {
    pub fn new(config: &MockConfig) -> Self {
        let started_at = unix_now();
        let data: Vec<_> = config
            .models
            .iter()
            .map(|id| {
                serde_json::json!({
                    "id": id, "object": "model", "created": started_at,
                    "owned_by": "orchestrator-mock",
                })
            })
            .collect();
        let models_body = serde_json::to_vec(&serde_json::json!({"object": "list", "data": data}))
            .unwrap_or_default()
            .into();
        Self {
            behaviour: RwLock::new(Arc::new(config.behaviour.clone())),
            counters: Counters::default(),
            slots: (0..config.slots.get()).map(|_| Slot::default()).collect(),
            sequence: AtomicU64::new(0),
            seed: config.seed,
            models_body,
            default_model: config.models.first().cloned().unwrap_or_else(|| "mock".into()),
            models: config.models.clone(),
            last_request: Mutex::new(None),
            id_slots_seen: Mutex::new(BTreeMap::new()),
            changed: Notify::new(),
            watched: AtomicBool::new(false),
            released: Notify::new(),
        }
    }

    pub fn behaviour(&self) -> Arc<Behaviour> {
        // A poisoned lock still holds a whole `Arc`: nothing can be half-written.
        self.behaviour
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Numbers a generating request, records its body, and decides whether it gets an error.
    pub fn admit(
        &self,
        path: &'static str,
        headers: &HeaderMap,
        body: &Bytes,
        behaviour: &Behaviour,
    ) -> Admission {
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        let traceparent = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        *self.last_request.lock().unwrap_or_else(PoisonError::into_inner) = Some(RecordedRequest {
            path,
            body: body.clone(),
            traceparent,
        });
        let fail = inject(self.seed, n, behaviour.error_rate);
        if fail {
            self.counters.errors_injected.fetch_add(1, Ordering::Relaxed);
        }
        self.notify();
        Admission { n, fail }
    }

    pub fn record_id_slot(&self, id_slot: i64) {
        *self
            .id_slots_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id_slot)
            .or_default() += 1;
    }

    /// Waits while the behaviour holds embedding answers.
    pub async fn hold_embeddings(&self) {
        loop {
            // Registered before the check, so a release between the two is not missed.
            let released = self.released.notified();
            if !self.behaviour().hold_embeddings {
                return;
            }
            released.await;
        }
    }

    pub fn notify(&self) {
        if self.watched.load(Ordering::Acquire) {
            self.changed.notify_waiters();
        }
    }
}

/// The verdict on one generating request.
pub(crate) struct Admission {
    /// The request's number, unique within this server.
    pub n: u64,
    /// Answer with the injected error.
    pub fail: bool,
}

/// Whether request `n` gets an injected error: a pure function of the seed and `n`, so a test
/// that sends its requests one at a time sees the same statuses on every run.
fn inject(seed: u64, n: u64, rate: f64) -> bool {
    if rate <= 0.0 {
        return false;
    }
    if rate >= 1.0 {
        return true;
    }
    // The top 53 bits of a well-mixed word are a uniform float in [0, 1).
    let draw = (splitmix64(seed ^ splitmix64(n)) >> 11) as f64 / (1u64 << 53) as f64;
    draw < rate
}

/// SplitMix64's finaliser: a cheap bijection that scatters consecutive inputs.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Watches and steers a running mock; clones share the same server.
#[derive(Clone)]
pub struct MockHandle {
    pub(crate) shared: Arc<Shared>,
}

impl MockHandle {
    /// The behaviour new requests get.
    pub fn behaviour(&self) -> Behaviour {
        (*self.shared.behaviour()).clone()
    }

    /// Replaces the behaviour; requests that arrive afterwards follow it (streams already
    /// running keep theirs).
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self
            .shared
            .behaviour
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(behaviour);
        self.shared.released.notify_waiters();
    }

    /// Changes part of the behaviour, e.g. `mock.update(|b| b.error_rate = 1.0)`.
    pub fn update(&self, change: impl FnOnce(&mut Behaviour)) {
        let mut guard = self
            .shared
            .behaviour
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        change(Arc::make_mut(&mut guard));
        drop(guard);
        self.shared.released.notify_waiters();
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MockStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MockStats {
            chat_completions: get(&c.chat_completions),
            completions: get(&c.completions),
            llama_completions: get(&c.llama_completions),
            models: get(&c.models),
            health: get(&c.health),
            slots: get(&c.slots),
            metrics: get(&c.metrics),
            streams_started: get(&c.streams_started),
            streams_completed: get(&c.streams_completed),
            streams_abandoned: get(&c.streams_abandoned),
            streams_cut: get(&c.streams_cut),
            requests_abandoned: get(&c.requests_abandoned),
            errors_injected: get(&c.errors_injected),
            bad_requests: get(&c.bad_requests),
            embeddings: get(&c.embeddings),
            embedding_inputs: get(&c.embedding_inputs),
        }
    }

    /// The last generating request received (chat, completions or `/completion`).
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.shared
            .last_request
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every `id_slot` value received, with how many requests carried it.
    pub fn id_slots_seen(&self) -> BTreeMap<i64, u64> {
        self.shared
            .id_slots_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Requests served by each slot, by slot id.
    pub fn slot_served(&self) -> Vec<u64> {
        let slots = self.shared.slots.iter();
        slots.map(|s| s.served.load(Ordering::Relaxed)).collect()
    }

    /// Waits until `condition` holds for the counters. It is checked now and each time a
    /// generating request arrives, a stream ends, a request is abandoned or a health check
    /// (`/health`, `/metrics`) comes in (not on `/slots` or `/v1/models`); bound the wait with a
    /// timeout.
    pub async fn wait_until(&self, condition: impl Fn(&MockStats) -> bool) -> MockStats {
        self.shared.watched.store(true, Ordering::Release);
        loop {
            // Register before checking, so an end between the check and the wait is not missed.
            let changed = self.shared.changed.notified();
            let stats = self.stats();
            if condition(&stats) {
                return stats;
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injection_follows_the_rate_and_the_seed() {
        let count = |seed, rate| (0..10_000).filter(|&n| inject(seed, n, rate)).count();
        assert_eq!(count(1, 0.0), 0);
        assert_eq!(count(1, 1.0), 10_000);
        let quarter = count(1, 0.25);
        assert!((2_200..2_800).contains(&quarter), "{quarter}");
        let a: Vec<_> = (0..64).map(|n| inject(7, n, 0.5)).collect();
        let b: Vec<_> = (0..64).map(|n| inject(7, n, 0.5)).collect();
        let c: Vec<_> = (0..64).map(|n| inject(8, n, 0.5)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
