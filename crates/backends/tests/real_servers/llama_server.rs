//! Both backends against llama.cpp's own llama-server: `LlamaCppWorker` on its native
//! `/completion`, `OpenAiWorker` on its `/v1`; slot affinity and cancellation read from `/slots`.
//! (`LlamaCppWorker`'s chat route: `llama_server_chat.rs`.)

use std::time::Duration;

use orchestrator_backends::OpenAiWorker;
use orchestrator_backends::llamacpp::{LlamaCppConfig, LlamaCppWorker};
use orchestrator_backends::openai::OpenAiConfig;
use serde_json::{Value, json};
use tokio_prompt_orchestrator::shard::shard_for;
use tokio_prompt_orchestrator::{
    ChatMessage, FinishReason, InferenceRequest, ModelWorker, SamplingParams, SessionId,
};

use crate::support::{self, Kind, SLOTS, Server};

/// A prompt the model continues for a long time: it keeps counting.
pub const COUNTING: &str = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,";

/// Room for a generation much longer than the tests wait for (a slot holds 2048 tokens).
pub const LONG: u32 = 1500;

/// The worker as the gateway builds it from a `kind = "llamacpp"` entry.
pub fn llamacpp(server: &Server) -> LlamaCppWorker {
    let config: LlamaCppConfig = serde_json::from_value(json!({
        "name": "llama-server",
        "base_url": server.url,
        "slots": SLOTS,
    }))
    .expect("a valid backend entry");
    LlamaCppWorker::new(&config).expect("the worker builds")
}

/// The worker as the gateway builds it from a `kind = "openai"` entry pointing at `/v1`.
pub fn openai(server: &Server) -> OpenAiWorker {
    let config: OpenAiConfig = serde_json::from_value(json!({
        "name": "llama-server-v1",
        "base_url": format!("{}/v1", server.url),
    }))
    .expect("a valid backend entry");
    OpenAiWorker::new(&config).expect("the worker builds")
}

/// Greedy sampling, at most `max_tokens`.
pub fn greedy(max_tokens: u32) -> SamplingParams {
    SamplingParams {
        temperature: Some(0.0),
        max_tokens: Some(max_tokens),
        seed: Some(42),
        ..SamplingParams::default()
    }
}

fn text(session: &str, prompt: &str, params: SamplingParams, stream: bool) -> InferenceRequest {
    InferenceRequest::text(SessionId::new(session), prompt)
        .with_params(params)
        .with_stream(stream)
}

fn chat(prompt: &str, params: SamplingParams, stream: bool) -> InferenceRequest {
    InferenceRequest::chat(SessionId::new("chat"), vec![ChatMessage::user(prompt)])
        .with_params(params)
        .with_stream(stream)
}

/// Two sessions that the worker maps to different slots.
pub fn two_sessions_on_different_slots() -> (String, String) {
    let slot = |s: &str| shard_for(&SessionId::new(s), SLOTS);
    let first = "session-0".to_string();
    let other = (1..)
        .map(|i| format!("session-{i}"))
        .find(|s| slot(s) != slot(&first))
        .expect("some session maps elsewhere");
    (first, other)
}

pub fn slot_of(session: &str) -> usize {
    shard_for(&SessionId::new(session), SLOTS)
}

/// `GET /slots`, by slot id.
pub async fn slots(server: &Server) -> Vec<Value> {
    let slots = server.get("/slots").await;
    let mut slots = slots.as_array().expect("/slots is an array").clone();
    slots.sort_by_key(|s| s["id"].as_u64());
    assert_eq!(slots.len(), SLOTS, "one entry per slot: {slots:?}");
    slots
}

/// The task each slot ran last (-1: none yet; llama-server leaves `id_task` out then).
pub async fn tasks(server: &Server) -> Vec<i64> {
    slots(server)
        .await
        .iter()
        .map(|s| {
            s.get("id_task")
                .map_or(-1, |t| t.as_i64().expect("id_task is a number"))
        })
        .collect()
}

pub fn processing(slot: &Value) -> bool {
    slot["is_processing"]
        .as_bool()
        .expect("is_processing is a boolean")
}

