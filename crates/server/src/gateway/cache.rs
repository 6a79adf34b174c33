//! The exact-match response cache: a model's answers kept for a while, keyed by a canonical hash
//! of what decides the answer (the endpoint, model, messages or prompt, sampling parameters,
//! tools and the other fields passed to the backend), so that an identical deterministic request
//! is answered without calling the model again.
//!
//! Opt-in per model (`cache = { ... }` in `[[models]]`). Only deterministic requests (temperature
//! 0, or a seed) are kept unless `always = true`; the session, user and API key are not part of
//! the key unless `per_key = true`. Memory is bounded by entries and bytes (moka, with each entry
//! weighing at least its share of `max_bytes`), entries expire after `ttl_s`, and a reload starts
//! every model's cache afresh.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use moka::notification::RemovalCause;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio_prompt_orchestrator::{FinishReason, InferenceRequest, Passthrough, PromptInput, Response, Usage};

/// `cache = { ttl_s = 300, max_entries = 10000, max_bytes = 67108864 }` in a `[[models]]` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// How long an answer is kept.
    pub ttl_s: u64,
    pub max_entries: u64,
    /// The answers' bytes (text and pass-through fields) kept at most.
    pub max_bytes: u64,
    /// Keep answers of requests that are not deterministic too (temperature above 0, no seed).
    pub always: bool,
    /// Keep each API key's answers apart.
    pub per_key: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl_s: 300,
            max_entries: 10_000,
            max_bytes: 64 << 20,
            always: false,
            per_key: false,
        }
    }
}

/// A kept answer: what is needed to send it again as it was first sent.
#[derive(Debug)]
pub struct Cached {
    /// The first answer's id and creation time (Unix seconds): a hit is the same answer.
    pub id: String,
    pub created: u64,
    pub text: String,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub passthrough: Option<Box<Passthrough>>,
}

impl Cached {
    /// `answer`, kept as the answer `id` first sent at `created` (Unix seconds).
    pub fn of(id: String, created: u64, answer: &Response) -> Self {
        Self {
            id,
            created,
            text: answer.text.clone(),
            finish_reason: answer.completion.finish_reason,
            usage: answer.completion.usage,
            passthrough: answer.passthrough.clone(),
        }
    }

    fn bytes(&self) -> u64 {
        let extra = self
            .passthrough
            .as_ref()
            .map_or(0, |p| serde_json::to_vec(p).map_or(0, |v| v.len()));
        (self.id.len() + self.text.len() + extra + std::mem::size_of::<Self>()) as u64
    }
}

type Key = [u8; 32];

/// What a request finds in the cache.
pub enum Lookup {
    /// The model keeps no answers, or not this request's (not deterministic, or bypassed).
    Off,
    /// Not there: the answer goes in under this key when it completes.
    Miss(Fill),
    Hit(Arc<Cached>),
}

/// Where a completed answer goes.
pub struct Fill {
    key: Key,
    cache: moka::sync::Cache<Key, Arc<Cached>>,
    model: String,
}

impl Fill {
    pub fn put(self, cached: Cached) {
        self.cache.insert(self.key, Arc::new(cached));
        metrics::gauge!("orchestrator_cache_entries", "model" => self.model)
            .set(self.cache.entry_count() as f64);
    }
}

/// Every cached model's cache, for one config.
#[derive(Default)]
pub struct ResponseCache {
    models: HashMap<String, moka::sync::Cache<Key, Arc<Cached>>>,
    configs: HashMap<String, CacheConfig>,
}

