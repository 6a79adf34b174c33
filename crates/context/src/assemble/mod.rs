//! The Assemble stage's [`Assembler`]: minijinja templates, a prefix-stable order and a token
//! budget, configured per model.
//!
//! - [`config`]: the `[assemble]` section ([`AssembleConfig`]).
//! - `profile`: one model's compiled settings (templates, budget, tokenizer).
//! - `template`: compiling and rendering the templates.
//! - `prompt`: the optional `prompt` template (the text completion-style backends get, in the
//!   model's chat format, e.g. ChatML) and the budget counted on it.
//! - `order`: the canonical order of the prompt's parts and its text forms.
//! - `budget`: what to drop when the prompt does not fit the context window.
//! - `draft`: counting a request's parts for the budget.
//! - `tokens`: tiktoken counting with a cache.
//! - [`error`]: config problems found when the assembler is built.
//!
//! [`TemplateAssembler::assemble`] runs on the Assemble lane itself, so it does no I/O (template
//! files are read once, at construction) and keeps the tokenizer's work small by caching counts.

pub mod config;
pub mod error;

mod budget;
mod draft;
mod order;
mod profile;
mod prompt;
mod template;
mod tokens;

use std::collections::HashMap;
use std::sync::Arc;

use tokio_prompt_orchestrator::{
    Assembled, Assembler, ChatMessage, InferenceRequest, PipelineError, PromptInput, RetrievedChunk, Role,
};
use xxhash_rust::xxh3::xxh3_64;

pub use config::{AssembleConfig, AssembleSettings, DEFAULT_RESERVE_OUTPUT_TOKENS, Encoding, TemplateSource};
pub use error::{AssembleError, AssembleProblem};
pub use tokens::{MESSAGE_OVERHEAD_TOKENS, REPLY_PRIMING_TOKENS, SEPARATOR_TOKENS};

use draft::Draft;
use order::{Conversation, Input};
use profile::{Profile, build_profile, toml_key};
use prompt::PromptDraft;
use template::Templates;
use tokens::TokenCounter;

/// Assembles prompts from templates, in a prefix-stable order, within a token budget.
///
/// What a request gets:
/// - **Chat** (`PromptInput::Chat`): `messages` = one system message (the configured system
///   prompt, then the caller's leading system messages, then the context block, separated by blank
///   lines), followed by the rest of the conversation (after any turns the budget dropped);
///   `None` when that would be the request's own messages unchanged. `prompt` = the same flattened
///   to text, with the tool definitions after the system prompt.
/// - **Completion** (`PromptInput::Text`): `messages = None`; `prompt` = system prompt, tools,
///   context block and the request's text, separated by blank lines.
/// - With a `prompt` template, `prompt` is that template's output instead, for both kinds (see
///   the `prompt` module: it renders the same parts in the model's chat format), and
///   `prompt_templated` says so; the chat `messages` do not change.
/// - `prefix_key` = XXH3 of the stable prefix (system prompt, tools, context block as joined in
///   the prompt); `None` when there is none. The conversation never changes it, so a session keeps
///   its key from turn to turn unless the budget drops chunks.
/// - `prompt_tokens`: counted only when the model has a context window (a budget needs the count;
///   without one, the tokenizer is not run). With a `prompt` template it is the exact count of
///   `prompt`; otherwise an estimate of the chat form (contents plus a fixed framing per message).
///
/// The answer's room is the request's `max_tokens` when it sets one, else
/// `reserve_output_tokens`. When even the system prompt, the tools and the last user turn exceed
/// the window minus that room, the request fails with `ContextLength { needed, limit }`: `needed`
/// counts the prompt plus the room and `limit` is the window, as OpenAI reports it.
///
/// With no system template, no chunks, no tools and no budget, the result is the core's default
/// (`messages = None`, the plain prompt) at the cost of one copy of the prompt.
pub struct TemplateAssembler {
    templates: Templates,
    /// Index 0: the defaults; then one per model entry.
    profiles: Vec<Profile>,
    by_model: HashMap<String, usize>,
    counter: TokenCounter,
}

