//! The post-processors a config declares (`[[post]]`), applied in order to the output of the
//! models they name: stop sequences, a maximum length in characters, regex redaction, and a
//! JSON check for requests in JSON mode.

use std::collections::HashSet;
use std::sync::Arc;

use regex::Regex;
use serde::Deserialize;
use tokio_prompt_orchestrator::{
    FinishReason, InferenceRequest, PostProcessor, PostStep, Step, StopSequences,
};

/// One `[[post]]` entry, by `kind`; each takes `models`, the models whose output it processes
/// (empty: every model).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PostConfig {
    /// The output ends before the first of `sequences` (`finish_reason = stop`).
    Stop {
        sequences: Vec<String>,
        #[serde(default)]
        models: Vec<String>,
    },
    /// The output ends after `max` characters (`finish_reason = length`).
    MaxChars {
        max: usize,
        #[serde(default)]
        models: Vec<String>,
    },
    /// Every match of `pattern` becomes `replacement`. Matches up to `window_chars` long are
    /// found across token boundaries: that much text is held back while streaming.
    Redact {
        pattern: String,
        #[serde(default = "redacted")]
        replacement: String,
        #[serde(default = "window")]
        window_chars: usize,
        #[serde(default)]
        models: Vec<String>,
    },
    /// Requests asking for JSON (`response_format` `json_object` or `json_schema`) fail with 502
    /// `invalid_output` when the output is not valid JSON; `always = true` checks every request.
    Json {
        #[serde(default)]
        always: bool,
        #[serde(default)]
        models: Vec<String>,
    },
}

fn redacted() -> String {
    "[redacted]".into()
}

fn window() -> usize {
    64
}

impl PostConfig {
    /// The processor, or what is wrong with the entry (an invalid pattern).
    ///
    /// # Errors
    /// A message naming the problem and the fix.
    pub fn build(&self) -> Result<Arc<dyn PostProcessor>, String> {
        self.build_for(self.models())
    }

    /// The processor, applied to `models` only (empty: every model).
    ///
    /// # Errors
    /// As [`build`](Self::build).
    pub fn build_for(&self, models: &[String]) -> Result<Arc<dyn PostProcessor>, String> {
        let inner: Arc<dyn PostProcessor> = match self {
            PostConfig::Stop { sequences, .. } => Arc::new(StopSequences::new(sequences.clone())),
            PostConfig::MaxChars { max, .. } => Arc::new(MaxChars { max: *max }),
            PostConfig::Redact {
                pattern,
                replacement,
                window_chars,
                ..
            } => Arc::new(Redact {
                pattern: Regex::new(pattern).map_err(|e| format!("pattern: not a valid regex: {e}"))?,
                replacement: replacement.clone(),
                window: *window_chars,
            }),
            PostConfig::Json { always, .. } => Arc::new(JsonCheck { always: *always }),
        };
        Ok(if models.is_empty() {
            inner
        } else {
            Arc::new(ForModels {
                models: models.iter().cloned().collect(),
                inner,
            })
        })
    }

    /// The models it applies to; empty: every model.
    pub fn models(&self) -> &[String] {
        match self {
            PostConfig::Stop { models, .. }
            | PostConfig::MaxChars { models, .. }
            | PostConfig::Redact { models, .. }
            | PostConfig::Json { models, .. } => models,
        }
    }
}

/// A processor applied only to some models' requests.
struct ForModels {
    models: HashSet<String>,
    inner: Arc<dyn PostProcessor>,
}

impl PostProcessor for ForModels {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn start(&self, request: &InferenceRequest) -> Option<Box<dyn PostStep>> {
        if self.models.contains(&request.model) {
            self.inner.start(request)
        } else {
            None
        }
    }
}

struct MaxChars {
    max: usize,
}

impl PostProcessor for MaxChars {
    fn name(&self) -> &str {
        "max_chars"
    }

    fn start(&self, _request: &InferenceRequest) -> Option<Box<dyn PostStep>> {
        Some(Box::new(CharBudget { left: self.max }))
    }
}

struct CharBudget {
    left: usize,
}

impl PostStep for CharBudget {
    fn push(&mut self, text: &str) -> Step {
        let count = text.chars().count();
        if count < self.left || (count == self.left && self.left > 0) {
            self.left -= count;
            // Exactly at the cap: the output is complete, at its maximum length.
            let end = (self.left == 0).then_some(FinishReason::Length);
            return Step {
                emit: text.to_string(),
                end,
            };
        }
        let emit = text.chars().take(self.left).collect();
        self.left = 0;
        Step {
            emit,
            end: Some(FinishReason::Length),
        }
    }

    fn finish(&mut self) -> Result<String, String> {
        Ok(String::new())
    }
}

struct Redact {
    pattern: Regex,
    replacement: String,
    window: usize,
}

impl PostProcessor for Redact {
    fn name(&self) -> &str {
        "redact"
    }

    fn start(&self, _request: &InferenceRequest) -> Option<Box<dyn PostStep>> {
        Some(Box::new(Redacting {
            pattern: self.pattern.clone(),
            replacement: self.replacement.clone(),
            window: self.window,
            held: String::new(),
        }))
    }
}

