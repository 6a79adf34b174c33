//! Tool calls, for tests of tool use end to end: a chat request that offers `tools` and whose
//! last message is not a tool's result is answered with a call to the first tool, with the
//! arguments `{"city": "Paris"}` (streamed as OpenAI streams calls: the call's id and name first,
//! then its arguments in two pieces); once the conversation holds the tool's result, the mock
//! answers with text as usual.

use axum::http::{StatusCode, header};
use axum::response::Response;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::reply;
use super::stream::{DONE, data};

/// The arguments of every call the mock makes.
pub const ARGUMENTS: &str = r#"{"city": "Paris"}"#;

#[derive(Deserialize)]
pub(crate) struct ToolDef {
    function: Option<Function>,
}

#[derive(Deserialize)]
struct Function {
    name: Option<String>,
}

/// The tool to call, if the request offers function tools and has no tool result yet.
pub(crate) fn to_call(tools: Option<&RawValue>, last_role: Option<&str>) -> Option<String> {
    if last_role == Some("tool") {
        return None;
    }
    let tools: Vec<ToolDef> = serde_json::from_str(tools?.get()).ok()?;
    tools.first()?.function.as_ref()?.name.clone()
}

/// The answer calling `name`: one body, or a stream.
pub(crate) fn answer(
    id: &str,
    model: &str,
    created: u64,
    name: &str,
    stream: bool,
    include_usage: bool,
) -> Response {
    let call_id = format!("call_{id}");
    let usage = json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15});
    let head = |object: &str| json!({"id": id, "object": object, "created": created, "model": model});
    if !stream {
        let mut body = head("chat.completion");
        body["choices"] = json!([{
            "index": 0,
            "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": ARGUMENTS}}
            ]},
            "logprobs": null,
            "finish_reason": "tool_calls",
        }]);
        body["usage"] = usage;
        return reply::json(StatusCode::OK, &body);
    }
    let (first, rest) = ARGUMENTS.split_at(ARGUMENTS.len() / 2);
    let deltas = [
        json!({"role": "assistant", "content": null}),
        json!({"tool_calls": [{"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
        json!({"tool_calls": [{"index": 0, "function": {"arguments": first}}]}),
        json!({"tool_calls": [{"index": 0, "function": {"arguments": rest}}]}),
    ];
    let mut out = Vec::new();
    let chunk = |choices: Value, usage: Option<&Value>, out: &mut Vec<u8>| {
        let mut chunk = head("chat.completion.chunk");
        chunk["choices"] = choices;
        if include_usage {
            chunk["usage"] = usage.cloned().unwrap_or(Value::Null);
        }
        data(&chunk, out);
    };
    for delta in deltas {
        chunk(
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]),
            None,
            &mut out,
        );
    }
    chunk(
        json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "tool_calls"}]),
        None,
        &mut out,
    );
    if include_usage {
        chunk(json!([]), Some(&usage), &mut out);
    }
    out.extend_from_slice(DONE);
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(out.into())
        .unwrap_or_default()
}
