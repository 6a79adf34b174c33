//! The pipeline's types to the protocol's messages and back: what a gateway sends and a worker
//! reads ([`request`], [`call`]), and what a worker streams and a gateway reads ([`reply`],
//! [`Event::read`]). Every read checks what it gets, so a malformed message is an error that says
//! what was wrong, never a panic.

use std::sync::Arc;

use serde_json::value::RawValue;
use tokio::time::Instant;
use tokio_prompt_orchestrator::{
    BackendAttempt, ChatMessage, EmbedInput, Extra, FinishReason, InferenceCall, InferenceRequest,
    Passthrough, Priority, PromptInput, RawExtra, RequestId, Role, SamplingParams, SessionId, Usage,
    WorkerChunk, WorkerError,
};
use tokio_util::sync::CancellationToken;

use crate::PROTOCOL;
use crate::pb;
use crate::pb::infer_reply::Event as ReplyEvent;

/// The message for `call`, asking the worker for `model`.
pub fn request(call: &InferenceCall, model: &str) -> pb::InferRequest {
    let request = &call.request;
    let input = match &request.input {
        PromptInput::Chat(messages) => pb::infer_request::Input::Chat(messages_of(messages)),
        PromptInput::Text(text) => pb::infer_request::Input::Text(text.clone()),
        PromptInput::Embed(inputs) => pb::infer_request::Input::Embed(pb::EmbedInputs {
            inputs: inputs.iter().map(embed_input_of).collect(),
        }),
    };
    let params = &request.params;
    pb::InferRequest {
        protocol: PROTOCOL,
        request_id: call.id.0,
        model: model.to_owned(),
        input: Some(input),
        prompt: call.prompt.to_string(),
        prompt_templated: call.prompt_templated,
        assembled: call.messages.as_deref().map(messages_of),
        sampling: Some(pb::Sampling {
            temperature: params.temperature,
            top_p: params.top_p,
            max_tokens: params.max_tokens,
            stop: params.stop.clone(),
            seed: params.seed,
        }),
        session: request.session.as_str().to_owned(),
        session_per_request: request.session.is_per_request(),
        priority: priority_of(request.priority) as i32,
        stream: request.stream,
        prefix_key: call.prefix_key,
        meta: request
            .meta
            .iter()
            .filter(|(key, _)| key.as_str() != "traceparent")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        extra: json_texts(&request.extra),
    }
}

/// The call a worker runs for `request`, cancelled by `cancel`, ending by `deadline`.
///
/// # Errors
/// What is malformed in `request`, naming the field.
pub fn call(
    request: pb::InferRequest,
    traceparent: Option<String>,
    cancel: CancellationToken,
    deadline: Option<Instant>,
) -> Result<InferenceCall, String> {
    let input = match request.input {
        Some(pb::infer_request::Input::Chat(messages)) => PromptInput::Chat(messages_from(messages, "chat")?),
        Some(pb::infer_request::Input::Text(text)) => PromptInput::Text(text),
        Some(pb::infer_request::Input::Embed(embed)) => PromptInput::Embed(
            embed
                .inputs
                .into_iter()
                .map(|input| match input.input {
                    Some(pb::embed_input::Input::Text(text)) => Ok(EmbedInput::Text(text)),
                    Some(pb::embed_input::Input::Tokens(tokens)) => Ok(EmbedInput::Tokens(tokens.ids)),
                    None => Err("embed.inputs: an input without text or tokens".to_owned()),
                })
                .collect::<Result<_, _>>()?,
        ),
        None => return Err("input: none of chat, text or embed is set".into()),
    };
    let sampling = request.sampling.unwrap_or_default();
    let priority = match pb::Priority::try_from(request.priority) {
        Ok(pb::Priority::Low) => Priority::Low,
        Ok(pb::Priority::Normal) => Priority::Normal,
        Ok(pb::Priority::High) => Priority::High,
        Err(_) => return Err(format!("priority: {} is not a priority", request.priority)),
    };
    let session = if request.session_per_request {
        SessionId::per_request(&request.session)
    } else {
        SessionId::new(&request.session)
    };
    let mut meta: tokio_prompt_orchestrator::Meta = request.meta.into_iter().collect();
    // A remote worker continues the gateway's trace from here (as from a NATS job's metadata).
    if let Some(traceparent) = traceparent {
        meta.insert("traceparent".into(), traceparent);
    }
    let inference = InferenceRequest {
        model: request.model,
        input,
        params: SamplingParams {
            temperature: sampling.temperature,
            top_p: sampling.top_p,
            max_tokens: sampling.max_tokens,
            stop: sampling.stop,
            seed: sampling.seed,
        },
        session,
        priority,
        stream: request.stream,
        // The deadline bounds the run.
        timeout: None,
        meta,
        extra: raw_extra(request.extra, "extra")?,
        trace: None,
    };
    let messages = match request.assembled {
        Some(messages) => Some(Arc::from(messages_from(messages, "assembled")?)),
        None => None,
    };
    Ok(InferenceCall {
        id: RequestId(request.request_id),
        request: Arc::new(inference),
        prompt: request.prompt.into(),
        prompt_templated: request.prompt_templated,
        messages,
        prefix_key: request.prefix_key,
        cancel,
        deadline,
        traceparent: None,
    })
}

