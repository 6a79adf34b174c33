//! Graceful shutdown: readiness turns 503, new work is refused with 503, in-flight streams
//! finish, and what outlives the grace period ends with an error event. The last test sends a
//! real SIGTERM to the `orchestrator` binary.

use std::time::Duration;

use orchestrator_server::config::Config;
use orchestrator_server::gateway::Readiness;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::binary::{Binary, spawn_binary, spawn_binary_with};
use crate::support::{Frame, SseReader, TestServer, chat_body, client, eventually, expect_error, json};

fn streaming(model: &str, content: &str) -> Value {
    let mut body = chat_body(model, content);
    body["stream"] = json!(true);
    body
}

#[tokio::test]
async fn draining_refuses_new_work_and_finishes_streams() {
    let mut config = Config::default();
    // The listener stays open for the whole test, so its answers during the drain are visible.
    config.server.drain_delay_ms = 600_000;
    let mut server = TestServer::start(config).await;
    server.worker.release(1);
    let mut reader = SseReader::new(server.chat(streaming("gated", "hi")).await);
    reader.next().await.unwrap();
    reader.next().await.unwrap(); // tok0

    server.begin_shutdown();
    eventually("the server drains", || {
        server.handle.readiness() == Readiness::Draining
    })
    .await;
    let ready = client().get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "draining");
    let refused = server.chat(chat_body("echo", "too late")).await;
    assert_eq!(refused.headers()["retry-after"], "1");
    let error = expect_error(refused, 503).await;
    assert_eq!(error["code"], "draining");

    // The stream admitted before the drain runs to its end.
    server.worker.release(99);
    let rest = reader.rest().await;
    assert_eq!(rest.len(), 99 + 3, "99 tokens, finish, overhead comment, [DONE]");
    assert_eq!(rest.last(), Some(&Frame::Data("[DONE]".into())));
}

#[tokio::test]
async fn streams_outliving_the_grace_period_end_with_an_error_event() {
    let mut config = Config::default();
    config.server.shutdown_grace_ms = 200;
    let mut server = TestServer::start(config).await;
    server.worker.release(1);
    let mut reader = SseReader::new(server.chat(streaming("gated", "hi")).await);
    reader.next().await.unwrap();
    reader.next().await.unwrap(); // tok0

    server.begin_shutdown();
    // The model never finishes: at the deadline the request is aborted.
    let Some(Frame::Event(name, data)) = reader.next().await else {
        panic!("expected an error event");
    };
    assert_eq!(name, "error");
    let body: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(body["error"]["code"], "shutdown");
    assert_eq!(reader.next().await, None, "no [DONE] after the error");
    let report = server.task.await.unwrap().unwrap();
    assert_eq!(report.aborted, 1);
    assert_eq!(server.worker.abandoned(), 1);
}

#[tokio::test]
async fn sigterm_drains_the_binary_and_exits_zero() {
    let config = r#"
        [server]
        shutdown_grace_ms = 30000
        [[backends]]
        kind = "echo"
        name = "slow-echo"
        token_delay_ms = 40
        [[models]]
        name = "echo"
        backends = ["slow-echo"]
    "#;
    let Binary {
        mut child,
        base,
        file: _file,
        logs: _logs,
        ..
    } = spawn_binary(config).await;
    let words: Vec<String> = (0..25).map(|i| format!("w{i}")).collect();
    let response = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&streaming("echo", &words.join(" ")))
        .send()
        .await
        .unwrap();
    let mut reader = SseReader::new(response);
    reader.next().await.unwrap(); // role
    assert_eq!(
        json(&reader.next().await.unwrap())["choices"][0]["delta"]["content"],
        "w0"
    );

    let pid = child.id().unwrap().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(status.success());

    let rest = reader.rest().await;
    let text: String = rest
        .iter()
        .filter_map(|f| match f {
            Frame::Data(d) if d != "[DONE]" => json(f)["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from),
            _ => None,
        })
        .collect();
    assert_eq!(format!("w0{text}"), words.join(" "), "the whole answer arrived");
    assert_eq!(rest.last(), Some(&Frame::Data("[DONE]".into())));
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
}

const ECHO_CONFIG: &str = r#"
    [[backends]]
    kind = "echo"
    name = "echo"
    [[models]]
    name = "echo"
    backends = ["echo"]
"#;

/// Sends one chat request per id to `base`, each answered 200.
async fn send_with_ids(base: &str, ids: &[String]) {
    for id in ids {
        let response = client()
            .post(format!("{base}/v1/chat/completions"))
            .header("x-request-id", id)
            .json(&chat_body("echo", "hello"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

/// Stops `binary` with SIGTERM and returns every line it logged.
pub async fn terminate(binary: Binary) -> Vec<Value> {
    let Binary {
        mut child, mut logs, ..
    } = binary;
    let pid = child.id().unwrap().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    // The child has exited, so its stderr ends and the forwarder closes the channel.
    let mut logged = Vec::new();
    while let Some(log) = logs.recv().await {
        logged.push(log);
    }
    logged
}

/// Access-log lines are written in batches; none is lost when the binary exits right after
/// answering, and they keep the requests' order.
#[tokio::test]
async fn every_access_line_is_written_by_exit_in_order() {
    let binary = spawn_binary(ECHO_CONFIG).await;
    let ids: Vec<String> = (0..20).map(|i| format!("access-{i}")).collect();
    send_with_ids(&binary.base, &ids).await;
    let mut logged = Vec::new();
    for log in terminate(binary).await {
        if log["target"] == "orchestrator::access" {
            assert_eq!(log["level"], "INFO", "{log}");
            let fields = log["fields"].as_object().unwrap();
            // (A map without order: the unit tests check the line's bytes.)
            let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
            names.sort_unstable();
            assert_eq!(
                names,
                ["elapsed_ms", "method", "request_id", "route", "status"],
                "{log}"
            );
            assert_eq!(log["fields"]["status"], 200, "{log}");
            assert_eq!(log["fields"]["route"], "/v1/chat/completions", "{log}");
            let elapsed: f64 = log["fields"]["elapsed_ms"].as_str().unwrap().parse().unwrap();
            assert!(elapsed >= 0.0, "{log}");
            logged.push(log["fields"]["request_id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(logged, ids);
}

/// `RUST_LOG` turns the access log off like any other target.
#[tokio::test]
async fn rust_log_can_turn_the_access_log_off() {
    let env = [("RUST_LOG", "info,orchestrator::access=off")];
    let binary = spawn_binary_with(ECHO_CONFIG, &["--listen", "127.0.0.1:0"], &env).await;
    let ids = vec!["quiet-1".to_string(), "quiet-2".to_string()];
    send_with_ids(&binary.base, &ids).await;
    let logged = terminate(binary).await;
    assert!(!logged.is_empty(), "other lines are still written");
    let access: Vec<&Value> = logged
        .iter()
        .filter(|l| l["target"] == "orchestrator::access")
        .collect();
    assert!(access.is_empty(), "{access:?}");
}
