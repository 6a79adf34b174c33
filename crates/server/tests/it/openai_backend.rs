//! The gateway in front of an OpenAI-compatible upstream, over real HTTP: here the upstream is a
//! second gateway serving the test worker, so both sides speak the real wire format.

use orchestrator_backends::OpenAiConfig;
use orchestrator_backends::Router;
use orchestrator_server::Server;
use orchestrator_server::config::{BackendConfig, Config, ModelConfig};
use serde_json::json;
use tokio_prompt_orchestrator::ModelWorker;

use crate::support::{Frame, SseReader, TestServer, chat_body, client, eventually, expect_error, json};

/// A gateway whose models `up-echo`, `up-fail-after-2`, `up-gated` and `up-missing` call
/// `upstream`'s `echo`, `fail-after-2`, `gated` and (unknown there) `missing`.
async fn front(upstream: &TestServer) -> String {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    let mut registry = Router::new();
    for model in ["echo", "fail-after-2", "gated", "missing"] {
        let backend = OpenAiConfig {
            name: format!("upstream-{model}"),
            base_url: upstream.url("/v1"),
            api_key_env: None,
            model: Some(model.into()),
            headers: Default::default(),
            timeouts: Default::default(),
            routing: Default::default(),
            health_check: None,
        };
        config.backends.push(BackendConfig::Openai(backend.clone()));
        config
            .models
            .push(ModelConfig::single(&format!("up-{model}"), &backend.name));
        let worker: std::sync::Arc<dyn ModelWorker> =
            std::sync::Arc::new(orchestrator_backends::OpenAiWorker::new(&backend).unwrap());
        registry.insert_worker(&format!("up-{model}"), worker);
    }
    let config = crate::support::in_suite_runtime(config);
    let server = Server::bind_with_models(config, registry).await.unwrap();
    let base = format!("http://{}", server.local_addr().unwrap());
    tokio::spawn(server.run(std::future::pending()));
    base
}

#[tokio::test]
async fn answers_come_through_the_upstream() {
    let upstream = TestServer::default().await;
    let base = front(&upstream).await;
    let url = format!("{base}/v1/chat/completions");
    let answer: serde_json::Value = client()
        .post(&url)
        .json(&chat_body("up-echo", "through two gateways"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "through two gateways");
    assert_eq!(answer["model"], "up-echo");
    assert_eq!(answer["usage"]["completion_tokens"], 3);

    let mut body = chat_body("up-echo", "one two three");
    body["stream"] = json!(true);
    let frames = SseReader::new(client().post(&url).json(&body).send().await.unwrap())
        .rest()
        .await;
    let text: String = frames
        .iter()
        .filter(|f| matches!(f, Frame::Data(d) if d != "[DONE]"))
        .filter_map(|f| {
            json(f)["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(text, "one two three");
    assert_eq!(frames.last(), Some(&Frame::Data("[DONE]".into())));
}

#[tokio::test]
async fn an_upstream_cut_reaches_the_client_as_an_error_event() {
    let upstream = TestServer::default().await;
    let base = front(&upstream).await;
    let mut body = chat_body("up-fail-after-2", "x");
    body["stream"] = json!(true);
    let response = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let frames = SseReader::new(response).rest().await;
    let Some(Frame::Event(name, data)) = frames.last() else {
        panic!("expected an error event last: {frames:#?}");
    };
    assert_eq!(name, "error");
    let body: serde_json::Value = serde_json::from_str(data).unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("upstream-fail-after-2: "), "{message}");
    assert!(
        message.ends_with("upstream connection reset after 2 tokens"),
        "{message}"
    );
}

#[tokio::test]
async fn upstream_refusals_keep_their_meaning() {
    let upstream = TestServer::default().await;
    let base = front(&upstream).await;
    // The upstream does not serve `missing`: its 404 reaches the client as a 404.
    let response = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat_body("up-missing", "x"))
        .send()
        .await
        .unwrap();
    let error = expect_error(response, 404).await;
    assert_eq!(error["code"], "model_not_found");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("The model `missing` does not exist"),
        "{error}"
    );
}

#[tokio::test]
async fn a_client_disconnect_cancels_the_upstream_call() {
    let upstream = TestServer::default().await;
    let base = front(&upstream).await;
    upstream.worker.release(1);
    let mut body = chat_body("up-gated", "x");
    body["stream"] = json!(true);
    let mut reader = SseReader::new(
        client()
            .post(format!("{base}/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap(),
    );
    reader.next().await.unwrap();
    assert_eq!(
        json(&reader.next().await.unwrap())["choices"][0]["delta"]["content"],
        "tok0"
    );
    drop(reader);
    // The front gateway drops its upstream request; the upstream gateway sees its client go and
    // cancels its model call.
    eventually("the upstream model call is abandoned", || {
        upstream.worker.abandoned() == 1
    })
    .await;
}