/// The reply carrying a worker's stream item.
pub fn reply(item: Result<WorkerChunk, WorkerError>) -> pb::InferReply {
    let event = match item {
        Ok(WorkerChunk::Token(text)) => ReplyEvent::Token(text),
        Ok(WorkerChunk::Passthrough(passthrough)) => ReplyEvent::Passthrough(passthrough_of(&passthrough)),
        Ok(WorkerChunk::Finish { reason, usage }) => ReplyEvent::Finish(pb::Finish {
            reason: finish_reason_of(reason) as i32,
            usage: usage.map(|u| pb::Usage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                total_tokens: u.total_tokens,
            }),
        }),
        // `WorkerChunk` may grow: what this protocol cannot carry is an error that says so.
        Ok(_) => ReplyEvent::Error(error_of(&WorkerError::new(
            "the worker produced an item that protocol 1 cannot carry",
        ))),
        Err(error) => ReplyEvent::Error(error_of(&error)),
    };
    pb::InferReply { event: Some(event) }
}

/// The reply saying the worker `worker` took the call.
pub fn started(worker: &str) -> pb::InferReply {
    pb::InferReply {
        event: Some(ReplyEvent::Started(pb::Started {
            protocol: PROTOCOL,
            worker: worker.to_owned(),
        })),
    }
}

/// A reply as a gateway reads it.
#[derive(Debug, PartialEq)]
pub enum Event {
    Started { protocol: u32, worker: String },
    Chunk(WorkerChunk),
    Failed(WorkerError),
}

impl Event {
    /// # Errors
    /// What is malformed in `reply`.
    pub fn read(reply: pb::InferReply) -> Result<Self, String> {
        Ok(match reply.event {
            None => return Err("a reply without an event".into()),
            Some(ReplyEvent::Started(started)) => Event::Started {
                protocol: started.protocol,
                worker: started.worker,
            },
            Some(ReplyEvent::Token(text)) => Event::Chunk(WorkerChunk::Token(text)),
            Some(ReplyEvent::Passthrough(passthrough)) => {
                Event::Chunk(WorkerChunk::Passthrough(Box::new(passthrough_from(passthrough)?)))
            }
            Some(ReplyEvent::Finish(finish)) => {
                let reason = match pb::FinishReason::try_from(finish.reason) {
                    Ok(pb::FinishReason::Stop) => FinishReason::Stop,
                    Ok(pb::FinishReason::Length) => FinishReason::Length,
                    Ok(pb::FinishReason::ToolCalls) => FinishReason::ToolCalls,
                    Ok(pb::FinishReason::ContentFilter) => FinishReason::ContentFilter,
                    Err(_) => return Err(format!("finish.reason: {} is not a finish reason", finish.reason)),
                };
                Event::Chunk(WorkerChunk::Finish {
                    reason,
                    usage: finish.usage.map(|u| Usage {
                        total_tokens: u.total_tokens,
                        ..Usage::new(u.prompt_tokens, u.completion_tokens)
                    }),
                })
            }
            Some(ReplyEvent::Error(error)) => Event::Failed(error_from(error)),
        })
    }
}

fn error_of(error: &WorkerError) -> pb::Error {
    pb::Error {
        message: error.message.clone(),
        retryable: error.retryable,
        upstream_status: error.status.map(u32::from),
        retry_after_ms: error
            .retry_after
            .map(|d| d.as_millis().try_into().unwrap_or(u64::MAX)),
        attempts: error
            .attempts
            .iter()
            .map(|a| pb::Attempt {
                backend: a.backend.clone(),
                error: a.error.clone(),
            })
            .collect(),
    }
}

fn error_from(error: pb::Error) -> WorkerError {
    WorkerError {
        message: error.message,
        retryable: error.retryable,
        status: error.upstream_status.and_then(|s| u16::try_from(s).ok()),
        retry_after: error.retry_after_ms.map(std::time::Duration::from_millis),
        attempts: error
            .attempts
            .into_iter()
            .map(|a| BackendAttempt {
                backend: a.backend,
                error: a.error,
            })
            .collect(),
    }
}

fn messages_of(messages: &[ChatMessage]) -> pb::Messages {
    pb::Messages {
        messages: messages
            .iter()
            .map(|m| pb::Message {
                role: role_of(m.role) as i32,
                content: m.content.clone(),
                extra: json_texts(&m.extra),
            })
            .collect(),
    }
}

