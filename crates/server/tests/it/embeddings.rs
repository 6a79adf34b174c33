//! `POST /v1/embeddings`: the official `openai` Python SDK with 100 inputs (in order, as base64
//! and as numbers), and what it does not show: long lists split into upstream batches, inputs in
//! flight embedded once for every request that has them, the cache, the models' kinds, and bad
//! input named.

use orchestrator_mock::{Behaviour, RunningMock};
use orchestrator_server::config::{BackendConfig, Config, ModelConfig, ModelKind};
use orchestrator_server::gateway::cache::CacheConfig;
use serde_json::{Value, json};

use crate::gateway_mock::{mock, openai_backend};
use crate::sdk::python_checks;
use crate::support::{client, serve};

/// `echo` (chat), `vectors` (echo's vectors) and `upstream` (`mock`, in batches of 8; kept in
/// the cache when `cached`).
async fn gateway(upstream: &RunningMock, cached: bool) -> String {
    let embedding = |name: &str, backend: &str| ModelConfig {
        kind: ModelKind::Embedding,
        ..ModelConfig::single(name, backend)
    };
    let mut config = Config::default();
    config
        .backends
        .push(BackendConfig::Openai(openai_backend("up", upstream)));
    config.models.push(embedding("vectors", "echo"));
    config.models.push(ModelConfig {
        batch_size: Some(8),
        cache: cached.then(CacheConfig::default),
        ..embedding("upstream", "up")
    });
    serve(config).await
}

#[tokio::test]
async fn the_official_openai_sdk_embeds_a_hundred_inputs_in_order() {
    let upstream = mock(Behaviour::default()).await;
    let base = gateway(&upstream, false).await;
    let url = format!("{base}/v1");
    python_checks(
        "embeddings_e2e.py",
        &[("OPENAI_BASE_URL", &url)],
        "all embeddings SDK checks passed",
    )
    .await;
}

async fn embed(base: &str, body: Value) -> (u16, Value) {
    let response = client()
        .post(format!("{base}/v1/embeddings"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn vectors(list: &Value) -> Vec<Value> {
    let data = list["data"].as_array().unwrap();
    data.iter().map(|item| item["embedding"].clone()).collect()
}

#[tokio::test]
async fn a_long_list_goes_upstream_in_batches_and_comes_back_in_order() {
    let upstream = mock(Behaviour::default()).await;
    let base = gateway(&upstream, false).await;
    let texts: Vec<String> = (0..100).map(|i| format!("text {i}")).collect();
    let (status, list) = embed(&base, json!({"model": "upstream", "input": texts})).await;
    assert_eq!(status, 200, "{list}");
    let stats = upstream.handle().stats();
    // 100 inputs in batches of 8.
    assert_eq!((stats.embeddings, stats.embedding_inputs), (13, 100));
    let indexes: Vec<u64> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, (0..100).collect::<Vec<_>>());
    // Each vector is its input's: asked one by one, the same vectors come back.
    for i in [0, 7, 8, 63, 99] {
        let (_, one) = embed(&base, json!({"model": "upstream", "input": texts[i]})).await;
        assert_eq!(vectors(&one)[0], vectors(&list)[i], "input {i}");
    }
}

#[tokio::test]
async fn inputs_in_flight_are_embedded_once_for_every_request_that_has_them() {
    let upstream = mock(Behaviour {
        hold_embeddings: true,
        ..Behaviour::default()
    })
    .await;
    let base = gateway(&upstream, false).await;
    let first = tokio::spawn({
        let base = base.clone();
        async move { embed(&base, json!({"model": "upstream", "input": ["a", "b", "c", "d"]})).await }
    });
    upstream.handle().wait_until(|s| s.embedding_inputs == 4).await;
    let second = tokio::spawn({
        let base = base.clone();
        async move { embed(&base, json!({"model": "upstream", "input": ["c", "d", "e"]})).await }
    });
    // Only `e` is sent: `c` and `d` are on their way already.
    upstream.handle().wait_until(|s| s.embeddings == 2).await;
    upstream.handle().update(|b| b.hold_embeddings = false);
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!((first.0, second.0), (200, 200), "{first:?} {second:?}");
    let stats = upstream.handle().stats();
    assert_eq!((stats.embeddings, stats.embedding_inputs), (2, 5));
    assert_eq!(vectors(&second.1)[..2], vectors(&first.1)[2..]);
    // With nothing in flight, the same inputs go upstream again.
    let (status, _) = embed(&base, json!({"model": "upstream", "input": ["c"]})).await;
    assert_eq!(status, 200);
    assert_eq!(upstream.handle().stats().embedding_inputs, 6);
}

#[tokio::test]
async fn a_repeated_request_is_answered_from_the_cache_byte_for_byte() {
    let upstream = mock(Behaviour::default()).await;
    let base = gateway(&upstream, true).await;
    let ask = || async {
        let response = client()
            .post(format!("{base}/v1/embeddings"))
            .json(&json!({"model": "upstream", "input": ["kept", "words"]}))
            .send()
            .await
            .unwrap();
        let cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
        (cache, response.bytes().await.unwrap())
    };
    let (first_cache, first) = ask().await;
    let (second_cache, second) = ask().await;
    assert_eq!((first_cache.as_str(), second_cache.as_str()), ("miss", "hit"));
    assert_eq!(first, second);
    assert_eq!(upstream.handle().stats().embeddings, 1);
}

#[tokio::test]
async fn every_field_missing_or_mistyped_is_a_400_naming_it_and_kinds_are_kept_apart() {
    let upstream = mock(Behaviour::default()).await;
    let base = gateway(&upstream, false).await;
    let cases = [
        (json!({"input": "x"}), "model"),
        (json!({"model": "vectors"}), "input"),
        (json!({"model": "vectors", "input": ""}), "input"),
        (json!({"model": "vectors", "input": []}), "input"),
        (json!({"model": "vectors", "input": 5}), "input"),
        (json!({"model": "vectors", "input": ["a", ""]}), "input[1]"),
        (json!({"model": "vectors", "input": ["a", 5]}), "input[1]"),
        (json!({"model": "vectors", "input": [[1], [-1]]}), "input[1][0]"),
        (json!({"model": "vectors", "input": [[1], []]}), "input[1]"),
        (
            json!({"model": "vectors", "input": "x", "encoding_format": "hex"}),
            "encoding_format",
        ),
        (
            json!({"model": "vectors", "input": "x", "dimensions": 0}),
            "dimensions",
        ),
        (
            json!({"model": "vectors", "input": "x", "dimensions": "4"}),
            "dimensions",
        ),
        (json!({"model": "echo", "input": "x"}), "model"),
    ];
    for (body, field) in cases {
        let (status, error) = embed(&base, body.clone()).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
        assert_eq!(error["error"]["param"], field, "{body}: {error}");
    }
    let response = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "vectors", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/embeddings"),
        "{error}"
    );
}
