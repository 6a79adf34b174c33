//! Graceful shutdown: readiness turns 503, new work is refused with 503, in-flight streams
//! finish, and what outlives the grace period ends with an error event. The last test sends a
//! real SIGTERM to the `orchestrator` binary.

use std::process::Stdio;
use std::time::Duration;

use orchestrator_server::api::Readiness;
use orchestrator_server::config::Config;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

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

/// Starts the binary with `config`, returning the child and its address from the JSON log.
pub async fn spawn_binary(config: &str) -> (tokio::process::Child, String, tempfile::NamedTempFile) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, config.as_bytes()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--config",
        ])
        .arg(file.path())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the binary logs its address")
            .unwrap()
            .expect("the binary exited before listening");
        let log: Value = serde_json::from_str(&line).unwrap();
        if let Some(addr) = log["fields"]["addr"].as_str() {
            break addr.to_string();
        }
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, format!("http://{addr}"), file)
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
    let (mut child, base, _file) = spawn_binary(config).await;
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
