//! A client that goes away cancels its request in the pipeline and the model call: counted by
//! what the worker saw.

use std::num::NonZeroUsize;
use std::time::Duration;

use orchestrator_server::config::Config;
use serde_json::json;
use tokio_prompt_orchestrator::Stage;

use crate::support::{SseReader, TestServer, chat_body, client, eventually};

#[tokio::test]
async fn disconnect_mid_stream_cancels_the_model_call() {
    let server = TestServer::default().await;
    server.worker.release(1);
    let mut body = chat_body("gated", "hi");
    body["stream"] = json!(true);
    let mut reader = SseReader::new(server.chat(body).await);
    reader.next().await.unwrap(); // role
    reader.next().await.unwrap(); // tok0
    assert_eq!(server.worker.started(), 1);
    drop(reader);
    eventually("the model call is abandoned", || server.worker.abandoned() == 1).await;
}

#[tokio::test]
async fn disconnect_during_a_non_streaming_call_cancels_it() {
    let server = TestServer::default().await;
    let url = server.url("/v1/chat/completions");
    let request =
        tokio::spawn(async move { client().post(url).json(&chat_body("gated", "hi")).send().await });
    eventually("the call reaches the model", || server.worker.started() == 1).await;
    // Dropping the in-flight request closes its connection.
    request.abort();
    eventually("the model call is abandoned", || server.worker.abandoned() == 1).await;
}

#[tokio::test]
async fn disconnect_while_queued_never_reaches_the_model() {
    let mut config = Config::default();
    config.pipeline = config
        .pipeline
        .with_shards(NonZeroUsize::MIN)
        .with_concurrency(Stage::Inference, NonZeroUsize::MIN);
    let server = TestServer::start(config).await;
    let url = server.url("/v1/chat/completions");
    // The first request holds the only model slot.
    let first = {
        let url = url.clone();
        tokio::spawn(async move { client().post(url).json(&chat_body("gated", "first")).send().await })
    };
    eventually("the first call reaches the model", || {
        server.worker.started() == 1
    })
    .await;
    // The second waits in the Inference queue, then its client gives up.
    let second = client()
        .post(&url)
        .timeout(Duration::from_millis(300))
        .json(&chat_body("gated", "second"))
        .send()
        .await;
    assert!(second.unwrap_err().is_timeout());
    eventually("the server sees the client go", || {
        server.handle.client_disconnects() == 1
    })
    .await;
    // Let the first finish; the abandoned second must not start a model call afterwards.
    server.worker.release(100);
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    let third = client()
        .post(&url)
        .json(&chat_body("echo", "third"))
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), 200);
    // The third request passed through the same single model slot after the second's turn.
    assert_eq!(
        server.worker.started(),
        2,
        "the cancelled request never reached the model"
    );
}
