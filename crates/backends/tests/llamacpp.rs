//! The llama.cpp native backend against a recorded server: the slot count its `/slots` reports
//! replaces the configured one, so sessions spread over every slot that exists.

use std::collections::BTreeSet;

use futures_util::StreamExt;
use orchestrator_backends::llamacpp::{LlamaCppConfig, LlamaCppWorker};
use orchestrator_backends::routing::health::HealthProbe;
use tokio_prompt_orchestrator::{
    ChatMessage, InferenceCall, InferenceRequest, ModelWorker, RequestId, SessionId,
};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const ANSWER: &str =
    r#"{"content":"Hi","stop":true,"stop_type":"eos","tokens_predicted":1,"tokens_evaluated":3}"#;

fn call(session: &str) -> InferenceCall {
    let request =
        InferenceRequest::chat(SessionId::new(session), vec![ChatMessage::user("Hello")]).with_stream(false);
    InferenceCall::new(RequestId(1), request, "Hello")
}

/// The `id_slot` of every `/completion` the server received.
async fn slots_used(server: &MockServer) -> BTreeSet<u64> {
    let requests = server.received_requests().await.unwrap_or_default();
    requests
        .iter()
        .filter(|r| r.url.path() == "/completion")
        .map(|r| {
            r.body_json::<serde_json::Value>().unwrap()["id_slot"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

async fn ask_as_twenty_sessions(worker: &LlamaCppWorker) {
    for n in 0..20 {
        let chunks: Vec<_> = worker
            .infer_stream(call(&format!("s{n}")))
            .await
            .unwrap()
            .collect()
            .await;
        assert!(chunks.iter().all(Result::is_ok), "{chunks:?}");
    }
}

#[tokio::test]
async fn the_slot_count_comes_from_the_servers_slots() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/completion"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(ANSWER, "application/json"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/health"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(r#"{"status":"ok"}"#, "application/json"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/slots"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            r#"[{"id":0,"is_processing":false},{"id":1,"is_processing":false},{"id":2,"is_processing":true}]"#,
            "application/json",
        ))
        .mount(&server)
        .await;
    let config: LlamaCppConfig =
        toml::from_str(&format!("name = \"llama\"\nbase_url = \"{}\"", server.uri())).unwrap();
    assert_eq!(config.slots, 1);
    let worker = LlamaCppWorker::new(&config).unwrap();

    // Configured: one slot, so every session shares slot 0.
    ask_as_twenty_sessions(&worker).await;
    assert_eq!(slots_used(&server).await, BTreeSet::from([0]));

    // The server lists three: after a health check, sessions spread over all of them.
    assert_eq!(worker.probe().await, Ok(None));
    server.reset().await;
    Mock::given(method("POST"))
        .and(path("/completion"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(ANSWER, "application/json"))
        .mount(&server)
        .await;
    ask_as_twenty_sessions(&worker).await;
    assert_eq!(slots_used(&server).await, BTreeSet::from([0, 1, 2]));
}

#[tokio::test]
async fn a_server_without_slots_keeps_the_configured_count() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/health"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/slots"))
        .respond_with(
            ResponseTemplate::new(501).set_body_string("This server does not support slots endpoint."),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/completion"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(ANSWER, "application/json"))
        .mount(&server)
        .await;
    let config: LlamaCppConfig = toml::from_str(&format!(
        "name = \"llama\"\nbase_url = \"{}\"\nslots = 2",
        server.uri()
    ))
    .unwrap();
    let worker = LlamaCppWorker::new(&config).unwrap();
    assert_eq!(
        worker.probe().await,
        Ok(None),
        "the server is healthy all the same"
    );
    ask_as_twenty_sessions(&worker).await;
    assert_eq!(slots_used(&server).await, BTreeSet::from([0, 1]));
}
