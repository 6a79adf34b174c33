//! A request's parts counted against its model's token budget: each part once, from the count
//! cache when it was seen before, and the decision of what to drop.
//!
//! The context block is counted piece by piece: its framing (what the template writes around the
//! chunks) plus each chunk's text. A chunk's text comes back in many different retrieval sets,
//! while a rendered block is rarely seen twice, so counting by chunk lets the cache serve most of
//! the work, and dropping a chunk needs no encoding at all. To find the framing, the template is
//! rendered once more with a marker in place of each chunk's text; when a template does not print
//! each text once as it is (it truncates or omits them), the block is counted whole instead.
//!
//! Tool definitions and a message's extra fields (tool calls) are counted as their canonical JSON;
//! a backend's chat template renders them its own way, so that part is the roughest estimate.

use tokio_prompt_orchestrator::{ChatMessage, InferenceRequest, PipelineError, RetrievedChunk};

use super::budget::{self, Budget, Costs, Fit};
use super::order::{self, Input};
use super::tokens::{MESSAGE_OVERHEAD_TOKENS, REPLY_PRIMING_TOKENS, SEPARATOR_TOKENS};
use super::{Profile, TemplateAssembler};

/// Surrounds the marker that stands in for a chunk's text: a private-use character, which neither
/// documents nor templates are expected to contain.
const MARK: char = '\u{F8FF}';

/// A request's parts, ready to be counted.
pub(super) struct Draft<'a> {
    pub assembler: &'a TemplateAssembler,
    pub profile: &'a Profile,
    pub request: &'a InferenceRequest,
    /// The system prompt (configured, then the caller's leading system messages).
    pub system: &'a str,
    pub tools: Option<&'a str>,
    /// The chunks in canonical order.
    pub chunks: &'a [&'a RetrievedChunk],
    pub input: &'a Input<'a>,
}

/// What the budget decided, and the context block to send when chunks were dropped.
pub(super) struct Decision {
    pub fit: Fit,
    /// The block without the dropped chunks (`""` when all went); `None` when none were dropped.
    pub context_block: Option<String>,
}