impl ResponseCache {
    /// Caches for the models of `configs` (model name and its settings).
    pub fn new<'a>(configs: impl IntoIterator<Item = (&'a str, CacheConfig)>) -> Self {
        let mut cache = Self::default();
        for (model, config) in configs {
            // Each entry weighs at least its share of the bytes, so the bytes bound the count too.
            let floor = (config.max_bytes / config.max_entries.max(1)).max(1);
            let evicted = model.to_owned();
            let built = moka::sync::Cache::builder()
                .max_capacity(config.max_bytes)
                .weigher(move |_: &Key, v: &Arc<Cached>| u32::try_from(v.bytes().max(floor)).unwrap_or(u32::MAX))
                .time_to_live(Duration::from_secs(config.ttl_s))
                .eviction_listener(move |_, _, cause| {
                    let cause = match cause {
                        RemovalCause::Expired => "expired",
                        RemovalCause::Size => "size",
                        RemovalCause::Explicit | RemovalCause::Replaced => return,
                    };
                    metrics::counter!("orchestrator_cache_evictions_total", "model" => evicted.clone(), "cause" => cause)
                        .increment(1);
                })
                .build();
            cache.models.insert(model.to_owned(), built);
            cache.configs.insert(model.to_owned(), config);
        }
        cache
    }

    /// Looks `request` (received on `path`, from API key `key`) up. `bypass`: the client sent
    /// `Cache-Control: no-cache`; the answer is neither read nor kept.
    pub fn lookup(&self, path: &str, request: &InferenceRequest, key: Option<&str>, bypass: bool) -> Lookup {
        let (Some(cache), Some(config)) = (self.models.get(&request.model), self.configs.get(&request.model))
        else {
            return Lookup::Off;
        };
        let model = request.model.clone();
        // An embedding depends on its input alone.
        let deterministic = request.params.temperature == Some(0.0)
            || request.params.seed.is_some()
            || matches!(request.input, PromptInput::Embed(_));
        if bypass || !(deterministic || config.always) {
            metrics::counter!("orchestrator_cache_requests_total", "model" => model, "result" => "bypass")
                .increment(1);
            return Lookup::Off;
        }
        let hash = canonical_hash(path, request, key.filter(|_| config.per_key));
        match cache.get(&hash) {
            Some(hit) => {
                metrics::counter!("orchestrator_cache_requests_total", "model" => model, "result" => "hit")
                    .increment(1);
                Lookup::Hit(hit)
            }
            None => {
                metrics::counter!("orchestrator_cache_requests_total", "model" => model.clone(), "result" => "miss")
                    .increment(1);
                Lookup::Miss(Fill {
                    key: hash,
                    cache: cache.clone(),
                    model,
                })
            }
        }
    }
}

/// The SHA-256 of what decides the answer, written canonically: JSON with sorted keys and no
/// spaces, whatever order and spacing the client used.
fn canonical_hash(path: &str, request: &InferenceRequest, key: Option<&str>) -> Key {
    let decides = serde_json::json!({
        "path": path,
        "model": request.model,
        "input": request.input,
        "params": request.params,
        "extra": request.extra,
        // The retrieval query changes the prompt the model sees.
        "rag_query": request.meta.get("rag_query"),
        "key": key,
    });
    // `json!` reads every nested value (the fields passed through unread included) into maps
    // with sorted keys; `to_vec` writes them without spaces.
    let canonical = serde_json::to_vec(&decides).unwrap_or_default();
    Sha256::digest(&canonical).into()
}

#[cfg(test)]
mod tests {
    use tokio_prompt_orchestrator::{ChatMessage, SamplingParams, SessionId};

    use super::*;

    fn request(body: &str, temperature: f32) -> InferenceRequest {
        let mut request =
            InferenceRequest::chat(SessionId::new("s"), vec![ChatMessage::user("hi")]).with_model("m");
        request.params = SamplingParams {
            temperature: Some(temperature),
            ..SamplingParams::default()
        };
        request.extra = serde_json::from_str(body).unwrap();
        request
    }

    #[test]
    fn the_key_ignores_field_order_and_spacing_but_not_values() {
        let a = canonical_hash("/p", &request(r#"{"tools": [{"b": 1, "a": 2}]}"#, 0.0), None);
        let b = canonical_hash("/p", &request(r#"{"tools":[{"a":2,"b":1}]}"#, 0.0), None);
        let c = canonical_hash("/p", &request(r#"{"tools":[{"a":3,"b":1}]}"#, 0.0), None);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(
            a,
            canonical_hash("/q", &request(r#"{"tools":[{"a":2,"b":1}]}"#, 0.0), None)
        );
    }

    #[test]
    fn only_deterministic_requests_are_kept_unless_always() {
        let cache = ResponseCache::new([("m", CacheConfig::default())]);
        assert!(matches!(
            cache.lookup("/p", &request("{}", 0.0), None, false),
            Lookup::Miss(_)
        ));
        assert!(matches!(
            cache.lookup("/p", &request("{}", 0.7), None, false),
            Lookup::Off
        ));
        assert!(matches!(
            cache.lookup("/p", &request("{}", 0.0), None, true),
            Lookup::Off
        ));
        let always = ResponseCache::new([(
            "m",
            CacheConfig {
                always: true,
                ..CacheConfig::default()
            },
        )]);
        assert!(matches!(
            always.lookup("/p", &request("{}", 0.7), None, false),
            Lookup::Miss(_)
        ));
    }

    #[test]
    fn a_kept_answer_is_found_again() {
        let cache = ResponseCache::new([("m", CacheConfig::default())]);
        let Lookup::Miss(fill) = cache.lookup("/p", &request("{}", 0.0), None, false) else {
            panic!("not a miss");
        };
        fill.put(Cached {
            id: "x".into(),
            created: 1,
            text: "hello".into(),
            finish_reason: FinishReason::Stop,
            usage: Usage::new(1, 1),
            passthrough: None,
        });
        let Lookup::Hit(hit) = cache.lookup("/p", &request("{}", 0.0), None, false) else {
            panic!("not a hit");
        };
        assert_eq!(hit.text, "hello");
    }
}
