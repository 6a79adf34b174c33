//! The whole path the gateway takes, against llama-server: the pipeline, the router built the
//! way the gateway builds it from its config, and both backends; a chat through `kind =
//! "llamacpp"` is answered; a caller that goes away stops the generation on the server.

use std::sync::Arc;
use std::time::Duration;

use orchestrator_backends::Router;
use orchestrator_backends::routing::balance::Balancing;
use orchestrator_backends::routing::replica::Replica;
use orchestrator_backends::routing::retry::RetryConfig;
use orchestrator_backends::routing::{Group, Route};
use tokio_prompt_orchestrator::{
    ChatMessage, FinishReason, InferenceRequest, ModelWorker, PipelineBuilder, PipelineHandles,
    ResponseEvent, SessionId,
};

use crate::llama_server::{COUNTING, LONG, cached_tokens, greedy, llamacpp, openai, slots, until_idle};
use crate::support::{Kind, Server};

/// `native` on llama-server's `/completion`, `v1` on its `/v1`, each a one-replica route.
fn pipeline(server: &Server) -> PipelineHandles {
    let mut router = Router::new();
    let workers: [(&str, Arc<dyn ModelWorker>); 2] = [
        ("native", Arc::new(llamacpp(server))),
        ("v1", Arc::new(openai(server))),
    ];
    for (model, worker) in workers {
        let replica = Arc::new(Replica::new(model, worker, Default::default()));
        let group = Group::new(vec![replica], Balancing::SessionAffinity);
        router.insert(model, Route::new(vec![group], RetryConfig::default()));
    }
    PipelineBuilder::new(Arc::new(router)).spawn()
}

/// The request's tokens and how it ended.
async fn events(handles: &PipelineHandles, request: InferenceRequest) -> (Vec<String>, ResponseEvent) {
    let mut events = handles.input_tx.submit(request).await.expect("admitted");
    let mut tokens = Vec::new();
    while let Some(event) = events.recv().await {
        match event {
            ResponseEvent::Token(t) => tokens.push(t),
            // llama-server's extra fields (`system_fingerprint`, `timings`), for the caller.
            ResponseEvent::Passthrough(_) => {}
            end if end.is_final() => return (tokens, end),
            other => panic!("an event the pipeline does not send: {other:?}"),
        }
    }
    panic!("the request ended without a final event");
}

#[tokio::test]
#[ignore = "needs real model servers: ORCHESTRATOR_REAL_LLM=1 bash scripts/test.sh"]
async fn both_backends_stream_through_the_pipeline() {
    let Some(server) = Server::start(Kind::LlamaServer).await else {
        return;
    };
    let handles = pipeline(&server);
    let native = InferenceRequest::text(SessionId::new("s"), COUNTING)
        .with_model("native")
        .with_params(greedy(16));
    let messages = vec![ChatMessage::user("Tell me a story about a cat.")];
    let v1 = InferenceRequest::chat(SessionId::new("s"), messages)
        .with_model("v1")
        .with_params(greedy(16));
    for request in [native, v1] {
        let (tokens, end) = events(&handles, request).await;
        assert!(tokens.len() > 1, "{tokens:?}");
        let ResponseEvent::Done(done) = end else {
            panic!("{end:?}")
        };
        assert_eq!(done.finish_reason, FinishReason::Length);
        assert_eq!(done.usage.completion_tokens, 16, "the server's own count");
        assert!(done.usage.prompt_tokens > 0);
    }
    handles.pipeline.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test]
#[ignore = "needs real model servers: ORCHESTRATOR_REAL_LLM=1 bash scripts/test.sh"]
async fn a_chat_through_the_native_backend_gets_a_real_answer() {
    let Some(server) = Server::start(Kind::LlamaServer).await else {
        return;
    };
    let handles = pipeline(&server);
    // As a client's chat arrives: no `prompt` template, so the model's own formats it. Sent to
    // `/completion` as the plain question, SmolLM2 answers with one end-of-turn token.
    let messages = vec![ChatMessage::user("What is the capital of France?")];
    let request = InferenceRequest::chat(SessionId::new("s"), messages)
        .with_model("native")
        .with_params(greedy(24));
    let (tokens, end) = events(&handles, request).await;
    let ResponseEvent::Done(done) = end else {
        panic!("{end:?}")
    };
    assert!(
        !tokens.concat().trim().is_empty(),
        "SmolLM2 answers: {tokens:?} {done:?}"
    );
    assert!(done.usage.completion_tokens > 1, "{tokens:?} {done:?}");
    handles.pipeline.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test]
#[ignore = "needs real model servers: ORCHESTRATOR_REAL_LLM=1 bash scripts/test.sh"]
async fn a_caller_that_goes_away_stops_the_generation() {
    let Some(server) = Server::start(Kind::LlamaServer).await else {
        return;
    };
    let handles = pipeline(&server);
    let request = InferenceRequest::text(SessionId::new("s"), COUNTING)
        .with_model("native")
        .with_params(greedy(LONG));
    let mut events = handles.input_tx.submit(request).await.expect("admitted");
    for _ in 0..3 {
        let event = events.recv().await.expect("more events");
        assert!(!event.is_final(), "{event:?}");
    }
    assert!(
        slots(&server).await.iter().any(|s| s["is_processing"] == true),
        "the server is generating while tokens arrive"
    );
    drop(events);
    let slots = until_idle(&server).await;
    assert!(
        slots.iter().all(|s| cached_tokens(s) < u64::from(LONG)),
        "generation stopped early: {slots:?}"
    );
    handles.pipeline.shutdown(Duration::from_secs(10)).await;
}
