//! A fixed amount of pipeline work, for counting instructions per request under callgrind.
//!
//! Sends `REQUESTS` requests (default 20,000) through all five stages with EchoWorker, 64 in
//! flight: half submitted with a handle (alternately streaming and joined), half fire-and-forget.
//! Run it at two sizes and divide the difference in instructions by the difference in requests,
//! which cancels start-up and shutdown:
//!
//! ```text
//! cargo build --release --example per_request
//! REQUESTS=20000 valgrind --tool=callgrind --dump-instr=no target/release/examples/per_request
//! REQUESTS=40000 valgrind --tool=callgrind --dump-instr=no target/release/examples/per_request
//! ```

use std::sync::Arc;

use tokio_prompt_orchestrator::{
    ChatMessage, EchoWorker, InferenceRequest, ModelWorker, PipelineBuilder, PipelineConfig, PromptRequest,
    SessionId, Stage, WhenFull,
};

const IN_FLIGHT: usize = 64;

fn main() {
    let total: usize = std::env::var("REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let worker: Arc<dyn ModelWorker> = Arc::new(EchoWorker::new());
        let config = PipelineConfig::default();
        // Block at the input: this measures work per request, not refusals.
        let config = config
            .clone()
            .with_queue(Stage::Rag, config.rag.queue.capacity, WhenFull::Block);
        let mut handles = PipelineBuilder::new(worker).config(config).spawn();

        // Submitted, with handles: IN_FLIGHT closed-loop callers.
        let per_client = total / 2 / IN_FLIGHT;
        let mut clients = Vec::new();
        for c in 0..IN_FLIGHT {
            let sender = handles.input_tx.clone();
            clients.push(tokio::spawn(async move {
                let session = SessionId::new(format!("client-{c}"));
                for i in 0..per_client {
                    let request = InferenceRequest::chat(session.clone(), vec![ChatMessage::user("Hello!")])
                        .with_stream(i % 2 == 0);
                    let handle = sender.submit(request).await.expect("admitted");
                    handle.into_response().await.expect("completes");
                }
            }));
        }
        for c in clients {
            c.await.expect("client");
        }

        // Fire-and-forget: keep IN_FLIGHT outstanding, reading outputs as they come.
        let sends = total / 2;
        let sessions: Vec<SessionId> = (0..1024).map(|s| SessionId::new(format!("s{s}"))).collect();
        let mut sent = 0;
        let mut received = 0;
        while received < sends {
            while sent < sends && sent - received < IN_FLIGHT {
                let request = PromptRequest {
                    session: sessions[sent % sessions.len()].clone(),
                    input: "Hello!".to_string(),
                    meta: Default::default(),
                };
                handles.input_tx.send(request).await.expect("admitted");
                sent += 1;
            }
            handles
                .output_rx
                .recv()
                .await
                .expect("output")
                .result
                .expect("completes");
            received += 1;
        }
        handles.pipeline.close();
        handles.pipeline.join().await;
    });
}
