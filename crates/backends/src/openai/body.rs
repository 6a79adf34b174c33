//! The upstream request body: the caller's request in OpenAI form, with every field we do not act
//! on passed through unchanged.

use serde_json::{Map, Value, json};
use tokio_prompt_orchestrator::{ChatMessage, InferenceCall, PromptInput};

/// Which OpenAI endpoint a call goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

impl Endpoint {
    pub fn of(call: &InferenceCall) -> Self {
        match call.request.input {
            PromptInput::Chat(_) => Endpoint::Chat,
            PromptInput::Text(_) => Endpoint::Completions,
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/chat/completions",
            Endpoint::Completions => "/completions",
        }
    }
}

/// The JSON body for `call`, asking for `model`, streamed or not.
pub fn request_body(call: &InferenceCall, model: &str, stream: bool) -> Value {
    let request = &call.request;
    // Pass-through fields first, so the fields we set below always win.
    let mut body: Map<String, Value> = request.extra.clone();
    body.insert("model".into(), model.into());
    match (&request.input, call.chat_messages()) {
        // The messages as the Assemble stage built them (templates, retrieved context).
        (PromptInput::Chat(_), Some(messages)) => {
            body.insert("messages".into(), messages.iter().map(message).collect());
        }
        // The rendered prompt: the text itself, with any retrieved context in front.
        _ => {
            body.insert("prompt".into(), Value::from(&*call.prompt));
        }
    }
    let params = &request.params;
    if let Some(t) = params.temperature {
        body.insert("temperature".into(), t.into());
    }
    if let Some(p) = params.top_p {
        body.insert("top_p".into(), p.into());
    }
    // `max_tokens` is the name every OpenAI-compatible server understands.
    if let Some(m) = params.max_tokens {
        body.insert("max_tokens".into(), m.into());
    }
    if !params.stop.is_empty() {
        body.insert("stop".into(), params.stop.clone().into());
    }
    if let Some(seed) = params.seed {
        body.insert("seed".into(), seed.into());
    }
    body.insert("stream".into(), stream.into());
    if stream {
        // Usage arrives in a last chunk; without it the pipeline counts tokens itself.
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Value::Object(body)
}

fn message(m: &ChatMessage) -> Value {
    let mut out: Map<String, Value> = m.extra.clone();
    out.insert("role".into(), m.role.as_str().into());
    // An assistant turn that only called tools has null content upstream, as the client sent it.
    let content = if m.content.is_empty() && out.contains_key("tool_calls") {
        Value::Null
    } else {
        Value::from(m.content.as_str())
    };
    out.insert("content".into(), content);
    Value::Object(out)
}

#[cfg(test)]
mod tests {

    use tokio_prompt_orchestrator::{InferenceRequest, RequestId, Role, SamplingParams, SessionId};

    use super::*;

    fn call(request: InferenceRequest) -> InferenceCall {
        InferenceCall::new(RequestId(1), request, "rendered")
    }

    #[test]
    fn chat_body_carries_params_and_pass_through_fields() {
        let mut tool_turn = ChatMessage::new(Role::Assistant, "");
        tool_turn.extra.insert("tool_calls".into(), json!([{"id": "c1"}]));
        let mut request =
            InferenceRequest::chat(SessionId::new("s"), vec![ChatMessage::user("hi"), tool_turn])
                .with_params(SamplingParams {
                    temperature: Some(0.5),
                    max_tokens: Some(9),
                    stop: vec!["END".into()],
                    seed: Some(-1),
                    ..SamplingParams::default()
                });
        request
            .extra
            .insert("tools".into(), json!([{"type": "function"}]));
        // A pass-through field can never override what the pipeline decides.
        request.extra.insert("stream".into(), json!(false));
        let body = request_body(&call(request), "up-model", true);
        assert_eq!(
            body,
            json!({
                "model": "up-model",
                "messages": [{"role": "user", "content": "hi"},
                             {"role": "assistant", "content": null, "tool_calls": [{"id": "c1"}]}],
                "temperature": 0.5, "max_tokens": 9, "stop": ["END"], "seed": -1,
                "tools": [{"type": "function"}],
                "stream": true, "stream_options": {"include_usage": true}
            })
        );
    }

    #[test]
    fn text_requests_send_the_rendered_prompt() {
        let request = InferenceRequest::text(SessionId::new("s"), "Once");
        let body = request_body(&call(request), "m", false);
        assert_eq!(body, json!({"model": "m", "prompt": "rendered", "stream": false}));
    }
}
