//! Anthropic's shapes of an answer: the `message` object of a whole answer, and the error object
//! (`{"type": "error", "error": {"type", "message"}}`) with Anthropic's statuses (529 when the
//! gateway sheds load).

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_prompt_orchestrator::{FinishReason, Passthrough, Usage};

use crate::api::error::ApiError;

/// Anthropic's `stop_reason` for how the answer ended.
pub fn stop_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter => "refusal",
    }
}

/// A content block of an answer.
#[derive(Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block<'a> {
    Text {
        text: &'a str,
    },
    ToolUse {
        id: &'a Value,
        name: &'a Value,
        input: Value,
    },
}

/// The tool calls an OpenAI-shaped answer made, as `tool_use` blocks.
pub fn tool_uses(extra: Option<&Passthrough>) -> Vec<Block<'_>> {
    let Some(Value::Array(calls)) = extra.and_then(|e| e.message.get("tool_calls")) else {
        return Vec::new();
    };
    calls
        .iter()
        .map(|call| {
            let function = &call["function"];
            Block::ToolUse {
                id: &call["id"],
                name: &function["name"],
                input: arguments(function["arguments"].as_str().unwrap_or("")),
            }
        })
        .collect()
}

/// A tool call's arguments, which OpenAI sends as JSON text, as the object Anthropic sends.
fn arguments(text: &str) -> Value {
    if text.trim().is_empty() {
        return json!({});
    }
    serde_json::from_str(text).unwrap_or_else(|_| json!({"arguments": text}))
}

/// The `message` object; written from typed fields, as every answer is.
#[derive(Serialize)]
struct Message<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<Block<'a>>,
    stop_reason: &'static str,
    stop_sequence: Option<&'a str>,
    usage: MessageUsage,
}

/// Anthropic's usage: the input and output tokens.
#[derive(Serialize)]
pub struct MessageUsage {
    pub input_tokens: u32,
    pub output_tokens: u32,
}

impl From<Usage> for MessageUsage {
    fn from(usage: Usage) -> Self {
        Self {
            input_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens,
        }
    }
}

/// The whole answer as a `message` object.
pub fn message(
    id: &str,
    model: &str,
    text: &str,
    reason: FinishReason,
    usage: Usage,
    extra: Option<&Passthrough>,
) -> String {
    let mut content = Vec::new();
    if !text.is_empty() {
        content.push(Block::Text { text });
    }
    content.extend(tool_uses(extra));
    let message = Message {
        id,
        kind: "message",
        role: "assistant",
        model,
        content,
        stop_reason: stop_reason(reason),
        stop_sequence: None,
        usage: usage.into(),
    };
    // Strings, numbers and JSON values always serialise.
    serde_json::to_string(&message).unwrap_or_default()
}

/// `error`'s status and `type` in Anthropic's terms.
pub fn error_kind(error: &ApiError) -> (StatusCode, &'static str) {
    // Shed for overload (OpenAI's 429 `overloaded_error`) and unavailable are Anthropic's 529.
    if error.kind == "overloaded_error" || error.status == StatusCode::SERVICE_UNAVAILABLE {
        return (
            StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "overloaded_error",
        );
    }
    let kind = match error.status.as_u16() {
        400 | 408 | 411 | 415 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 | 405 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        _ => "api_error",
    };
    (error.status, kind)
}

/// The error object, as the body of an error response or the data of an `error` event.
pub fn error_body(error: &ApiError) -> String {
    let (_, kind) = error_kind(error);
    let message = match &error.param {
        // Anthropic's errors have no `param`: the field goes in front of the message.
        Some(param) if !error.message.starts_with(param.as_str()) => format!("{param}: {}", error.message),
        _ => error.message.clone(),
    };
    json!({"type": "error", "error": {"type": kind, "message": message}}).to_string()
}

/// An error response in Anthropic's shape, with `headers` (a rate limit's) and `Retry-After`.
pub fn error_response(error: &ApiError, headers: HeaderMap) -> Response {
    let (status, _) = error_kind(error);
    let mut response = (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        error_body(error),
    )
        .into_response();
    if let Some(seconds) = error.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response.headers_mut().extend(headers);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_anthropics() {
        let shed = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "overloaded_error",
            "overloaded",
            "busy",
        );
        assert_eq!(
            error_kind(&shed),
            (StatusCode::from_u16(529).unwrap(), "overloaded_error")
        );
        let limited = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limited",
            "slow",
        );
        assert_eq!(error_kind(&limited).1, "rate_limit_error");
        let bad = ApiError::invalid("max_tokens", "is required");
        let body: Value = serde_json::from_str(&error_body(&bad)).unwrap();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("max_tokens"),
            "{body}"
        );
    }

    #[test]
    fn tool_calls_become_tool_use_blocks() {
        let mut extra = Passthrough::default();
        extra.message.insert(
            "tool_calls".into(),
            json!([{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]),
        );
        let text = message(
            "msg_1",
            "m",
            "",
            FinishReason::ToolCalls,
            Usage::new(1, 2),
            Some(&extra),
        );
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["stop_reason"], "tool_use");
        assert_eq!(
            body["content"],
            json!([{"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}}])
        );
    }
}
