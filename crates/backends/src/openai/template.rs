//! Reading a stream's plain text chunks without parsing them whole. An OpenAI-style stream sends
//! most of its chunks with the same bytes around a different text (same id, model, creation
//! time, `"finish_reason":null`). The first text-only chunk is parsed whole and gives the bytes
//! before and after its text; a later chunk with exactly those bytes around one JSON string is
//! that string's text alone, read at the cost of the string. Any other chunk is parsed whole.

/// The bytes around a text-only chunk's text.
pub(super) struct TextTemplate {
    prefix: Box<str>,
    suffix: Box<str>,
}

impl TextTemplate {
    /// The template of `data`, a chunk that carries `token` and nothing else, if its text can be
    /// found: the string after a `"content"` or `"text"` key that, replaced by another text,
    /// `reads_as_text_only` reads as that text and nothing else.
    pub(super) fn learn(
        data: &str,
        token: &str,
        reads_as_text_only: impl Fn(&str, &str) -> bool,
    ) -> Option<Self> {
        // A text that differs from the chunk's own, so that reading it proves it came from the slot.
        let probe = if token == "a" { "b" } else { "a" };
        for key in ["\"content\"", "\"text\""] {
            for (at, _) in data.match_indices(key) {
                let after_key = data[at + key.len()..].trim_start();
                let Some(value) = after_key.strip_prefix(':') else {
                    continue;
                };
                let start = data.len() - value.trim_start().len();
                let Some(end) = string_end(data, start) else {
                    continue;
                };
                let (prefix, suffix) = (&data[..start], &data[end..]);
                if reads_as_text_only(&format!("{prefix}\"{probe}\"{suffix}"), probe) {
                    return Some(Self {
                        prefix: prefix.into(),
                        suffix: suffix.into(),
                    });
                }
            }
        }
        None
    }

    /// The text of `data` when it is this template around one non-empty JSON string.
    pub(super) fn read(&self, data: &str) -> Option<String> {
        let slot = data.strip_prefix(&*self.prefix)?.strip_suffix(&*self.suffix)?;
        if !slot.starts_with('"') {
            return None;
        }
        // Fails unless the slot is one JSON string and nothing more.
        let text: String = serde_json::from_str(slot).ok()?;
        (!text.is_empty()).then_some(text)
    }
}

/// Where the JSON string starting at `start` ends (just after its closing quote).
fn string_end(data: &str, start: usize) -> Option<usize> {
    let bytes = data.as_bytes();
    if bytes.get(start) != Some(&b'"') {
        return None;
    }
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: &str =
        r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}"#;

    /// Stands in for the dialect: a chunk is text only when its only varying part is the content.
    fn text_only(data: &str, text: &str) -> bool {
        data == CHUNK.replace(r#""hi""#, &serde_json::to_string(text).unwrap())
    }

    #[test]
    fn a_chunk_with_the_same_bytes_around_another_text_is_read_as_that_text() {
        let template = TextTemplate::learn(CHUNK, "hi", text_only).unwrap();
        let next = CHUNK.replace(r#""hi""#, r#"" w\u00f6rld\n""#);
        assert_eq!(template.read(&next).as_deref(), Some(" wörld\n"));
    }

    #[test]
    fn anything_else_is_left_to_the_whole_parse() {
        let template = TextTemplate::learn(CHUNK, "hi", text_only).unwrap();
        for other in [
            // An empty text says nothing: the whole parse decides what the chunk is.
            CHUNK.replace(r#""hi""#, r#""""#),
            // Not one string in the slot.
            CHUNK.replace(r#""hi""#, r#""a","role":"b""#),
            CHUNK.replace(r#""hi""#, "null"),
            CHUNK.replace(r#""hi""#, r#""unterminated"#),
            // Other bytes around it.
            CHUNK.replace("null", r#""stop""#),
            CHUNK.replace(r#""m""#, r#""n""#),
        ] {
            assert_eq!(template.read(&other), None, "{other}");
        }
    }

    #[test]
    fn a_text_the_probe_does_not_confirm_gives_no_template() {
        assert!(TextTemplate::learn(CHUNK, "hi", |_, _| false).is_none());
        let no_string = r#"{"choices":[{"delta":{"content":null}}]}"#;
        assert!(TextTemplate::learn(no_string, "hi", |_, _| true).is_none());
    }
}
