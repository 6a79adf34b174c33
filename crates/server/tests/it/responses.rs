//! The Responses API: the official `openai` Python SDK against two nodes of one cluster
//! (tests/python/responses_e2e.py), and what the SDK does not exercise: a node alone keeping its
//! responses in a file across a kill, one key not seeing another's, the bound, bad input in
//! OpenAI's error shape, a gateway that keeps none, and the response cache.

use orchestrator_mock::Behaviour;
use serde_json::{Value, json};

use crate::binary::{Binary, spawn_binary};
use crate::cluster::{ECHO, Nats, node};
use crate::gateway_mock::mock;
use crate::sdk::python_checks;
use crate::support::{client, sha256_hex};

#[tokio::test]
async fn the_official_openai_sdk_speaks_responses_across_two_nodes() {
    let nats = Nats::start().await;
    let upstream = mock(Behaviour::default()).await;
    let config = format!(
        "[responses]\n\n{ECHO}\n[[backends]]\nkind = \"openai\"\nname = \"up\"\nbase_url = \"{}\"\n\n\
         [[models]]\nname = \"tools\"\nbackends = [\"up\"]\n",
        upstream.url("/v1")
    );
    let one = node(&nats, "one", &config).await;
    let other = node(&nats, "other", &config).await;
    let (one_url, other_url) = (format!("{}/v1", one.base), format!("{}/v1", other.base));
    python_checks(
        "responses_e2e.py",
        &[
            ("OPENAI_BASE_URL", &one_url),
            ("OPENAI_BASE_URL_OTHER", &other_url),
        ],
        "all Responses SDK checks passed",
    )
    .await;
}

