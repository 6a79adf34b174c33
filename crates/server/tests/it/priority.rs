//! Priority at the gateway: `X-Priority` and per-key defaults decide who waits for a place in
//! the pipeline, a full queue sheds its lowest-priority waiter with a 429 at once, and a bad
//! header is a 400 naming it.

use orchestrator_server::Config;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::support::{TestServer, chat_body, client, eventually, expect_error};

/// One place in the pipeline and two in the queue.
const CONFIG: &str = r#"
    [admission]
    max_in_flight = 1
    max_queued = 2
    starvation_bound = 100
    [[auth.keys]]
    name = "batch"
    sha256 = "38fcc73a9dc613f145bed24eb4123f92105c78567a6e563d43dbcb1f29927864" # sk-batch
    priority = "low"
    [[auth.keys]]
    name = "app"
    sha256 = "72016003589eb0bb8dbcc1fab3b1e74b81a25f06f79801b0b63fcf30be2e06c3" # sk-app
    # The test server answers with its own workers; these only make the file valid.
    [[backends]]
    kind = "echo"
    name = "echo"
    [[models]]
    name = "gated"
    backends = ["echo"]
"#;

async fn server() -> TestServer {
    TestServer::start(Config::parse(CONFIG, "priority.toml").unwrap()).await
}

/// Sends a chat request in the background, as session `name`, with `key` and `X-Priority`.
fn send(server: &TestServer, name: &str, key: &str, priority: Option<&str>) -> JoinHandle<reqwest::Response> {
    let mut request = client()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("x-session-id", name)
        .json(&chat_body("gated", "hi"));
    if let Some(p) = priority {
        request = request.header("x-priority", p);
    }
    tokio::spawn(async move { request.send().await.unwrap() })
}

/// Waits until `n` requests wait for a place.
async fn queued(server: &TestServer, n: usize) {
    let handle = server.handle.clone();
    eventually(&format!("{n} requests are queued"), move || {
        handle.admission_load().1 == n
    })
    .await;
}

#[tokio::test]
async fn high_priority_goes_first_and_displaces_the_lowest_waiter_when_the_queue_is_full() {
    let server = server().await;
    // The one place: a model call that waits for the test to release its tokens.
    let holder = send(&server, "holder", "sk-app", None);
    let worker = server.worker.clone();
    eventually("the first call reached the model", || worker.started() == 1).await;

    // The batch key's requests are low priority by default; they fill the queue.
    let low_1 = send(&server, "low-1", "sk-batch", None);
    queued(&server, 1).await;
    let low_2 = send(&server, "low-2", "sk-batch", None);
    queued(&server, 2).await;

    // A high-priority request takes the newest low one's place; that one hears 429 at once.
    let high = send(&server, "high", "sk-batch", Some("high"));
    let shed = low_2.await.unwrap();
    assert_eq!(shed.headers()["retry-after"], "1");
    let error = expect_error(shed, 429).await;
    assert_eq!(error["code"], "overloaded");
    assert_eq!(server.handle.admission_load(), (1, 2));

    // Equal or lower priority than everything queued: refused itself.
    let refused = send(&server, "refused", "sk-app", Some("low")).await.unwrap();
    expect_error(refused, 429).await;

    // The place frees: the high request is served before the low one that waited longer.
    server.worker.release(1000);
    for response in [holder, high, low_1] {
        assert_eq!(response.await.unwrap().status(), 200);
    }
    assert_eq!(server.worker.sessions(), ["holder", "high", "low-1"]);
    assert_eq!(server.handle.admission_load(), (0, 0));
}

#[tokio::test]
async fn the_key_default_yields_to_a_normal_request() {
    let server = server().await;
    let holder = send(&server, "holder", "sk-app", None);
    let worker = server.worker.clone();
    eventually("the first call reached the model", || worker.started() == 1).await;
    let low_1 = send(&server, "low-1", "sk-batch", None);
    queued(&server, 1).await;
    let low_2 = send(&server, "low-2", "sk-batch", None);
    queued(&server, 2).await;
    // The app key's default is normal, above the batch key's low.
    let normal = send(&server, "normal", "sk-app", None);
    expect_error(low_2.await.unwrap(), 429).await;
    server.worker.release(1000);
    for response in [holder, normal, low_1] {
        assert_eq!(response.await.unwrap().status(), 200);
    }
    assert_eq!(server.worker.sessions(), ["holder", "normal", "low-1"]);
}

#[tokio::test]
async fn a_bad_priority_header_is_a_400_naming_it() {
    let server = server().await;
    let response = client()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth("sk-app")
        .header("x-priority", "urgent")
        .json(&json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let error = expect_error(response, 400).await;
    assert_eq!(error["param"], "X-Priority");
    assert_eq!(error["message"], "X-Priority: must be `high`, `normal` or `low`");
    assert_eq!(server.worker.started(), 0);
}
