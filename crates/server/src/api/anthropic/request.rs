//! The body of `POST /v1/messages`, checked and translated into the one request the pipeline
//! knows: the system prompt first, `tool_use` blocks as the assistant's `tool_calls`,
//! `tool_result` blocks as `tool` messages, Anthropic's tools and tool choice as OpenAI's (which
//! every backend kind speaks), `metadata.user_id` as the session key.

use serde::Deserialize;
use serde_json::{Value, json};
use tokio_prompt_orchestrator::{ChatMessage, InferenceRequest, PromptInput, Role, SamplingParams};

use crate::api::error::ApiError;
use crate::api::request::{check_range, pipeline_request, raw, required_model};
use crate::gateway::Delivery;

/// More stop sequences than this are refused: each one is matched against every token.
const MAX_STOP_SEQUENCES: usize = 16;

/// What `POST /v1/messages` reads (other fields are ignored, as they say nothing the backends
/// act on).
#[derive(Debug, Deserialize)]
pub struct MessagesRequest {
    model: Option<String>,
    max_tokens: Option<u32>,
    messages: Option<Vec<Message>>,
    system: Option<System>,
    stop_sequences: Option<Vec<String>>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<u32>,
    metadata: Option<Metadata>,
    stream: Option<bool>,
    tools: Option<Vec<Tool>>,
    tool_choice: Option<ToolChoice>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    user_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum System {
    Text(String),
    Blocks(Vec<TextBlock>),
}

#[derive(Debug, Deserialize)]
struct TextBlock {
    #[serde(rename = "type")]
    kind: String,
    text: String,
}

#[derive(Debug, Deserialize)]
struct Message {
    role: Option<MessageRole>,
    content: Option<Content>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum MessageRole {
    User,
    Assistant,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Blocks(Vec<Block>),
}

/// A content block; which fields it needs depends on its `type`, checked by hand so that a
/// missing one is named.
#[derive(Debug, Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
    id: Option<String>,
    name: Option<String>,
    input: Option<Value>,
    tool_use_id: Option<String>,
    content: Option<Content>,
    is_error: Option<bool>,
    source: Option<ImageSource>,
}

/// Where an image block's image is: a URL, or the image itself in base64.
#[derive(Debug, Deserialize)]
struct ImageSource {
    #[serde(rename = "type")]
    kind: String,
    url: Option<String>,
    media_type: Option<String>,
    data: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Tool {
    name: Option<String>,
    description: Option<String>,
    input_schema: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ToolChoice {
    #[serde(rename = "type")]
    kind: String,
    name: Option<String>,
}

impl MessagesRequest {
    /// The request as `count_tokens` reads it: `max_tokens` is not needed to count.
    pub fn for_counting(mut self) -> Self {
        self.max_tokens.get_or_insert(1);
        self
    }

    /// Checks every field and builds the pipeline request (its session is set by the caller).
    ///
    /// # Errors
    /// 400 naming the first field at fault.
    pub fn into_request(self) -> Result<(InferenceRequest, Delivery), ApiError> {
        let model = required_model(self.model)?;
        let max_tokens = match self.max_tokens {
            Some(0) => return Err(ApiError::invalid("max_tokens", "must be at least 1")),
            Some(n) => n,
            None => {
                return Err(ApiError::invalid(
                    "max_tokens",
                    "is required: the most tokens the answer may have",
                ));
            }
        };
        let wire = self
            .messages
            .ok_or_else(|| ApiError::invalid("messages", "is required: send at least one message"))?;
        if wire.is_empty() {
            return Err(ApiError::invalid("messages", "must contain at least one message"));
        }
        let mut messages = Vec::new();
        if let Some(system) = self.system {
            messages.push(ChatMessage::system(system_text(system)?));
        }
        for (i, message) in wire.into_iter().enumerate() {
            translate(message, i, &mut messages)?;
        }
        check_range("temperature", self.temperature, 1.0)?;
        check_range("top_p", self.top_p, 1.0)?;
        let stop = self.stop_sequences.unwrap_or_default();
        if stop.len() > MAX_STOP_SEQUENCES {
            return Err(ApiError::invalid(
                "stop_sequences",
                format!("at most {MAX_STOP_SEQUENCES} are allowed (got {})", stop.len()),
            ));
        }
        if let Some(i) = stop.iter().position(String::is_empty) {
            return Err(ApiError::invalid(
                format!("stop_sequences[{i}]"),
                "must not be empty",
            ));
        }
        let mut extra = serde_json::Map::new();
        if let Some(k) = self.top_k {
            extra.insert("top_k".into(), json!(k));
        }
        if let Some(tools) = self.tools {
            extra.insert("tools".into(), Value::Array(tools_of(tools)?));
        }
        if let Some(choice) = self.tool_choice {
            extra.insert("tool_choice".into(), tool_choice_of(choice)?);
        }
        let stream = self.stream.unwrap_or(false);
        let params = SamplingParams {
            temperature: self.temperature.map(|t| t as f32),
            top_p: self.top_p.map(|p| p as f32),
            max_tokens: Some(max_tokens),
            stop,
            seed: None,
        };
        let delivery = Delivery {
            model: model.clone(),
            stream,
            include_usage: true,
            user: self.metadata.and_then(|m| m.user_id).filter(|u| !u.is_empty()),
            turn: None,
            base64: false,
        };
        let request = pipeline_request(model, PromptInput::Chat(messages), params, stream, raw(extra));
        Ok((request, delivery))
    }
}

fn system_text(system: System) -> Result<String, ApiError> {
    match system {
        System::Text(text) => Ok(text),
        System::Blocks(blocks) => {
            let mut text = Vec::new();
            for (i, block) in blocks.into_iter().enumerate() {
                if block.kind != "text" {
                    return Err(ApiError::invalid(
                        format!("system[{i}].type"),
                        format!("must be `text` (got `{}`)", block.kind),
                    ));
                }
                text.push(block.text);
            }
            Ok(text.join("\n"))
        }
    }
}

/// Adds message `i` to `messages` in the pipeline's terms.
fn translate(message: Message, i: usize, messages: &mut Vec<ChatMessage>) -> Result<(), ApiError> {
    let at = |field: &str| format!("messages[{i}].{field}");
    let role = message
        .role
        .ok_or_else(|| ApiError::invalid(at("role"), "is required: `user` or `assistant`"))?;
    let blocks = match message.content.ok_or_else(|| {
        ApiError::invalid(at("content"), "is required: a string or a list of content blocks")
    })? {
        Content::Text(text) => {
            let role = if role == MessageRole::User {
                Role::User
            } else {
                Role::Assistant
            };
            messages.push(ChatMessage::new(role, text));
            return Ok(());
        }
        Content::Blocks(blocks) => blocks,
    };
    let mut text = Vec::new();
    // Text and images in order, for a message with images (sent whole as OpenAI's parts).
    let mut parts = Vec::new();
    let mut images = false;
    let mut tool_calls = Vec::new();
    let mut results = Vec::new();
    for (j, block) in blocks.into_iter().enumerate() {
        let at = |field: &str| format!("messages[{i}].content[{j}].{field}");
        let kind = block
            .kind
            .as_deref()
            .ok_or_else(|| ApiError::invalid(at("type"), "is required"))?;
        match (kind, role) {
            ("text", _) => {
                let block_text = block
                    .text
                    .ok_or_else(|| ApiError::invalid(at("text"), "is required for a text block"))?;
                parts.push(json!({"type": "text", "text": block_text}));
                text.push(block_text);
            }
            ("tool_use", MessageRole::Assistant) => {
                let id = block
                    .id
                    .ok_or_else(|| ApiError::invalid(at("id"), "is required for a tool_use block"))?;
                let name = block
                    .name
                    .ok_or_else(|| ApiError::invalid(at("name"), "is required for a tool_use block"))?;
                let input = block.input.unwrap_or_else(|| json!({}));
                tool_calls.push(json!({
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": input.to_string()},
                }));
            }
            ("tool_result", MessageRole::User) => {
                let id = block.tool_use_id.ok_or_else(|| {
                    ApiError::invalid(at("tool_use_id"), "is required for a tool_result block")
                })?;
                let mut content = match block.content {
                    None => String::new(),
                    Some(Content::Text(text)) => text,
                    Some(Content::Blocks(inner)) => inner
                        .into_iter()
                        .filter_map(|b| (b.kind.as_deref() == Some("text")).then_some(b.text).flatten())
                        .collect::<Vec<_>>()
                        .join("\n"),
                };
                if block.is_error == Some(true) {
                    content = format!("Error: {content}");
                }
                results.push((id, content));
            }
            ("tool_use", MessageRole::User) | ("tool_result", MessageRole::Assistant) => {
                let belongs = if kind == "tool_use" { "assistant" } else { "user" };
                return Err(ApiError::invalid(
                    at("type"),
                    format!("a `{kind}` block belongs in an {belongs} message"),
                ));
            }
            ("image", _) => {
                let source = block
                    .source
                    .ok_or_else(|| ApiError::invalid(at("source"), "is required for an image block"))?;
                parts.push(json!({"type": "image_url", "image_url": {"url": image_url(source, &at)?}}));
                images = true;
            }
            (other, _) => {
                return Err(ApiError::invalid(
                    at("type"),
                    format!("must be `text`, `image`, `tool_use` or `tool_result` (got `{other}`)"),
                ));
            }
        }
    }
    // Tool results answer the assistant's calls just before, so they come first.
    for (id, content) in results {
        let mut message = ChatMessage::new(Role::Tool, content);
        message.extra = raw(serde_json::Map::from_iter([(
            "tool_call_id".to_owned(),
            json!(id),
        )]));
        messages.push(message);
    }
    let role = if role == MessageRole::User {
        Role::User
    } else {
        Role::Assistant
    };
    if !text.is_empty() || !tool_calls.is_empty() || images {
        let mut message = ChatMessage::new(role, text.join("\n"));
        let mut extra = serde_json::Map::new();
        if !tool_calls.is_empty() {
            extra.insert("tool_calls".to_owned(), Value::Array(tool_calls));
        }
        if images {
            extra.insert("content".to_owned(), Value::Array(parts));
        }
        message.extra = raw(extra);
        messages.push(message);
    }
    Ok(())
}

/// An image block's source as the URL OpenAI's `image_url` parts take (base64 as a data URL).
fn image_url(source: ImageSource, at: &dyn Fn(&str) -> String) -> Result<String, ApiError> {
    match source.kind.as_str() {
        "url" => source
            .url
            .ok_or_else(|| ApiError::invalid(at("source.url"), "is required for a url source")),
        "base64" => {
            let media = source.media_type.ok_or_else(|| {
                ApiError::invalid(at("source.media_type"), "is required for a base64 source")
            })?;
            let data = source
                .data
                .ok_or_else(|| ApiError::invalid(at("source.data"), "is required for a base64 source"))?;
            Ok(format!("data:{media};base64,{data}"))
        }
        other => Err(ApiError::invalid(
            at("source.type"),
            format!("must be `url` or `base64` (got `{other}`)"),
        )),
    }
}

/// Anthropic's tools as OpenAI's function tools.
fn tools_of(tools: Vec<Tool>) -> Result<Vec<Value>, ApiError> {
    tools
        .into_iter()
        .enumerate()
        .map(|(i, tool)| {
            let name = tool
                .name
                .filter(|n| !n.is_empty())
                .ok_or_else(|| ApiError::invalid(format!("tools[{i}].name"), "is required"))?;
            let schema = tool.input_schema.ok_or_else(|| {
                ApiError::invalid(
                    format!("tools[{i}].input_schema"),
                    "is required: a JSON schema object",
                )
            })?;
            let mut function = json!({"name": name, "parameters": schema});
            if let Some(description) = tool.description {
                function["description"] = json!(description);
            }
            Ok(json!({"type": "function", "function": function}))
        })
        .collect()
}

/// Anthropic's `tool_choice` as OpenAI's.
fn tool_choice_of(choice: ToolChoice) -> Result<Value, ApiError> {
    Ok(match choice.kind.as_str() {
        "auto" => json!("auto"),
        "any" => json!("required"),
        "none" => json!("none"),
        "tool" => {
            let name = choice
                .name
                .ok_or_else(|| ApiError::invalid("tool_choice.name", "is required when type is `tool`"))?;
            json!({"type": "function", "function": {"name": name}})
        }
        other => {
            return Err(ApiError::invalid(
                "tool_choice.type",
                format!("must be `auto`, `any`, `tool` or `none` (got `{other}`)"),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translated(body: Value) -> Vec<ChatMessage> {
        let request: MessagesRequest = serde_json::from_value(body).unwrap();
        let (request, _) = request.into_request().unwrap();
        let PromptInput::Chat(messages) = request.input else {
            panic!("not chat");
        };
        messages
    }

    #[test]
    fn tool_turns_become_openais_tool_calls_and_tool_messages() {
        let messages = translated(json!({
            "model": "m", "max_tokens": 5, "system": [{"type": "text", "text": "Be brief."}],
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "Sunny"}]},
                    {"type": "text", "text": "And tomorrow?"},
                ]},
            ],
        }));
        let roles: Vec<Role> = messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [Role::System, Role::User, Role::Assistant, Role::Tool, Role::User]
        );
        assert_eq!(messages[0].content, "Be brief.");
        let calls: Value = serde_json::from_str(messages[2].extra["tool_calls"].get()).unwrap();
        assert_eq!(
            calls,
            json!([{"id": "t1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}])
        );
        assert_eq!(messages[3].content, "Sunny");
        assert_eq!(messages[3].extra["tool_call_id"].get(), "\"t1\"");
        assert_eq!(messages[4].content, "And tomorrow?");
    }
}
