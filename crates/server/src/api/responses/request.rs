//! The body of `POST /v1/responses`, checked and translated into the one request the pipeline
//! knows: `instructions` as the system message, input items as chat messages (function calls
//! as the assistant's `tool_calls`, their outputs as `tool` messages), function tools as
//! OpenAI's chat tools. The turn (its input, whether to store the answer, the answer it
//! continues) goes with the delivery; the earlier turns are put in by `stored::continue_turn`.

use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio_prompt_orchestrator::{ChatMessage, InferenceRequest, PromptInput, Role, SamplingParams};

use super::valid_id;
use crate::api::error::ApiError;
use crate::api::request::{check_range, pipeline_request, raw, required_model};
use crate::gateway::Delivery;
use crate::stored::{Echo, Turn};

/// What `POST /v1/responses` reads; other fields are ignored, as they say nothing the backends
/// act on.
#[derive(Debug, Deserialize)]
pub struct ResponsesRequest {
    model: Option<String>,
    input: Option<Input>,
    instructions: Option<String>,
    tools: Option<Vec<Tool>>,
    tool_choice: Option<ToolChoice>,
    parallel_tool_calls: Option<bool>,
    max_output_tokens: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    stream: Option<bool>,
    store: Option<bool>,
    previous_response_id: Option<String>,
    user: Option<String>,
    metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Input {
    Text(String),
    Items(Vec<Item>),
}

/// An input item; which fields it needs depends on its `type`, checked by hand so that a
/// missing one is named.
#[derive(Debug, Deserialize)]
struct Item {
    #[serde(rename = "type")]
    kind: Option<String>,
    role: Option<String>,
    content: Option<Content>,
    call_id: Option<String>,
    name: Option<String>,
    arguments: Option<String>,
    output: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
    image_url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Tool {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: Option<String>,
    description: Option<String>,
    parameters: Option<Value>,
    strict: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ToolChoice {
    Mode(String),
    Function {
        #[serde(rename = "type")]
        kind: String,
        name: Option<String>,
    },
}

impl ResponsesRequest {
    /// Checks every field and builds the pipeline request (its session is set by the caller).
    ///
    /// # Errors
    /// 400 naming the first field at fault.
    pub fn into_request(self) -> Result<(InferenceRequest, Delivery), ApiError> {
        let model = required_model(self.model)?;
        let input = match self.input {
            None => {
                return Err(ApiError::invalid(
                    "input",
                    "is required: a string, or a list of input items",
                ));
            }
            Some(Input::Text(text)) => vec![ChatMessage::user(text)],
            Some(Input::Items(items)) if items.is_empty() => {
                return Err(ApiError::invalid("input", "must contain at least one item"));
            }
            Some(Input::Items(items)) => translate(items)?,
        };
        if let Some(id) = &self.previous_response_id
            && !valid_id(id)
        {
            return Err(ApiError::invalid(
                "previous_response_id",
                "must be the id of a stored response, such as \"resp_0123abcd\"",
            ));
        }
        if self.max_output_tokens == Some(0) {
            return Err(ApiError::invalid("max_output_tokens", "must be at least 1"));
        }
        check_range("temperature", self.temperature, 2.0)?;
        check_range("top_p", self.top_p, 1.0)?;
        let mut extra = Map::new();
        let tools = self.tools.unwrap_or_default();
        let echoed_tools = Value::Array(tools.iter().map(Tool::echoed).collect());
        if !tools.is_empty() {
            extra.insert("tools".into(), Value::Array(tools_of(tools)?));
        }
        let tool_choice = match self.tool_choice {
            None => json!("auto"),
            Some(choice) => {
                let (chat, echoed) = tool_choice_of(choice)?;
                extra.insert("tool_choice".into(), chat);
                echoed
            }
        };
        if let Some(parallel) = self.parallel_tool_calls {
            extra.insert("parallel_tool_calls".into(), json!(parallel));
        }
        let echo = Echo {
            instructions: self.instructions.clone(),
            max_output_tokens: self.max_output_tokens,
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            parallel_tool_calls: self.parallel_tool_calls.unwrap_or(true),
            metadata: Value::Object(self.metadata.unwrap_or_default()),
            user: self.user.clone(),
            tools: echoed_tools,
            tool_choice,
        };
        let stream = self.stream.unwrap_or(false);
        let params = SamplingParams {
            temperature: self.temperature.map(|t| t as f32),
            top_p: self.top_p.map(|p| p as f32),
            max_tokens: self.max_output_tokens,
            stop: Vec::new(),
            seed: None,
        };
        let mut messages = Vec::with_capacity(input.len() + 1);
        if let Some(instructions) = self.instructions.filter(|i| !i.is_empty()) {
            messages.push(ChatMessage::system(instructions));
        }
        messages.extend(input.iter().cloned());
        let delivery = Delivery {
            model: model.clone(),
            stream,
            include_usage: true,
            user: self.user.filter(|u| !u.is_empty()),
            turn: Some(Box::new(Turn {
                input,
                previous: self.previous_response_id,
                store: self.store.unwrap_or(true),
                echo,
                session: String::new(),
            })),
            base64: false,
        };
        let request = pipeline_request(model, PromptInput::Chat(messages), params, stream, raw(extra));
        Ok((request, delivery))
    }
}

/// The input items as chat messages: a run of function calls becomes one assistant message.
fn translate(items: Vec<Item>) -> Result<Vec<ChatMessage>, ApiError> {
    let mut messages: Vec<ChatMessage> = Vec::with_capacity(items.len());
    let mut calls = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let at = |field: &str| format!("input[{i}].{field}");
        let kind = item
            .kind
            .as_deref()
            .unwrap_or(if item.role.is_some() { "message" } else { "" });
        if kind != "function_call" && !calls.is_empty() {
            messages.push(assistant_calls(std::mem::take(&mut calls)));
        }
        match kind {
            "message" => messages.push(message(item, &at)?),
            "function_call" => {
                let call_id = item.call_id.ok_or_else(|| {
                    ApiError::invalid(at("call_id"), "is required for a function_call item")
                })?;
                let name = item
                    .name
                    .ok_or_else(|| ApiError::invalid(at("name"), "is required for a function_call item"))?;
                calls.push(json!({
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": item.arguments.unwrap_or_default()},
                }));
            }
            "function_call_output" => {
                let call_id = item.call_id.ok_or_else(|| {
                    ApiError::invalid(at("call_id"), "is required for a function_call_output item")
                })?;
                let output = item.output.ok_or_else(|| {
                    ApiError::invalid(at("output"), "is required for a function_call_output item")
                })?;
                let (text, _) = content_text(output, &|j, f| at(&format!("output[{j}].{f}")))?;
                let mut message = ChatMessage::new(Role::Tool, text);
                message.extra = raw(Map::from_iter([("tool_call_id".to_owned(), json!(call_id))]));
                messages.push(message);
            }
            "" => {
                return Err(ApiError::invalid(
                    at("type"),
                    "is required: `message`, `function_call` or `function_call_output`",
                ));
            }
            other => {
                return Err(ApiError::invalid(
                    at("type"),
                    format!("must be `message`, `function_call` or `function_call_output` (got `{other}`)"),
                ));
            }
        }
    }
    if !calls.is_empty() {
        messages.push(assistant_calls(calls));
    }
    Ok(messages)
}

fn assistant_calls(calls: Vec<Value>) -> ChatMessage {
    let mut message = ChatMessage::new(Role::Assistant, "");
    message.extra = raw(Map::from_iter([("tool_calls".to_owned(), Value::Array(calls))]));
    message
}

/// A `message` item.
fn message(item: Item, at: &dyn Fn(&str) -> String) -> Result<ChatMessage, ApiError> {
    let role = match item.role.as_deref() {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        // Developer messages are the newer name of system messages; chat templates know system.
        Some("system" | "developer") => Role::System,
        Some(other) => {
            return Err(ApiError::invalid(
                at("role"),
                format!("must be `user`, `assistant`, `system` or `developer` (got `{other}`)"),
            ));
        }
        None => {
            return Err(ApiError::invalid(
                at("role"),
                "is required: `user`, `assistant`, `system` or `developer`",
            ));
        }
    };
    let content = item.content.ok_or_else(|| {
        ApiError::invalid(at("content"), "is required: a string or a list of content parts")
    })?;
    let (text, parts) = content_text(content, &|j, f| at(&format!("content[{j}].{f}")))?;
    let mut message = ChatMessage::new(role, text);
    if let Some(parts) = parts {
        // With images, the parts go to the backend whole, as OpenAI's chat parts.
        message.extra = raw(Map::from_iter([("content".to_owned(), Value::Array(parts))]));
    }
    Ok(message)
}

/// The text of a content, and OpenAI's chat parts when it has images.
fn content_text(
    content: Content,
    at: &dyn Fn(usize, &str) -> String,
) -> Result<(String, Option<Vec<Value>>), ApiError> {
    let parts = match content {
        Content::Text(text) => return Ok((text, None)),
        Content::Parts(parts) => parts,
    };
    let mut text = Vec::new();
    let mut chat_parts = Vec::new();
    let mut images = false;
    for (j, part) in parts.into_iter().enumerate() {
        match part.kind.as_deref() {
            Some("input_text" | "output_text" | "text") => {
                let part_text = part
                    .text
                    .ok_or_else(|| ApiError::invalid(at(j, "text"), "is required for a text part"))?;
                chat_parts.push(json!({"type": "text", "text": part_text}));
                text.push(part_text);
            }
            Some("input_image") => {
                let url = part.image_url.ok_or_else(|| {
                    ApiError::invalid(at(j, "image_url"), "is required: the image's URL or data URL")
                })?;
                chat_parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
                images = true;
            }
            Some(other) => {
                return Err(ApiError::invalid(
                    at(j, "type"),
                    format!("must be `input_text`, `output_text` or `input_image` (got `{other}`)"),
                ));
            }
            None => return Err(ApiError::invalid(at(j, "type"), "is required")),
        }
    }
    Ok((text.join("\n"), images.then_some(chat_parts)))
}

impl Tool {
    /// The tool as the response object repeats it.
    fn echoed(&self) -> Value {
        json!({
            "type": self.kind.as_deref().unwrap_or("function"),
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
            "strict": self.strict.unwrap_or(true),
        })
    }
}

/// Function tools as OpenAI's chat tools (the only kind backends run).
fn tools_of(tools: Vec<Tool>) -> Result<Vec<Value>, ApiError> {
    tools
        .into_iter()
        .enumerate()
        .map(|(i, tool)| {
            match tool.kind.as_deref() {
                Some("function") => {}
                Some(other) => {
                    return Err(ApiError::invalid(
                        format!("tools[{i}].type"),
                        format!("must be `function`: the gateway runs no built-in tools (got `{other}`)"),
                    ));
                }
                None => {
                    return Err(ApiError::invalid(
                        format!("tools[{i}].type"),
                        "is required: `function`",
                    ));
                }
            }
            let name = tool
                .name
                .filter(|n| !n.is_empty())
                .ok_or_else(|| ApiError::invalid(format!("tools[{i}].name"), "is required"))?;
            let mut function = json!({"name": name});
            if let Some(parameters) = tool.parameters {
                function["parameters"] = parameters;
            }
            if let Some(description) = tool.description {
                function["description"] = json!(description);
            }
            if let Some(strict) = tool.strict {
                function["strict"] = json!(strict);
            }
            Ok(json!({"type": "function", "function": function}))
        })
        .collect()
}

/// `tool_choice` as chat's, and as the response object repeats it.
fn tool_choice_of(choice: ToolChoice) -> Result<(Value, Value), ApiError> {
    match choice {
        ToolChoice::Mode(mode) if matches!(mode.as_str(), "auto" | "none" | "required") => {
            Ok((json!(mode), json!(mode)))
        }
        ToolChoice::Mode(other) => Err(ApiError::invalid(
            "tool_choice",
            format!("must be `auto`, `none`, `required` or a function (got `{other}`)"),
        )),
        ToolChoice::Function { kind, name } if kind == "function" => {
            let name =
                name.ok_or_else(|| ApiError::invalid("tool_choice.name", "is required for a function"))?;
            Ok((
                json!({"type": "function", "function": {"name": name}}),
                json!({"type": "function", "name": name}),
            ))
        }
        ToolChoice::Function { kind, .. } => Err(ApiError::invalid(
            "tool_choice.type",
            format!("must be `function` (got `{kind}`)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translated(body: Value) -> (Vec<ChatMessage>, Delivery) {
        let request: ResponsesRequest = serde_json::from_value(body).unwrap();
        let (request, delivery) = request.into_request().unwrap();
        let PromptInput::Chat(messages) = request.input else {
            panic!("not chat");
        };
        (messages, delivery)
    }

    #[test]
    fn items_become_chat_messages_and_the_turn_keeps_its_own_input() {
        let (messages, delivery) = translated(json!({
            "model": "m", "instructions": "Be brief.", "previous_response_id": "resp_1",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "Sunny"},
            ],
        }));
        let roles: Vec<Role> = messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::System, Role::User, Role::Assistant, Role::Tool]);
        assert_eq!(messages[0].content, "Be brief.");
        let calls: Value = serde_json::from_str(messages[2].extra["tool_calls"].get()).unwrap();
        assert_eq!(
            calls,
            json!([{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}])
        );
        assert_eq!(messages[3].extra["tool_call_id"].get(), "\"c1\"");
        let turn = delivery.turn.unwrap();
        // The instructions are not part of the turn: a continued conversation does not carry them.
        assert_eq!(turn.input, messages[1..]);
        assert_eq!(turn.previous.as_deref(), Some("resp_1"));
        assert!(turn.store);
    }
}
