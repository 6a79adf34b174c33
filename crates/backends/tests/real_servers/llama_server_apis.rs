//! The APIs beyond plain chat against llama-server: a tool call through the chat route with the
//! server's Jinja chat templates (`--jinja`), read back as OpenAI's `tool_calls` whole and as
//! stream deltas; and embeddings (`--embeddings`), one vector per input, in input order.

use serde_json::{Value, json};
use tokio_prompt_orchestrator::{
    ChatMessage, EmbedInput, FinishReason, InferenceRequest, Passthrough, PromptInput, SessionId, raw,
};

use crate::llama_server::{greedy, llamacpp};
use crate::support::{self, Kind, Server};

/// A request offering one tool, which the model must call (`tool_choice: "required"`: the
/// server constrains the output to a call, so even a tiny model makes one).
fn weather_call(stream: bool) -> InferenceRequest {
    let mut request = InferenceRequest::chat(
        SessionId::new("s"),
        vec![ChatMessage::user("What is the weather in Paris?")],
    )
    .with_params(greedy(128))
    .with_stream(stream);
    let tools = json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }}]);
    request.extra.insert("tools".into(), raw(&tools));
    request
        .extra
        .insert("tool_choice".into(), raw(&json!("required")));
    request
}

#[tokio::test]
#[ignore = "needs real model servers: ORCHESTRATOR_REAL_LLM=1 bash scripts/test.sh"]
async fn a_tool_call_comes_back_as_openai_tool_calls_whole_and_streamed() {
    let Some(server) = Server::start_with(Kind::LlamaServer, &["--jinja"]).await else {
        return;
    };
    let worker = llamacpp(&server);
    for stream in [false, true] {
        let outcome = support::run(&worker, support::call(weather_call(stream), ""))
            .await
            .expect("the call succeeds");
        assert_eq!(
            outcome.finish,
            FinishReason::ToolCalls,
            "stream: {stream}: {outcome:?}"
        );
        // Deltas merged as the gateway merges them for a whole answer.
        let mut whole = Passthrough::default();
        for piece in outcome.passthrough.clone() {
            whole.merge(piece);
        }
        let calls = whole.message.get("tool_calls").and_then(Value::as_array);
        let call = calls
            .and_then(|c| c.first())
            .unwrap_or_else(|| panic!("no tool call: {outcome:?}"));
        assert_eq!(call["function"]["name"], "get_weather", "{call}");
        let arguments = call["function"]["arguments"]
            .as_str()
            .expect("arguments as JSON text");
        let arguments: Value = serde_json::from_str(arguments).expect("the arguments are JSON");
        assert!(arguments.is_object(), "{arguments}");
        assert!(call["id"].as_str().is_some_and(|id| !id.is_empty()), "{call}");
    }
}

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
