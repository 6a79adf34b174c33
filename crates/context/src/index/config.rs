//! Settings for the index (where it lives, how text is cut into chunks) and for retrieval (how
//! many chunks a request gets), as they appear under `[rag]` in `pipeline.toml`.
//!
//! Both structs reject unknown keys; [`IndexConfig::validate`] and [`RagSettings::validate`]
//! report every problem at once as `(field, message)` pairs, so the gateway's validation pass can
//! prefix them with their TOML path.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the index lives and how ingested text is cut into chunks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexConfig {
    /// The index directory; created on the first ingest.
    pub path: PathBuf,
    /// Target chunk size in characters (Unicode scalar values, not bytes). A chunk is never longer,
    /// except one made of a single word longer than this (a word is never cut).
    #[serde(default = "default_chunk_chars")]
    pub chunk_chars: usize,
    /// Characters of the previous chunk repeated at the start of the next (whole words only), so a
    /// passage cut at a chunk boundary is still found whole in one of them.
    #[serde(default = "default_overlap_chars")]
    pub overlap_chars: usize,
    /// In `.jsonl` files, the field of each line's object that holds the text.
    #[serde(default = "default_jsonl_text_field")]
    pub jsonl_text_field: String,
}

fn default_chunk_chars() -> usize {
    800
}

fn default_overlap_chars() -> usize {
    100
}

fn default_jsonl_text_field() -> String {
    "text".to_owned()
}

impl IndexConfig {
    /// An index at `path` with the default chunking (800 characters, 100 of overlap) and `text`
    /// as the JSONL text field.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            chunk_chars: default_chunk_chars(),
            overlap_chars: default_overlap_chars(),
            jsonl_text_field: default_jsonl_text_field(),
        }
    }

    /// Every problem with these settings, as `(field, message with the fix)`; empty when valid.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.path.as_os_str().is_empty() {
            problems.push((
                "path".to_owned(),
                "is empty; set it to the directory the index should live in".to_owned(),
            ));
        }
        if self.chunk_chars == 0 {
            problems.push((
                "chunk_chars".to_owned(),
                "must be greater than 0; 800 is a good start".to_owned(),
            ));
        }
        if self.overlap_chars >= self.chunk_chars.max(1) {
            problems.push((
                "overlap_chars".to_owned(),
                format!(
                    "is {} but must be smaller than chunk_chars ({}); about an eighth of it works well",
                    self.overlap_chars, self.chunk_chars
                ),
            ));
        }
        if self.jsonl_text_field.trim().is_empty() {
            problems.push((
                "jsonl_text_field".to_owned(),
                "is empty; name the field of each JSONL object that holds the text, e.g. \"text\"".to_owned(),
            ));
        }
        problems
    }
}

/// How much context a request gets: one of these is the default, and a model may have its own.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RagSettings {
    /// Whether requests search the index at all; `false` hands them on with no context.
    pub enabled: bool,
    /// At most this many chunks, best BM25 score first.
    pub top_k: usize,
    /// Chunks scoring below this are dropped. BM25 scores are not normalised: they grow with the
    /// number of matching query words and their rarity, so pick it by looking at real scores.
    pub min_score: f32,
}

impl Default for RagSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            top_k: 4,
            min_score: 0.0,
        }
    }
}

/// More chunks than this would not fit any prompt, and each costs a stored-document read.
const MAX_TOP_K: usize = 1000;

impl RagSettings {
    /// Every problem with these settings, as `(field, message with the fix)`; empty when valid.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.enabled && self.top_k == 0 {
            problems.push((
                "top_k".to_owned(),
                "is 0, so retrieval would find nothing; set `enabled = false` to turn it off, or top_k to 1 or more"
                    .to_owned(),
            ));
        }
        if self.top_k > MAX_TOP_K {
            problems.push((
                "top_k".to_owned(),
                format!("is {} but at most {MAX_TOP_K} is allowed", self.top_k),
            ));
        }
        if !self.min_score.is_finite() || self.min_score < 0.0 {
            problems.push((
                "min_score".to_owned(),
                format!(
                    "is {} but must be a finite number of 0 or more (BM25 scores are never negative)",
                    self.min_score
                ),
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_to_missing_fields() {
        let config: IndexConfig = serde_json::from_str(r#"{"path": "idx"}"#).unwrap();
        assert_eq!(config, IndexConfig::new("idx"));
        assert!(config.validate().is_empty());
        let settings: RagSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(settings, RagSettings::default());
        assert!(settings.validate().is_empty());
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<IndexConfig>(r#"{"path": "i", "chunk_size": 3}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("chunk_size"), "{err}");
        assert!(serde_json::from_str::<RagSettings>(r#"{"topk": 3}"#).is_err());
    }

    #[test]
    fn validate_reports_every_problem() {
        let config = IndexConfig {
            path: PathBuf::new(),
            chunk_chars: 0,
            overlap_chars: 5,
            jsonl_text_field: " ".into(),
        };
        let fields: Vec<String> = config.validate().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            ["path", "chunk_chars", "overlap_chars", "jsonl_text_field"]
        );

        let mut config = IndexConfig::new("i");
        config.overlap_chars = config.chunk_chars;
        assert_eq!(config.validate()[0].0, "overlap_chars");

        let settings = RagSettings {
            enabled: true,
            top_k: 0,
            min_score: f32::NAN,
        };
        let fields: Vec<String> = settings.validate().into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["top_k", "min_score"]);
        let off = RagSettings {
            enabled: false,
            top_k: 0,
            min_score: 0.0,
        };
        assert!(off.validate().is_empty());
    }
}
