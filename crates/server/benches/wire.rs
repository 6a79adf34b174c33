//! Writing response bodies: a whole chat answer and a stream chunk, without and with the fields
//! an upstream sends besides text, merged in as they are written.
//!
//! `cargo bench -p orchestrator-server --bench wire`

use criterion::{Criterion, criterion_group, criterion_main};
use orchestrator_server::api::wire::{Endpoint, Header};
use serde_json::json;
use tokio_prompt_orchestrator::{FinishReason, Passthrough, Usage};

fn header() -> Header {
    Header {
        endpoint: Endpoint::Chat,
        id: "chatcmpl-3f1c2a0e9b7d4c6a8e5f1b2d3c4a5e6f".into(),
        created: 1_764_400_000,
        model: "llama-3.1-8b-instruct".into(),
    }
}

/// What OpenAI's answers carry at the top level besides text.
fn fingerprint() -> Passthrough {
    let mut extra = Passthrough::default();
    extra
        .response
        .insert("system_fingerprint".into(), "fp_0ba0d124f1".into());
    extra.response.insert("service_tier".into(), "default".into());
    extra
}

/// A streamed token's logprobs, as a chunk carries them when the client asked for them.
fn logprobs() -> Passthrough {
    let mut extra = Passthrough::default();
    extra.choice.insert(
        "logprobs".into(),
        json!({"content": [{"token": " the", "logprob": -0.0123, "bytes": [32, 116, 104, 101],
                            "top_logprobs": []}]}),
    );
    extra
}

fn bodies(c: &mut Criterion) {
    let header = header();
    let text = "The pipeline answers every admitted request exactly once, in order per session.";
    let usage = Usage::new(24, 16);
    let (fingerprint, logprobs) = (fingerprint(), logprobs());
    let mut group = c.benchmark_group("wire");
    group.bench_function("complete/plain", |b| {
        b.iter(|| header.complete(text, FinishReason::Stop, usage, None));
    });
    group.bench_function("complete/system_fingerprint", |b| {
        b.iter(|| header.complete(text, FinishReason::Stop, usage, Some(&fingerprint)));
    });
    group.bench_function("chunk/plain", |b| b.iter(|| header.text_chunk(" the", None)));
    group.bench_function("chunk/logprobs", |b| {
        b.iter(|| header.text_chunk(" the", Some(&logprobs)));
    });
    group.finish();
}

criterion_group!(benches, bodies);
criterion_main!(benches);
