//! Hot reload: under concurrent load nothing admitted is lost or duplicated; a stream started
//! before a reload finishes on the old pipeline; an invalid file changes nothing; admin keys;
//! SIGHUP on the binary.

use std::path::Path;
use std::time::Duration;

use orchestrator_server::{Config, Server, ServerHandle};
use serde_json::{Value, json};

use crate::auth::key_var;
use crate::shutdown::spawn_binary;
use crate::support::{Frame, SseReader, chat_body, client, expect_error, serve, streamed_text};

/// A config serving `models`, each from its own echo backend with `delay_ms` per token.
fn config_text(models: &[&str], delay_ms: u64) -> String {
    let mut text = String::new();
    for model in models {
        text.push_str(&format!(
            "[[backends]]\nkind = \"echo\"\nname = \"{model}-backend\"\ntoken_delay_ms = {delay_ms}\n\n\
             [[models]]\nname = \"{model}\"\nbackends = [\"{model}-backend\"]\n\n"
        ));
    }
    text
}

/// A server on port 0 running the config in `file`, reloadable from it.
async fn start(file: &Path, extra: &str) -> (String, ServerHandle) {
    let text = std::fs::read_to_string(file).unwrap() + extra;
    std::fs::write(file, &text).unwrap();
    let mut config = Config::load(file).unwrap();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    let server = Server::bind(config)
        .await
        .unwrap()
        .reload_from(file.to_path_buf());
    let base = format!("http://{}", server.local_addr().unwrap());
    let handle = server.handle();
    tokio::spawn(server.run(std::future::pending()));
    (base, handle)
}

async fn post_reload(base: &str, key: Option<&str>) -> reqwest::Response {
    let mut request = client().post(format!("{base}/admin/reload"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

async fn model_names(base: &str) -> Vec<String> {
    let body: Value = client()
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let data = body["data"].as_array().unwrap();
    data.iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn reloads_under_load_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.toml");
    std::fs::write(&file, config_text(&["echo"], 1)).unwrap();
    let (base, handle) = start(&file, "").await;

    // Eight clients, each sending requests one after another until told to stop.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let base = base.clone();
            let stop = stop_rx.clone();
            tokio::spawn(async move {
                let mut sent = 0u32;
                let mut answered = Vec::new();
                while !*stop.borrow() {
                    let text = format!("client {c} request {sent}");
                    let response = client()
                        .post(format!("{base}/v1/chat/completions"))
                        .json(&chat_body("echo", &text))
                        .send()
                        .await
                        .unwrap();
                    sent += 1;
                    let status = response.status().as_u16();
                    let body: Value = response.json().await.unwrap();
                    answered.push((status, body["choices"][0]["message"]["content"].clone(), text));
                }
                (sent, answered)
            })
        })
        .collect();

    // Reload back and forth between two configs while the clients run.
    for round in 0..6 {
        let models: &[&str] = if round % 2 == 0 {
            &["echo", "extra"]
        } else {
            &["echo"]
        };
        std::fs::write(&file, config_text(models, 1)).unwrap();
        let response = post_reload(&base, None).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["generation"], round + 1);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    stop_tx.send(true).unwrap();

    let mut total = 0;
    for task in clients {
        let (sent, answered) = task.await.unwrap();
        assert_eq!(answered.len(), sent as usize, "one answer per request");
        for (status, content, text) in answered {
            assert_eq!(status, 200, "{text}");
            assert_eq!(content, json!(text), "each answer is its own request's, once");
        }
        total += sent;
    }
    assert!(total > 0);
    assert_eq!(handle.generation(), 6);
    assert_eq!(model_names(&base).await, ["echo"]);
}

#[tokio::test]
async fn a_stream_started_before_a_reload_finishes_on_the_old_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.toml");
    std::fs::write(&file, config_text(&["old"], 20)).unwrap();
    let (base, _handle) = start(&file, "").await;
    let words: Vec<String> = (0..10).map(|i| format!("w{i}")).collect();
    let mut body = chat_body("old", &words.join(" "));
    body["stream"] = json!(true);
    let response = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut reader = SseReader::new(response);
    reader.next().await.unwrap(); // the role chunk: the request was admitted

    std::fs::write(&file, config_text(&["new"], 0)).unwrap();
    assert_eq!(post_reload(&base, None).await.status(), 200);
    // New requests see only the new config...
    let gone = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat_body("old", "hi"))
        .send()
        .await
        .unwrap();
    expect_error(gone, 404).await;
    // ... while the stream admitted before runs to its end.
    let rest = reader.rest().await;
    assert_eq!(rest.last(), Some(&Frame::Data("[DONE]".into())));
    let text = streamed_text(&rest);
    assert_eq!(text, words.join(" "));
}

#[tokio::test]
async fn an_invalid_file_changes_nothing_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.toml");
    std::fs::write(&file, config_text(&["echo"], 0)).unwrap();
    let (base, handle) = start(&file, "").await;
    std::fs::write(
        &file,
        "[[backends]]\nkind = \"echo\"\nname = \"a\"\n\n[[models]]\nname = \"m\"\nbackends = [\"a\", \"vllm-c\"]\n",
    )
    .unwrap();
    let response = post_reload(&base, None).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_config");
    assert_eq!(
        body["problems"],
        json!([{"path": "models[0].backends[1]", "message": "no backend named \"vllm-c\" (known: a)",
                "line": 7, "column": 18}])
    );
    assert_eq!(handle.generation(), 0);
    assert_eq!(model_names(&base).await, ["echo"]);
    let still = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat_body("echo", "still here"))
        .send()
        .await
        .unwrap();
    assert_eq!(still.status(), 200);
}

#[tokio::test]
async fn reloading_needs_an_admin_key_when_keys_are_configured() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.toml");
    std::fs::write(&file, config_text(&["echo"], 0)).unwrap();
    key_var("ORCHESTRATOR_TEST_IT_RELOAD_APP", "sk-app");
    key_var("ORCHESTRATOR_TEST_IT_RELOAD_OPS", "sk-ops");
    let keys = "[[auth.keys]]\nname = \"app\"\nkey_env = \"ORCHESTRATOR_TEST_IT_RELOAD_APP\"\n\n\
                [[auth.keys]]\nname = \"ops\"\nkey_env = \"ORCHESTRATOR_TEST_IT_RELOAD_OPS\"\nadmin = true\n";
    let (base, handle) = start(&file, keys).await;
    expect_error(post_reload(&base, None).await, 401).await;
    let denied = expect_error(post_reload(&base, Some("sk-app")).await, 403).await;
    assert_eq!(denied["code"], "permission_denied");
    assert_eq!(post_reload(&base, Some("sk-ops")).await.status(), 200);
    assert_eq!(handle.generation(), 1);
}

#[tokio::test]
async fn without_a_file_there_is_nothing_to_reload() {
    let base = serve(Config::default()).await;
    let body = expect_error(post_reload(&base, None).await, 409).await;
    assert_eq!(
        body["message"],
        "the server was started without --config: there is no file to reload"
    );
}

#[tokio::test]
async fn sighup_reloads_the_binary() {
    let (child, base, file) = spawn_binary(&config_text(&["before"], 0)).await;
    assert_eq!(model_names(&base).await, ["before"]);
    std::fs::write(file.path(), config_text(&["after"], 0)).unwrap();
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..500 {
        if model_names(&base).await == ["after"] {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("SIGHUP did not reload the config");
}
