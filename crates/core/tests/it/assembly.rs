//! The RAG and Assemble extension points: what an assembler builds reaches the model, its
//! failure ends the request with a typed error, and retrieved context reaches the caller once,
//! before the first token.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio_prompt_orchestrator::{
    Assembled, Assembler, ChatMessage, EchoWorker, InferenceCall, InferenceRequest, ModelWorker,
    PipelineBuilder, PipelineError, ResponseEvent, RetrievedChunk, Retriever, TokenStream, WorkerError,
};

use crate::support::chat;

/// What a call carried: its assembled messages (as "role: content"), prefix key, prompt and
/// whether a template rendered the prompt.
type Seen = (Option<Vec<String>>, Option<u64>, String, bool);

/// Records the calls it gets, then echoes the prompt.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<Seen>>,
}

#[async_trait]
impl ModelWorker for Recorder {
    async fn infer(&self, prompt: &str) -> Result<Vec<String>, WorkerError> {
        EchoWorker::new().infer(prompt).await
    }

    async fn infer_stream(&self, call: InferenceCall) -> Result<TokenStream, WorkerError> {
        let messages = call.messages.as_ref().map(|m| {
            m.iter()
                .map(|m| format!("{}: {}", m.role.as_str(), m.content))
                .collect()
        });
        self.calls.lock().unwrap().push((
            messages,
            call.prefix_key,
            call.prompt.to_string(),
            call.prompt_templated,
        ));
        EchoWorker::new().infer_stream(call).await
    }
}

/// Puts a fixed system message in front; fails for requests whose text is "break".
struct Fixed;

impl Assembler for Fixed {
    fn assemble(
        &self,
        request: &InferenceRequest,
        context: &[RetrievedChunk],
    ) -> Result<Assembled, PipelineError> {
        let text = request.input.last_user_text().unwrap_or_default().to_owned();
        if text == "break" {
            return Err(PipelineError::Assembly {
                message: "template `system` line 1: unknown variable `usr`".into(),
            });
        }
        let system = format!("Be brief. {} documents.", context.len());
        Ok(Assembled {
            messages: Some(Arc::from(vec![
                ChatMessage::system(system.clone()),
                ChatMessage::user(text.clone()),
            ])),
            prompt: Arc::from(format!("{system}\n{text}")),
            // As a `prompt` template's output would be.
            prompt_templated: true,
            prefix_key: Some(42),
            prompt_tokens: Some(7),
        })
    }
}

struct TwoChunks;

#[async_trait]
impl Retriever for TwoChunks {
    async fn retrieve(&self, _request: &InferenceRequest) -> Result<Vec<RetrievedChunk>, PipelineError> {
        Ok(["a.md", "b.md"]
            .iter()
            .enumerate()
            .map(|(i, source)| RetrievedChunk {
                text: format!("chunk {i}"),
                source: (*source).into(),
                position: i as u64,
                score: 2.0 - i as f32,
            })
            .collect())
    }
}

#[tokio::test]
async fn the_assembled_messages_and_prefix_key_reach_the_model() {
    let worker = Arc::new(Recorder::default());
    let handles = PipelineBuilder::new(worker.clone())
        .retriever(Arc::new(TwoChunks))
        .assembler(Arc::new(Fixed))
        .spawn();
    let response = handles
        .input_tx
        .submit(chat("s", "hello there"))
        .await
        .unwrap()
        .into_response()
        .await
        .unwrap();
    assert_eq!(response.text, "Be brief. 2 documents.\nhello there");
    let calls = worker.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [(
            Some(vec![
                "system: Be brief. 2 documents.".into(),
                "user: hello there".into()
            ]),
            Some(42),
            "Be brief. 2 documents.\nhello there".into(),
            true
        )]
    );
}

#[tokio::test]
async fn an_assembly_failure_ends_the_request_without_calling_the_model() {
    let worker = Arc::new(Recorder::default());
    let handles = PipelineBuilder::new(worker.clone())
        .assembler(Arc::new(Fixed))
        .spawn();
    let error = handles
        .input_tx
        .submit(chat("s", "break"))
        .await
        .unwrap()
        .into_response()
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "assembling the prompt failed: template `system` line 1: unknown variable `usr`"
    );
    assert!(worker.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn retrieved_context_reaches_the_caller_once_before_the_first_token() {
    let handles = PipelineBuilder::new(Arc::new(EchoWorker::new()))
        .retriever(Arc::new(TwoChunks))
        .spawn();
    let handle = handles.input_tx.submit(chat("s", "one two")).await.unwrap();
    let events: Vec<ResponseEvent> = handle.collect().await;
    let ResponseEvent::Sources(sources) = &events[0] else {
        panic!("first event: {:?}", events[0]);
    };
    assert_eq!(
        sources.iter().map(|c| c.source.as_str()).collect::<Vec<_>>(),
        ["a.md", "b.md"]
    );
    assert!(matches!(events[1], ResponseEvent::Token(_)));
    let more = events[1..]
        .iter()
        .filter(|e| matches!(e, ResponseEvent::Sources(_)))
        .count();
    assert_eq!(more, 0);

    let response = handles
        .input_tx
        .submit(chat("s", "one two"))
        .await
        .unwrap()
        .into_response()
        .await
        .unwrap();
    assert_eq!(response.sources.map(|s| s.len()), Some(2));
}
