//! The canonical, prefix-stable order of a prompt's parts, and the text forms they are joined into.
//!
//! A prompt is laid out from the most shared part to the least:
//!
//! ```text
//! system prompt (configured, then the caller's leading system messages)
//! tool definitions (canonical JSON)        } the stable prefix: hashed into `prefix_key`
//! context block (chunks by source, position)
//! conversation history, oldest first
//! the last user turn
//! ```
//!
//! so requests that share a system prompt, tools and documents share the longest possible prefix,
//! and a backend's prefix (KV) cache can serve it. Everything here is deterministic: chunks are
//! ordered by where they come from, never by their retrieval score, and JSON objects by key, so a
//! different retrieval order or field order gives byte-identical text.

use std::cmp::Ordering;
use std::fmt::Write;

use tokio_prompt_orchestrator::{ChatMessage, PromptInput, RawExtra, RetrievedChunk, Role};

/// The chunks in canonical order: by source, then position within it. Text and score only break
/// ties between duplicates, so that even those come out in one order.
pub(crate) fn canonical_chunks(chunks: &[RetrievedChunk]) -> Vec<&RetrievedChunk> {
    let mut sorted: Vec<&RetrievedChunk> = chunks.iter().collect();
    sorted.sort_by(|a, b| {
        (a.source.as_str(), a.position, a.text.as_str())
            .cmp(&(b.source.as_str(), b.position, b.text.as_str()))
            .then_with(|| a.score.total_cmp(&b.score))
    });
    sorted
}

/// The order the budget drops chunks in: lowest score first; among equal scores, the one that
/// comes last in canonical order, so that ties keep the prompt's beginning intact. Indexes are
/// into the canonical order.
pub(crate) fn drop_order(canonical: &[&RetrievedChunk]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..canonical.len()).collect();
    order.sort_by(|&a, &b| match canonical[a].score.total_cmp(&canonical[b].score) {
        Ordering::Equal => b.cmp(&a),
        unequal => unequal,
    });
    order
}

/// The request's tool definitions (`extra["tools"]`) as a text block, keys sorted so that the
/// same tools always give the same text; `None` when the request has none.
///
/// The tools still travel to the backend unchanged in `extra`; this text is for the prefix key
/// and for completion-style backends, which have no other way to see them.
pub(crate) fn tools_block(extra: &RawExtra) -> Option<String> {
    let tools = extra.parsed("tools").filter(|tools| !tools.is_null())?;
    let mut out = String::from("Tools:\n");
    write_canonical_json(&tools, &mut out);
    Some(out)
}

/// Writes a message's pass-through fields as a compact JSON object with its keys sorted, at every
/// depth (see [`write_canonical_json`]).
pub(crate) fn write_canonical_extra(extra: &RawExtra, out: &mut String) {
    let map = extra
        .iter()
        .map(|(key, raw)| (key.clone(), serde_json::from_str(raw.get()).unwrap_or_default()))
        .collect();
    write_canonical_object(&map, out);
}

/// Writes `map` as a compact JSON object with its keys sorted (see [`write_canonical_json`]).
pub(crate) fn write_canonical_object(map: &serde_json::Map<String, serde_json::Value>, out: &mut String) {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.push('{');
    for (i, (key, item)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_string(key, out);
        out.push(':');
        write_canonical_json(item, out);
    }
    out.push('}');
}

/// Writes `value` as compact JSON with every object's keys sorted, whatever order the map keeps
/// (serde_json's `preserve_order` feature may be on elsewhere in the build).
pub(crate) fn write_canonical_json(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical_json(item, out);
            }
            out.push(']');
        }
        serde_json::Value::Object(map) => write_canonical_object(map, out),
        serde_json::Value::String(text) => write_json_string(text, out),
        // Null, booleans and numbers have one spelling each.
        scalar => {
            let _ = write!(out, "{scalar}");
        }
    }
}

fn write_json_string(text: &str, out: &mut String) {
    // Displaying a JSON string value escapes it; writing to a String cannot fail.
    let _ = write!(out, "{}", serde_json::Value::from(text));
}

/// A request's input, split for assembly.
pub(crate) enum Input<'r> {
    Chat(Conversation<'r>),
    /// A completion request's prompt text.
    Text(&'r str),
}

impl<'r> Input<'r> {
    pub(crate) fn of(input: &'r PromptInput) -> Self {
        match input {
            PromptInput::Chat(messages) => Input::Chat(Conversation::split(messages)),
            PromptInput::Text(text) => Input::Text(text),
            // Not assembled (see `assemble`).
            PromptInput::Embed(_) => Input::Text(""),
        }
    }
}

/// A chat conversation split for assembly.
pub(crate) struct Conversation<'r> {
    /// The caller's system messages before the first other message; they are folded into the
    /// one system message, after the configured system prompt.
    pub leading_system: &'r [ChatMessage],
    /// Everything after them, in order.
    pub history: &'r [ChatMessage],
    /// Where each turn of `history` starts. A turn is a user message and the assistant, tool
    /// (and later system) messages after it, so a tool call and its result are kept or dropped
    /// together; messages before the first user message form a turn of their own. The last turn,
    /// which holds the last user message, is never dropped.
    pub turn_starts: Vec<usize>,
}

