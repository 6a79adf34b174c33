//! Assemble stage: renders the prompt the model will see from the messages and retrieved context.
//!
//! For now a fixed, deterministic format: retrieved chunks first (as a context block), then the
//! conversation. A lone user message is sent as-is.

use std::fmt::Write;
use std::sync::Arc;

use super::rag::RetrievedChunk;
use super::{Place, StageLogic, Start};
use crate::error::Stage;
use crate::pipeline::envelope::Envelope;
use crate::request::{PromptInput, Role};

pub(crate) struct AssembleStage;

impl StageLogic for AssembleStage {
    const STAGE: Stage = Stage::Assemble;
    type In = Envelope;
    type Out = Envelope;

    fn start(&self, mut env: Envelope, _permit: Place) -> Start<Envelope> {
        env.prompt = Some(render(&env.request.input, &env.retrieved));
        Start::Forward(env)
    }

    fn synchronous(&self) -> bool {
        true
    }
}

/// Renders the prompt text for `input` with `context` in front of it.
pub(crate) fn render(input: &PromptInput, context: &[RetrievedChunk]) -> Arc<str> {
    if let (PromptInput::Chat(messages), []) = (input, context)
        && let [only] = messages.as_slice()
        && only.role == Role::User
    {
        return Arc::from(only.content.as_str());
    }
    let mut out = String::new();
    if !context.is_empty() {
        out.push_str("Context:\n");
        for chunk in context {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "[{}#{}] {}", chunk.source, chunk.position, chunk.text);
        }
        out.push('\n');
    }
    match input {
        PromptInput::Text(text) => out.push_str(text),
        PromptInput::Chat(messages) => match messages.as_slice() {
            [only] if only.role == Role::User => out.push_str(&only.content),
            _ => {
                for (i, m) in messages.iter().enumerate() {
                    if i > 0 {
                        out.push('\n');
                    }
                    let _ = write!(out, "{}: {}", m.role.as_str(), m.content);
                }
            }
        },
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::ChatMessage;

    #[test]
    fn lone_user_message_is_sent_as_is() {
        let input = PromptInput::Chat(vec![ChatMessage::user("Hello!")]);
        assert_eq!(&*render(&input, &[]), "Hello!");
    }

    #[test]
    fn conversation_and_context_render_in_order() {
        let input = PromptInput::Chat(vec![ChatMessage::system("Be brief."), ChatMessage::user("Hi")]);
        let chunk = RetrievedChunk {
            text: "fact".into(),
            source: "doc.md".into(),
            position: 3,
            score: 1.0,
        };
        assert_eq!(
            &*render(&input, &[chunk]),
            "Context:\n[doc.md#3] fact\n\nsystem: Be brief.\nuser: Hi"
        );
    }
}
