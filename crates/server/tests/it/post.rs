//! Post-processors declared in the config, through the gateway: stop sequences, redaction on a
//! stream, a character cap, the JSON check of JSON-mode requests, and a post stage that only one
//! model's branch of a stage graph takes.

use orchestrator_server::Config;
use serde_json::{Value, json};

use crate::support::{Frame, SseReader, chat_body, client, expect_error, serve, streamed_text};

const CONFIG: &str = r#"
    [[backends]]
    kind = "echo"
    name = "echo"
    [[models]]
    name = "echo"
    backends = ["echo"]
    [[models]]
    name = "short"
    backends = ["echo"]
    [[models]]
    name = "raw"
    backends = ["echo"]
    [[post]]
    kind = "redact"
    pattern = '\d{4}-\d{4}'
    replacement = "[card]"
    models = ["echo", "short"]
    [[post]]
    kind = "max_chars"
    max = 12
    models = ["short"]
    [[post]]
    kind = "json"
    [[post]]
    kind = "stop"
    sequences = ["</answer>", "STOP HERE"]
    models = ["echo"]
"#;

async fn gateway() -> String {
    serve(Config::parse(CONFIG, "post.toml").unwrap()).await
}

async fn chat(base: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn redaction_applies_to_streams_across_token_boundaries() {
    let base = gateway().await;
    let mut body = chat_body("echo", "pay with 1234-5678 today");
    body["stream"] = json!(true);
    let frames = SseReader::new(chat(&base, body).await).rest().await;
    let text = streamed_text(&frames);
    assert_eq!(text, "pay with [card] today");
}

#[tokio::test]
async fn a_model_with_a_character_cap_ends_with_length() {
    let base = gateway().await;
    let body: Value = chat(&base, chat_body("short", "one two three four"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "one two thre");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    // Other models are not capped.
    let body: Value = chat(&base, chat_body("echo", "one two three four"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "one two three four");
}

#[tokio::test]
async fn json_mode_output_that_is_not_json_is_a_502() {
    let base = gateway().await;
    let mut body = chat_body("echo", "{\"ok\": true}");
    body["response_format"] = json!({"type": "json_object"});
    assert_eq!(chat(&base, body.clone()).await.status(), 200);

    body["messages"][0]["content"] = json!("not json at all");
    let error = expect_error(chat(&base, body.clone()).await, 502).await;
    assert_eq!(error["code"], "invalid_output");
    assert!(
        error["message"].as_str().unwrap().starts_with(
            "the output was rejected by the `json` post-processor: the model's output is not valid JSON"
        ),
        "{error}"
    );
    // Streamed (by a model whose text is not held back for redaction), the text went out as it
    // came; the end is an error event, not [DONE].
    body["stream"] = json!(true);
    body["model"] = json!("raw");
    let frames = SseReader::new(chat(&base, body).await).rest().await;
    match frames.last() {
        Some(Frame::Event(kind, data)) => {
            assert_eq!(kind, "error");
            assert!(data.contains("invalid_output"), "{data}");
        }
        other => panic!("expected an error event, got {other:?}"),
    }
}

#[tokio::test]
async fn a_stage_graph_branch_applies_its_processors_to_its_models_only() {
    let text = r#"
        [[backends]]
        kind = "echo"
        name = "echo"
        [[models]]
        name = "chat"
        backends = ["echo"]
        [[models]]
        name = "secure"
        backends = ["echo"]
        [[stages]]
        name = "assemble"
        kind = "assemble"
        [[stages]]
        name = "infer"
        kind = "inference"
        inputs = ["assemble"]
        [[stages]]
        name = "redact"
        kind = "post"
        inputs = ["infer"]
        models = ["secure"]
        processors = [{ kind = "redact", pattern = '\d{4}-\d{4}', replacement = "[card]" }]
        [[stages]]
        name = "plain"
        kind = "post"
        inputs = ["infer"]
        models = ["chat"]
        [[stages]]
        name = "out"
        kind = "stream"
        inputs = ["redact", "plain"]
    "#;
    let base = serve(Config::parse(text, "graph.toml").unwrap()).await;
    for (model, expected) in [("secure", "card [card] ok"), ("chat", "card 1234-5678 ok")] {
        let body: Value = chat(&base, chat_body(model, "card 1234-5678 ok"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["choices"][0]["message"]["content"], expected, "{model}");
    }
}

#[tokio::test]
async fn a_configured_stop_sequence_ends_the_output_before_it() {
    let base = gateway().await;
    // The echo backend answers with the prompt, so the prompt is the model's output.
    let body: Value = chat(&base, chat_body("echo", "the answer</answer> and what follows"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "the answer");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");

    // Streamed, a sequence split over two tokens is caught too, and nothing after it goes out.
    let mut request = chat_body("echo", "keep this STOP HERE not this");
    request["stream"] = json!(true);
    let frames = SseReader::new(chat(&base, request).await).rest().await;
    assert_eq!(streamed_text(&frames), "keep this ");
    assert_eq!(frames.last(), Some(&Frame::Data("[DONE]".into())));

    // A model the processor does not name runs on.
    let body: Value = chat(&base, chat_body("raw", "the answer</answer> and what follows"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "the answer</answer> and what follows"
    );
}
