//! The upstream request body: the caller's request in OpenAI form, with every field we do not act
//! on passed through unchanged.

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use tokio_prompt_orchestrator::{ChatMessage, InferenceCall, PromptInput, RawExtra};

/// Which OpenAI endpoint a call goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

impl Endpoint {
    pub fn of(call: &InferenceCall) -> Self {
        match call.request.input {
            PromptInput::Chat(_) => Endpoint::Chat,
            PromptInput::Text(_) => Endpoint::Completions,
            PromptInput::Embed(_) => Endpoint::Embeddings,
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
        }
    }
}

/// The fields one kind of server adds to the protocol, set by the backend that speaks to it.
/// Each one set wins over a pass-through field of the same name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerFields {
    /// vLLM's `priority` ([`vllm::priority`](super::vllm::priority)).
    pub priority: Option<i64>,
    /// llama.cpp's `id_slot`, sent with `cache_prompt: true`: the slot whose KV cache the
    /// session keeps reusing, so only the new end of its prompt is evaluated.
    pub slot: Option<usize>,
}

/// The JSON body for `call`, asking for `model`, streamed or not, with `server`'s own fields.
pub fn request_body<'a>(
    call: &'a InferenceCall,
    model: &'a str,
    stream: bool,
    server: ServerFields,
) -> RequestBody<'a> {
    let request = &call.request;
    let params = &request.params;
    let messages = match (&request.input, call.chat_messages()) {
        // The messages as the Assemble stage built them (templates, retrieved context).
        (PromptInput::Chat(_), Some(messages)) => Some(messages),
        // The rendered prompt: the text itself, with any retrieved context in front.
        _ => None,
    };
    RequestBody {
        model,
        prompt: messages.is_none().then_some(&*call.prompt),
        messages,
        temperature: params.temperature,
        top_p: params.top_p,
        max_tokens: params.max_tokens,
        stop: &params.stop,
        seed: params.seed,
        stream,
        server,
        extra: &request.extra,
    }
}

/// An upstream request body, borrowed from the call and written straight out: building it as a
/// `serde_json::Value` first copied every message, a measurable part of the gateway's work per
/// request.
pub struct RequestBody<'a> {
    model: &'a str,
    messages: Option<&'a [ChatMessage]>,
    prompt: Option<&'a str>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    max_tokens: Option<u32>,
    stop: &'a [String],
    seed: Option<i64>,
    stream: bool,
    server: ServerFields,
    /// The caller's fields we do not act on, passed through unless we set the same name.
    extra: &'a RawExtra,
}

impl RequestBody<'_> {
    /// Whether the body sets `field` itself (a pass-through field of that name is left out).
    fn sets(&self, field: &str) -> bool {
        match field {
            "model" | "stream" => true,
            "messages" => self.messages.is_some(),
            "prompt" => self.prompt.is_some(),
            "temperature" => self.temperature.is_some(),
            "top_p" => self.top_p.is_some(),
            "max_tokens" => self.max_tokens.is_some(),
            "stop" => !self.stop.is_empty(),
            "seed" => self.seed.is_some(),
            "stream_options" => self.stream,
            "priority" => self.server.priority.is_some(),
            "id_slot" | "cache_prompt" => self.server.slot.is_some(),
            _ => false,
        }
    }
}

impl Serialize for RequestBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("model", self.model)?;
        if let Some(messages) = self.messages {
            map.serialize_entry("messages", &Messages(messages))?;
        }
        if let Some(prompt) = self.prompt {
            map.serialize_entry("prompt", prompt)?;
        }
        if let Some(t) = self.temperature {
            map.serialize_entry("temperature", &t)?;
        }
        if let Some(p) = self.top_p {
            map.serialize_entry("top_p", &p)?;
        }
        // `max_tokens` is the name every OpenAI-compatible server understands.
        if let Some(m) = self.max_tokens {
            map.serialize_entry("max_tokens", &m)?;
        }
        if !self.stop.is_empty() {
            map.serialize_entry("stop", self.stop)?;
        }
        if let Some(seed) = self.seed {
            map.serialize_entry("seed", &seed)?;
        }
        map.serialize_entry("stream", &self.stream)?;
        if self.stream {
            // Usage arrives in a last chunk; without it the pipeline counts tokens itself.
            map.serialize_entry("stream_options", &IncludeUsage { include_usage: true })?;
        }
        if let Some(priority) = self.server.priority {
            map.serialize_entry("priority", &priority)?;
        }
        if let Some(slot) = self.server.slot {
            map.serialize_entry("id_slot", &slot)?;
            map.serialize_entry("cache_prompt", &true)?;
        }
        for (name, value) in self.extra {
            if !self.sets(name) {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

#[derive(Serialize)]
struct IncludeUsage {
    include_usage: bool,
}

struct Messages<'a>(&'a [ChatMessage]);

impl Serialize for Messages<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(Message))
    }
}