fn messages_from(messages: pb::Messages, field: &str) -> Result<Vec<ChatMessage>, String> {
    messages
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match pb::Role::try_from(m.role) {
                Ok(pb::Role::System) => Role::System,
                Ok(pb::Role::User) => Role::User,
                Ok(pb::Role::Assistant) => Role::Assistant,
                Ok(pb::Role::Tool) => Role::Tool,
                Ok(pb::Role::Unspecified) | Err(_) => {
                    return Err(format!("{field}.messages[{i}].role: {} is not a role", m.role));
                }
            };
            Ok(ChatMessage {
                role,
                content: m.content,
                extra: raw_extra(m.extra, &format!("{field}.messages[{i}].extra"))?,
            })
        })
        .collect()
}

fn embed_input_of(input: &EmbedInput) -> pb::EmbedInput {
    let input = match input {
        EmbedInput::Text(text) => pb::embed_input::Input::Text(text.clone()),
        EmbedInput::Tokens(ids) => pb::embed_input::Input::Tokens(pb::TokenIds { ids: ids.clone() }),
    };
    pb::EmbedInput { input: Some(input) }
}

fn passthrough_of(passthrough: &Passthrough) -> pb::Passthrough {
    let object = |extra: &Extra| {
        if extra.is_empty() {
            String::new()
        } else {
            serde_json::Value::Object(extra.clone()).to_string()
        }
    };
    pb::Passthrough {
        message: object(&passthrough.message),
        choice: object(&passthrough.choice),
        response: object(&passthrough.response),
        embeddings: passthrough
            .embeddings
            .iter()
            .flat_map(|vectors| vectors.iter())
            .map(|values| pb::Vector {
                values: values.clone(),
            })
            .collect(),
    }
}

fn passthrough_from(passthrough: pb::Passthrough) -> Result<Passthrough, String> {
    let object = |text: &str, field: &str| -> Result<Extra, String> {
        if text.is_empty() {
            return Ok(Extra::new());
        }
        serde_json::from_str(text).map_err(|e| format!("passthrough.{field} is not a JSON object: {e}"))
    };
    let embeddings = (!passthrough.embeddings.is_empty()).then(|| {
        passthrough
            .embeddings
            .into_iter()
            .map(|v| v.values)
            .collect::<Vec<_>>()
            .into()
    });
    Ok(Passthrough {
        message: object(&passthrough.message, "message")?,
        choice: object(&passthrough.choice, "choice")?,
        response: object(&passthrough.response, "response")?,
        embeddings,
    })
}

fn json_texts(extra: &RawExtra) -> std::collections::HashMap<String, String> {
    extra
        .iter()
        .map(|(k, v)| (k.clone(), v.get().to_owned()))
        .collect()
}

fn raw_extra(texts: std::collections::HashMap<String, String>, field: &str) -> Result<RawExtra, String> {
    let mut extra = RawExtra::new();
    for (key, text) in texts {
        let value = RawValue::from_string(text).map_err(|e| format!("{field}[{key:?}] is not JSON: {e}"))?;
        extra.insert(key, value);
    }
    Ok(extra)
}

fn role_of(role: Role) -> pb::Role {
    match role {
        Role::System => pb::Role::System,
        Role::User => pb::Role::User,
        Role::Assistant => pb::Role::Assistant,
        Role::Tool => pb::Role::Tool,
    }
}

fn priority_of(priority: Priority) -> pb::Priority {
    match priority {
        Priority::Low => pb::Priority::Low,
        Priority::Normal => pb::Priority::Normal,
        Priority::High => pb::Priority::High,
    }
}

