//! The OpenAI request bodies of `/v1/chat/completions` and `/v1/completions`, and their checks.
//!
//! Fields we do not act on are kept aside and passed to the backend unchanged (OpenAI clients
//! send many, and backends understand more than we do). Required fields are
//! `Option`s checked by hand, so a missing one is reported by name like every other mistake.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use tokio_prompt_orchestrator::extra::Fields;
use tokio_prompt_orchestrator::{
    ChatMessage, InferenceRequest, PromptInput, RawExtra, Role, SamplingParams, SessionId,
};

use super::error::ApiError;
use crate::gateway::Delivery;

/// More stop sequences than this are refused: each one is matched against every token.
const MAX_STOP_SEQUENCES: usize = 16;

/// The body of `POST /v1/chat/completions` (which needs `messages`) and `POST /v1/completions`
/// (which needs `prompt`): one struct, because every other field is shared.
#[derive(Debug, Default)]
pub struct GenerationRequest {
    model: Option<String>,
    messages: Option<Vec<WireMessage>>,
    prompt: Option<Prompt>,
    // Read wide, so that a number too large for the model's `f32` is refused as itself rather
    // than as infinity.
    temperature: Option<f64>,
    top_p: Option<f64>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    stop: Option<Stop>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    user: Option<String>,
    seed: Option<i64>,
    n: Option<u32>,
    /// Everything else (`tools`, `response_format`, `logit_bias`, ...), for the backend.
    extra: RawExtra,
}

impl Fields for GenerationRequest {
    type Extra = RawExtra;
    const EXPECTING: &'static str = "a request object";

    fn field<'de, A: MapAccess<'de>>(&mut self, name: &str, map: &mut A) -> Result<bool, A::Error> {
        match name {
            "model" => self.model = map.next_value()?,
            "messages" => self.messages = map.next_value()?,
            "prompt" => self.prompt = map.next_value()?,
            "temperature" => self.temperature = map.next_value()?,
            "top_p" => self.top_p = map.next_value()?,
            "max_tokens" => self.max_tokens = map.next_value()?,
            "max_completion_tokens" => self.max_completion_tokens = map.next_value()?,
            "stop" => self.stop = map.next_value()?,
            "stream" => self.stream = map.next_value()?,
            "stream_options" => self.stream_options = map.next_value()?,
            "user" => self.user = map.next_value()?,
            "seed" => self.seed = map.next_value()?,
            "n" => self.n = map.next_value()?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn extra(&mut self) -> &mut RawExtra {
        &mut self.extra
    }
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Default)]
struct WireMessage {
    role: Option<WireRole>,
    content: Option<Content>,
    /// `tool_calls`, `tool_call_id`, `name`, ...: passed to the backend.
    extra: RawExtra,
}

impl Fields for WireMessage {
    type Extra = RawExtra;
    const EXPECTING: &'static str = "a message object";

    fn field<'de, A: MapAccess<'de>>(&mut self, name: &str, map: &mut A) -> Result<bool, A::Error> {
        match name {
            "role" => self.role = map.next_value()?,
            "content" => self.content = map.next_value()?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn extra(&mut self) -> &mut RawExtra {
        &mut self.extra
    }
}

// Read field by field, not with `#[serde(flatten)]`, which copies the whole body first (see
// `extra`).
tokio_prompt_orchestrator::read_fields!(GenerationRequest, WireMessage);

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum WireRole {
    System,
    /// OpenAI's newer name for system instructions.
    Developer,
    User,
    Assistant,
    Tool,
}

impl From<WireRole> for Role {
    fn from(role: WireRole) -> Self {
        match role {
            WireRole::System | WireRole::Developer => Role::System,
            WireRole::User => Role::User,
            WireRole::Assistant => Role::Assistant,
            WireRole::Tool => Role::Tool,
        }
    }
}

/// Message content: a string, or an array of content parts.
#[derive(Debug)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
    /// `{"url": ..., "detail": ...}` of an `image_url` part, passed on as it came.
    image_url: Option<Box<RawValue>>,
}

/// `stop`: one string or a list of them.
#[derive(Debug)]
struct Stop(Vec<String>);

/// `prompt`: a string, or a list holding exactly one string.
#[derive(Debug)]
struct Prompt(Vec<String>);

impl GenerationRequest {
    /// Checks every field of a chat request and builds the pipeline request (its session is set
    /// by the caller).
    ///
    /// # Errors
    /// 400 naming the first field at fault.
    pub fn into_chat(mut self) -> Result<(InferenceRequest, Delivery), ApiError> {
        check_model(self.model.as_deref())?;
        let messages = self
            .messages
            .take()
            .ok_or_else(|| ApiError::invalid("messages", "is required: send at least one message"))?;
        if messages.is_empty() {
            return Err(ApiError::invalid("messages", "must contain at least one message"));
        }
        let messages = messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| m.into_chat_message(i))
            .collect::<Result<Vec<_>, _>>()?;
        self.build(PromptInput::Chat(messages))
    }

