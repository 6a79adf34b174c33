//! `kind = "llamacpp"` through the gateway against the mock llama-server. Chat requests go to
//! its `/v1/chat/completions`, where the server applies the model's own chat template, with the
//! session's `id_slot` and `cache_prompt`; completions, and chat requests that a configured
//! `prompt` template renders, go to the native `/completion` as that text. Either way a session
//! keeps its KV-cache slot, and a caller that goes away ends the upstream call.

use std::time::Duration;

use orchestrator_mock::{Behaviour, RunningMock};
use orchestrator_server::config::Config;
use serde_json::{Value, json};

use crate::gateway_mock::mock;
use crate::support::{Frame, SseReader, client, json, serve, streamed_text};

/// A gateway serving model `m` from one llama-server (`mock`, four slots), with `assemble` (TOML
/// put before the backend) as its `[assemble]` section.
async fn gateway(mock: &RunningMock, assemble: &str) -> String {
    let text = format!(
        "{assemble}\n[[backends]]\nkind = \"llamacpp\"\nname = \"llama\"\nbase_url = \"{}\"\nslots = 4\n\n\
         [[models]]\nname = \"m\"\nbackends = [\"llama\"]\n",
        mock.base_url()
    );
    serve(Config::parse(&text, "llamacpp.toml").unwrap()).await
}

const CONVERSATION: &str = r#"[{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Name a colour."}]"#;

async fn post(base: &str, path: &str, session: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{base}{path}"))
        .header("x-session-id", session)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn chat(base: &str, session: &str, stream: bool) -> reqwest::Response {
    let messages: Value = serde_json::from_str(CONVERSATION).unwrap();
    let body = json!({"model": "m", "messages": messages, "max_tokens": 5, "stream": stream});
    post(base, "/v1/chat/completions", session, body).await
}

#[tokio::test]
async fn chat_goes_to_the_models_own_template_with_the_sessions_slot_and_cache() {
    let upstream = mock(Behaviour::default()).await;
    let base = gateway(&upstream, "").await;

    let answer: Value = chat(&base, "alice", false).await.json().await.unwrap();
    let sent = upstream.last_request().unwrap();
    assert_eq!(
        sent.path, "/v1/chat/completions",
        "llama-server applies the model's chat template there"
    );
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "tok0 tok1 tok2 tok3 tok4"
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "length");
    // The upstream's counts: the mock counts the messages' words.
    assert_eq!(answer["usage"]["prompt_tokens"], 5);
    assert_eq!(answer["usage"]["completion_tokens"], 5);
    let sent = sent.json();
    assert_eq!(
        sent["messages"],
        serde_json::from_str::<Value>(CONVERSATION).unwrap()
    );
    assert_eq!(sent["cache_prompt"], true);
    assert_eq!(sent["max_tokens"], 5);
    assert_eq!(sent["stream"], false);
    assert!(sent.get("prompt").is_none(), "{sent}");
    let alice_slot = sent["id_slot"].as_i64().expect("an id_slot");

    let frames = SseReader::new(chat(&base, "alice", true).await).rest().await;
    assert_eq!(streamed_text(&frames), "tok0 tok1 tok2 tok3 tok4");
    assert_eq!(frames.last(), Some(&Frame::Data("[DONE]".into())));
    let finish: Vec<Value> = frames
        .iter()
        .filter(|f| matches!(f, Frame::Data(d) if d != "[DONE]"))
        .map(|f| json(f)["choices"][0]["finish_reason"].clone())
        .filter(|r| !r.is_null())
        .collect();
    assert_eq!(finish, ["length"]);
    let sent = upstream.last_request().unwrap().json();
    assert_eq!(
        (sent["stream"].clone(), sent["id_slot"].as_i64()),
        (json!(true), Some(alice_slot))
    );

    for _ in 0..3 {
        chat(&base, "alice", false).await;
    }
    let slots = upstream.id_slots_seen();
    assert_eq!(slots.get(&alice_slot), Some(&5), "alice kept one slot: {slots:?}");
    // Other sessions spread over the other slots.
    for n in 0..20 {
        chat(&base, &format!("s{n}"), false).await;
    }
    assert!(upstream.id_slots_seen().len() > 1);
    let stats = upstream.stats();
    assert_eq!((stats.chat_completions, stats.llama_completions), (25, 0));
}

