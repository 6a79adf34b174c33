//! The live stats feed (`/admin/stats/stream`, `/admin/stats`) and the dashboard page: what the
//! snapshots say while requests are held, queued and shed, and who may read them.

use orchestrator_server::Config;
use serde_json::Value;

use crate::support::{Frame, SseReader, TestServer, chat_body, client, eventually, expect_error, json};

/// Two requests inside the pipeline at once and one waiting; a fourth is shed.
const CONFIG: &str = r#"
    [admission]
    max_in_flight = 2
    max_queued = 1
"#;

/// The test server answers with its own workers; these only make a config valid.
const MODELS: &str = r#"
    [[backends]]
    kind = "echo"
    name = "echo"
    [[models]]
    name = "gated"
    backends = ["echo"]
"#;

/// Reads snapshots until one satisfies `wanted`, within a bound of snapshots (half a second
/// each); returns it.
async fn until(feed: &mut SseReader, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..60 {
        let snapshot = json(&feed.next().await.expect("the feed ended"));
        assert!(
            snapshot.get("history").is_none(),
            "history is sent in the first event only"
        );
        if wanted(&snapshot) {
            return snapshot;
        }
    }
    panic!("no snapshot showed {what}");
}

fn stage<'a>(snapshot: &'a Value, name: &str) -> &'a Value {
    snapshot["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {snapshot}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_shows_requests_held_queued_and_shed_then_completed() {
    let mut server =
        TestServer::start(Config::parse(&format!("{CONFIG}{MODELS}"), "stats.toml").unwrap()).await;
    let response = client()
        .get(server.url("/admin/stats/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["cache-control"], "no-cache");
    let mut feed = SseReader::new(response);

    // The first event carries the history the charts start from.
    let first = json(&feed.next().await.unwrap());
    assert!(!first["history"].as_array().unwrap().is_empty(), "{first}");
    let names: Vec<&str> = first["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["rag", "assemble", "inference", "post", "stream"]);
    let gated = first["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "gated")
        .expect("the gated model");
    assert_eq!(gated["backends"][0]["breaker"], "closed");
    assert_eq!(gated["backends"][0]["healthy"], true);
    assert_eq!(first["dlq"], Value::Null);
    assert_eq!(first["cluster"], Value::Null);

    // Two held in Inference, one waiting at the gate, one shed.
    let mut held = Vec::new();
    for i in 0..3 {
        let body = chat_body("gated", &format!("held {i}"));
        let request = client().post(server.url("/v1/chat/completions")).json(&body);
        held.push(tokio::spawn(request.send()));
        if i < 2 {
            let worker = server.worker.clone();
            eventually("the request reaches the model", move || worker.started() == i + 1).await;
        }
    }
    let handle = server.handle.clone();
    eventually("the third request waits", move || {
        handle.admission_load() == (2, 1)
    })
    .await;
    expect_error(server.chat(chat_body("gated", "shed")).await, 429).await;

    let busy = until(&mut feed, "two in Inference, one queued, one shed", |s| {
        stage(s, "inference")["in_flight"] == 2 && s["admission"]["queued"] == 1 && s["requests"]["shed"] == 1
    })
    .await;
    assert_eq!(busy["requests"]["in_flight"], 2);
    assert_eq!(busy["admission"]["in_flight"], 2);
    let normal = &busy["admission"]["priorities"][1];
    assert_eq!(
        (
            normal["priority"].as_str(),
            normal["queued"].as_u64(),
            normal["shed"].as_u64()
        ),
        (Some("normal"), Some(1), Some(1))
    );
    assert_eq!(gated_backend(&busy)["in_flight"], 2);

    // Let every request finish: the counts say so, with a rate and latencies.
    server.worker.release(1000);
    for request in held {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
    let done = until(&mut feed, "three completed at a rate", |s| {
        s["requests"]["completed"] == 3 && s["requests"]["rate"].as_f64().unwrap() > 0.0
    })
    .await;
    assert_eq!(done["requests"]["in_flight"], 0);
    let inference = stage(&done, "inference");
    assert_eq!(
        (inference["completed"].as_u64(), inference["in_flight"].as_u64()),
        (Some(3), Some(0))
    );
    assert!(inference["work"]["p99_ms"].as_f64().unwrap() > 0.0, "{inference}");
    assert_eq!(done["ttft"]["count"], 3);
    assert!(done["ttft"]["p50_ms"].as_f64().is_some());

    // `/admin/stats` answers the latest snapshot at once.
    let latest: Value = client()
        .get(server.url("/admin/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(latest["requests"]["completed"], 3);

    // Draining ends the feed.
    server.begin_shutdown();
    while let Some(frame) = feed.next().await {
        assert!(matches!(frame, Frame::Data(_)), "{frame:?}");
    }
}

fn gated_backend(snapshot: &Value) -> &Value {
    let models = snapshot["models"].as_array().unwrap();
    &models.iter().find(|m| m["name"] == "gated").unwrap()["backends"][0]
}

#[tokio::test]
async fn the_feed_needs_an_admin_key_and_the_page_needs_none() {
    let config = r#"
        [[auth.keys]]
        name = "ops"
        sha256 = "c391959605db2757d87bf45d5f4c9bda42b68e95dcd157bf4f2473516c2bc9bb" # sk-ops
        admin = true
        [[auth.keys]]
        name = "app"
        sha256 = "72016003589eb0bb8dbcc1fab3b1e74b81a25f06f79801b0b63fcf30be2e06c3" # sk-app
    "#;
    let config = format!("{config}{MODELS}");
    let server = TestServer::start(Config::parse(&config, "stats.toml").unwrap()).await;
    for path in ["/admin/stats/stream", "/admin/stats"] {
        let get = |key: Option<&'static str>| {
            let mut request = client().get(server.url(path));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            request.send()
        };
        expect_error(get(None).await.unwrap(), 401).await;
        expect_error(get(Some("sk-app")).await.unwrap(), 403).await;
        if path.ends_with("stream") {
            let mut feed = SseReader::new(get(Some("sk-ops")).await.unwrap());
            assert!(json(&feed.next().await.unwrap())["stages"].is_array());
        }
    }
    // The page holds no data: it asks for the key when the feed refuses it.
    let page = client().get(server.url("/dashboard")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().await.unwrap().contains("/admin/stats/stream"));
}
