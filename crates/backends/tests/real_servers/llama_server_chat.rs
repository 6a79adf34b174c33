//! `LlamaCppWorker`'s chat route against llama-server: chat requests reach its
//! `/v1/chat/completions`, which formats them with the model's own chat template (SmolLM2's, from
//! its GGUF), so the model really answers, where the same question sent as plain text to
//! `/completion` gets an empty answer (one end-of-turn token). The session keeps its slot and
//! reuses its slot's cache, as on `/completion`.

use tokio_prompt_orchestrator::{ChatMessage, InferenceCall, InferenceRequest, ModelWorker, Role, SessionId};

use crate::llama_server::{
    LONG, greedy, llamacpp, processing, slot_of, slots, tasks, two_sessions_on_different_slots, until_idle,
};
use crate::support::{self, Kind, SLOTS, Server};

/// A question an instruction-tuned model answers when asked in its chat format.
const QUESTION: &str = "What is the capital of France?";

/// A chat call for `session`, with the prompt the Assemble stage renders for it without a
/// `prompt` template: a lone user message's text as it is (what `/completion` would be sent).
fn chat(session: &str, messages: Vec<ChatMessage>, max_tokens: u32, stream: bool) -> InferenceCall {
    let prompt = match messages.as_slice() {
        [only] => only.content.clone(),
        _ => String::new(),
    };
    let request = InferenceRequest::chat(SessionId::new(session), messages)
        .with_params(greedy(max_tokens))
        .with_stream(stream);
    support::call(request, &prompt)
}

/// The question's own tokens, as the server counts them.
async fn question_tokens(server: &Server) -> u32 {
    let url = format!("{}/tokenize", server.url);
    let answer: serde_json::Value = server
        .http
        .post(url)
        .json(&serde_json::json!({"content": QUESTION}))
        .send()
        .await
        .expect("POST /tokenize")
        .json()
        .await
        .expect("/tokenize answers JSON");
    let tokens = answer["tokens"].as_array().expect("a token list");
    u32::try_from(tokens.len()).expect("a short question")
}

#[tokio::test]
#[ignore = "needs real model servers: ORCHESTRATOR_REAL_LLM=1 bash scripts/test.sh"]
async fn chat_is_answered_in_the_models_own_template() {
    let Some(server) = Server::start(Kind::LlamaServer).await else {
        return;
    };
    let worker = llamacpp(&server);
    let question = question_tokens(&server).await;
    for stream in [false, true] {
        let call = chat("s", vec![ChatMessage::user(QUESTION)], 16, stream);
        let outcome = support::run(&worker, call).await.expect("the call succeeds");
        assert!(
            !outcome.text().trim().is_empty(),
            "SmolLM2 answers (stream: {stream}): {outcome:?}"
        );
        let usage = outcome.usage.expect("llama-server reports its counts");
        assert!(
            usage.completion_tokens > 1,
            "more than an end-of-turn token: {outcome:?}"
        );
        // The template's framing (role markers, SmolLM2's default system turn) is part of what
        // the model read: more than the question's own tokens.
        assert!(
            usage.prompt_tokens > question + 4,
            "the prompt has the chat framing: {usage:?} for a question of {question} tokens"
        );
        if stream {
            assert!(outcome.tokens.len() > 1, "tokens arrive one by one: {outcome:?}");
        }
    }
}

#[tokio::test]
#[ignore = "needs real model servers: ORCHESTRATOR_REAL_LLM=1 bash scripts/test.sh"]
async fn a_chat_session_keeps_its_slot_and_reuses_its_cache() {
    let Some(server) = Server::start(Kind::LlamaServer).await else {
        return;
    };
    let worker = llamacpp(&server);
    let (a, b) = two_sessions_on_different_slots();
    let (slot_a, slot_b) = (slot_of(&a), slot_of(&b));
    let changed = |x: &[i64], y: &[i64]| (0..SLOTS).filter(|&i| x[i] != y[i]).collect::<Vec<_>>();

    let before = tasks(&server).await;
    let first_turn = vec![ChatMessage::user(QUESTION)];
    let first = support::run(&worker, chat(&a, first_turn.clone(), 8, false))
        .await
        .expect("a's first call");
    let first_usage = first.usage.expect("counts");
    let after_a = tasks(&server).await;
    assert_eq!(
        changed(&before, &after_a),
        [slot_a],
        "only a's slot ran: {before:?} -> {after_a:?}"
    );

    let hello = vec![ChatMessage::user("Hello!")];
    support::run(&worker, chat(&b, hello, 8, false))
        .await
        .expect("b's call");
    let after_b = tasks(&server).await;
    assert_eq!(
        changed(&after_a, &after_b),
        [slot_b],
        "only b's slot ran: {after_a:?} -> {after_b:?}"
    );

    // a's conversation goes on, streamed: back on a's slot, whose cache holds the first turn's
    // whole prompt (the template renders it again as the start of this one). The counts are
    // read while the slot is still generating (llama-server resets them when a task ends).
    let mut second_turn = first_turn;
    second_turn.push(ChatMessage::new(Role::Assistant, first.text()));
    second_turn.push(ChatMessage::user("And of Germany?"));
    let mut stream = worker
        .infer_stream(chat(&a, second_turn, LONG, true))
        .await
        .expect("a's second call starts");
    support::next_token(&mut stream).await;
    let slot = slots(&server).await[slot_a].clone();
    assert!(processing(&slot), "a's second call runs on a's slot: {slot}");
    let reused = slot["n_prompt_tokens_cache"].as_u64().expect("a count");
    let evaluated = slot["n_prompt_tokens_processed"].as_u64().expect("a count");
    assert!(
        reused >= u64::from(first_usage.prompt_tokens),
        "the first turn's prompt came from a's cache: {slot}"
    );
    assert!(evaluated > 0, "the new turn was evaluated: {slot}");
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