struct Message<'a>(&'a ChatMessage);

impl Serialize for Message<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let m = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("role", m.role.as_str())?;
        // Content with images is kept whole, as parts, in `extra` (`content` holds its text).
        if let Some(parts) = m.extra.get("content") {
            map.serialize_entry("content", parts)?;
        } else {
            // An assistant turn that only called tools has null content upstream, as the client
            // sent it.
            let content =
                (!m.content.is_empty() || !m.extra.contains_key("tool_calls")).then_some(&*m.content);
            map.serialize_entry("content", &content)?;
        }
        for (name, value) in &m.extra {
            if name != "role" && name != "content" {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {

    use serde_json::{Value, json};
    use tokio_prompt_orchestrator::{InferenceRequest, RequestId, Role, SamplingParams, SessionId};

    use super::*;

    /// The body as the upstream reads it.
    fn written(body: RequestBody<'_>) -> Value {
        serde_json::from_slice(&serde_json::to_vec(&body).unwrap()).unwrap()
    }

    fn call(request: InferenceRequest) -> InferenceCall {
        InferenceCall::new(RequestId(1), request, "rendered")
    }

    #[test]
    fn chat_body_carries_params_and_pass_through_fields() {
        let mut tool_turn = ChatMessage::new(Role::Assistant, "");
        tool_turn.extra.insert(
            "tool_calls".into(),
            tokio_prompt_orchestrator::raw(&json!([{"id": "c1"}])),
        );
        let mut request =
            InferenceRequest::chat(SessionId::new("s"), vec![ChatMessage::user("hi"), tool_turn])
                .with_params(SamplingParams {
                    temperature: Some(0.5),
                    max_tokens: Some(9),
                    stop: vec!["END".into()],
                    seed: Some(-1),
                    ..SamplingParams::default()
                });
        request.extra.insert(
            "tools".into(),
            tokio_prompt_orchestrator::raw(&json!([{"type": "function"}])),
        );
        // A pass-through field can never override what the pipeline decides.
        request
            .extra
            .insert("stream".into(), tokio_prompt_orchestrator::raw(&json!(false)));
        let call = call(request);
        let body = written(request_body(&call, "up-model", true, ServerFields::default()));
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
        let call = call(request);
        let body = written(request_body(&call, "m", false, ServerFields::default()));
        assert_eq!(body, json!({"model": "m", "prompt": "rendered", "stream": false}));
    }

    #[test]
    fn the_priority_is_set_for_vllm_and_a_callers_passes_through_otherwise() {
        let mut request = InferenceRequest::text(SessionId::new("s"), "Once").with_params(SamplingParams {
            temperature: Some(0.7),
            ..SamplingParams::default()
        });
        request
            .extra
            .insert("priority".into(), tokio_prompt_orchestrator::raw(&json!(5)));
        let call = call(request);
        let vllm = ServerFields {
            priority: Some(-1),
            ..ServerFields::default()
        };
        let body = written(request_body(&call, "m", false, vllm));
        // The temperature as the client wrote it, not widened to 0.699999988079071.
        assert_eq!(
            body,
            json!({"model": "m", "prompt": "rendered", "temperature": 0.7, "stream": false, "priority": -1})
        );
        let body = written(request_body(&call, "m", false, ServerFields::default()));
        assert_eq!(body["priority"], 5);
    }

    #[test]
    fn llama_cpps_slot_and_prompt_cache_win_over_a_callers() {
        let mut request = InferenceRequest::chat(SessionId::new("s"), vec![ChatMessage::user("hi")]);
        request
            .extra
            .insert("id_slot".into(), tokio_prompt_orchestrator::raw(&json!(9)));
        request.extra.insert(
            "cache_prompt".into(),
            tokio_prompt_orchestrator::raw(&json!(false)),
        );
        request
            .extra
            .insert("n_probs".into(), tokio_prompt_orchestrator::raw(&json!(2)));
        let call = call(request);
        let llama = ServerFields {
            slot: Some(3),
            ..ServerFields::default()
        };
        let body = written(request_body(&call, "m", true, llama));
        assert_eq!(
            body,
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                   "stream": true, "stream_options": {"include_usage": true},
                   "id_slot": 3, "cache_prompt": true, "n_probs": 2})
        );
    }
}
