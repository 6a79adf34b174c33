//! Assemble stage: builds what the model will see from the request and its retrieved context.
//!
//! An [`Assembler`] plugs in (templates, prefix-stable order, a token budget); without one, a
//! fixed, deterministic format: retrieved chunks first (as a context block), then the
//! conversation. A lone user message is sent as-is.

use std::fmt::Write;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::time::Instant;

use super::rag::RetrievedChunk;
use super::{Place, StageLogic, Start};
use crate::error::{PipelineError, Stage};
use crate::pipeline::envelope::Envelope;
use crate::request::{ChatMessage, InferenceRequest, PromptInput, Role};

/// What the model is sent.
#[derive(Clone, Debug, PartialEq)]
pub struct Assembled {
    /// The chat messages for chat backends; `None`: the request's own, unchanged.
    pub messages: Option<Arc<[ChatMessage]>>,
    /// The same as one text, for completion-style backends.
    pub prompt: Arc<str>,
    /// Whether `prompt` is the output of a configured `prompt` template: the model's chat
    /// format as the operator wrote it. A backend that could have its server apply the model's
    /// own chat template instead (llama.cpp) sends this text then, so a configured template wins.
    pub prompt_templated: bool,
    /// A hash of the prompt's stable prefix (system prompt, tools, documents): requests that
    /// share it can share a backend's prefix cache (`prefix_affinity` routing).
    pub prefix_key: Option<u64>,
    /// The prompt's length in the model's tokens, when the assembler counted it; the pipeline's
    /// usage figures use it when the backend reports none.
    pub prompt_tokens: Option<u32>,
}

/// Builds the model's input for a request and the context retrieved for it.
pub trait Assembler: Send + Sync + 'static {
    /// Runs on the Assemble lane itself, so it must be quick and must not block.
    ///
    /// # Errors
    /// [`PipelineError::Assembly`] when a template fails, [`PipelineError::ContextLength`] when
    /// even the parts that are never dropped exceed the model's context window.
    fn assemble(
        &self,
        request: &InferenceRequest,
        context: &[RetrievedChunk],
    ) -> Result<Assembled, PipelineError>;
}

pub(crate) struct AssembleStage {
    pub assembler: Option<Arc<dyn Assembler>>,
}

impl StageLogic for AssembleStage {
    const STAGE: Stage = Stage::Assemble;
    type In = Envelope;
    type Out = Envelope;

    fn start(&self, mut env: Envelope, _permit: Place, _now: Instant) -> Start<Envelope> {
        let assembled = match &self.assembler {
            None => Ok(Assembled {
                messages: None,
                prompt: render(&env.request.input, &env.retrieved),
                prompt_templated: false,
                prefix_key: None,
                prompt_tokens: None,
            }),
            Some(assembler) => assembler.assemble(&env.request, &env.retrieved),
        };
        match assembled {
            Ok(assembled) => {
                env.assembled = Some(assembled);
                Start::Forward(env)
            }
            Err(error) => {
                env.shared.metrics.stage(Stage::Assemble).failed.increment(1);
                env.fail(Stage::Assemble, error);
                // Nothing to hand on; the request has had its final event.
                Start::Later(futures_util::future::ready(None).boxed())
            }
        }
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
                    // Pushed, not `write!`: formatting costs far more for so little text.
                    out.push_str(m.role.as_str());
                    out.push_str(": ");
                    out.push_str(&m.content);
                }
            }
        },
        // Not a prompt: nothing is generated from it, and dedup keys on the inputs themselves.
        PromptInput::Embed(_) => {}
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
