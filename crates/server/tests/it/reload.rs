//! Hot reload: under concurrent load nothing admitted is lost or duplicated; a stream started
//! before a reload finishes on the old pipeline; an invalid file changes nothing; admin keys;
//! SIGHUP on the binary, with a valid file and with invalid ones.

use std::path::Path;
use std::time::Duration;

use orchestrator_mock::{Behaviour, RunningMock};
use orchestrator_server::{Config, Server, ServerHandle};
use serde_json::{Value, json};
use tokio::process::Child;

use crate::binary::{Binary, next_log, spawn_binary};
use crate::gateway_mock::mock;
use crate::support::{
    Frame, SseReader, chat_body, client, expect_error, serve, streamed_text, toml_in_suite_runtime,
};

/// A config serving `models`, each from its own echo backend with `delay_ms` per token.
fn config_text(models: &[&str], delay_ms: u64) -> String {
    let mut text = String::new();
    for model in models {
        text.push_str(&format!(
            "[[backends]]\nkind = \"echo\"\nname = \"{model}-backend\"\ntoken_delay_ms = {delay_ms}\n\n\
             [[models]]\nname = \"{model}\"\nbackends = [\"{model}-backend\"]\n\n"
        ));
    }
    toml_in_suite_runtime(&text)
}

/// A server on port 0 running the config in `file`, reloadable from it.
async fn start(file: &Path, extra: &str) -> (String, ServerHandle) {
    let text = toml_in_suite_runtime(&(std::fs::read_to_string(file).unwrap() + extra));
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

/// A config serving `models`, all from one OpenAI-compatible backend: the mock at `mock`.
fn mock_config_text(models: &[&str], mock: &RunningMock) -> String {
    let mut text = format!(
        "[[backends]]\nkind = \"openai\"\nname = \"up\"\nbase_url = \"{}\"\nmodel = \"mock\"\n\n",
        mock.url("/v1")
    );
    for model in models {
        text.push_str(&format!(
            "[[models]]\nname = \"{model}\"\nbackends = [\"up\"]\n\n"
        ));
    }
    toml_in_suite_runtime(&text)
}

#[tokio::test]
async fn reloads_under_load_lose_and_duplicate_nothing() {
    let upstream = mock(Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.toml");
    std::fs::write(&file, mock_config_text(&["echo"], &upstream)).unwrap();
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
                    let id = format!("client-{c}-request-{sent}");
                    let response = client()
                        .post(format!("{base}/v1/chat/completions"))
                        .header("x-request-id", &id)
                        .json(&chat_body("echo", "hello"))
                        .send()
                        .await
                        .unwrap();
                    sent += 1;
                    let status = response.status().as_u16();
                    let body: Value = response.json().await.unwrap();
                    answered.push((status, body["id"].clone(), id));
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
        std::fs::write(&file, mock_config_text(models, &upstream)).unwrap();
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
        for (status, response_id, id) in answered {
            assert_eq!(status, 200, "{id}");
            assert_eq!(
                response_id,
                json!(format!("chatcmpl-{id}")),
                "each answer is its own request's"
            );
        }
        total += u64::from(sent);
    }
    assert!(total > 0);
    // Every request reached the model exactly once, whichever pipeline admitted it.
    assert_eq!(upstream.handle().stats().chat_completions, total);
    assert_eq!(handle.generation(), 6);
    assert_eq!(model_names(&base).await, ["echo"]);
    // The six replaced pipelines drain and stop.
    for _ in 0..6_000 {
        if handle.draining_pipelines() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(handle.draining_pipelines(), 0, "replaced pipelines still running");
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
    let keys = "[[auth.keys]]\nname = \"app\"\nsha256 = \"72016003589eb0bb8dbcc1fab3b1e74b81a25f06f79801b0b63fcf30be2e06c3\"\n\n\
                [[auth.keys]]\nname = \"ops\"\nsha256 = \"c391959605db2757d87bf45d5f4c9bda42b68e95dcd157bf4f2473516c2bc9bb\"\nadmin = true\n";
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
    let Binary {
        child,
        base,
        file,
        logs: _logs,
        ..
    } = spawn_binary(&config_text(&["before"], 0)).await;
    assert_eq!(model_names(&base).await, ["before"]);
    std::fs::write(file.path(), config_text(&["after"], 0)).unwrap();
    sighup(&child);
    for _ in 0..500 {
        if model_names(&base).await == ["after"] {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("SIGHUP did not reload the config");
}

fn sighup(child: &Child) {
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sighup_with_an_invalid_file_keeps_the_running_config_and_logs_every_problem() {
    let Binary {
        child,
        base,
        file,
        mut logs,
        ..
    } = spawn_binary(&config_text(&["before"], 0)).await;
    // Served once: by now the binary has set up its SIGHUP handler too (it does so as it starts
    // listening, and logs nothing when done).
    assert_eq!(model_names(&base).await, ["before"]);
    let name = file.path().display().to_string();
    let refused = |log: &Value| {
        log["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Reload refused"))
    };

    // Two mistakes: both are logged, each with its place in the file.
    std::fs::write(
        file.path(),
        "[server]\nmax_body_bytes = 0\n\n[[backends]]\nkind = \"echo\"\nname = \"a\"\n\n\
         [[models]]\nname = \"after\"\nbackends = [\"a\", \"vllm-c\"]\n",
    )
    .unwrap();
    sighup(&child);
    let log = next_log(&mut logs, refused).await;
    assert_eq!(log["level"], "ERROR");
    assert_eq!(
        log["fields"]["message"],
        format!(
            "Reload refused; the running config stays.\n{name}: 2 problem(s)\n\
             \x20 {name}:2:18: server.max_body_bytes: must be at least 1 (the default is 1048576, 1 MiB)\n\
             \x20 {name}:10:18: models[0].backends[1]: no backend named \"vllm-c\" (known: a)"
        )
    );
    assert_eq!(model_names(&base).await, ["before"]);

    // A file that is not TOML at all changes nothing either.
    std::fs::write(file.path(), "[[models]\nname = \"after\"\n").unwrap();
    sighup(&child);
    let log = next_log(&mut logs, refused).await;
    let message = log["fields"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{name}: ")) && message.contains(" problem(s)\n"),
        "{message}"
    );
    assert_eq!(model_names(&base).await, ["before"]);
    let still = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat_body("before", "still here"))
        .send()
        .await
        .unwrap();
    assert_eq!(still.status(), 200);
    let body: Value = still.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "still here");

    // Neither refused reload counted: the next valid one is the first generation.
    std::fs::write(file.path(), config_text(&["after"], 0)).unwrap();
    let response = post_reload(&base, None).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["generation"], 1);
    assert_eq!(model_names(&base).await, ["after"]);
}