#[tokio::test]
async fn a_configured_prompt_template_wins_and_goes_to_the_native_completion() {
    let upstream = mock(Behaviour::default()).await;
    let template = r#"
        [assemble]
        prompt = """{% if system %}<|im_start|>system
        {{ system }}<|im_end|>
        {% endif %}{% for m in messages %}<|im_start|>{{ m.role }}
        {{ m.content }}<|im_end|>
        {% endfor %}<|im_start|>assistant
        """
    "#;
    // TOML keeps the indentation inside the string; the template has none.
    let template = template.replace("\n        ", "\n");
    let base = gateway(&upstream, &template).await;

    let answer: Value = chat(&base, "bob", false).await.json().await.unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "tok0 tok1 tok2 tok3 tok4"
    );
    let sent = upstream.last_request().unwrap();
    assert_eq!(sent.path, "/completion");
    let sent = sent.json();
    assert_eq!(
        sent["prompt"],
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    assert_eq!(
        (sent["cache_prompt"].clone(), sent["n_predict"].clone()),
        (json!(true), json!(5))
    );
    let bob_slot = sent["id_slot"].as_i64().expect("an id_slot");
    chat(&base, "bob", true).await.bytes().await.unwrap();
    assert_eq!(upstream.id_slots_seen().get(&bob_slot), Some(&2));
    let stats = upstream.stats();
    assert_eq!((stats.chat_completions, stats.llama_completions), (0, 2));
}

#[tokio::test]
async fn completions_keep_the_native_endpoint_and_the_sessions_slot() {
    let upstream = mock(Behaviour::default()).await;
    let base = gateway(&upstream, "").await;
    let ask = |session: &'static str, stream: bool| {
        let body = json!({"model": "m", "prompt": "Once upon a time", "max_tokens": 5, "stream": stream});
        post(&base, "/v1/completions", session, body)
    };
    let answer: Value = ask("alice", false).await.json().await.unwrap();
    assert_eq!(answer["choices"][0]["text"], "tok0 tok1 tok2 tok3 tok4");
    assert_eq!(answer["choices"][0]["finish_reason"], "length");
    assert_eq!(answer["usage"]["completion_tokens"], 5);
    let sent = upstream.last_request().unwrap();
    assert_eq!(sent.path, "/completion");
    let sent = sent.json();
    assert_eq!(sent["prompt"], "Once upon a time", "the caller's text as it is");
    assert_eq!(sent["cache_prompt"], true);
    assert_eq!(sent["n_predict"], 5);
    let alice_slot = sent["id_slot"].as_i64().unwrap();

    let frames = SseReader::new(ask("alice", true).await).rest().await;
    let text: String = frames
        .iter()
        .filter(|f| matches!(f, Frame::Data(d) if d != "[DONE]"))
        .filter_map(|f| json(f)["choices"][0]["text"].as_str().map(String::from))
        .collect();
    assert_eq!(text, "tok0 tok1 tok2 tok3 tok4");
    assert_eq!(frames.last(), Some(&Frame::Data("[DONE]".into())));
    for _ in 0..3 {
        ask("alice", false).await;
    }
    let slots = upstream.id_slots_seen();
    assert_eq!(
        slots.get(&alice_slot),
        Some(&5),
        "every alice request used one slot: {slots:?}"
    );
}

#[tokio::test]
async fn a_chat_caller_that_goes_away_ends_the_upstream_stream() {
    // Two tokens a second: the whole answer would take eight seconds.
    let upstream = mock(Behaviour {
        tokens: 16,
        tokens_per_second: 2.0,
        ..Behaviour::default()
    })
    .await;
    let base = gateway(&upstream, "").await;
    let mut reader = SseReader::new(chat(&base, "carol", true).await);
    let mut text = String::new();
    while text.is_empty() {
        let frame = reader.next().await.expect("a token before the end");
        text = streamed_text(&[frame]);
    }
    assert_eq!(text, "tok0");
    assert_eq!(upstream.last_request().unwrap().path, "/v1/chat/completions");
    drop(reader);
    tokio::time::timeout(
        Duration::from_secs(10),
        upstream.wait_until(|s| s.streams_abandoned == 1),
    )
    .await
    .expect("the upstream sees its stream abandoned");
}

#[tokio::test]
async fn upstream_errors_on_the_chat_path_reach_the_caller_named() {
    let upstream = mock(Behaviour {
        error_rate: 1.0,
        ..Behaviour::default()
    })
    .await;
    let base = gateway(&upstream, "").await;
    let response = chat(&base, "dave", false).await;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("llama"), "{message}");
    let stats = upstream.stats();
    assert!(
        stats.chat_completions > 0 && stats.llama_completions == 0,
        "{stats:?}"
    );
    assert_eq!(upstream.last_request().unwrap().path, "/v1/chat/completions");
}
