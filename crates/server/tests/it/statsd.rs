//! `[telemetry.statsd]`: the binary (the metrics recorder is one per process) sends its metrics to
//! a UDP socket this test listens on, as StatsD lines with the labels as tags.

use std::time::Duration;

use orchestrator_server::config::Config;
use serde_json::json;
use tokio::net::UdpSocket;

use crate::binary::spawn_binary;
use crate::cluster::ECHO;
use crate::support::client;

/// StatsD lines received on `socket` until `wanted` are all seen (each line a prefix to find).
async fn lines_until(socket: &UdpSocket, wanted: &[&str]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut buffer = vec![0; 65_536];
    let receive = async {
        while !wanted
            .iter()
            .all(|w| lines.iter().any(|l: &String| l.starts_with(w)))
        {
            let n = socket.recv(&mut buffer).await.unwrap();
            let datagram = String::from_utf8_lossy(&buffer[..n]).into_owned();
            lines.extend(datagram.lines().map(str::to_owned));
        }
    };
    // A bound on a wait that ends as soon as the lines come, so a failure does not hang.
    let timed_out = tokio::time::timeout(Duration::from_secs(60), receive)
        .await
        .is_err();
    assert!(!timed_out, "not all of {wanted:?} arrived: {lines:#?}");
    lines
}

#[tokio::test]
async fn the_stage_and_request_metrics_reach_a_statsd_agent_with_their_labels_as_tags() {
    let agent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let config = format!(
        "[telemetry.statsd]\naddress = \"{}\"\nflush_ms = 50\nhistograms = \"timer\"\ntags = {{ env = \"test\" }}\n\n{ECHO}",
        agent.local_addr().unwrap()
    );
    let gateway = spawn_binary(&config).await;
    let response = client()
        .post(format!("{}/v1/chat/completions", gateway.base))
        .json(&json!({"model": "echo", "messages": [{"role": "user", "content": "counted"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let lines = lines_until(
        &agent,
        &[
            "orchestrator_http_requests_total:",
            "orchestrator_stage_requests_total:",
            "orchestrator_stage_latency_seconds:",
        ],
    )
    .await;
    let request = lines
        .iter()
        .find(|l| l.starts_with("orchestrator_http_requests_total:"))
        .unwrap();
    assert!(request.contains("|c|#"), "a counter with tags: {request}");
    for tag in ["route:/v1/chat/completions", "status:200", "env:test"] {
        assert!(request.contains(tag), "{tag} in {request}");
    }
    let stage = lines
        .iter()
        .find(|l| l.starts_with("orchestrator_stage_requests_total:") && l.contains("stage:inference"))
        .unwrap_or_else(|| panic!("the inference stage's count: {lines:#?}"));
    assert!(stage.contains("outcome:"), "{stage}");
    let latency = lines
        .iter()
        .find(|l| l.starts_with("orchestrator_stage_latency_seconds:"))
        .unwrap();
    assert!(latency.contains("|ms|#"), "latencies as timers: {latency}");
}

#[test]
fn a_statsd_address_that_is_not_host_and_port_is_a_config_error() {
    let text = format!("[telemetry.statsd]\naddress = \"agent\"\n\n{ECHO}");
    let error = Config::parse(&text, "statsd.toml").unwrap_err();
    let problem = &error.problems[0];
    assert_eq!(problem.path, "telemetry.statsd.address");
    assert!(problem.message.contains("host:port"), "{}", problem.message);
}
