//! API keys: missing and wrong keys get 401, right ones pass, health checks stay open, and
//! `/metrics` can be protected.

use orchestrator_server::config::{ApiKeyConfig, Config};
use serde_json::json;

use crate::support::{TestServer, chat_body, client, expect_error};

const KEY: &str = "sk-test-123";

/// The SHA-256 of `KEY`, as `[[auth.keys]] sha256` takes it. (The tests give keys this way rather
/// than by `key_env`: setting a variable while other tests' threads read the environment is not
/// safe in a process running many tests at once. `key_env` has its unit tests in the crate.)
const KEY_SHA256: &str = "e0dbaa0c6455768bf812d8345ec96a2677d1e3bf17dbb0020b115c80092811e6";

async fn server(protect_metrics: bool) -> TestServer {
    let mut config = Config::default();
    config.auth.keys = vec![ApiKeyConfig {
        name: Some("tests".into()),
        sha256: Some(KEY_SHA256.into()),
        ..Default::default()
    }];
    config.auth.protect_metrics = protect_metrics;
    TestServer::start(config).await
}

#[tokio::test]
async fn keys_are_required_on_the_api() {
    let server = server(false).await;
    let url = server.url("/v1/chat/completions");

    let missing = client()
        .post(&url)
        .json(&chat_body("echo", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    let error = expect_error(missing, 401).await;
    assert_eq!(
        error,
        json!({"message": "Missing API key: send it as `Authorization: Bearer KEY` or `x-api-key: KEY` (the SDKs do this with api_key).",
               "type": "authentication_error", "param": null, "code": "invalid_api_key"})
    );

    let wrong = client()
        .post(&url)
        .bearer_auth("sk-test-12")
        .json(&chat_body("echo", "hi"))
        .send()
        .await
        .unwrap();
    let error = expect_error(wrong, 401).await;
    assert_eq!(error["message"], "Incorrect API key provided.");
    assert!(!error.to_string().contains("sk-test"), "the key is never echoed");

    let right = client()
        .post(&url)
        .bearer_auth(KEY)
        .json(&chat_body("echo", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    for path in ["/v1/models", "/v1/models/echo"] {
        let models = client().get(server.url(path)).send().await.unwrap();
        assert_eq!(models.status(), 401, "{path}");
    }
    // The key is checked before the body is read: a bad body without a key is a 401, not a 400.
    for path in ["/v1/chat/completions", "/v1/completions"] {
        let unread = client()
            .post(server.url(path))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        expect_error(unread, 401).await;
    }
    assert_eq!(server.worker.started(), 1);
}

#[tokio::test]
async fn health_checks_stay_open_and_metrics_can_be_protected() {
    let open = server(false).await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            client().get(open.url(path)).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }
    let protected = server(true).await;
    assert_eq!(
        client()
            .get(protected.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(protected.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = client().get(protected.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 401);
    let metrics = client()
        .get(protected.url("/metrics"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(
        !metrics.text().await.unwrap().contains(KEY),
        "keys never appear in metrics"
    );
}