/// Redaction on a stream: matches are replaced in the text held so far, and everything but the
/// last `window` characters (where a match may still be growing) goes on.
struct Redacting {
    pattern: Regex,
    replacement: String,
    window: usize,
    held: String,
}

impl Redacting {
    fn redact(&mut self) {
        if let std::borrow::Cow::Owned(replaced) =
            self.pattern.replace_all(&self.held, self.replacement.as_str())
        {
            self.held = replaced;
        }
    }
}

impl PostStep for Redacting {
    fn push(&mut self, text: &str) -> Step {
        self.held.push_str(text);
        self.redact();
        let chars = self.held.chars().count();
        if chars <= self.window {
            return Step::default();
        }
        let split = self
            .held
            .char_indices()
            .nth(chars - self.window)
            .map_or(self.held.len(), |(i, _)| i);
        // A match that began in the released part and runs into the held part was already
        // replaced whole above; the released text never changes afterwards.
        let emit: String = self.held.drain(..split).collect();
        Step { emit, end: None }
    }

    fn finish(&mut self) -> Result<String, String> {
        self.redact();
        Ok(std::mem::take(&mut self.held))
    }
}

struct JsonCheck {
    always: bool,
}

/// Whether the request asks for JSON output (OpenAI's `response_format`).
fn json_mode(request: &InferenceRequest) -> bool {
    #[derive(serde::Deserialize)]
    struct ResponseFormat<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<&'a str>,
    }
    let Some(format) = request.extra.get("response_format") else {
        return false;
    };
    let kind = serde_json::from_str::<ResponseFormat<'_>>(format.get())
        .ok()
        .and_then(|f| f.kind);
    matches!(kind, Some("json_object" | "json_schema"))
}

impl PostProcessor for JsonCheck {
    fn name(&self) -> &str {
        "json"
    }

    fn start(&self, request: &InferenceRequest) -> Option<Box<dyn PostStep>> {
        (self.always || json_mode(request))
            .then(|| Box::new(JsonOutput { seen: String::new() }) as Box<dyn PostStep>)
    }
}

/// Passes text on at once and keeps a copy to check when the output is complete.
struct JsonOutput {
    seen: String,
}

impl PostStep for JsonOutput {
    fn push(&mut self, text: &str) -> Step {
        self.seen.push_str(text);
        Step {
            emit: text.to_string(),
            end: None,
        }
    }

    fn finish(&mut self) -> Result<String, String> {
        match serde_json::from_str::<serde::de::IgnoredAny>(&self.seen) {
            Ok(_) => Ok(String::new()),
            Err(e) => Err(format!("the model's output is not valid JSON ({e})")),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_prompt_orchestrator::SessionId;

    use super::*;

    fn run(config: &str, pieces: &[&str]) -> (String, Option<FinishReason>, Result<(), String>) {
        let config: PostConfig = toml::from_str(config).unwrap();
        let processor = config.build().unwrap();
        let mut request = InferenceRequest::text(SessionId::new("s"), "q").with_model("m");
        request.extra.insert(
            "response_format".into(),
            tokio_prompt_orchestrator::raw(&serde_json::json!({"type": "json_object"})),
        );
        let mut step = processor.start(&request).expect("applies");
        let mut out = String::new();
        for piece in pieces {
            let s = step.push(piece);
            out.push_str(&s.emit);
            if s.end.is_some() {
                return (out, s.end, Ok(()));
            }
        }
        match step.finish() {
            Ok(rest) => (out + &rest, None, Ok(())),
            Err(e) => (out, None, Err(e)),
        }
    }

    #[test]
    fn max_chars_cuts_inside_a_token() {
        assert_eq!(
            run("kind = \"max_chars\"\nmax = 7", &["héllo ", "wörld"]),
            ("héllo w".to_string(), Some(FinishReason::Length), Ok(()))
        );
        assert_eq!(run("kind = \"max_chars\"\nmax = 9", &["ab", "c"]).0, "abc");
    }

    #[test]
    fn redaction_catches_matches_split_across_tokens() {
        let config = "kind = \"redact\"\npattern = '\\d{4}-\\d{4}'\nwindow_chars = 16";
        let (out, _, _) = run(config, &["card 12", "34-56", "78 ok, and 1111-2222", " too"]);
        assert_eq!(out, "card [redacted] ok, and [redacted] too");
    }

    #[test]
    fn json_mode_outputs_are_checked() {
        assert_eq!(run("kind = \"json\"", &["{\"a\":", " 1}"]).2, Ok(()));
        let (_, _, result) = run("kind = \"json\"", &["{\"a\":", " 1"]);
        assert!(
            result
                .unwrap_err()
                .starts_with("the model's output is not valid JSON")
        );
    }

    #[test]
    fn processors_apply_only_to_their_models() {
        let config: PostConfig =
            toml::from_str("kind = \"max_chars\"\nmax = 1\nmodels = [\"other\"]").unwrap();
        let processor = config.build().unwrap();
        let request = InferenceRequest::text(SessionId::new("s"), "q").with_model("m");
        assert!(processor.start(&request).is_none());
    }

    #[test]
    fn a_bad_pattern_is_reported() {
        let config: PostConfig = toml::from_str("kind = \"redact\"\npattern = '('").unwrap();
        assert!(
            config
                .build()
                .err()
                .unwrap()
                .starts_with("pattern: not a valid regex")
        );
    }
}
