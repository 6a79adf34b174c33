//! Embeddings against llama-server (`--embeddings`): one vector per input, in input order, through
//! the `llamacpp` backend's `/v1/embeddings` route.

use tokio_prompt_orchestrator::{EmbedInput, InferenceRequest, PromptInput, SessionId};

use crate::llama_server::llamacpp;
use crate::support::{self, Kind, Server};

#[tokio::test]
#[ignore = "needs real model servers: ORCHESTRATOR_REAL_LLM=1 bash scripts/test.sh"]
async fn embeddings_come_back_one_per_input_in_input_order() {
    let Some(server) = Server::start_with(Kind::LlamaServer, &["--embeddings", "--pooling", "mean"]).await
    else {
        return;
    };
    let worker = llamacpp(&server);
    let inputs = ["red", "a long sentence about something else entirely", "red"];
    let mut request = InferenceRequest::chat(SessionId::new("s"), Vec::new());
    request.input = PromptInput::Embed(inputs.iter().map(|t| EmbedInput::Text((*t).into())).collect());
    let outcome = support::run(&worker, support::call(request, ""))
        .await
        .expect("the call succeeds");
    let vectors = outcome
        .passthrough
        .iter()
        .find_map(|p| p.embeddings.clone())
        .expect("the vectors");
    assert_eq!(vectors.len(), 3);
    assert!(!vectors[0].is_empty() && vectors.iter().all(|v| v.len() == vectors[0].len()));
    // The same input gets the same vector; another input another one.
    assert_eq!(vectors[0], vectors[2]);
    assert_ne!(vectors[0], vectors[1]);
    assert!(outcome.usage.is_some_and(|u| u.prompt_tokens > 0), "{outcome:?}");
}