impl<'r> Conversation<'r> {
    pub(crate) fn split(messages: &'r [ChatMessage]) -> Self {
        let leading = messages.iter().take_while(|m| m.role == Role::System).count();
        let (leading_system, history) = messages.split_at(leading);
        let turn_starts = history
            .iter()
            .enumerate()
            .filter(|(i, m)| *i == 0 || m.role == Role::User)
            .map(|(i, _)| i)
            .collect();
        Conversation {
            leading_system,
            history,
            turn_starts,
        }
    }

    /// The turns that may be dropped (all but the last), oldest first, as ranges of `history`.
    pub(crate) fn droppable_turns(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        self.turn_starts.windows(2).map(|pair| pair[0]..pair[1])
    }

    /// The history left after dropping the `dropped` oldest turns.
    pub(crate) fn history_after(&self, dropped: usize) -> &'r [ChatMessage] {
        match self.turn_starts.get(dropped) {
            Some(&start) => &self.history[start..],
            None => &[],
        }
    }
}

/// Joins the non-empty parts with a blank line.
pub(crate) fn join_parts(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len() + 2).sum());
    for part in parts.iter().filter(|part| !part.is_empty()) {
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(part);
    }
    out
}

/// A chat prompt flattened for completion-style backends: `system: <prefix>`, then one
/// `role: content` line per message, as the core's default assembly writes it. A lone user
/// message with no prefix is sent as-is, again as the core does.
pub(crate) fn chat_prompt(prefix: &str, history: &[ChatMessage]) -> String {
    if prefix.is_empty()
        && let [only] = history
        && only.role == Role::User
    {
        return only.content.clone();
    }
    let mut out = String::new();
    if !prefix.is_empty() {
        out.push_str("system: ");
        out.push_str(prefix);
    }
    for message in history {
        if !out.is_empty() {
            out.push('\n');
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "{}: {}", message.role.as_str(), message.content);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chunk(source: &str, position: u64, score: f32) -> RetrievedChunk {
        RetrievedChunk {
            text: format!("{source}#{position}"),
            source: source.into(),
            position,
            score,
        }
    }

    #[test]
    fn chunks_sort_by_source_and_position_not_score() {
        let chunks = [chunk("b", 1, 0.9), chunk("a", 2, 0.1), chunk("a", 1, 0.5)];
        let order: Vec<&str> = canonical_chunks(&chunks)
            .iter()
            .map(|c| c.text.as_str())
            .collect();
        assert_eq!(order, ["a#1", "a#2", "b#1"]);
    }

    #[test]
    fn lowest_scores_drop_first_and_ties_drop_from_the_end() {
        let chunks = [
            chunk("a", 1, 0.5),
            chunk("a", 2, 0.1),
            chunk("b", 1, 0.5),
            chunk("c", 1, 0.9),
        ];
        let canonical = canonical_chunks(&chunks);
        assert_eq!(drop_order(&canonical), [1, 2, 0, 3]);
    }

    #[test]
    fn tools_are_written_with_sorted_keys() {
        let mut a = RawExtra::new();
        a.insert(
            "tools".into(),
            tokio_prompt_orchestrator::raw(
                &json!([{"type": "function", "function": {"name": "f", "description": "d\"q"}}]),
            ),
        );
        assert_eq!(
            tools_block(&a).unwrap(),
            r#"Tools:
[{"function":{"description":"d\"q","name":"f"},"type":"function"}]"#
        );
        a.insert(
            "tools".into(),
            tokio_prompt_orchestrator::raw(&serde_json::Value::Null),
        );
        assert_eq!(tools_block(&a), None);
    }

    #[test]
    fn turns_start_at_user_messages() {
        let messages = [
            ChatMessage::system("s"),
            ChatMessage::new(Role::Assistant, "greeting"),
            ChatMessage::user("q1"),
            ChatMessage::new(Role::Assistant, "a1"),
            ChatMessage::user("q2"),
            ChatMessage::new(Role::Assistant, "call"),
            ChatMessage::new(Role::Tool, "result"),
        ];
        let conversation = Conversation::split(&messages);
        assert_eq!(conversation.leading_system.len(), 1);
        assert_eq!(conversation.turn_starts, [0, 1, 3]);
        assert_eq!(conversation.droppable_turns().collect::<Vec<_>>(), [0..1, 1..3]);
        assert_eq!(conversation.history_after(2)[0].content, "q2");
    }

    #[test]
    fn flattened_chat_matches_the_core_format() {
        let history = [ChatMessage::user("hi")];
        assert_eq!(chat_prompt("", &history), "hi");
        assert_eq!(chat_prompt("Be brief.", &history), "system: Be brief.\nuser: hi");
        assert_eq!(join_parts(&["a", "", "b"]), "a\n\nb");
    }
}