/// Tokens in the slot's KV cache: its last prompt and what was generated after it. llama-server
/// resets a slot's other counts (`n_decoded`, prompt tokens evaluated and reused) when its task
/// ends, but keeps the cache, so this is what still tells afterwards how far a task got.
/// A slot that never ran a task has none (and no count).
pub fn cached_tokens(slot: &Value) -> u64 {
    match slot.get("n_prompt_tokens") {
        Some(n) => n
            .as_u64()
            .unwrap_or_else(|| panic!("n_prompt_tokens is not a count: {slot}")),
        None => 0,
    }
}

/// Waits until no slot is processing. Bounded, so a server that never stops fails the test.
pub async fn until_idle(server: &Server) -> Vec<Value> {
    for _ in 0..300 {
        let slots = slots(server).await;
        if !slots.iter().any(processing) {
            return slots;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("a slot is still processing 30 s after its stream was dropped");
}

#[tokio::test]
#[ignore = "needs real model servers: ORCHESTRATOR_REAL_LLM=1 bash scripts/test.sh"]
async fn native_completion_whole_answer_honours_max_tokens() {
    let Some(server) = Server::start(Kind::LlamaServer).await else {
        return;
    };
    let worker = llamacpp(&server);
    let call = support::call(text("s", COUNTING, greedy(8), false), COUNTING);
    let outcome = support::run(&worker, call).await.expect("the call succeeds");
    assert_eq!(
        outcome.tokens.len(),
        1,
        "a whole answer is one piece: {outcome:?}"
    );
    assert!(!outcome.text().trim().is_empty());
    assert_eq!(outcome.finish, FinishReason::Length, "{outcome:?}");
    let usage = outcome.usage.expect("llama-server reports its counts");
    assert_eq!(usage.completion_tokens, 8);
    assert!(usage.prompt_tokens > 0);
    assert_eq!(usage.total_tokens, usage.prompt_tokens + 8);
}

#[tokio::test]
#[ignore = "needs real model servers: ORCHESTRATOR_REAL_LLM=1 bash scripts/test.sh"]
async fn native_completion_streams_token_by_token() {
    let Some(server) = Server::start(Kind::LlamaServer).await else {
        return;
    };
    let worker = llamacpp(&server);
    let call = support::call(text("s", COUNTING, greedy(16), true), COUNTING);
    let outcome = support::run(&worker, call).await.expect("the call succeeds");
    // One event per generated token; a token that is part of a multi-byte character may be
    // held back and sent with the next, so at most 16 pieces.
    assert!(outcome.tokens.len() > 1, "tokens arrive one by one: {outcome:?}");
    assert!(outcome.tokens.len() <= 16, "{outcome:?}");
    assert_eq!(outcome.finish, FinishReason::Length);
    let usage = outcome.usage.expect("the last event carries the counts");
    assert_eq!(usage.completion_tokens, 16);
    assert!(usage.prompt_tokens > 0);
}

#[tokio::test]
#[ignore = "needs real model servers: ORCHESTRATOR_REAL_LLM=1 bash scripts/test.sh"]
async fn native_completion_stops_at_a_stop_sequence() {
    let Some(server) = Server::start(Kind::LlamaServer).await else {
        return;
    };
    let worker = llamacpp(&server);
    let params = SamplingParams {
        stop: vec![","].into_iter().map(String::from).collect(),
        ..greedy(32)
    };
    let call = support::call(text("s", COUNTING, params, true), COUNTING);
    let outcome = support::run(&worker, call).await.expect("the call succeeds");
    assert_eq!(outcome.finish, FinishReason::Stop, "{outcome:?}");
    assert!(!outcome.text().contains(','), "{outcome:?}");
    let usage = outcome.usage.expect("the last event carries the counts");
    assert!(usage.completion_tokens < 32);
}

#[tokio::test]
#[ignore = "needs real model servers: ORCHESTRATOR_REAL_LLM=1 bash scripts/test.sh"]
async fn greedy_decoding_on_fresh_slots_is_deterministic() {
    let Some(server) = Server::start(Kind::LlamaServer).await else {
        return;
    };
    let worker = llamacpp(&server);
    // Two sessions on two unused slots: both evaluate the whole prompt the same way. (Repeating a
    // request on one slot reuses its cache and evaluates fewer tokens at once, which llama.cpp
    // does not promise gives bit-identical logits.)
    let (a, b) = two_sessions_on_different_slots();
    let first = support::run(
        &worker,
        support::call(text(&a, COUNTING, greedy(24), true), COUNTING),
    )
    .await
    .expect("the call succeeds");
    let second = support::run(
        &worker,
        support::call(text(&b, COUNTING, greedy(24), false), COUNTING),
    )
    .await
    .expect("the call succeeds");
    assert_eq!(first.text(), second.text(), "streamed and whole answers agree");
    assert_eq!(first.usage, second.usage);
}

#[tokio::test]
#[ignore = "needs real model servers: ORCHESTRATOR_REAL_LLM=1 bash scripts/test.sh"]
async fn a_session_keeps_its_slot_and_sessions_get_their_own() {
    let Some(server) = Server::start(Kind::LlamaServer).await else {
        return;
    };
    let worker = llamacpp(&server);
    let (a, b) = two_sessions_on_different_slots();
    let (slot_a, slot_b) = (slot_of(&a), slot_of(&b));
    let before = tasks(&server).await;
    let changed = |x: &[i64], y: &[i64]| (0..SLOTS).filter(|&i| x[i] != y[i]).collect::<Vec<_>>();
    let ask = |session: &str, prompt: &str| support::call(text(session, prompt, greedy(8), false), prompt);

    let first_a = support::run(&worker, ask(&a, COUNTING))
        .await
        .expect("a's first call");
    let after_a = tasks(&server).await;
    assert_eq!(
        changed(&before, &after_a),
        [slot_a],
        "only a's slot ran: {before:?} -> {after_a:?}"
    );
    let a_cache = cached_tokens(&slots(&server).await[slot_a]);
    let a_usage = first_a.usage.expect("counts");
    assert!(
        a_cache >= u64::from(a_usage.prompt_tokens),
        "a's slot holds a's prompt"
    );

    support::run(&worker, ask(&b, "Once upon a time"))
        .await
        .expect("b's call");
    let after_b = tasks(&server).await;
    assert_eq!(
        changed(&after_a, &after_b),
        [slot_b],
        "only b's slot ran: {after_a:?} -> {after_b:?}"
    );
    assert_eq!(
        cached_tokens(&slots(&server).await[slot_a]),
        a_cache,
        "b left a's cache alone"
    );

    // a's conversation goes on, streamed: back on a's slot, whose cache holds the start of the
    // prompt, so the server evaluates only what is new. The counts are read while the slot is
    // still generating (llama-server resets them when a task ends), then the stream is dropped.
    let longer = format!("{COUNTING}{}", first_a.text());
    let request = text(&a, &longer, greedy(LONG), true);
    let mut stream = worker
        .infer_stream(support::call(request, &longer))
        .await
        .expect("a's second call starts");
    support::next_token(&mut stream).await;
    let slot = slots(&server).await[slot_a].clone();
    assert!(processing(&slot), "a's second call runs on a's slot: {slot}");
    let reused = slot["n_prompt_tokens_cache"].as_u64().expect("a count");
    let evaluated = slot["n_prompt_tokens_processed"].as_u64().expect("a count");
    assert!(reused > 0, "a's slot reused its cache: {slot}");
    assert!(
        evaluated > 0 && evaluated < u64::from(a_usage.prompt_tokens),
        "only the new part of the prompt was evaluated: {slot}"
    );
    drop(stream);
    let after_a2: Vec<i64> = until_idle(&server)
        .await
        .iter()
        .map(|s| s.get("id_task").map_or(-1, |t| t.as_i64().expect("a number")))
        .collect();
    assert_eq!(
        changed(&after_b, &after_a2),
        [slot_a],
        "a came back to its slot: {after_b:?} -> {after_a2:?}"
    );
}

/// Reads a few tokens of a long generation, checks the server is still generating, drops the
/// stream, and returns the slot that ran it once the server has stopped.
async fn drop_mid_stream(server: &Server, worker: &dyn ModelWorker, request: InferenceRequest) -> Value {
    let mut stream = worker
        .infer_stream(support::call(request, COUNTING))
        .await
        .expect("the stream starts");
    for _ in 0..3 {
        support::next_token(&mut stream).await;
    }
    let busy: Vec<usize> = slots(server)
        .await
        .iter()
        .enumerate()
        .filter(|(_, s)| processing(s))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        busy.len(),
        1,
        "one slot is generating while tokens arrive: {busy:?}"
    );
    drop(stream);
    let slots = until_idle(server).await;
    slots[busy[0]].clone()
}

#[tokio::test]
#[ignore = "needs real model servers: ORCHESTRATOR_REAL_LLM=1 bash scripts/test.sh"]
async fn dropping_a_native_stream_stops_generation_on_the_server() {
    let Some(server) = Server::start(Kind::LlamaServer).await else {
        return;
    };
    let worker = llamacpp(&server);
    let slot = drop_mid_stream(&server, &worker, text("s", COUNTING, greedy(LONG), true)).await;
    assert_eq!(slot["id"].as_u64(), Some(slot_of("s") as u64));
    // Run to its end, the task would have left the prompt and LONG tokens in the cache.
    assert!(cached_tokens(&slot) < u64::from(LONG), "stopped early: {slot}");
}

#[tokio::test]
#[ignore = "needs real model servers: ORCHESTRATOR_REAL_LLM=1 bash scripts/test.sh"]
async fn dropping_a_v1_stream_stops_generation_on_the_server() {
    let Some(server) = Server::start(Kind::LlamaServer).await else {
        return;
    };
    let worker = openai(&server);
    let slot = drop_mid_stream(&server, &worker, text("s", COUNTING, greedy(LONG), true)).await;
    assert!(cached_tokens(&slot) < u64::from(LONG), "stopped early: {slot}");
}

#[tokio::test]
#[ignore = "needs real model servers: ORCHESTRATOR_REAL_LLM=1 bash scripts/test.sh"]
async fn v1_chat_whole_answer_honours_max_tokens() {
    let Some(server) = Server::start(Kind::LlamaServer).await else {
        return;
    };
    let worker = openai(&server);
    let call = support::call(chat("Tell me a long story about a cat.", greedy(8), false), "");
    let outcome = support::run(&worker, call).await.expect("the call succeeds");
    assert_eq!(outcome.tokens.len(), 1, "{outcome:?}");
    assert!(!outcome.text().trim().is_empty());
    assert_eq!(outcome.finish, FinishReason::Length, "{outcome:?}");
    let usage = outcome.usage.expect("usage");
    assert_eq!(usage.completion_tokens, 8);
    assert!(usage.prompt_tokens > 0);
    // Fields besides the text reach the caller unchanged.
    assert!(
        outcome
            .passthrough
            .iter()
            .any(|p| p.response.contains_key("system_fingerprint")),
        "{outcome:?}"
    );
}

#[tokio::test]
#[ignore = "needs real model servers: ORCHESTRATOR_REAL_LLM=1 bash scripts/test.sh"]
async fn v1_chat_streams_token_by_token_with_usage() {
    let Some(server) = Server::start(Kind::LlamaServer).await else {
        return;
    };
    let worker = openai(&server);
    let call = support::call(chat("Tell me a long story about a cat.", greedy(16), true), "");
    let outcome = support::run(&worker, call).await.expect("the call succeeds");
    assert!(outcome.tokens.len() > 1, "{outcome:?}");
    assert!(outcome.tokens.len() <= 16, "{outcome:?}");
    assert_eq!(outcome.finish, FinishReason::Length);
    let usage = outcome.usage.expect("stream_options.include_usage is honoured");
    assert_eq!(usage.completion_tokens, 16);
    assert!(usage.prompt_tokens > 0);
}

#[tokio::test]
#[ignore = "needs real model servers: ORCHESTRATOR_REAL_LLM=1 bash scripts/test.sh"]
async fn v1_completions_stream_and_whole_answer_agree() {
    let Some(server) = Server::start(Kind::LlamaServer).await else {
        return;
    };
    let worker = openai(&server);
    // Each call on its own unused slot (`id_slot` passes through to llama-server), so both
    // evaluate the prompt from scratch: see greedy_decoding_on_fresh_slots_is_deterministic.
    let on_slot = |slot: usize, stream: bool| {
        let mut request = text("s", COUNTING, greedy(12), stream);
        request
            .extra
            .insert("id_slot".into(), tokio_prompt_orchestrator::raw(&slot.into()));
        support::call(request, COUNTING)
    };
    let streamed = support::run(&worker, on_slot(0, true))
        .await
        .expect("the call succeeds");
    let whole = support::run(&worker, on_slot(1, false))
        .await
        .expect("the call succeeds");
    assert!(streamed.tokens.len() > 1);
    assert_eq!(streamed.text(), whole.text());
    assert_eq!(streamed.finish, FinishReason::Length);
    assert_eq!(whole.finish, FinishReason::Length);
    assert_eq!(streamed.usage, whole.usage);
}
