//! Token counting for the budget: tiktoken's BPE, loaded once per process, behind a small lock-free
//! cache of counts.
//!
//! Encoding is the expensive part of assembly, while the same texts come back again and again: the system prompt on every request, the same
//! documents for many questions, and a session's history on each of its turns. So counts are
//! cached by a hash of the text.

use std::sync::atomic::{AtomicU64, Ordering};

use tiktoken_rs::CoreBPE;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::config::Encoding;

/// Tokens a chat message costs beyond its content: the framing around it (`<|start|>`, the
/// separator, `<|end|>`: 3) and its role (1). OpenAI's cookbook counts the same for current
/// models; other chat templates spend a similar handful.
pub const MESSAGE_OVERHEAD_TOKENS: usize = 4;

/// Tokens that prime the answer once per chat prompt (`<|start|>assistant<|message|>`).
pub const REPLY_PRIMING_TOKENS: usize = 3;

/// Tokens counted for each `\n\n` that joins two parts of one text (system prompt, tools, context
/// block, the completion prompt). A blank line is usually one token, sometimes merged away.
pub const SEPARATOR_TOKENS: usize = 1;

impl Encoding {
    /// The tokenizer, built on first use (150–200 ms) and shared by the whole process.
    pub(crate) fn bpe(self) -> &'static CoreBPE {
        match self {
            Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
        }
    }

    /// The number of tokens in `text`, uncached. Special-token markers in the text
    /// (`<|endoftext|>`) count as ordinary text, as they do in a chat message's content.
    pub fn count_tokens(self, text: &str) -> usize {
        self.bpe().encode_ordinary(text).len()
    }

    /// Distinguishes the encodings' entries in the shared cache.
    fn seed(self) -> u64 {
        match self {
            Encoding::O200kBase => 0x0200,
            Encoding::Cl100kBase => 0x0100,
        }
    }
}

/// Slots in the cache: 8192 × 8 bytes = 64 KiB, enough for the texts of many concurrent sessions.
const SLOTS: usize = 1 << 13;
/// The low bits of a slot hold the count plus one (0 marks an empty slot).
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// Counts tokens, remembering counts in a direct-mapped table.
///
/// Each slot is one `AtomicU64` holding the top 40 bits of the text's hash and its count, so a
/// lookup is one relaxed load and never blocks a lane; a colliding text simply replaces the
/// slot's entry. The slot index uses the hash's low 13 bits and the check its top 40, so a wrong
/// count needs two different texts to agree on 53 bits of their hash: about one lookup in 10^16.
/// Even then the cost is a budget a few tokens off, never a wrong prompt.
pub(crate) struct TokenCounter {
    slots: Box<[AtomicU64]>,
}

impl TokenCounter {
    pub(crate) fn new() -> Self {
        TokenCounter {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub(crate) fn count(&self, encoding: Encoding, text: &str) -> usize {
        if text.is_empty() {
            return 0;
        }
        let hash = xxh3_64_with_seed(text.as_bytes(), encoding.seed());
        let slot = &self.slots[(hash as usize) & (SLOTS - 1)];
        let tag = hash & !COUNT_MASK;
        let entry = slot.load(Ordering::Relaxed);
        if entry != 0 && entry & !COUNT_MASK == tag {
            return ((entry & COUNT_MASK) - 1) as usize;
        }
        let count = encoding.count_tokens(text);
        // Counts that do not fit the slot (over 16 million tokens) are simply not cached.
        if let Ok(stored) = u64::try_from(count + 1)
            && stored <= COUNT_MASK
        {
            slot.store(tag | stored, Ordering::Relaxed);
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_counts_equal_fresh_ones() {
        let counter = TokenCounter::new();
        let text = "Backpressure flows upstream, stage by stage, to the input queue.";
        let fresh = Encoding::O200kBase.count_tokens(text);
        assert!(fresh > 5);
        assert_eq!(counter.count(Encoding::O200kBase, text), fresh);
        assert_eq!(counter.count(Encoding::O200kBase, text), fresh);
        // The same text under the other encoding is its own entry.
        assert_eq!(
            counter.count(Encoding::Cl100kBase, text),
            Encoding::Cl100kBase.count_tokens(text)
        );
        assert_eq!(counter.count(Encoding::O200kBase, ""), 0);
    }

    #[test]
    fn special_markers_count_as_text() {
        assert!(Encoding::Cl100kBase.count_tokens("<|endoftext|>") > 1);
    }
}
