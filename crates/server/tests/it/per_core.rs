//! The gateway in `[runtime] mode = "per_core"`: a session's requests, arriving on connections
//! that land on different core threads, keep their order and all run on their shard's core
//! thread; a request without a session runs on a core thread; an idle connection is closed on
//! its core thread as on any other; a pinned thread set larger than
//! the cores allowed is a config error naming the fix. (The whole suite also runs per-core:
//! `ORCHESTRATOR_TEST_RUNTIME=per_core`, which the test command sets for a second run.)

use std::num::NonZeroUsize;
use std::process::Command;
use std::time::Duration;

use orchestrator_server::Config;
use orchestrator_server::config::RuntimeMode;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_prompt_orchestrator::Stage;

use crate::support::{TestServer, chat_body, eventually};

/// Two core threads, two shards, one model call at a time (so requests wait in their shard's
/// queue, in the order they were admitted).
fn per_core_config() -> Config {
    let two = NonZeroUsize::new(2).unwrap();
    let mut config = Config::default();
    config.runtime.mode = RuntimeMode::PerCore;
    config.runtime.threads = Some(two);
    config.pipeline = config
        .pipeline
        .with_shards(two)
        .with_concurrency(Stage::Inference, NonZeroUsize::MIN);
    config
}

/// A client that opens a new connection for every request: the gateway hands each connection
/// to the next core thread, so consecutive requests arrive on different cores.
fn fresh_connections() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_sessions_requests_keep_their_order_and_run_on_one_core_thread() {
    const REQUESTS: usize = 8;
    let server = TestServer::start(per_core_config()).await;
    let client = fresh_connections();
    let url = server.url("/v1/chat/completions");
    let send = |session: &str, model: &str, text: &str| {
        let request = client
            .post(&url)
            .header("x-session-id", session)
            .json(&chat_body(model, text));
        tokio::spawn(async move { request.send().await.unwrap() })
    };
    // The one model call in flight: held until the test lets its tokens go.
    let holder = send("s", "gated", "holder");
    let worker = server.worker.clone();
    eventually("the holder reached the model", || worker.started() == 1).await;

    // Each next request is sent once the previous one is admitted, on a connection of its own.
    let mut waiting = Vec::new();
    for i in 0..REQUESTS {
        waiting.push(send("s", "echo", &format!("request {i}")));
        let handle = server.handle.clone();
        eventually(&format!("request {i} is admitted"), move || {
            handle.pipeline_stats().admitted == i as u64 + 2
        })
        .await;
    }
    server.worker.release(100);
    assert_eq!(holder.await.unwrap().status(), 200);
    for (i, response) in waiting.into_iter().enumerate() {
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["choices"][0]["message"]["content"], format!("request {i}"));
    }

    let calls = server.worker.calls();
    let texts: Vec<&str> = calls.iter().map(|c| c.text.as_str()).collect();
    let expected: Vec<String> = std::iter::once("holder".to_string())
        .chain((0..REQUESTS).map(|i| format!("request {i}")))
        .collect();
    assert_eq!(texts, expected, "the model saw the session's requests in order");
    let thread = &calls[0].thread;
    assert!(thread.starts_with("orchestrator-core-"), "{thread}");
    assert!(calls.iter().all(|c| &c.thread == thread), "{calls:#?}");
}

#[tokio::test]
async fn a_request_without_a_session_runs_on_a_core_thread() {
    let server = TestServer::start(per_core_config()).await;
    let client = fresh_connections();
    for i in 0..4 {
        let response = client
            .post(server.url("/v1/chat/completions"))
            .json(&chat_body("echo", &format!("alone {i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let calls = server.worker.calls();
    assert_eq!(calls.len(), 4);
    for call in &calls {
        assert!(call.thread.starts_with("orchestrator-core-"), "{call:?}");
    }
}

/// `orchestrator validate` on `runtime` followed by one echo model; its exit status and its
/// standard error with the file's name as `FILE`.
#[tokio::test]
async fn an_idle_connection_on_a_core_thread_is_closed_after_the_head_timeout() {
    let mut config = per_core_config();
    config.server.header_read_timeout_ms = 100;
    let server = TestServer::start(config).await;
    // Two connections: one on each core thread.
    for _ in 0..2 {
        let mut stream = TcpStream::connect(server.base.trim_start_matches("http://"))
            .await
            .unwrap();
        let mut read = Vec::new();
        // Bounded only so that a regression fails instead of hanging the suite.
        tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut read))
            .await
            .expect("the idle connection stayed open")
            .unwrap();
        assert!(read.is_empty(), "{}", String::from_utf8_lossy(&read));
    }
}

fn validate(runtime: &str) -> (Option<i32>, String) {
    let file = tempfile::NamedTempFile::new().unwrap();
    let model = "[[backends]]\nkind = \"echo\"\nname = \"echo\"\n[[models]]\nname = \"echo\"\nbackends = [\"echo\"]\n";
    std::fs::write(file.path(), format!("{runtime}\n{model}")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .arg("validate")
        .arg(file.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    (
        output.status.code(),
        stderr.replace(&file.path().display().to_string(), "FILE"),
    )
}

#[test]
fn more_pinned_threads_than_allowed_cores_is_a_config_error() {
    let allowed = core_affinity::get_core_ids().unwrap().len();
    let (status, stderr) =
        validate("[runtime]\nmode = \"per_core\"\nthreads = 4096\npin = true\n\n[pipeline]\nshards = 4096\n");
    assert_eq!(status, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "FILE: 1 problem(s)\n  FILE:3:11: runtime.threads: 4096 threads pinned to cores, but this process may \
             run on {allowed} core(s): use at most {allowed} threads, or pin = false\n"
        )
    );
}

#[test]
fn per_core_settings_that_cannot_work_are_config_errors() {
    let (status, stderr) = validate("[runtime]\npin = true\n");
    assert_eq!(status, Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "runtime.pin: pins the threads of mode = \"per_core\" only; set that mode, or remove pin"
        ),
        "{stderr}"
    );
    let (status, stderr) =
        validate("[runtime]\nmode = \"per_core\"\nthreads = 2\n\n[pipeline]\nshards = 1\n");
    assert_eq!(status, Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "runtime.threads: 2 core threads but pipeline.shards = 1: a core without a shard would send every \
             request to another core; set pipeline.shards to 2 or a multiple of it"
        ),
        "{stderr}"
    );
    let (status, stderr) = validate("[runtime]\nmode = \"per-core\"\n");
    assert_eq!(status, Some(2), "{stderr}");
    assert!(stderr.contains("runtime.mode"), "{stderr}");
}
