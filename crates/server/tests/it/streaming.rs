//! SSE streams: chunk order, `[DONE]`, usage, tokens before the model finishes, and the error
//! event that ends a stream cut after its first token.

use std::time::Duration;

use orchestrator_server::Config;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Frame, SseReader, TestServer, chat_body, client, expect_error, json, serve_here};

fn streaming(model: &str, content: &str) -> Value {
    let mut body = chat_body(model, content);
    body["stream"] = json!(true);
    body
}

/// The `delta.content` of a chat chunk.
fn content(frame: &Frame) -> String {
    json(frame)["choices"][0]["delta"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn chat_stream_frames_come_in_order_and_end_with_done() {
    let server = TestServer::default().await;
    let mut body = streaming("echo", "one two three");
    body["stream_options"] = json!({"include_usage": true});
    let response = server.chat(body).await;
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    let frames = SseReader::new(response).rest().await;
    assert_eq!(frames.len(), 8, "{frames:#?}");

    let first = json(&frames[0]);
    assert_eq!(first["id"], format!("chatcmpl-{request_id}"));
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(
        first["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let tokens: Vec<String> = frames[1..4].iter().map(content).collect();
    assert_eq!(tokens, ["one", " two", " three"]);
    let finish = json(&frames[4]);
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = json(&frames[5]);
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6})
    );
    let Frame::Comment(comment) = &frames[6] else {
        panic!("expected the overhead comment, got {:?}", frames[6]);
    };
    assert!(comment.starts_with("orchestrator-overhead-ms "), "{comment}");
    assert_eq!(frames[7], Frame::Data("[DONE]".into()));
    // Every chunk of one stream shares the id.
    for frame in &frames[..6] {
        assert_eq!(json(frame)["id"], first["id"]);
    }
}

#[tokio::test]
async fn without_include_usage_there_is_no_usage_chunk() {
    let server = TestServer::default().await;
    let frames = SseReader::new(server.chat(streaming("echo", "a b")).await)
        .rest()
        .await;
    assert!(
        frames
            .iter()
            .all(|f| !matches!(f, Frame::Data(d) if d.contains("\"usage\""))),
        "{frames:#?}"
    );
    assert_eq!(frames.last(), Some(&Frame::Data("[DONE]".into())));
}

#[tokio::test]
async fn first_token_arrives_before_the_model_finishes() {
    let server = TestServer::default().await;
    server.worker.release(1);
    let mut reader = SseReader::new(server.chat(streaming("gated", "hi")).await);
    assert!(json(&reader.next().await.unwrap())["choices"][0]["delta"]["role"] == "assistant");
    assert_eq!(content(&reader.next().await.unwrap()), "tok0");
    // The model has produced one token of its hundred and is waiting for the gate.
    assert_eq!(
        server
            .worker
            .counters
            .finished
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    server.worker.release(99);
    let rest = reader.rest().await;
    let tokens: Vec<String> = rest[..99].iter().map(content).collect();
    assert_eq!(tokens[0], " tok1");
    assert_eq!(tokens[98], " tok99");
    assert_eq!(rest.last(), Some(&Frame::Data("[DONE]".into())));
}

#[tokio::test]
async fn a_stream_cut_after_its_first_token_ends_with_an_error_event() {
    let server = TestServer::default().await;
    let frames = SseReader::new(server.chat(streaming("fail-after-2", "hi")).await)
        .rest()
        .await;
    assert_eq!(frames.len(), 4, "{frames:#?}");
    assert_eq!(content(&frames[1]), "one");
    assert_eq!(content(&frames[2]), " two");
    let Frame::Event(name, data) = &frames[3] else {
        panic!("expected an error event, got {:?}", frames[3]);
    };
    assert_eq!(name, "error");
    let body: Value = serde_json::from_str(data).unwrap();
    assert_eq!(
        body,
        json!({"error": {"message": "upstream connection reset after 2 tokens",
                         "type": "upstream_error", "param": null, "code": "upstream_error"}})
    );
    assert!(!frames.contains(&Frame::Data("[DONE]".into())));
}

#[tokio::test]
async fn a_stream_that_fails_before_any_token_gets_its_status() {
    let server = TestServer::default().await;
    let error = expect_error(server.chat(streaming("fail-before", "hi")).await, 502).await;
    assert_eq!(error["code"], "upstream_error");
}

#[tokio::test]
async fn completion_streams_carry_text_chunks() {
    let server = TestServer::default().await;
    let response = client()
        .post(server.url("/v1/completions"))
        .json(&json!({"model": "echo", "prompt": "Once upon", "stream": true}))
        .send()
        .await
        .unwrap();
    let frames = SseReader::new(response).rest().await;
    let texts: Vec<&str> = frames[..3]
        .iter()
        .map(|f| match f {
            Frame::Data(d) => d.as_str(),
            other => panic!("{other:?}"),
        })
        .collect();
    let chunks: Vec<Value> = texts.iter().map(|t| serde_json::from_str(t).unwrap()).collect();
    assert_eq!(chunks[0]["object"], "text_completion");
    assert_eq!(chunks[0]["choices"][0]["text"], "Once");
    assert_eq!(chunks[1]["choices"][0]["text"], " upon");
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");
    assert_eq!(frames.last(), Some(&Frame::Data("[DONE]".into())));
}

/// A model silent for longer than the keep-alive interval: the stream carries a comment for
/// every 15 s without an event, so idle proxies keep it open. Time is paused (the gateway runs
/// on the test's runtime), and the client reads raw HTTP, as it would wait out any timeout.
#[tokio::test(start_paused = true)]
async fn a_silent_stream_carries_a_keep_alive_comment_every_15_s() {
    let toml = "[pipeline]\ndefault_timeout_ms = 0\n[[backends]]\nkind = \"echo\"\nname = \"slow\"\ntoken_delay_ms = 40000\n\
                [[models]]\nname = \"slow\"\nbackends = [\"slow\"]\n";
    let base = serve_here(Config::parse(toml, "keep-alive.toml").unwrap()).await;
    let body = streaming("slow", "one two").to_string();
    let mut stream = TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut read = String::new();
    tokio::time::timeout(Duration::from_secs(24 * 3600), stream.read_to_string(&mut read))
        .await
        .expect("the stream ended")
        .unwrap();

    // The tokens come 40 s apart: comments 15 s and 30 s after the first, none before it (the
    // stream starts with its first token).
    let first = read.find(r#""content":"one""#).expect(&read);
    let second = read.find(r#""content":" two""#).expect(&read);
    assert_eq!(read[first..second].matches(":\n\n").count(), 2, "{read}");
    assert!(!read[..first].contains(":\n\n"), "{read}");
    assert!(read[second..].contains("data: [DONE]\n\n"), "{read}");
}
