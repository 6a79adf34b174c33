//! Every endpoint answers with the OpenAI shapes and the gateway's own headers.

use serde_json::{Value, json};

use crate::support::{TestServer, chat_body, client};

#[tokio::test]
async fn chat_completion_has_the_openai_shape() {
    let server = TestServer::default().await;
    let response = server.chat(chat_body("echo", "Hello there, world!")).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let request_id = headers["x-request-id"].to_str().unwrap().to_string();
    assert!(!request_id.is_empty());
    let overhead: f64 = headers["x-orchestrator-overhead-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(overhead >= 0.0);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], format!("chatcmpl-{request_id}"));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(body["model"], "echo");
    assert_eq!(
        body["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": "Hello there, world!"},
                "logprobs": null, "finish_reason": "stop"}])
    );
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6})
    );
}

#[tokio::test]
async fn max_tokens_and_stop_shape_the_answer() {
    let server = TestServer::default().await;
    let mut body = chat_body("echo", "one two three four five");
    body["max_tokens"] = json!(2);
    let answer: Value = server.chat(body).await.json().await.unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "one two");
    assert_eq!(answer["choices"][0]["finish_reason"], "length");

    let mut body = chat_body("echo", "one two three four five");
    body["stop"] = json!([" four", "nothing"]);
    let answer: Value = server.chat(body).await.json().await.unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "one two three");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn completions_answer_text() {
    let server = TestServer::default().await;
    let response = client()
        .post(server.url("/v1/completions"))
        .json(&json!({"model": "echo", "prompt": "Once upon a time"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"], "Once upon a time");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], 4);
}

#[tokio::test]
async fn client_request_ids_are_echoed() {
    let server = TestServer::default().await;
    let response = client()
        .post(server.url("/v1/chat/completions"))
        .header("x-request-id", "trace-42")
        .json(&chat_body("echo", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-42");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], "chatcmpl-trace-42");
}

#[tokio::test]
async fn models_are_listed_and_retrievable() {
    let server = TestServer::default().await;
    let list: Value = client()
        .get(server.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, crate::support::MODELS);
    assert_eq!(list["data"][0]["object"], "model");

    let one: Value = client()
        .get(server.url("/v1/models/echo"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["id"], "echo");
    let missing = client().get(server.url("/v1/models/nope")).send().await.unwrap();
    let error = crate::support::expect_error(missing, 404).await;
    assert_eq!(error["code"], "model_not_found");
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let server = TestServer::default().await;
    let health = client().get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = client().get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "ready");

    // One completed request, so the pipeline and HTTP metrics have samples.
    assert_eq!(server.chat(chat_body("echo", "count me")).await.status(), 200);
    let metrics = client().get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text().await.unwrap();
    for name in [
        "orchestrator_requests_total{outcome=\"completed\",kind=\"ok\"}",
        "orchestrator_stage_requests_total{stage=\"inference\",outcome=\"completed\"}",
        "orchestrator_http_requests_total{route=\"/v1/chat/completions\",status=\"200\"}",
        "# TYPE orchestrator_stage_latency_seconds histogram",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let server = TestServer::default().await;
    let response = client().get(server.url("/v2/nothing")).send().await.unwrap();
    let error = crate::support::expect_error(response, 404).await;
    assert_eq!(error["code"], "unknown_url");
    let response = client()
        .get(server.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    let error = crate::support::expect_error(response, 405).await;
    assert_eq!(error["code"], "method_not_allowed");
}