fn finish_reason_of(reason: FinishReason) -> pb::FinishReason {
    match reason {
        FinishReason::Stop => pb::FinishReason::Stop,
        FinishReason::Length => pb::FinishReason::Length,
        FinishReason::ToolCalls => pb::FinishReason::ToolCalls,
        FinishReason::ContentFilter => pb::FinishReason::ContentFilter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call with every field set, as a gateway's Assemble stage leaves it.
    fn full_call() -> InferenceCall {
        let mut message = ChatMessage::user("hi \"there\"");
        message
            .extra
            .insert("name".into(), RawValue::from_string("\"ann\"".into()).unwrap());
        let mut request = InferenceRequest::chat(SessionId::new("s-1"), vec![message])
            .with_model("client-model")
            .with_priority(Priority::High)
            .with_params(SamplingParams {
                temperature: Some(0.5),
                top_p: Some(0.9),
                max_tokens: Some(7),
                stop: vec!["\n".into()],
                seed: Some(-3),
            });
        request.meta.insert("tenant".into(), "t".into());
        request.extra.insert(
            "tools".into(),
            RawValue::from_string("[{\"type\":\"function\"}]".into()).unwrap(),
        );
        InferenceCall {
            prompt_templated: true,
            messages: Some(Arc::from(vec![
                ChatMessage::system("docs"),
                ChatMessage::user("hi"),
            ])),
            prefix_key: Some(42),
            ..InferenceCall::new(RequestId(9), request, "rendered prompt")
        }
    }

    #[test]
    fn a_call_reads_back_as_sent() {
        let sent = full_call();
        let message = request(&sent, "m");
        let read = call(message, Some("00-trace".into()), CancellationToken::new(), None).unwrap();
        assert_eq!(read.id, sent.id);
        assert_eq!(&*read.prompt, "rendered prompt");
        assert!(read.prompt_templated);
        assert_eq!(read.messages, sent.messages);
        assert_eq!(read.prefix_key, Some(42));
        let mut expected = (*sent.request).clone();
        expected.model = "m".into();
        expected.meta.insert("traceparent".into(), "00-trace".into());
        assert_eq!(*read.request, expected);
    }

    #[test]
    fn text_embed_and_per_request_sessions_read_back() {
        let inputs = vec![EmbedInput::Text("a".into()), EmbedInput::Tokens(vec![1, 2])];
        for input in [PromptInput::Text("once".into()), PromptInput::Embed(inputs)] {
            let mut request = InferenceRequest::text(SessionId::per_request("r-1"), "");
            request.input = input;
            let sent = InferenceCall::new(RequestId(1), request, "");
            let read = call(request_of(&sent), None, CancellationToken::new(), None).unwrap();
            assert_eq!(read.request.input, sent.request.input);
            assert!(read.request.session.is_per_request());
        }
    }

    fn request_of(call: &InferenceCall) -> pb::InferRequest {
        request(call, "")
    }

    #[test]
    fn malformed_requests_name_the_field() {
        let mut message = request(&full_call(), "m");
        message.input = None;
        assert_eq!(
            call(message, None, CancellationToken::new(), None).unwrap_err(),
            "input: none of chat, text or embed is set"
        );
        let mut message = request(&full_call(), "m");
        message.priority = 7;
        assert_eq!(
            call(message, None, CancellationToken::new(), None).unwrap_err(),
            "priority: 7 is not a priority"
        );
        let mut message = request(&full_call(), "m");
        message.extra.insert("tools".into(), "[oops".into());
        let error = call(message, None, CancellationToken::new(), None).unwrap_err();
        assert!(error.starts_with("extra[\"tools\"] is not JSON"), "{error}");
        let mut message = request(&full_call(), "m");
        if let Some(pb::infer_request::Input::Chat(chat)) = &mut message.input {
            chat.messages[0].role = 0;
        }
        assert_eq!(
            call(message, None, CancellationToken::new(), None).unwrap_err(),
            "chat.messages[0].role: 0 is not a role"
        );
    }

    #[test]
    fn replies_read_back_as_written() {
        let mut passthrough = Passthrough::embeddings(vec![vec![0.5, 1.0]]);
        passthrough
            .message
            .insert("tool_calls".into(), serde_json::json!([{"id": "c1"}]));
        let items = [
            Ok(WorkerChunk::Token("hé".into())),
            Ok(WorkerChunk::Passthrough(Box::new(passthrough))),
            Ok(WorkerChunk::Finish {
                reason: FinishReason::ToolCalls,
                usage: Some(Usage::new(3, 4)),
            }),
        ];
        for item in items {
            let read = Event::read(reply(item.clone())).unwrap();
            assert_eq!(read, Event::Chunk(item.unwrap()));
        }
        let mut error = WorkerError::retryable("upstream down")
            .with_status(502)
            .with_retry_after(std::time::Duration::from_millis(1500));
        error.attempts = vec![BackendAttempt {
            backend: "up".into(),
            error: "refused".into(),
        }]
        .into();
        assert_eq!(
            Event::read(reply(Err(error.clone()))).unwrap(),
            Event::Failed(error)
        );
        assert_eq!(
            Event::read(started("w1")).unwrap(),
            Event::Started {
                protocol: PROTOCOL,
                worker: "w1".into()
            }
        );
    }

    #[test]
    fn malformed_replies_say_what_is_wrong() {
        assert_eq!(
            Event::read(pb::InferReply { event: None }).unwrap_err(),
            "a reply without an event"
        );
        let bad = pb::InferReply {
            event: Some(ReplyEvent::Passthrough(pb::Passthrough {
                message: "[1]".into(),
                ..Default::default()
            })),
        };
        let error = Event::read(bad).unwrap_err();
        assert!(
            error.starts_with("passthrough.message is not a JSON object"),
            "{error}"
        );
    }
}