impl TemplateAssembler {
    /// Reads and compiles every template and checks the settings, then loads the tokenizers that a
    /// budget will use, so no request pays for that. The first build in a process therefore
    /// blocks a moment per encoding; later builds (a config reload) reuse them.
    ///
    /// # Errors
    /// [`AssembleError`] listing every problem: a template that cannot be read or does not parse
    /// (named by its config path, with the line), one that uses an unknown variable, a reserve
    /// that leaves no room in the context window.
    pub fn new(config: AssembleConfig) -> Result<Self, AssembleError> {
        let mut problems = Vec::new();
        let mut templates = Templates::new().map_err(|problem| AssembleError::new(vec![problem]))?;
        let builtin_context = templates
            .add_default_context()
            .map_err(|problem| AssembleError::new(vec![problem]))?;

        let default = build_profile(
            &mut templates,
            "",
            &config.default,
            &config.default,
            None,
            &builtin_context,
            &mut problems,
        );
        let mut profiles = Vec::with_capacity(1 + config.models.len());
        let mut by_model = HashMap::with_capacity(config.models.len());
        for (model, over) in &config.models {
            let path = format!("models.{}.", toml_key(model));
            let settings = config.default.overlay(over);
            let profile = build_profile(
                &mut templates,
                &path,
                &settings,
                over,
                Some(&default),
                &builtin_context,
                &mut problems,
            );
            by_model.insert(model.clone(), profiles.len() + 1);
            profiles.push(profile);
        }
        profiles.insert(0, default);
        if !problems.is_empty() {
            return Err(AssembleError::new(problems));
        }
        // Build the tokenizers now (slow, once per process) rather than on the first request's
        // lane.
        for profile in &profiles {
            if profile.budget.is_some() {
                let _ = profile.encoding.bpe();
            }
        }
        Ok(TemplateAssembler {
            templates,
            profiles,
            by_model,
            counter: TokenCounter::new(),
        })
    }

    fn profile(&self, model: &str) -> &Profile {
        // `by_model` holds only indexes of `profiles`, which never shrinks.
        let index = self.by_model.get(model).copied().unwrap_or(0);
        &self.profiles[index]
    }
}