impl Draft<'_> {
    pub(super) fn count(&self, text: &str) -> usize {
        self.assembler.counter.count(self.profile.encoding, text)
    }

    /// A chat message's tokens: framing, content, and its extra fields (tool calls) as JSON.
    fn message_tokens(&self, message: &ChatMessage) -> usize {
        let mut tokens = MESSAGE_OVERHEAD_TOKENS + self.count(&message.content);
        if !message.extra.is_empty() {
            let mut json = String::new();
            order::write_canonical_extra(&message.extra, &mut json);
            tokens += self.count(&json);
        }
        tokens
    }

    /// Decides what to drop so the prompt fits `budget`; `full_block` is the context block with
    /// every chunk.
    ///
    /// # Errors
    /// [`PipelineError::ContextLength`] when the parts that are never dropped do not fit;
    /// [`PipelineError::Assembly`] when the context template fails on a smaller set of chunks.
    pub(super) fn decide(&self, budget: Budget, full_block: &str) -> Result<Decision, PipelineError> {
        let texts: Vec<usize> = self.chunks.iter().map(|chunk| self.count(&chunk.text)).collect();
        let all: Vec<usize> = (0..self.chunks.len()).collect();
        let context = match self.chunks {
            [] => 0,
            _ => match self.framing_tokens(&all) {
                Some(framing) => framing + texts.iter().sum::<usize>(),
                None => self.count(full_block),
            },
        };
        let (fixed, turns, context_framing) = self.fixed_and_turns();
        let costs = Costs {
            fixed,
            turns: &turns,
            context,
            context_framing,
        };

        let drop_order = order::drop_order(self.chunks);
        let shares = || {
            // Each chunk's share of the block, in proportion to its text: the framing is spread
            // over the chunks (evenly when every text is empty).
            let sum: usize = texts.iter().sum();
            let even = context / texts.len().max(1);
            drop_order
                .iter()
                .map(|&i| (context * texts[i]).checked_div(sum).unwrap_or(even))
                .collect()
        };
        // A block rendered while counting, kept for the output: (chunks dropped, block).
        let mut rendered: Option<(usize, String)> = None;
        let recount = |dropped: usize| {
            let kept = kept_after(&drop_order[..dropped], self.chunks.len());
            if let Some(framing) = self.framing_tokens(&kept) {
                return Ok(framing + kept.iter().map(|&i| texts[i]).sum::<usize>());
            }
            let block = self.render(&kept)?;
            let tokens = self.count(&block);
            rendered = Some((dropped, block));
            Ok(tokens)
        };
        let fit = budget::fit(budget, &costs, shares, recount)?;

        let context_block = match fit.dropped_chunks {
            0 => None,
            all if all == self.chunks.len() => Some(String::new()),
            dropped => match rendered {
                Some((at, block)) if at == dropped => Some(block),
                _ => Some(self.render(&kept_after(&drop_order[..dropped], self.chunks.len()))?),
            },
        };
        Ok(Decision { fit, context_block })
    }

    /// The tokens that are never dropped, each droppable turn's tokens (oldest first), and what a
    /// non-empty context block adds around itself.
    fn fixed_and_turns(&self) -> (usize, Vec<usize>, usize) {
        let system = self.count(self.system);
        let tools = self.tools.map_or(0, |tools| self.count(tools));
        match self.input {
            Input::Chat(conversation) => {
                let tokens = |messages: &[ChatMessage]| -> usize {
                    messages.iter().map(|m| self.message_tokens(m)).sum()
                };
                let turns: Vec<usize> = conversation
                    .droppable_turns()
                    .map(|range| tokens(&conversation.history[range]))
                    .collect();
                let last = tokens(conversation.history_after(turns.len()));
                // The system message exists when there is a system prompt; otherwise only while
                // there is a context block, and its framing is then the block's.
                let (system_message, context_framing) = if system > 0 {
                    (MESSAGE_OVERHEAD_TOKENS + system, SEPARATOR_TOKENS)
                } else {
                    (0, MESSAGE_OVERHEAD_TOKENS)
                };
                let fixed = REPLY_PRIMING_TOKENS + system_message + tools + last;
                (fixed, turns, context_framing)
            }
            Input::Text(text) => {
                let parts = [system, tools, self.count(text)];
                let separators = parts.iter().filter(|&&part| part > 0).count().saturating_sub(1);
                let fixed = parts.iter().sum::<usize>() + separators * SEPARATOR_TOKENS;
                (fixed, Vec::new(), SEPARATOR_TOKENS)
            }
        }
    }

    /// The tokens the context template writes around the `kept` chunks' texts, or `None` when it
    /// does not print each text exactly once as it is (then only a whole count is right). The
    /// template is rendered with a marker for each text; if that render fails (a filter that
    /// needs the real text), the real render decides.
    fn framing_tokens(&self, kept: &[usize]) -> Option<usize> {
        let markers: Vec<String> = kept.iter().map(|i| format!("{MARK}{i}{MARK}")).collect();
        let stand_ins: Vec<RetrievedChunk> = kept
            .iter()
            .zip(&markers)
            .map(|(&i, marker)| RetrievedChunk {
                text: marker.clone(),
                source: self.chunks[i].source.clone(),
                position: self.chunks[i].position,
                score: self.chunks[i].score,
            })
            .collect();
        let stand_ins: Vec<&RetrievedChunk> = stand_ins.iter().collect();
        let mut probe = self
            .assembler
            .templates
            .render(&self.profile.context, self.request, &stand_ins)
            .ok()?;
        for marker in &markers {
            if probe.matches(marker.as_str()).count() != 1 {
                return None;
            }
            probe = probe.replacen(marker.as_str(), "", 1);
        }
        Some(self.count(&probe))
    }

    /// The context block with the `kept` chunks (indexes into `chunks`, in canonical order).
    fn render(&self, kept: &[usize]) -> Result<String, PipelineError> {
        let kept: Vec<&RetrievedChunk> = kept.iter().map(|&i| self.chunks[i]).collect();
        self.assembler
            .templates
            .render(&self.profile.context, self.request, &kept)
    }
}

impl Draft<'_> {
    /// The context block without the `dropped` chunks (indexes into `chunks`); `""` without any.
    pub(super) fn context_without(&self, dropped: &[usize]) -> Result<String, PipelineError> {
        let kept = kept_after(dropped, self.chunks.len());
        if kept.is_empty() {
            return Ok(String::new());
        }
        self.render(&kept)
    }
}

/// The indexes of `0..len` that are not in `dropped`, in order.
fn kept_after(dropped: &[usize], len: usize) -> Vec<usize> {
    (0..len).filter(|i| !dropped.contains(i)).collect()
}
