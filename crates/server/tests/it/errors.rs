//! Every error status the gateway answers with, and its exact body.

use std::num::NonZeroUsize;

use orchestrator_server::config::Config;
use serde_json::{Value, json};
use tokio_prompt_orchestrator::{Stage, WhenFull};

use crate::support::{TestServer, chat_body, client, eventually, expect_error};

async fn post_raw(server: &TestServer, body: Vec<u8>) -> reqwest::Response {
    client()
        .post(server.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn bad_input_is_400_naming_the_field() {
    let server = TestServer::default().await;
    let cases: [(&[u8], Value); 12] = [
        (
            b"{\"model\": \"echo\", \"messages\": [",
            json!({"message": "The request body is not valid JSON: EOF while parsing a list at line 1 column 31.",
                   "type": "invalid_request_error", "param": null, "code": "invalid_body"}),
        ),
        (
            b"{\"model\": \"echo\", \"messages\": \"hi\"}",
            json!({"message": "messages: must be an array (got \"hi\")",
                   "type": "invalid_request_error", "param": "messages", "code": "invalid_value"}),
        ),
        (
            b"{\"model\": \"echo\", \"messages\": []}",
            json!({"message": "messages: must contain at least one message",
                   "type": "invalid_request_error", "param": "messages", "code": "invalid_value"}),
        ),
        (
            b"{\"model\": \"echo\"}",
            json!({"message": "messages: is required: send at least one message",
                   "type": "invalid_request_error", "param": "messages", "code": "invalid_value"}),
        ),
        (
            b"{\"model\": \"echo\", \"messages\": [{\"role\": \"wizard\", \"content\": \"x\"}]}",
            json!({"message": "messages[0].role: must be one of `system`, `developer`, `user`, `assistant`, `tool` (got `wizard`)",
                   "type": "invalid_request_error", "param": "messages[0].role", "code": "invalid_value"}),
        ),
        (
            b"{\"model\": \"echo\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}, {\"content\": \"y\"}]}",
            json!({"message": "messages[1].role: is required: one of system, developer, user, assistant, tool",
                   "type": "invalid_request_error", "param": "messages[1].role", "code": "invalid_value"}),
        ),
        (
            b"{\"model\": \"echo\", \"messages\": [\"hi\"]}",
            json!({"message": "messages[0]: must be a message object (got \"hi\")",
                   "type": "invalid_request_error", "param": "messages[0]", "code": "invalid_value"}),
        ),
        (
            b"{\"model\": \"\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}",
            json!({"message": "model: must not be empty: name one of the models listed by GET /v1/models",
                   "type": "invalid_request_error", "param": "model", "code": "invalid_value"}),
        ),
        (
            b"{\"model\": \"echo\", \"messages\": [{\"role\": \"user\", \"content\": \"\xc3\x28\"}]}",
            json!({"message": "The request body is not valid UTF-8 (invalid byte at offset 60).",
                   "type": "invalid_request_error", "param": null, "code": "invalid_body"}),
        ),
        (
            b"{\"model\": \"echo\", \"n\": 3, \"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}",
            json!({"message": "n: only n = 1 is supported (got 3); send separate requests for more choices",
                   "type": "invalid_request_error", "param": "n", "code": "invalid_value"}),
        ),
        (
            b"{\"model\": \"echo\", \"max_tokens\": -1, \"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}",
            json!({"message": "max_tokens: must be a whole number from 0 to 4294967295 (got -1)",
                   "type": "invalid_request_error", "param": "max_tokens", "code": "invalid_value"}),
        ),
        (
            b"{\"model\": \"echo\", \"temperature\": 1e308, \"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}",
            json!({"message": "temperature: must be between 0 and 2 (got 1e308)",
                   "type": "invalid_request_error", "param": "temperature", "code": "invalid_value"}),
        ),
    ];
    for (body, expected) in cases {
        let response = post_raw(&server, body.to_vec()).await;
        let error = expect_error(response, 400).await;
        assert_eq!(error, expected, "body: {}", String::from_utf8_lossy(body));
    }
    // Nothing reached the model.
    assert_eq!(server.worker.started(), 0);
}

#[tokio::test]
async fn unknown_model_is_404() {
    let server = TestServer::default().await;
    let error = expect_error(server.chat(chat_body("gpt-9", "hi")).await, 404).await;
    assert_eq!(
        error,
        json!({"message": "The model `gpt-9` does not exist; GET /v1/models lists the models served here.",
               "type": "invalid_request_error", "param": "model", "code": "model_not_found"})
    );
}

#[tokio::test]
async fn oversized_body_is_413() {
    let mut config = Config::default();
    config.server.max_body_bytes = 1000;
    let server = TestServer::start(config).await;
    let big = chat_body("echo", &"x".repeat(2000));
    let error = expect_error(server.chat(big).await, 413).await;
    assert_eq!(error["code"], "body_too_large");
    assert_eq!(
        error["message"],
        "The request body is larger than the limit of 1000 bytes (server.max_body_bytes)."
    );
    // A chunked upload without Content-Length is cut off at the limit too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(vec![b' '; 600]), Ok(vec![b' '; 600])];
    let response = client()
        .post(server.url("/v1/chat/completions"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    expect_error(response, 413).await;
    assert_eq!(server.worker.started(), 0);
}

#[tokio::test]
async fn upstream_failure_is_502_with_its_message() {
    let server = TestServer::default().await;
    let error = expect_error(server.chat(chat_body("fail-before", "hi")).await, 502).await;
    assert_eq!(
        error,
        json!({"message": "Every backend of model `fail-before` failed: upstream answered 503: no capacity",
               "type": "upstream_error", "param": null, "code": "upstream_error"})
    );
}

#[tokio::test]
async fn deadline_is_504() {
    let mut config = Config::default();
    config.pipeline.default_timeout_ms = Some(50);
    let server = TestServer::start(config).await;
    // The gated model never produces a token here, so the deadline passes mid-call.
    let error = expect_error(server.chat(chat_body("gated", "hi")).await, 504).await;
    assert_eq!(error["code"], "deadline_exceeded");
    assert_eq!(error["type"], "timeout_error");
    assert_eq!(
        error["message"],
        "No answer within the request's deadline, pipeline.default_timeout_ms (50 ms); it passed \
         in the inference stage. Raise the setting for longer generations (0 turns it off), or retry."
    );
    // The model call was cancelled, not left running.
    eventually("the worker's call is abandoned", || {
        server.worker.abandoned() == 1
    })
    .await;
}

#[tokio::test]
async fn full_input_queue_is_429_with_retry_after() {
    // One shard, one model call at a time, and room for one request in each queue: the gated
    // model holds everything up, so the input queue fills and sheds.
    let one = NonZeroUsize::MIN;
    let mut config = Config::default();
    config.pipeline = config
        .pipeline
        .with_shards(one)
        .with_queue(Stage::Rag, one, WhenFull::Shed)
        .with_queue(Stage::Assemble, one, WhenFull::Block)
        .with_queue(Stage::Inference, one, WhenFull::Block)
        .with_concurrency(Stage::Rag, one)
        .with_concurrency(Stage::Assemble, one)
        .with_concurrency(Stage::Inference, one);
    let server = std::sync::Arc::new(TestServer::start(config).await);
    let mut pending = Vec::new();
    let mut shed = Vec::new();
    for i in 0..64 {
        let server = server.clone();
        pending.push(tokio::spawn(async move {
            server.chat(chat_body("gated", &format!("r{i}"))).await
        }));
        // Pacing only: whatever the timing, the gated model holds every admitted request, so
        // the only way a request can finish now is by being shed.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let (done, waiting): (Vec<_>, Vec<_>) = pending.into_iter().partition(|t| t.is_finished());
        pending = waiting;
        shed.extend(done);
        if !shed.is_empty() {
            break;
        }
    }
    assert!(!shed.is_empty(), "a request is shed once every queue is full");
    let mut refused = shed.len() as u64;
    for task in shed {
        let response = task.await.unwrap();
        assert_eq!(response.headers()["retry-after"], "1");
        let error = expect_error(response, 429).await;
        assert_eq!(
            error,
            json!({"message": "overloaded: the rag queue is full; retry later",
                   "type": "overloaded_error", "param": null, "code": "overloaded"})
        );
    }
    // Everything admitted still completes; requests still in flight when the first refusal
    // arrived may have been refused too, and nothing else.
    server.worker.release(100 * pending.len());
    let mut completed = 0;
    for task in pending {
        match task.await.unwrap().status().as_u16() {
            200 => completed += 1,
            429 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    let stats = server.handle.pipeline_stats();
    assert_eq!(stats.completed, completed, "every admitted request completed");
    assert_eq!(stats.admitted, completed);
    assert_eq!(stats.shed, refused, "every refusal was counted");
    assert_eq!(stats.in_flight, 0);
}

#[tokio::test]
async fn url_errors_are_json_naming_the_part() {
    let server = TestServer::default().await;
    let response = client()
        .get(server.url("/v1/models/%ff%fe"))
        .send()
        .await
        .unwrap();
    let error = expect_error(response, 400).await;
    assert_eq!(
        error,
        json!({"message": "model: the model name in the URL is not valid UTF-8 once its %-escapes are decoded",
               "type": "invalid_request_error", "param": "model", "code": "invalid_value"})
    );
}

#[tokio::test]
async fn compressed_bodies_are_decoded_and_unknown_codings_are_415() {
    use std::io::Write;

    let server = TestServer::default().await;
    let body = serde_json::to_vec(&chat_body("echo", "packed")).unwrap();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&body).unwrap();
    let zstd = zstd::encode_all(&body[..], 3).unwrap();
    for (coding, packed) in [("gzip", gzip.finish().unwrap()), ("zstd", zstd)] {
        let response = client()
            .post(server.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("content-encoding", coding)
            .body(packed)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{coding}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["choices"][0]["message"]["content"], "packed", "{coding}");
    }
    let response = client()
        .post(server.url("/v1/chat/completions"))
        .header("content-encoding", "br")
        .body(body)
        .send()
        .await
        .unwrap();
    let error = expect_error(response, 415).await;
    assert_eq!(error["code"], "unsupported_encoding");
    assert_eq!(
        error["message"],
        "Content-Encoding \"br\" is not supported; send the body uncompressed, or as gzip, deflate or zstd."
    );
}

#[tokio::test]
async fn an_unreachable_backend_is_named_once_in_plain_words() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let config = Config::parse(
        &format!(
            "[[backends]]\nkind = \"openai\"\nname = \"down\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\n\
             [[models]]\nname = \"m\"\nbackends = [\"down\"]\n\
             retries = {{ max = 2, initial_backoff_ms = 1, max_backoff_ms = 1 }}\n"
        ),
        "errors.toml",
    )
    .unwrap();
    let base = crate::support::serve(config).await;
    let response = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat_body("m", "hi"))
        .send()
        .await
        .unwrap();
    let error = expect_error(response, 502).await;
    assert_eq!(
        error["message"],
        "Every backend of model `m` failed: down: could not connect (connection refused), 3 times"
    );
}