    /// Checks every field of a completion request and builds the pipeline request.
    ///
    /// # Errors
    /// 400 naming the first field at fault.
    pub fn into_completion(mut self) -> Result<(InferenceRequest, Delivery), ApiError> {
        check_model(self.model.as_deref())?;
        let Prompt(mut prompts) = self
            .prompt
            .take()
            .ok_or_else(|| ApiError::invalid("prompt", "is required: send the prompt as a string"))?;
        if prompts.len() != 1 {
            return Err(ApiError::invalid(
                "prompt",
                "send exactly one prompt string; batches of prompts are not supported",
            ));
        }
        let prompt = prompts.pop().unwrap_or_default();
        self.build(PromptInput::Text(prompt))
    }

    /// The checks and conversion shared by both endpoints; the model was checked first.
    fn build(self, input: PromptInput) -> Result<(InferenceRequest, Delivery), ApiError> {
        let model = self.model.unwrap_or_default();
        if let Some(n) = self.n
            && n != 1
        {
            return Err(ApiError::invalid(
                "n",
                format!("only n = 1 is supported (got {n}); send separate requests for more choices"),
            ));
        }
        check_range("temperature", self.temperature, 2.0)?;
        check_range("top_p", self.top_p, 1.0)?;
        for (field, value) in [
            ("max_tokens", self.max_tokens),
            ("max_completion_tokens", self.max_completion_tokens),
        ] {
            if value == Some(0) {
                return Err(ApiError::invalid(field, "must be at least 1"));
            }
        }
        let stop = self.stop.map(|s| s.0).unwrap_or_default();
        if stop.len() > MAX_STOP_SEQUENCES {
            return Err(ApiError::invalid(
                "stop",
                format!(
                    "at most {MAX_STOP_SEQUENCES} stop sequences are allowed (got {})",
                    stop.len()
                ),
            ));
        }
        if let Some(i) = stop.iter().position(String::is_empty) {
            return Err(ApiError::invalid(format!("stop[{i}]"), "must not be empty"));
        }
        let stream = self.stream.unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return Err(ApiError::invalid(
                "stream_options",
                "is only allowed when stream is true",
            ));
        }
        let params = SamplingParams {
            temperature: self.temperature.map(|t| t as f32),
            top_p: self.top_p.map(|p| p as f32),
            // `max_completion_tokens` is OpenAI's newer name; it wins when both are sent.
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            stop,
            seed: self.seed,
        };
        let delivery = Delivery {
            model: model.clone(),
            stream,
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
            user: self.user.filter(|u| !u.is_empty()),
            turn: None,
            base64: false,
        };
        Ok((
            pipeline_request(model, input, params, stream, self.extra),
            delivery,
        ))
    }
}

/// The pipeline request an API's body becomes. Its session is a placeholder until
/// `Format::prepare` resolves the affinity key.
pub fn pipeline_request(
    model: String,
    input: PromptInput,
    params: SamplingParams,
    stream: bool,
    extra: RawExtra,
) -> InferenceRequest {
    let mut request = InferenceRequest::chat(SessionId::new(""), Vec::new())
        .with_model(model)
        .with_params(params)
        .with_stream(stream);
    request.input = input;
    request.extra = extra;
    request
}

/// A sampling field, when sent, from 0 to `most`.
///
/// # Errors
/// 400 naming `field` otherwise.
pub fn check_range(field: &str, value: Option<f64>, most: f64) -> Result<(), ApiError> {
    match value {
        Some(v) if !(0.0..=most).contains(&v) => Err(ApiError::invalid(
            field,
            format!("must be between 0 and {most} (got {})", number(v)),
        )),
        _ => Ok(()),
    }
}

/// The `model` every API requires, checked as [`check_model`] does.
///
/// # Errors
/// 400 naming `model` when it is missing or empty.
pub fn required_model(model: Option<String>) -> Result<String, ApiError> {
    check_model(model.as_deref())?;
    Ok(model.unwrap_or_default())
}

fn check_model(model: Option<&str>) -> Result<(), ApiError> {
    match model {
        None => Err(ApiError::invalid(
            "model",
            "is required: name one of the models listed by GET /v1/models",
        )),
        Some(m) if m.trim().is_empty() => Err(ApiError::invalid(
            "model",
            "must not be empty: name one of the models listed by GET /v1/models",
        )),
        Some(_) => Ok(()),
    }
}

