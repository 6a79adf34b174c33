//! The harness against a tiny in-process OpenAI-like server: every request is counted, errors
//! are sorted by status, streams yield TTFT and ITL. Short runs at low rates; no timing is
//! asserted.

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use bytes::Bytes;
use indicatif::ProgressBar;
use orchestrator_bench::config::request_body;
use orchestrator_bench::harness::{Plan, Target, UPSTREAM, measure};
use orchestrator_bench::load::{self, Load};
use orchestrator_bench::report::Row;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Serves /v1/chat/completions: JSON, or three tokens as SSE when the body asks for a stream;
/// every `fail_every`-th request (if non-zero) gets a 503. Returns its base URL and a counter of
/// requests served.
async fn server(fail_every: u64) -> (String, Arc<AtomicU64>) {
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |body: String| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if fail_every > 0 && n.is_multiple_of(fail_every) {
                    return (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
                }
                if body.contains("\"stream\":true") {
                    let mut sse =
                        String::from("data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n");
                    for t in ["a", "b", "c"] {
                        sse.push_str(&format!(
                            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{t}\"}}}}]}}\n\n"
                        ));
                    }
                    sse.push_str("data: [DONE]\n\n");
                    return ([(header::CONTENT_TYPE, "text/event-stream")], sse).into_response();
                }
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    r#"{"choices":[{"message":{"content":"hi"}}]}"#,
                )
                    .into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

fn plan(loads: Vec<Load>, stream: bool) -> Plan {
    Plan {
        loads,
        duration: Duration::from_millis(1_000),
        warmup: Duration::ZERO,
        stream,
        body: Bytes::from(request_body("mock", stream)),
        max_in_flight: 64,
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_counts_every_request_for_every_target() {
    let (a, seen_a) = server(0).await;
    let (b, seen_b) = server(0).await;
    let targets = [
        Target::new(UPSTREAM, a, None),
        Target::new("gateway", b, Some(std::process::id())),
    ];
    let client = load::client(64).unwrap();
    let rows = measure(
        &client,
        &targets,
        &plan(vec![Load::Rate(40.0)], false),
        &ProgressBar::hidden(),
    )
    .await;
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!(row.sent, 40, "{row:?}");
        assert_eq!(row.ok, 40, "{row:?}");
        assert_eq!(row.errors, 0, "{row:?}");
        assert_eq!(row.latency.unwrap().count, 40);
        assert_eq!(row.send_lag.unwrap().count, 40);
    }
    assert_eq!(seen_a.load(Ordering::SeqCst), 40);
    assert_eq!(seen_b.load(Ordering::SeqCst), 40);
    assert!(rows[0].added_vs_upstream.is_none());
    assert!(rows[1].added_vs_upstream.is_some());
    // The "gateway" here is this test process: its /proc figures are read.
    assert!(rows[1].process.unwrap().peak_rss_mib > 0.0);
}

/// Measures `system` at `base_url`, 40 streamed requests at 40 req/s, in front of a
/// [`server`] that refuses every fourth; checks the counts and timings and returns the row.
async fn forty_streams_every_fourth_refused(system: &str, base_url: String) -> Row {
    let targets = [Target::new(system, base_url, None)];
    let client = load::client(64).unwrap();
    let mut rows = measure(
        &client,
        &targets,
        &plan(vec![Load::Rate(40.0)], true),
        &ProgressBar::hidden(),
    )
    .await;
    let row = rows.remove(0);
    assert_eq!(row.sent, 40);
    assert_eq!(row.status_errors.get(&503), Some(&10), "{row:?}");
    assert_eq!(row.ok, 30);
    assert_eq!(row.ttft.unwrap().count, 30);
    assert_eq!(row.itl.unwrap().count, 60, "two gaps between three tokens");
    row
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_counted_by_status_and_streams_are_timed() {
    let (url, seen) = server(4).await;
    let row = forty_streams_every_fourth_refused(UPSTREAM, url).await;
    assert_eq!(row.ok + row.errors, seen.load(Ordering::SeqCst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_and_connection_errors_are_counted() {
    let (url, seen) = server(0).await;
    let mut p = plan(vec![Load::Concurrency(4)], false);
    p.duration = Duration::from_millis(300);
    let client = load::client(64).unwrap();
    let targets = [
        Target::new(UPSTREAM, url, None),
        // Nothing listens on port 1.
        Target::new("down", "http://127.0.0.1:1", None),
    ];
    let rows = measure(&client, &targets, &p, &ProgressBar::hidden()).await;
    assert!(rows[0].ok > 0);
    assert_eq!(rows[0].ok, rows[0].sent);
    assert_eq!(rows[0].ok, seen.load(Ordering::SeqCst));
    assert_eq!(rows[1].ok, 0);
    assert_eq!(rows[1].connect_errors, rows[1].sent);
    assert!(rows[1].sent > 0);
}

/// The forwarder in front of the test server: every request reaches the upstream once, statuses
/// and bodies come back as they were, and streams arrive token by token (TTFT and ITL timed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarder_passes_requests_statuses_and_streams_through() {
    let (upstream, seen) = server(4).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let forwarder = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { orchestrator_bench::forwarder::serve(listener, &upstream).await });
    forty_streams_every_fourth_refused("forwarder", forwarder.clone()).await;
    assert_eq!(
        seen.load(Ordering::SeqCst),
        40,
        "each request reached the upstream once"
    );

    let client = load::client(64).unwrap();
    let answer = client
        .post(format!("{forwarder}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(request_body("mock", false))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.headers()["content-type"], "application/json");
    assert_eq!(
        answer.text().await.unwrap(),
        r#"{"choices":[{"message":{"content":"hi"}}]}"#
    );
    // Nothing serves this path upstream: the upstream's 404 comes back as it is.
    let missing = client.get(format!("{forwarder}/nowhere")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

/// A target's headers reach its server with every request, and a target is not offered rates
/// above its cap (its rows are left out, not filled with zeros).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_send_their_headers_and_skip_rates_above_their_cap() {
    let tagged = Arc::new(AtomicU64::new(0));
    let counter = tagged.clone();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |headers: axum::http::HeaderMap| {
            if headers.get("x-route").is_some_and(|v| v == "mock") {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            async { ([(header::CONTENT_TYPE, "application/json")], "{}") }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut routed = Target::new("routed", url.clone(), None);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-route", "mock".parse().unwrap());
    routed.headers = Arc::new(headers);
    routed.max_rate = Some(20.0);
    let targets = [Target::new(UPSTREAM, url, None), routed];
    let p = plan(vec![Load::Rate(20.0), Load::Rate(40.0)], false);
    assert_eq!(p.runs(&targets), 3);
    let client = load::client(64).unwrap();
    let rows = measure(&client, &targets, &p, &ProgressBar::hidden()).await;
    let labels: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.system.as_str(), r.load.as_str()))
        .collect();
    assert_eq!(
        labels,
        [
            (UPSTREAM, "20 req/s"),
            ("routed", "20 req/s"),
            (UPSTREAM, "40 req/s")
        ]
    );
    assert_eq!(rows[1].ok, 20);
    assert_eq!(
        tagged.load(Ordering::SeqCst),
        20,
        "only the routed target's requests carry the header"
    );
}