/// `POST /v1/responses` with `body` (and `key` as the bearer, when set).
async fn create(base: &str, key: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = client().post(format!("{base}/v1/responses")).json(&body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn fetch(base: &str, key: Option<&str>, id: &str) -> (u16, Value) {
    let mut request = client().get(format!("{base}/v1/responses/{id}"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn output_text(response: &Value) -> String {
    response["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["type"] == "message")
        .flat_map(|item| item["content"].as_array().unwrap())
        .filter_map(|part| part["text"].as_str())
        .collect()
}

/// A node alone with `[responses]` in `dir`, and keys `a` and `b`.
async fn keeping_node(dir: &tempfile::TempDir, max_entries: u64) -> Binary {
    let config = format!(
        "[responses]\npath = {:?}\nmax_entries = {max_entries}\n\n\
         [[auth.keys]]\nname = \"a\"\nsha256 = \"{}\"\n\n[[auth.keys]]\nname = \"b\"\nsha256 = \"{}\"\n\n{ECHO}",
        dir.path().join("responses.redb").display().to_string(),
        sha256_hex("sk-a"),
        sha256_hex("sk-b"),
    );
    spawn_binary(&config).await
}

#[tokio::test]
async fn a_node_alone_keeps_responses_in_its_file_across_a_kill_and_apart_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = keeping_node(&dir, 100).await;
    let (status, first) = create(
        &gateway.base,
        Some("sk-a"),
        json!({"model": "echo", "input": "remember this"}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let id = first["id"].as_str().unwrap().to_owned();
    // Another key neither reads nor continues it: it is not there for that key.
    let (status, error) = fetch(&gateway.base, Some("sk-b"), &id).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{error}"
    );
    let (status, error) = create(
        &gateway.base,
        Some("sk-b"),
        json!({"model": "echo", "input": "x", "previous_response_id": id}),
    )
    .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["code"], "previous_response_not_found", "{error}");
    assert_eq!(error["error"]["param"], "previous_response_id", "{error}");

    // Killed and started again on the same file, the response is still there to continue.
    drop(gateway);
    let gateway = keeping_node(&dir, 100).await;
    let (status, fetched) = fetch(&gateway.base, Some("sk-a"), &id).await;
    assert_eq!(status, 200, "{fetched}");
    assert_eq!(fetched, first);
    let (status, next) = create(
        &gateway.base,
        Some("sk-a"),
        json!({"model": "echo", "input": "and this", "previous_response_id": id}),
    )
    .await;
    assert_eq!(status, 200, "{next}");
    let text = output_text(&next);
    assert!(
        text.contains("remember this") && text.contains("and this"),
        "{text}"
    );

    // Deleted: gone for good.
    let response = client()
        .delete(format!("{}/v1/responses/{id}", gateway.base))
        .bearer_auth("sk-a")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"id": id, "object": "response", "deleted": true})
    );
    assert_eq!(fetch(&gateway.base, Some("sk-a"), &id).await.0, 404);
}

#[tokio::test]
async fn the_oldest_stored_response_goes_first_when_the_bound_is_reached() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = keeping_node(&dir, 2).await;
    let mut ids = Vec::new();
    for turn in ["one", "two", "three"] {
        let (status, response) = create(
            &gateway.base,
            Some("sk-a"),
            json!({"model": "echo", "input": turn}),
        )
        .await;
        assert_eq!(status, 200, "{response}");
        ids.push(response["id"].as_str().unwrap().to_owned());
    }
    let found: Vec<u16> =
        futures_util::future::join_all(ids.iter().map(|id| fetch(&gateway.base, Some("sk-a"), id)))
            .await
            .into_iter()
            .map(|(status, _)| status)
            .collect();
    assert_eq!(found, [404, 200, 200]);
}

#[tokio::test]
async fn every_required_field_missing_or_mistyped_is_a_400_in_openais_shape_naming_it() {
    let gateway = spawn_binary(ECHO).await;
    let cases = [
        (json!({"input": "x"}), "model"),
        (json!({"model": "echo"}), "input"),
        (json!({"model": "echo", "input": []}), "input"),
        (json!({"model": "echo", "input": 5}), "input"),
        (
            json!({"model": "echo", "input": [{"content": "x"}]}),
            "input[0].type",
        ),
        (
            json!({"model": "echo", "input": [{"role": "robot", "content": "x"}]}),
            "input[0].role",
        ),
        (
            json!({"model": "echo", "input": [{"role": "user"}]}),
            "input[0].content",
        ),
        (
            json!({"model": "echo", "input": [{"role": "user", "content": [{"type": "input_text"}]}]}),
            "input[0].content[0].text",
        ),
        (
            json!({"model": "echo", "input": [{"type": "function_call_output", "output": "x"}]}),
            "input[0].call_id",
        ),
        (
            json!({"model": "echo", "input": "x", "max_output_tokens": "5"}),
            "max_output_tokens",
        ),
        (
            json!({"model": "echo", "input": "x", "temperature": 3}),
            "temperature",
        ),
        (
            json!({"model": "echo", "input": "x", "tools": [{"type": "web_search"}]}),
            "tools[0].type",
        ),
        (
            json!({"model": "echo", "input": "x", "tools": [{"type": "function"}]}),
            "tools[0].name",
        ),
        (
            json!({"model": "echo", "input": "x", "tool_choice": "sometimes"}),
            "tool_choice",
        ),
        (
            json!({"model": "echo", "input": "x", "previous_response_id": "a b"}),
            "previous_response_id",
        ),
        (json!({"model": "echo", "input": "x", "store": "yes"}), "store"),
    ];
    for (body, field) in cases {
        let (status, error) = create(&gateway.base, None, body.clone()).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
        assert_eq!(error["error"]["param"], field, "{body}: {error}");
    }
}

#[tokio::test]
async fn a_gateway_that_keeps_no_responses_says_so() {
    let gateway = spawn_binary(ECHO).await;
    let (status, response) = create(&gateway.base, None, json!({"model": "echo", "input": "x"})).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["store"], false);
    let (status, error) = create(
        &gateway.base,
        None,
        json!({"model": "echo", "input": "x", "previous_response_id": response["id"]}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("[responses]"),
        "{error}"
    );
    let (status, error) = fetch(&gateway.base, None, response["id"].as_str().unwrap()).await;
    assert_eq!(status, 404, "{error}");
}

#[tokio::test]
async fn a_deterministic_response_is_answered_from_the_cache_as_a_new_response() {
    let config = format!("{ECHO}cache = {{}}\n");
    let gateway = spawn_binary(&config).await;
    let ask = || async {
        let response = client()
            .post(format!("{}/v1/responses", gateway.base))
            .json(&json!({"model": "echo", "input": "kept words", "temperature": 0}))
            .send()
            .await
            .unwrap();
        let cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
        (cache, response.json::<Value>().await.unwrap())
    };
    let (first_cache, first) = ask().await;
    let (second_cache, second) = ask().await;
    assert_eq!((first_cache.as_str(), second_cache.as_str()), ("miss", "hit"));
    assert_eq!(output_text(&first), output_text(&second));
    assert_ne!(first["id"], second["id"]);
}