impl WireMessage {
    fn into_chat_message(self, index: usize) -> Result<ChatMessage, ApiError> {
        let Some(role) = self.role.map(Role::from) else {
            return Err(ApiError::invalid(
                format!("messages[{index}].role"),
                "is required: one of system, developer, user, assistant, tool",
            ));
        };
        let mut parts = None;
        let content = match self.content {
            Some(Content::Text(text)) => text,
            Some(Content::Parts(list)) => {
                let (text, whole) = join_parts(list, index)?;
                parts = whole;
                text
            }
            // An assistant turn that only called tools has no content.
            None if role == Role::Assistant => String::new(),
            None => {
                return Err(ApiError::invalid(
                    format!("messages[{index}].content"),
                    format!("is required for a {} message", role.as_str()),
                ));
            }
        };
        let mut message = ChatMessage::new(role, content);
        message.extra = self.extra;
        // What `join_parts` wrote is JSON.
        if let Some(parts) = parts.and_then(|p| RawValue::from_string(p).ok()) {
            message.extra.insert("content".into(), parts);
        }
        Ok(message)
    }
}

/// The text of content parts, and the parts themselves when there are images among them (they go
/// to the backend whole, in the message's `extra["content"]`).
fn join_parts(parts: Vec<ContentPart>, index: usize) -> Result<(String, Option<String>), ApiError> {
    let mut text = String::new();
    let mut whole = Vec::new();
    let mut images = false;
    for (j, part) in parts.into_iter().enumerate() {
        match (part.kind.as_str(), part.text, part.image_url) {
            ("text", Some(part_text), _) => {
                whole.push(serde_json::json!({"type": "text", "text": part_text}).to_string());
                text.push_str(&part_text);
            }
            ("text", None, _) => {
                return Err(ApiError::invalid(
                    format!("messages[{index}].content[{j}].text"),
                    "is required for a text part",
                ));
            }
            ("image_url", _, Some(image)) => {
                images = true;
                whole.push(format!(r#"{{"type":"image_url","image_url":{}}}"#, image.get()));
            }
            ("image_url", _, None) => {
                return Err(ApiError::invalid(
                    format!("messages[{index}].content[{j}].image_url"),
                    "is required for an image_url part: {\"url\": \"https://...\"}",
                ));
            }
            (other, _, _) => {
                return Err(ApiError::invalid(
                    format!("messages[{index}].content[{j}].type"),
                    format!("only text and image_url content parts are supported (got `{other}`)"),
                ));
            }
        }
    }
    Ok((text, images.then(|| format!("[{}]", whole.join(",")))))
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ContentVisitor;
        impl<'de> Visitor<'de> for ContentVisitor {
            type Value = Content;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Content, E> {
                Ok(Content::Text(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Content, E> {
                Ok(Content::Text(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
                let mut parts = Vec::new();
                while let Some(part) = seq.next_element()? {
                    parts.push(part);
                }
                Ok(Content::Parts(parts))
            }
        }
        deserializer.deserialize_any(ContentVisitor)
    }
}

/// Deserialises a string or an array of strings into a list.
fn string_or_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct ListVisitor;
    impl<'de> Visitor<'de> for ListVisitor {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or an array of strings")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            Ok(vec![v.to_string()])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element::<String>()? {
                items.push(item);
            }
            Ok(items)
        }
    }
    deserializer.deserialize_any(ListVisitor)
}

impl<'de> Deserialize<'de> for Stop {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        string_or_list(deserializer).map(Stop)
    }
}

impl<'de> Deserialize<'de> for Prompt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        string_or_list(deserializer).map(Prompt)
    }
}

/// A number as a client would write it: huge and tiny ones in exponent form.
fn number(n: f64) -> String {
    if n != 0.0 && !(1e-6..1e15).contains(&n.abs()) {
        format!("{n:e}")
    } else {
        n.to_string()
    }
}

