//! The `prompt` template: the whole text that completion-style backends (llama.cpp's
//! `/completion`, OpenAI-compatible `/v1/completions`) get as `Assembled::prompt`, in the model's
//! own chat format, and the token budget counted on that text.
//!
//! The template sees:
//! - `system`: the rendered system prompt, the caller's leading system messages included (as in
//!   the chat form's system message, without the context block); `""` when there is none;
//! - `tools`: the request's tool definitions as text (`Tools:` and canonical JSON); `""` without;
//! - `context`: the rendered context block; `""` without chunks (or when the budget dropped all);
//! - `messages`: the conversation after the system part, after any turns the budget dropped, each
//!   `{ role, content }`. A completion request (`PromptInput::Text`) has one user message holding
//!   its text, so one template serves both kinds of request;
//! - `model`, `meta`: as in the other templates.
//!
//! Chat backends still get the chat messages; only the text form changes. ChatML, for example
//! (`+%}` keeps the newlines after the tag, which `trim_blocks` would otherwise swallow; the
//! template's final newline is kept):
//!
//! ```jinja
//! {% if system %}<|im_start|>system
//! {{ system }}{% if context +%}
//!
//! {{ context }}{% endif %}<|im_end|>
//! {% endif %}{% for m in messages %}<|im_start|>{{ m.role }}
//! {{ m.content }}<|im_end|>
//! {% endfor %}<|im_start|>assistant
//! ```
//!
//! The prefix key is unchanged by the template: it stays the hash of the system prompt, tools and
//! context block, because the template's own framing is the same for every request of a model,
//! so two requests with the same parts have the same rendered prefix. (A template that writes
//! `meta` or the conversation before those parts breaks that; the key is then only a routing
//! hint that can miss, never a wrong prompt.)
//!
//! # The budget
//! With a window, the prompt is the rendered text, so its tokens are counted on that text, once,
//! whole: `prompt_tokens` is exactly tiktoken's count of what completion backends are sent,
//! framing included (which the chat form can only estimate). That costs one tiktoken pass over
//! the prompt per request (cached when the same prompt comes again), where the chat form counts
//! only parts it has not seen before.
//!
//! When it does not fit, parts go in the usual order (the lowest-scored chunks, then the oldest
//! turns; never the system prompt, the tools or the last turn), but not one render and count per
//! part: the excess is covered by each part's estimated cost (its text's cached count plus its
//! share of the framing, measured on small renders without the texts), then the result is
//! rendered and counted again. An estimate a token short costs one more round; one a token
//! long can drop one part more than strictly needed, only when the fit is that close.

use minijinja::context;
use minijinja::value::Value;
use tokio_prompt_orchestrator::{ChatMessage, PipelineError, RetrievedChunk, Role};

use super::budget::{Budget, Fit};
use super::draft::Draft;
use super::order::Input;
use super::template::TemplateRef;

/// A request's parts, ready to render into the prompt template.
pub(super) struct PromptDraft<'a> {
    pub draft: &'a Draft<'a>,
    pub template: &'a TemplateRef,
}

/// What fits, and the texts that were rendered to know it.
pub(super) struct PromptFit {
    /// `total` is the exact count of `prompt`.
    pub fit: Fit,
    /// The block without the dropped chunks; `None` when none were dropped.
    pub context_block: Option<String>,
    pub prompt: String,
}

