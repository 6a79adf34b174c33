//! The dead-letter queue at the gateway: which failures are kept and with what, the admin
//! endpoints, and replay (an entry leaves only when its replay succeeds).

use orchestrator_server::Config;
use orchestrator_server::dlq::DlqStore;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::support::{SseReader, TestServer, chat_body, client, expect_error};

/// A gateway keeping `record` in a fresh dead-letter file, with a deadline of 2 s.
async fn server(record: &str, extra: &str) -> (TestServer, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.redb");
    let text = format!(
        r#"
        [pipeline]
        default_timeout_ms = 2000
        [dlq]
        path = {path:?}
        record = {record}
        {extra}
        [[backends]]
        kind = "echo"
        name = "echo"
        [[models]]
        name = "echo"
        backends = ["echo"]
        "#,
        path = path.display().to_string(),
    );
    let config = Config::parse(&text, "dlq.toml").unwrap();
    (TestServer::start(config).await, dir)
}

async fn admin(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client().request(method, server.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn entries(server: &TestServer) -> Vec<Value> {
    let (status, body) = admin(server, reqwest::Method::GET, "/admin/dlq", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["total"].as_u64().unwrap() as usize,
        body["data"].as_array().unwrap().len()
    );
    body["data"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_request_that_fails_after_its_retries_is_kept_whole() {
    let (server, _dir) = server(r#"["failed", "timeout"]"#, "").await;
    let body = json!({
        "model": "fail-before",
        "messages": [{"role": "user", "content": "keep me"}],
        "temperature": 0.5,
    });
    let response = client()
        .post(server.url("/v1/chat/completions"))
        .header("x-session-id", "s-1")
        .header("x-priority", "high")
        .json(&body)
        .send()
        .await
        .unwrap();
    let error = expect_error(response, 502).await;

    let kept = entries(&server).await;
    assert_eq!(kept.len(), 1);
    let entry = &kept[0];
    assert_eq!(entry["id"], 1);
    assert_eq!(entry["request"], body);
    assert_eq!(entry["endpoint"], "/v1/chat/completions");
    assert_eq!(entry["model"], "fail-before");
    assert_eq!(entry["session"], "s-1");
    assert_eq!(entry["priority"], "high");
    assert_eq!(entry["reason"], "failed");
    assert_eq!(entry["stage"], "inference");
    assert_eq!(entry["error_kind"], "worker");
    assert_eq!(entry["error"], error["message"]);
    assert_eq!(
        entry["attempts"],
        json!([{"backend": "fail-before", "error": "upstream answered 503: no capacity"}])
    );
    assert!(entry["recorded_at_ms"].as_u64() >= entry["received_at_ms"].as_u64());

    // One entry by id; an unknown id is a 404 naming it.
    let (status, shown) = admin(&server, reqwest::Method::GET, "/admin/dlq/1", None).await;
    assert_eq!((status, &shown), (200, entry));
    let (status, missing) = admin(&server, reqwest::Method::GET, "/admin/dlq/9", None).await;
    assert_eq!(status, 404);
    assert_eq!(missing["error"]["message"], "no dead-letter entry with id 9");
    let (status, invalid) = admin(&server, reqwest::Method::GET, "/admin/dlq/abc", None).await;
    assert_eq!(status, 400);
    assert_eq!(
        invalid["error"],
        json!({"message": "id: a dead-letter id is a whole number, as GET /admin/dlq lists them",
               "type": "invalid_request_error", "param": "id", "code": "invalid_value"})
    );
}

#[tokio::test]
async fn a_stream_that_breaks_after_its_first_tokens_is_kept() {
    let (server, _dir) = server(r#"["failed"]"#, "").await;
    let mut body = chat_body("fail-after-2", "hi");
    body["stream"] = true.into();
    let response = server.chat(body.clone()).await;
    assert_eq!(response.status(), 200);
    let frames = SseReader::new(response).rest().await;
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, crate::support::Frame::Event(name, _) if name == "error"))
    );
    let kept = entries(&server).await;
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0]["request"], body);
    assert_eq!(kept[0]["reason"], "failed");
}

#[tokio::test]
async fn successes_and_unconfigured_endings_are_not_kept() {
    // Timeouts are not in `record`: a request past its deadline is not kept.
    let (server, _dir) = server(r#"["failed"]"#, "").await;
    assert_eq!(server.chat(chat_body("echo", "fine")).await.status(), 200);
    expect_error(server.chat(chat_body("gated", "never answered")).await, 504).await;
    assert_eq!(entries(&server).await, Vec::<Value>::new());
}

#[tokio::test]
async fn replay_removes_what_succeeds_and_keeps_what_fails_again() {
    let (server, _dir) = server(r#"["failed", "timeout"]"#, "").await;
    // The gated model produces nothing until the test releases tokens: this one times out.
    let response = server.chat(chat_body("gated", "later")).await;
    let timeout = expect_error(response, 504).await;
    assert_eq!(timeout["code"], "deadline_exceeded");
    expect_error(server.chat(chat_body("fail-before", "again")).await, 502).await;
    let kept = entries(&server).await;
    assert_eq!(kept.len(), 2);
    assert_eq!(
        (&kept[0]["reason"], &kept[0]["stage"]),
        (&json!("timeout"), &json!("inference"))
    );

    // Now the model answers: the timed-out request succeeds on replay and leaves the queue;
    // the failing one stays, with its failed replay counted.
    server.worker.release(100);
    let (status, report) = admin(
        &server,
        reqwest::Method::POST,
        "/admin/dlq/replay",
        Some(json!({"all": true})),
    )
    .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["replayed"][0]["id"], 1);
    let answer = &report["replayed"][0]["response"];
    assert_eq!(answer["object"], "chat.completion");
    assert!(
        answer["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("tok0 tok1")
    );
    assert_eq!(report["failed"][0]["id"], 2);
    assert_eq!(report["remaining"], 1);

    let kept = entries(&server).await;
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0]["id"], 2);
    assert_eq!(kept[0]["replays"], 1);
    assert!(
        kept[0]["last_replay_error"]
            .as_str()
            .unwrap()
            .contains("no capacity")
    );

    // By id: an id that is not there is reported missing.
    let (_, report) = admin(
        &server,
        reqwest::Method::POST,
        "/admin/dlq/replay",
        Some(json!({"ids": [2, 7]})),
    )
    .await;
    assert_eq!(report["missing"], json!([7]));
    assert_eq!(report["failed"][0]["id"], 2);

    let (status, purged) = admin(&server, reqwest::Method::DELETE, "/admin/dlq", None).await;
    assert_eq!((status, purged), (200, json!({"purged": 1})));
    assert_eq!(entries(&server).await, Vec::<Value>::new());
}

#[tokio::test]
async fn shed_requests_are_kept_when_the_config_says_so() {
    let extra = "[admission]\nmax_in_flight = 1\nmax_queued = 0";
    let (server, _dir) = server(r#"["shed"]"#, extra).await;
    let holder = {
        let server_url = server.url("/v1/chat/completions");
        tokio::spawn(async move {
            client()
                .post(server_url)
                .json(&chat_body("gated", "holds the place"))
                .send()
                .await
                .unwrap()
        })
    };
    let worker = server.worker.clone();
    crate::support::eventually("the first call reached the model", || worker.started() == 1).await;
    let shed = server.chat(chat_body("echo", "no room")).await;
    expect_error(shed, 429).await;
    server.worker.release(100);
    assert_eq!(holder.await.unwrap().status(), 200);
    // A refusal's entry is written in the background, so its 429 never waits for the disk.
    let mut kept = entries(&server).await;
    for _ in 0..500 {
        if !kept.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        kept = entries(&server).await;
    }
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0]["reason"], "shed");
    assert_eq!(kept[0]["error_kind"], "overloaded");
    assert_eq!(kept[0]["request"], chat_body("echo", "no room"));
}