/// JSON fields as the pipeline keeps fields it passes on: their text.
pub fn raw(fields: serde_json::Map<String, serde_json::Value>) -> RawExtra {
    // A map of JSON values always writes and reads back (through text: a raw value is read from
    // text only).
    serde_json::from_str(&serde_json::Value::Object(fields).to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::body::parse_json;
    use super::*;

    fn chat(body: &str) -> Result<(InferenceRequest, Delivery), ApiError> {
        parse_json::<GenerationRequest>(body.as_bytes())?.into_chat()
    }

    fn chat_error(body: &str) -> String {
        chat(body).unwrap_err().message
    }

    #[test]
    fn a_full_request_is_understood() {
        let (req, delivery) = chat(
            r#"{"model": "m", "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
                {"role": "assistant", "content": null, "tool_calls": []},
                {"role": "tool", "content": "42", "tool_call_id": "c1"}],
              "temperature": 0.5, "top_p": 1, "max_tokens": 9, "max_completion_tokens": 7,
              "stop": "END", "stream": true, "stream_options": {"include_usage": true},
              "user": "u1", "seed": -3, "n": 1, "logit_bias": {}, "frequency_penalty": 0}"#,
        )
        .unwrap();
        let PromptInput::Chat(messages) = &req.input else {
            panic!("a chat request has messages")
        };
        let turns: Vec<(Role, &str)> = messages.iter().map(|m| (m.role, m.content.as_str())).collect();
        assert_eq!(
            turns,
            [
                (Role::System, "be brief"),
                (Role::User, "hi there"),
                (Role::Assistant, ""),
                (Role::Tool, "42")
            ]
        );
        assert_eq!(req.model, "m");
        assert_eq!(
            req.extra.keys().collect::<Vec<_>>(),
            ["frequency_penalty", "logit_bias"]
        );
        assert_eq!(messages[2].extra["tool_calls"].get(), "[]");
        assert_eq!(messages[3].extra["tool_call_id"].get(), "\"c1\"");
        assert_eq!(req.params.max_tokens, Some(7));
        assert_eq!(req.params.stop, ["END"]);
        assert_eq!(req.params.seed, Some(-3));
        assert_eq!(req.params.temperature, Some(0.5));
        assert!(req.stream);
        assert_eq!(
            delivery,
            Delivery {
                model: "m".into(),
                stream: true,
                include_usage: true,
                user: Some("u1".into()),
                turn: None,
                base64: false,
            }
        );
    }

    #[test]
    fn each_mistake_names_its_field() {
        let cases = [
            (
                r#"{"messages": [{"role": "user", "content": "x"}]}"#,
                "model: is required: name one of the models listed by GET /v1/models",
            ),
            (
                r#"{"model": "", "messages": []}"#,
                "model: must not be empty: name one of the models listed by GET /v1/models",
            ),
            (
                r#"{"model": "m"}"#,
                "messages: is required: send at least one message",
            ),
            (
                r#"{"model": "m", "messages": []}"#,
                "messages: must contain at least one message",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user"}]}"#,
                "messages[0].content: is required for a user message",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#,
                "messages[0].content[0].image_url: is required for an image_url part: {\"url\": \"https://...\"}",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}"#,
                "messages[0].content[0].type: only text and image_url content parts are supported (got `input_audio`)",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}"#,
                "n: only n = 1 is supported (got 2); send separate requests for more choices",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3}"#,
                "temperature: must be between 0 and 2 (got 3)",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 1e308}"#,
                "temperature: must be between 0 and 2 (got 1e308)",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}"#,
                "max_tokens: must be at least 1",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": ["a", ""]}"#,
                "stop[1]: must not be empty",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}}"#,
                "stream_options: is only allowed when stream is true",
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(chat_error(body), expected, "{body}");
        }
    }

    #[test]
    fn type_errors_name_their_path() {
        let err = chat(r#"{"model": "m", "messages": [{"role": "robot", "content": "x"}]}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages[0].role"));
        assert!(
            err.message
                .starts_with("messages[0].role: must be one of `system`, `developer`, `user`"),
            "{}",
            err.message
        );
        let err = chat(r#"{"model": "m", "messages": [{"role": "user", "content": 5}]}"#).unwrap_err();
        assert_eq!(
            err.message,
            "messages[0].content: must be a string or an array of content parts (got 5)"
        );
        let err = chat(r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}"#)
            .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("stream"));
    }

    #[test]
    fn completions_take_one_prompt() {
        let parse = |body: &str| {
            parse_json::<GenerationRequest>(body.as_bytes()).and_then(GenerationRequest::into_completion)
        };
        let (req, _) = parse(r#"{"model": "m", "prompt": "Once"}"#).unwrap();
        assert_eq!(req.input, PromptInput::Text("Once".into()));
        let (req, _) = parse(r#"{"model": "m", "prompt": ["Once"]}"#).unwrap();
        assert_eq!(req.input, PromptInput::Text("Once".into()));
        assert_eq!(
            parse(r#"{"model": "m", "prompt": ["a", "b"]}"#)
                .unwrap_err()
                .message,
            "prompt: send exactly one prompt string; batches of prompts are not supported"
        );
        assert_eq!(
            parse(r#"{"model": "m"}"#).unwrap_err().message,
            "prompt: is required: send the prompt as a string"
        );
    }
}
