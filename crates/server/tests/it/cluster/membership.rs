//! Joining, membership, and a node's life without NATS.

use serde_json::json;

use super::{
    ECHO, Nats, cluster_view, command_json_lines, eventually, get, http, lost_nats, member_names, node,
    refused_start, stop_nats_seen_by,
};

#[tokio::test]
async fn a_node_that_cannot_reach_nats_says_so_and_exits() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let stderr = refused_start(&["--cluster", &url]).await;
    assert!(
        stderr.contains(&format!("cannot reach NATS at {url} (cluster.nats_url)")),
        "{stderr}"
    );
    let stderr = refused_start(&["--cluster", "http://127.0.0.1:4222"]).await;
    assert!(stderr.contains("not a NATS address"), "{stderr}");
}

#[tokio::test]
async fn nodes_see_each_other_and_a_killed_node_drops_out() {
    let nats = Nats::start().await;
    let a = node(&nats, "a", ECHO).await;
    let b = node(&nats, "b", ECHO).await;
    let mut c = node(&nats, "c", ECHO).await;
    eventually("three nodes listed", || async {
        member_names(&a).await == ["a", "b", "c"]
    })
    .await;

    let (_, view) = cluster_view(&b).await;
    assert_eq!(view["node"], "b");
    assert_eq!(view["link"]["connected"], true);
    assert_eq!(view["problems"], json!([]));
    for member in view["nodes"].as_array().unwrap() {
        assert_eq!(member["models"], json!(["echo"]));
        assert_eq!(member["generation"], 0);
        assert_eq!(member["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(member["in_flight"], 0);
    }

    // The operator's view, from the broker directly.
    let listed = command_json_lines(&["cluster", "status", "--json", "--cluster", &nats.url]).await;
    let names: Vec<&str> = listed.iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b", "c"]);

    // SIGKILL: no goodbye; the heartbeat stops and the node times out.
    c.child.start_kill().unwrap();
    c.child.wait().await.unwrap();
    eventually("c dropped out", || async { member_names(&a).await == ["a", "b"] }).await;
}

#[tokio::test]
async fn a_node_keeps_serving_without_nats_and_rejoins() {
    let mut nats = Nats::start().await;
    let mut a = node(&nats, "a", ECHO).await;
    eventually("a listed", || async { member_names(&a).await == ["a"] }).await;

    stop_nats_seen_by(&mut nats, &mut a).await;
    let ready = get(format!("{}/readyz", a.base)).await.unwrap();
    assert_eq!(ready.status(), 200, "a node without NATS still serves");
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["cluster"]["connected"], false);
    assert!(
        body["cluster"]["detail"]
            .as_str()
            .unwrap()
            .contains("local state"),
        "{body}"
    );
    let answer = http()
        .post(format!("{}/v1/chat/completions", a.base))
        .json(&json!({"model": "echo", "messages": [{"role": "user", "content": "still here"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let (status, view) = cluster_view(&a).await;
    assert_eq!(status, 503);
    assert_eq!(view["error"]["code"], "cluster_unavailable");

    nats.restart().await;
    eventually("a rejoined", || async {
        let body: serde_json::Value = get(format!("{}/readyz", a.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["status"] == "ready"
    })
    .await;
    eventually("a listed again", || async { member_names(&a).await == ["a"] }).await;
}

/// SIGTERM after the broker went away: the node drains and exits; a read of the broker that was
/// under way when it went (never to be answered) does not hold the exit.
#[tokio::test]
async fn a_node_without_nats_still_exits_on_sigterm() {
    let mut nats = Nats::start().await;
    let mut a = node(&nats, "a", ECHO).await;
    eventually("a listed", || async { member_names(&a).await == ["a"] }).await;
    nats.shut_down().await;
    lost_nats(&mut a).await;
    let logged = crate::shutdown::terminate(a).await;
    assert!(
        logged
            .iter()
            .any(|log| log["fields"]["message"] == "Shutdown complete."),
        "{logged:#?}"
    );
}

#[tokio::test]
async fn two_live_nodes_cannot_share_a_name() {
    let nats = Nats::start().await;
    let _first = node(&nats, "same", ECHO).await;
    let config = format!("{ECHO}\n{}", super::cluster_section(&nats, "same"));
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), config).unwrap();
    let stderr = refused_start(&["--config", file.path().to_str().unwrap()]).await;
    assert!(
        stderr.contains("the node name same is in use by a live node"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_bucket_of_another_layout_is_refused_and_a_malformed_record_is_reported() {
    let nats = Nats::start().await;
    let jetstream = nats.jetstream().await;
    let foreign = async_nats::jetstream::stream::Config {
        name: "KV_orchestrator_nodes".into(),
        description: Some("something else".into()),
        subjects: vec!["$KV.orchestrator_nodes.>".into()],
        ..Default::default()
    };
    jetstream.create_stream(foreign).await.unwrap();
    let stderr = refused_start(&["--cluster", &nats.url]).await;
    assert!(
        stderr.contains(
            "the JetStream bucket orchestrator_nodes was made by another version of the orchestrator"
        ),
        "{stderr}"
    );

    jetstream.delete_stream("KV_orchestrator_nodes").await.unwrap();
    let a = node(&nats, "a", ECHO).await;
    let bucket = jetstream.get_key_value("orchestrator_nodes").await.unwrap();
    bucket.put("bogus", "not json".into()).await.unwrap();
    let (status, view) = cluster_view(&a).await;
    assert_eq!(status, 200);
    assert_eq!(view["nodes"][0]["name"], "a");
    let problems = view["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0]
            .as_str()
            .unwrap()
            .starts_with("the value of \"bogus\" in the bucket orchestrator_nodes is malformed"),
        "{problems:?}"
    );
}