#[tokio::test]
async fn bad_replay_bodies_and_a_queue_that_is_off_get_clear_errors() {
    let (server, _dir) = server(r#"["failed"]"#, "").await;
    for body in [json!({}), json!({"all": true, "ids": [1]}), json!({"ids": []})] {
        let (status, error) = admin(&server, reqwest::Method::POST, "/admin/dlq/replay", Some(body)).await;
        assert_eq!(status, 400);
        assert_eq!(
            error["error"]["message"],
            "ids: send exactly one of `ids` (a non-empty list), `all: true` or `since`"
        );
    }
    let (status, error) = admin(&server, reqwest::Method::GET, "/admin/dlq?since=soon", None).await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["param"], "since");

    let off = TestServer::default().await;
    let (status, error) = admin(&off, reqwest::Method::GET, "/admin/dlq", None).await;
    assert_eq!(status, 404);
    assert_eq!(
        error["error"]["message"],
        "the dead-letter queue is off; add a [dlq] section with a `path` to the config"
    );
}

#[tokio::test]
async fn the_cli_replays_through_the_configs_backends() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dlq.redb");
    let config = dir.path().join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            "[dlq]\npath = {:?}\n[[backends]]\nkind = \"echo\"\nname = \"echo\"\n[[models]]\nname = \"echo\"\nbackends = [\"echo\"]\n",
            file.display().to_string()
        ),
    )
    .unwrap();
    {
        let store = DlqStore::open(&file).unwrap();
        let mut letter: orchestrator_server::dlq::DeadLetter = serde_json::from_value(json!({
            "id": 0, "recorded_at_ms": 1, "received_at_ms": 1, "endpoint": "/v1/chat/completions",
            "model": "echo", "key": null, "priority": "normal", "session": null,
            "request": chat_body("echo", "replayed"), "reason": "failed", "stage": "inference",
            "error": "the model backend failed", "error_kind": "worker", "attempts": [],
            "replays": 0, "last_replay_error": null
        }))
        .unwrap();
        store.append(letter.clone()).await.unwrap();
        letter.model = "gone".into();
        letter.request = chat_body("gone", "no such model");
        store.append(letter).await.unwrap();
    }
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["dlq", "--config"])
        .arg(&config)
        .args(["replay", "--all"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("replayed 1: removed from the queue"), "{stdout}");
    assert!(stdout.contains("failed 2: "), "{stdout}");
    assert!(stdout.ends_with("1 replayed, 1 failed, 0 missing\n"), "{stdout}");
    let store = DlqStore::open(&file).unwrap();
    let left: Vec<u64> = store
        .list(Default::default())
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(left, [2]);
}

#[tokio::test]
async fn the_endpoints_need_an_admin_key_when_auth_is_on() {
    let extra = "[[auth.keys]]\nname = \"ops\"\nsha256 = \"c391959605db2757d87bf45d5f4c9bda42b68e95dcd157bf4f2473516c2bc9bb\"\nadmin = true\n\
                 [[auth.keys]]\nname = \"app\"\nsha256 = \"72016003589eb0bb8dbcc1fab3b1e74b81a25f06f79801b0b63fcf30be2e06c3\"";
    let (server, _dir) = server(r#"["failed"]"#, extra).await;
    let get = |key: Option<&'static str>| {
        let mut request = client().get(server.url("/admin/dlq"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    expect_error(get(None).await.unwrap(), 401).await;
    expect_error(get(Some("sk-app")).await.unwrap(), 403).await;
    assert_eq!(get(Some("sk-ops")).await.unwrap().status(), 200);
}