impl Assembler for TemplateAssembler {
    fn assemble(
        &self,
        request: &InferenceRequest,
        context: &[RetrievedChunk],
    ) -> Result<Assembled, PipelineError> {
        // Inputs to embed are not a prompt: there is nothing to assemble.
        if matches!(request.input, PromptInput::Embed(_)) {
            return Ok(plain(request));
        }
        let profile = self.profile(&request.model);
        let tools = order::tools_block(&request.extra);
        if profile.system.is_none()
            && profile.prompt.is_none()
            && profile.budget.is_none()
            && context.is_empty()
            && tools.is_none()
        {
            return Ok(plain(request));
        }

        let chunks = order::canonical_chunks(context);
        let input = Input::of(&request.input);
        let configured = match &profile.system {
            Some(template) => self.templates.render(template, request, &[])?,
            None => String::new(),
        };
        let mut system_parts: Vec<&str> = vec![&configured];
        if let Input::Chat(conversation) = &input {
            system_parts.extend(conversation.leading_system.iter().map(|m| m.content.as_str()));
        }
        let system = order::join_parts(&system_parts);
        let mut context_block = if chunks.is_empty() {
            String::new()
        } else {
            self.templates.render(&profile.context, request, &chunks)?
        };

        // With a `prompt` template, the budget is counted on its output (see `prompt`).
        let draft = Draft {
            assembler: self,
            profile,
            request,
            system: &system,
            tools: tools.as_deref(),
            chunks: &chunks,
            input: &input,
        };
        let templated = profile.prompt.as_ref().map(|template| PromptDraft {
            draft: &draft,
            template,
        });
        let mut dropped_turns = 0;
        let mut prompt_tokens = None;
        // The prompt, when the budget has already rendered it.
        let mut rendered = None;
        if let Some(budget) = profile.budget.map(|b| b.for_answer(request.params.max_tokens)) {
            let (fit, block) = match &templated {
                Some(draft) => {
                    let fitted = draft.fit(budget, &context_block)?;
                    rendered = Some(fitted.prompt);
                    (fitted.fit, fitted.context_block)
                }
                None => {
                    let decision = draft.decide(budget, &context_block)?;
                    (decision.fit, decision.context_block)
                }
            };
            if fit.dropped_chunks > 0 || fit.dropped_turns > 0 {
                tracing::debug!(
                    model = %request.model,
                    dropped_chunks = fit.dropped_chunks,
                    dropped_turns = fit.dropped_turns,
                    prompt_tokens = fit.total,
                    "Dropped context to fit the token budget."
                );
            }
            if let Some(block) = block {
                context_block = block;
            }
            dropped_turns = fit.dropped_turns;
            prompt_tokens = Some(u32::try_from(fit.total).unwrap_or(u32::MAX));
        }

        let prefix = order::join_parts(&[&system, tools.as_deref().unwrap_or(""), &context_block]);
        let prefix_key = (!prefix.is_empty()).then(|| xxh3_64(prefix.as_bytes()));
        let messages = match &input {
            Input::Text(_) => None,
            Input::Chat(conversation) => {
                // Unchanged: nothing was added, folded or dropped, so the backend can be sent the
                // request's own messages without copying them.
                let unchanged = configured.is_empty()
                    && context_block.is_empty()
                    && conversation.leading_system.len() <= 1
                    && dropped_turns == 0;
                (!unchanged).then(|| {
                    chat_messages(
                        order::join_parts(&[&system, &context_block]),
                        conversation,
                        conversation.history_after(dropped_turns),
                    )
                })
            }
        };
        let prompt = match (rendered, &templated, &input) {
            (Some(prompt), _, _) => prompt,
            (None, Some(draft), _) => draft.render(&context_block, dropped_turns)?,
            (None, None, Input::Text(text)) => order::join_parts(&[&prefix, text]),
            (None, None, Input::Chat(conversation)) => {
                order::chat_prompt(&prefix, conversation.history_after(dropped_turns))
            }
        };
        Ok(Assembled {
            messages,
            prompt: prompt.into(),
            prompt_templated: templated.is_some(),
            prefix_key,
            prompt_tokens,
        })
    }
}

/// The core's default assembly for a request with nothing to add.
fn plain(request: &InferenceRequest) -> Assembled {
    let prompt = match &request.input {
        PromptInput::Chat(messages) => order::chat_prompt("", messages),
        PromptInput::Text(text) => text.clone(),
        PromptInput::Embed(_) => String::new(),
    };
    Assembled {
        messages: None,
        prompt: prompt.into(),
        prompt_templated: false,
        prefix_key: None,
        prompt_tokens: None,
    }
}

/// The system message (if it has any content) and the kept history. The system message keeps the
/// extra fields (`name`) of the caller's first system message.
fn chat_messages(
    system: String,
    conversation: &Conversation<'_>,
    history: &[ChatMessage],
) -> Arc<[ChatMessage]> {
    let mut messages = Vec::with_capacity(history.len() + 1);
    if !system.is_empty() {
        let mut message = ChatMessage::new(Role::System, system);
        if let Some(first) = conversation.leading_system.first() {
            message.extra = first.extra.clone();
        }
        messages.push(message);
    }
    messages.extend_from_slice(history);
    messages.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_errors_are_all_reported_with_their_paths() {
        let config: AssembleConfig = serde_json::from_str(
            r#"{"system": "{% if %}", "models": {"gpt-4.1": {"context": "line one\n{{ chunks | }}"},
                "small": {"context_window": 100, "reserve_output_tokens": 100}}}"#,
        )
        .unwrap();
        let Err(err) = TemplateAssembler::new(config) else {
            panic!("the config has three problems");
        };
        let text = err.to_string();
        assert_eq!(err.problems().len(), 3, "{text}");
        assert!(text.contains("template `system` line 1"), "{text}");
        assert!(
            text.contains("template `models.\"gpt-4.1\".context` line 2"),
            "{text}"
        );
        assert!(text.contains("`models.small.reserve_output_tokens`"), "{text}");
    }
}
