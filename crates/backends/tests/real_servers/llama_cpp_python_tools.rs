//! A tool call from a real model: llama-cpp-python's server with its function-calling chat format
//! (`--chat_format chatml-function-calling`, which constrains the answer to the named function's
//! arguments), read by `OpenAiWorker` as OpenAI's `tool_calls`, whole and streamed. (llama-server
//! is not used here: with the only model the setup can fetch, SmolLM2, whose chat template has no
//! tools, its template-derived parser finds no tool-call format.)

use serde_json::{Value, json};
use tokio_prompt_orchestrator::{ChatMessage, FinishReason, InferenceRequest, Passthrough, SessionId, raw};

use crate::llama_cpp_python::{greedy, openai};
use crate::support::{self, Kind, Server};

/// A request offering one tool and naming it as the one to call.
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
    let choice = json!({"type": "function", "function": {"name": "get_weather"}});
    request.extra.insert("tools".into(), raw(&tools));
    request.extra.insert("tool_choice".into(), raw(&choice));
    request
}

#[tokio::test]
#[ignore = "needs real model servers: ORCHESTRATOR_REAL_LLM=1 bash scripts/test.sh"]
async fn a_tool_call_comes_back_as_openai_tool_calls_whole_and_streamed() {
    let args = ["--chat_format", "chatml-function-calling"];
    let Some(server) = Server::start_with(Kind::LlamaCppPython, &args).await else {
        return;
    };
    let worker = openai(&server);
    for stream in [false, true] {
        let outcome = support::run(&worker, support::call(weather_call(stream), ""))
            .await
            .expect("the call succeeds");
        // Deltas merged as the gateway merges them for a whole answer.
        let mut whole = Passthrough::default();
        for piece in outcome.passthrough.clone() {
            whole.merge(piece);
        }
        let calls = whole.message.get("tool_calls").and_then(Value::as_array);
        let call = calls
            .and_then(|c| c.first())
            .unwrap_or_else(|| panic!("no tool call (stream: {stream}): {outcome:?}"));
        assert_eq!(call["function"]["name"], "get_weather", "{call}");
        let arguments = call["function"]["arguments"]
            .as_str()
            .expect("arguments as JSON text");
        let arguments: Value = serde_json::from_str(arguments).expect("the arguments are JSON");
        assert!(arguments.is_object(), "{arguments}");
        assert!(call["id"].as_str().is_some_and(|id| !id.is_empty()), "{call}");
        assert_eq!(
            outcome.finish,
            FinishReason::ToolCalls,
            "stream: {stream}: {outcome:?}"
        );
    }
}