impl PromptDraft<'_> {
    /// The prompt with `context` as the context block and the `dropped_turns` oldest turns gone.
    ///
    /// # Errors
    /// [`PipelineError::Assembly`] naming the template and line, when rendering fails.
    pub(super) fn render(&self, context: &str, dropped_turns: usize) -> Result<String, PipelineError> {
        let messages = match self.draft.input {
            Input::Chat(conversation) => messages_value(conversation.history_after(dropped_turns), None),
            Input::Text(text) => Value::from(vec![message_value(Role::User.as_str(), text)]),
        };
        self.render_with(
            self.draft.system,
            self.draft.tools.unwrap_or(""),
            context,
            messages,
        )
    }

    fn render_with(
        &self,
        system: &str,
        tools: &str,
        context: &str,
        messages: Value,
    ) -> Result<String, PipelineError> {
        let (model, meta) = self.template.uses_model_and_meta();
        let ctx = context! {
            system => system,
            tools => tools,
            context => context,
            messages => messages,
            model => model.then(|| Value::from(self.draft.request.model.as_str())),
            meta => meta.then(|| Value::from(self.draft.request.meta.clone())),
        };
        self.draft.assembler.templates.render_raw(self.template, ctx)
    }

    /// Decides what to drop so the rendered prompt fits `budget` (see the module docs);
    /// `full_block` is the context block with every chunk.
    ///
    /// # Errors
    /// [`PipelineError::ContextLength`] when the prompt without any droppable part does not fit
    /// (`needed` = its tokens plus the reserve, `limit` = the window);
    /// [`PipelineError::Assembly`] when a template fails.
    pub(super) fn fit(&self, budget: Budget, full_block: &str) -> Result<PromptFit, PipelineError> {
        let limit = budget.limit();
        let droppable_turns = match self.draft.input {
            Input::Chat(conversation) => conversation.droppable_turns().count(),
            Input::Text(_) => 0,
        };
        let drop_order = super::order::drop_order(self.draft.chunks);
        let mut costs = Estimates::default();
        let (mut chunks_gone, mut turns_gone) = (0, 0);
        let mut block: Option<String> = None;
        loop {
            let context = block.as_deref().unwrap_or(full_block);
            let prompt = self.render(context, turns_gone)?;
            let total = self.draft.count(&prompt);
            if total <= limit {
                let fit = Fit {
                    dropped_chunks: chunks_gone,
                    dropped_turns: turns_gone,
                    total,
                };
                return Ok(PromptFit {
                    fit,
                    context_block: block,
                    prompt,
                });
            }
            // Cover the excess with estimates, chunks first; every round drops at least one part.
            let mut excess = total - limit;
            let before = (chunks_gone, turns_gone);
            while excess > 0 && chunks_gone < self.draft.chunks.len() {
                let cost = costs.chunk(self, full_block, drop_order[chunks_gone]);
                excess = excess.saturating_sub(cost);
                chunks_gone += 1;
            }
            while excess > 0 && turns_gone < droppable_turns {
                let cost = costs.turn(self, turns_gone)?;
                excess = excess.saturating_sub(cost);
                turns_gone += 1;
            }
            if (chunks_gone, turns_gone) == before {
                return Err(PipelineError::ContextLength {
                    needed: total + budget.reserve,
                    limit: budget.window,
                });
            }
            if chunks_gone != before.0 {
                block = Some(self.draft.context_without(&drop_order[..chunks_gone])?);
            }
        }
    }

    /// The tokens of the prompt's framing alone, with `dropped_turns` turns gone and no context
    /// (turns go only once every chunk has): the template rendered with a one-letter stand-in for
    /// each non-empty part (so that `{% if system %}` decides as it does for real) and empty
    /// message contents. Small, and the same for every request of the same shape, so mostly
    /// served by the count cache.
    fn framing(&self, dropped_turns: usize) -> Result<usize, PipelineError> {
        let Input::Chat(conversation) = self.draft.input else {
            return Ok(0);
        };
        let stand_in = |part: &str| if part.is_empty() { "" } else { "x" };
        let messages = messages_value(conversation.history_after(dropped_turns), Some(""));
        let probe = self.render_with(
            stand_in(self.draft.system),
            stand_in(self.draft.tools.unwrap_or("")),
            "",
            messages,
        )?;
        Ok(self.draft.count(&probe))
    }
}

/// Each droppable part's estimated tokens in the prompt, measured the first time it is needed.
#[derive(Default)]
struct Estimates {
    /// What the context block writes around each chunk: its framing spread evenly.
    chunk_framing: Option<usize>,
    /// The framing probe with the turns dropped so far: (turns dropped, tokens).
    framing: Option<(usize, usize)>,
}

impl Estimates {
    /// Chunk `i`'s text plus its share of the block's framing.
    fn chunk(&mut self, prompt: &PromptDraft<'_>, full_block: &str, i: usize) -> usize {
        let text = |chunk: &RetrievedChunk| prompt.draft.count(&chunk.text);
        let framing = *self.chunk_framing.get_or_insert_with(|| {
            let texts: usize = prompt.draft.chunks.iter().map(|&c| text(c)).sum();
            prompt.draft.count(full_block).saturating_sub(texts) / prompt.draft.chunks.len().max(1)
        });
        text(prompt.draft.chunks[i]) + framing
    }

    /// The oldest remaining turn's contents plus the framing that goes with it: the difference
    /// between two framing probes, with and without the turn.
    fn turn(&mut self, prompt: &PromptDraft<'_>, dropped: usize) -> Result<usize, PipelineError> {
        let Input::Chat(conversation) = prompt.draft.input else {
            return Ok(0);
        };
        let Some(turn) = conversation.droppable_turns().nth(dropped) else {
            return Ok(0);
        };
        let with = match self.framing {
            Some((at, tokens)) if at == dropped => tokens,
            _ => prompt.framing(dropped)?,
        };
        let without = prompt.framing(dropped + 1)?;
        self.framing = Some((dropped + 1, without));
        let contents: usize = conversation.history[turn]
            .iter()
            .map(|m| prompt.draft.count(&m.content))
            .sum();
        Ok(contents + with.saturating_sub(without))
    }
}

/// The messages as the template sees them; `content` replaces every message's content.
fn messages_value(messages: &[ChatMessage], content: Option<&str>) -> Value {
    messages
        .iter()
        .map(|m| message_value(m.role.as_str(), content.unwrap_or(&m.content)))
        .collect()
}

fn message_value(role: &str, content: &str) -> Value {
    context! { role => role, content => content }
}
