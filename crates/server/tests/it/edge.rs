//! The edge's limits over raw TCP: a head too large is refused with 431 and a JSON body; a
//! connection that sends no head in time (a partial one, or an idle keep-alive one) is closed,
//! but never while it is answering; a body that stops coming is answered 408; connections over
//! `max_connections` get 503.
//!
//! Time is paused: the runtime jumps to the next timer whenever every task waits, so a timeout
//! fires as soon as nothing else can happen, and a missing one fails at the test's own bound.
//! (So the gateway runs on the test's runtime, whatever the suite's runtime mode.)

use std::time::Duration;

use orchestrator_server::Config;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::serve_here;

/// A gateway with an echo model and the given `[server]` lines.
async fn gateway(server: &str) -> String {
    let toml = format!(
        "[server]\n{server}\n[[backends]]\nkind = \"echo\"\nname = \"echo\"\n\
         [[models]]\nname = \"echo\"\nbackends = [\"echo\"]\n"
    );
    let base = serve_here(Config::parse(&toml, "edge.toml").unwrap()).await;
    base.trim_start_matches("http://").to_string()
}

/// Everything the server sends until it closes the connection; fails if it never does.
async fn until_closed(stream: &mut TcpStream) -> String {
    let mut read = Vec::new();
    // Far beyond every timeout below: reached only when the server keeps the connection open.
    tokio::time::timeout(Duration::from_secs(24 * 3600), stream.read_to_end(&mut read))
        .await
        .expect("the server kept the connection open")
        .expect("read");
    String::from_utf8(read).unwrap()
}

/// Status and JSON error of a whole HTTP/1.1 response.
fn status_and_error(response: &str) -> (u16, Value) {
    let status = response[9..12].parse().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a whole response");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "errors are JSON: {head}"
    );
    let body: Value = serde_json::from_str(body).expect("a JSON body");
    (status, body["error"].clone())
}

const CHAT: &str = r#"{"model":"echo","messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test(start_paused = true)]
async fn a_head_over_max_header_bytes_gets_431_in_json() {
    let addr = gateway("max_header_bytes = 1024").await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let padding = "x".repeat(2000);
    let head = format!("GET /v1/models HTTP/1.1\r\nhost: edge\r\nx-padding: {padding}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();

    let (status, error) = status_and_error(&until_closed(&mut stream).await);
    assert_eq!(status, 431);
    assert_eq!(error["code"], "headers_too_large");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("server.max_header_bytes (1024 bytes)"),
        "{message}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_line_hyper_cannot_parse_gets_400_in_json() {
    let addr = gateway("").await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(b"GET /v1/models HTTP/1.1\r\nbad header\r\n\r\n")
        .await
        .unwrap();

    let (status, error) = status_and_error(&until_closed(&mut stream).await);
    assert_eq!(status, 400);
    assert_eq!(error["code"], "invalid_http");
}

#[tokio::test(start_paused = true)]
async fn a_partial_head_is_closed_after_header_read_timeout() {
    let addr = gateway("header_read_timeout_ms = 5000").await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(b"GET /v1/models HTTP/1.1\r\nhost: ed")
        .await
        .unwrap();

    assert_eq!(until_closed(&mut stream).await, "");
}

#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_is_closed_after_header_read_timeout() {
    let addr = gateway("header_read_timeout_ms = 5000").await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: edge\r\n\r\n")
        .await
        .unwrap();

    let answered = until_closed(&mut stream).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    assert!(
        !answered.contains("connection: close"),
        "the response kept the connection alive"
    );
}

#[tokio::test(start_paused = true)]
async fn the_head_timeout_spares_a_long_answer_and_counts_from_its_end() {
    let toml = "[server]\nheader_read_timeout_ms = 1000\n[[backends]]\nkind = \"echo\"\n\
                name = \"echo\"\ntoken_delay_ms = 500\n[[models]]\nname = \"echo\"\n\
                backends = [\"echo\"]\n";
    let base = serve_here(Config::parse(toml, "edge.toml").unwrap()).await;
    let mut stream = TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    // Five tokens at 0.5 s each: a streamed answer longer than the head timeout.
    let body =
        r#"{"model":"echo","stream":true,"messages":[{"role":"user","content":"one two three four five"}]}"#;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: edge\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    let began = tokio::time::Instant::now();
    stream.write_all(head.as_bytes()).await.unwrap();

    let mut answered = Vec::new();
    let mut buf = [0; 4096];
    while !String::from_utf8_lossy(&answered).contains("data: [DONE]") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed mid-answer: {}", String::from_utf8_lossy(&answered));
        answered.extend_from_slice(&buf[..n]);
    }
    let answer_ended = tokio::time::Instant::now();
    assert!(
        answer_ended - began >= Duration::from_secs(2),
        "the answer was not slow"
    );

    // Idle from the answer's end: closed, and not before the timeout has passed since then.
    assert_eq!(until_closed(&mut stream).await, "");
    assert!(answer_ended.elapsed() >= Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stops_coming_gets_408_naming_the_settings() {
    let addr = gateway("body_read_timeout_ms = 2000\nbody_min_bytes_per_sec = 100").await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: edge\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        CHAT.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&CHAT.as_bytes()[..10]).await.unwrap();

    let mut response = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(24 * 3600), stream.read(&mut response))
        .await
        .expect("the stalled body was never answered")
        .unwrap();
    let (status, error) = status_and_error(std::str::from_utf8(&response[..n]).unwrap());
    assert_eq!(status, 408);
    assert_eq!(error["code"], "body_timeout");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("10 of {} bytes", CHAT.len())),
        "{message}"
    );
    assert!(
        message.contains("server.body_read_timeout_ms (2000 ms)"),
        "{message}"
    );
    assert!(
        message.contains("server.body_min_bytes_per_sec (100)"),
        "{message}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_body_that_keeps_coming_is_not_cut_by_its_first_deadline() {
    let addr = gateway("body_read_timeout_ms = 2000\nbody_min_bytes_per_sec = 10").await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: edge\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        CHAT.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // Ten bytes every 0.9 s: above the minimum rate, though the whole body takes three times
    // body_read_timeout_ms.
    for piece in CHAT.as_bytes().chunks(10) {
        stream.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(900)).await;
    }

    let answered = until_closed(&mut stream).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
}

#[tokio::test(start_paused = true)]
async fn a_connection_over_max_connections_gets_503_in_json() {
    let addr = gateway("max_connections = 2").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: edge\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0; 512];
        assert!(stream.read(&mut buf).await.unwrap() > 0, "served");
        held.push(stream);
    }

    let mut third = TcpStream::connect(&addr).await.unwrap();
    let refused = until_closed(&mut third).await;
    let (status, error) = status_and_error(&refused);
    assert_eq!(status, 503);
    assert_eq!(error["code"], "too_many_connections");
    assert!(
        refused.to_ascii_lowercase().contains("retry-after: 1"),
        "{refused}"
    );

    // A place freed is a place taken: the next connection is served (and, sending nothing, is
    // closed by the head timeout instead of refused).
    drop(held.pop());
    loop {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        match until_closed(&mut stream).await.as_str() {
            "" => break,
            // The server has not seen the close yet.
            refused => assert!(refused.starts_with("HTTP/1.1 503"), "{refused}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
