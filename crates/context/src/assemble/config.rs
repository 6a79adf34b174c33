//! What the `[assemble]` section of `pipeline.toml` deserialises into: default settings plus
//! per-model overrides, each naming its templates, token budget and tokenizer.
//!
//! ```toml
//! [assemble]
//! system = "You answer questions about {{ meta.product }}."   # a plain string is an inline template
//! context = { file = "prompts/context.j2" }                   # or { inline = "..." }
//! prompt = { file = "prompts/chatml.j2" }                     # optional: for completion backends
//! context_window = 128000
//! reserve_output_tokens = 1024
//! encoding = "o200k_base"
//!
//! [assemble.models."llama-3-8b"]
//! context_window = 8192          # everything else is inherited from [assemble]
//! encoding = "cl100k_base"
//! ```
//!
//! These are the raw structs: [`TemplateAssembler::new`](super::TemplateAssembler::new) reads the
//! template files, compiles the templates and checks the numbers, reporting every problem at once.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// Output tokens kept free for the answer when a context window is set and the settings name no
/// reserve. 512 covers a typical chat answer without starving the prompt of small (8k) models.
pub const DEFAULT_RESERVE_OUTPUT_TOKENS: u32 = 512;

/// Where a template's text comes from.
///
/// Deserialises from a plain string (inline template text), `{ inline = "..." }`, or
/// `{ file = "path" }`. A relative file path is resolved against the process's working directory,
/// unless [`AssembleConfig::with_base_dir`] has made it relative to the config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateSource {
    Inline(String),
    File(PathBuf),
}

impl<'de> Deserialize<'de> for TemplateSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Hand-written rather than `#[serde(untagged)]`: untagged enums answer every mistake
        // with "data did not match any variant", which does not tell the user what to write.
        struct SourceVisitor;

        impl<'de> Visitor<'de> for SourceVisitor {
            type Value = TemplateSource;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("template text, `{ inline = \"...\" }` or `{ file = \"path\" }`")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(TemplateSource::Inline(text.to_owned()))
            }

            fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
                Ok(TemplateSource::Inline(text))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut found: Option<TemplateSource> = None;
                while let Some(key) = map.next_key::<String>()? {
                    let source = match key.as_str() {
                        "inline" => TemplateSource::Inline(map.next_value()?),
                        "file" => TemplateSource::File(map.next_value()?),
                        other => return Err(de::Error::unknown_field(other, &["inline", "file"])),
                    };
                    if found.is_some() {
                        return Err(de::Error::custom(
                            "a template is either `inline` or `file`, not both; keep one of them",
                        ));
                    }
                    found = Some(source);
                }
                found.ok_or_else(|| de::Error::custom("an empty template table; set `inline` or `file`"))
            }
        }

        deserializer.deserialize_any(SourceVisitor)
    }
}

/// The tokenizer a model's budget is counted with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// GPT-4o, GPT-4.1, o-series and later OpenAI models.
    #[default]
    O200kBase,
    /// GPT-4 and GPT-3.5; also a fair approximation for many open models.
    Cl100kBase,
}

impl Encoding {
    /// The name used in the config (`o200k_base`, `cl100k_base`).
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::O200kBase => "o200k_base",
            Encoding::Cl100kBase => "cl100k_base",
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How prompts are assembled for one model (or, in [`AssembleConfig::default`], for every model
/// without its own entry).
///
/// Every field is optional so that a model entry can override just what it names: see
/// [`AssembleSettings::overlay`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssembleSettings {
    /// The system prompt template. Without one, only the caller's own system messages (if any)
    /// open the conversation.
    pub system: Option<TemplateSource>,
    /// Renders the retrieved chunks into the context block; without one, a built-in block
    /// (`Context:` then one `[source#position] text` line per chunk) is used.
    pub context: Option<TemplateSource>,
    /// Renders the whole prompt that completion-style backends get (`Assembled::prompt`) in the
    /// model's own chat format (ChatML, Llama 3 headers, ...) from `system`, `tools`, `context`
    /// and `messages`; without one, a plain flattening (`system: ...`, then `role: content`
    /// lines). The chat messages that chat backends get are the same either way.
    pub prompt: Option<TemplateSource>,
    /// The model's context window in tokens; without one there is no budget (nothing is
    /// dropped, and tokens are not counted).
    pub context_window: Option<NonZeroU32>,
    /// Tokens kept free for the answer; [`DEFAULT_RESERVE_OUTPUT_TOKENS`] when not set.
    pub reserve_output_tokens: Option<u32>,
    /// The tokenizer to count with; `o200k_base` when not set.
    pub encoding: Option<Encoding>,
}

impl AssembleSettings {
    /// These settings with `over`'s on top, field by field: each field `over` sets replaces this
    /// one's, and each it leaves out is kept. A template is replaced whole (a model's `system`
    /// does not extend the default's).
    pub fn overlay(&self, over: &AssembleSettings) -> AssembleSettings {
        AssembleSettings {
            system: over.system.clone().or_else(|| self.system.clone()),
            context: over.context.clone().or_else(|| self.context.clone()),
            prompt: over.prompt.clone().or_else(|| self.prompt.clone()),
            context_window: over.context_window.or(self.context_window),
            reserve_output_tokens: over.reserve_output_tokens.or(self.reserve_output_tokens),
            encoding: over.encoding.or(self.encoding),
        }
    }
}

/// The `[assemble]` section: default settings, written directly in the section, and per-model
/// overrides under `models."<model name>"`.
///
/// A request's model name is looked up exactly; a model without an entry uses the defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "RawAssembleConfig")]
pub struct AssembleConfig {
    /// The settings of every model without an entry, and the base each entry overrides.
    pub default: AssembleSettings,
    /// Overrides by model name.
    pub models: BTreeMap<String, AssembleSettings>,
}

impl AssembleConfig {
    /// Makes every relative template file path relative to `dir` (the directory of the config
    /// file that named it), so that the gateway finds its templates wherever it is started from.
    pub fn with_base_dir(mut self, dir: &Path) -> Self {
        let settings = std::iter::once(&mut self.default).chain(self.models.values_mut());
        for settings in settings {
            for source in [&mut settings.system, &mut settings.context, &mut settings.prompt]
                .into_iter()
                .flatten()
            {
                if let TemplateSource::File(path) = source
                    && path.is_relative()
                {
                    *path = dir.join(&*path);
                }
            }
        }
        self
    }
}

/// The section as written: the default settings' fields sit beside `models`. A separate struct
/// because `#[serde(flatten)]` cannot be combined with `deny_unknown_fields`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAssembleConfig {
    system: Option<TemplateSource>,
    context: Option<TemplateSource>,
    prompt: Option<TemplateSource>,
    context_window: Option<NonZeroU32>,
    reserve_output_tokens: Option<u32>,
    encoding: Option<Encoding>,
    #[serde(default)]
    models: BTreeMap<String, AssembleSettings>,
}

impl From<RawAssembleConfig> for AssembleConfig {
    fn from(raw: RawAssembleConfig) -> Self {
        AssembleConfig {
            default: AssembleSettings {
                system: raw.system,
                context: raw.context,
                prompt: raw.prompt,
                context_window: raw.context_window,
                reserve_output_tokens: raw.reserve_output_tokens,
                encoding: raw.encoding,
            },
            models: raw.models,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<AssembleConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn template_sources_take_three_forms() {
        let config = parse(
            r#"{"system": "Hi {{ model }}", "context": {"file": "ctx.j2"},
                "models": {"m": {"system": {"inline": "Yo"}}}}"#,
        )
        .unwrap();
        assert_eq!(
            config.default.system,
            Some(TemplateSource::Inline("Hi {{ model }}".into()))
        );
        assert_eq!(
            config.default.context,
            Some(TemplateSource::File("ctx.j2".into()))
        );
        assert_eq!(
            config.models["m"].system,
            Some(TemplateSource::Inline("Yo".into()))
        );
    }

    #[test]
    fn template_table_mistakes_are_named() {
        let both = parse(r#"{"system": {"inline": "a", "file": "b"}}"#)
            .unwrap_err()
            .to_string();
        assert!(both.contains("not both"), "{both}");
        let unknown = parse(r#"{"system": {"path": "b"}}"#).unwrap_err().to_string();
        assert!(
            unknown.contains("`path`") && unknown.contains("`file`"),
            "{unknown}"
        );
        let empty = parse(r#"{"system": {}}"#).unwrap_err().to_string();
        assert!(empty.contains("set `inline` or `file`"), "{empty}");
    }

    #[test]
    fn unknown_fields_and_encodings_are_rejected() {
        let err = parse(r#"{"context_windw": 10}"#).unwrap_err().to_string();
        assert!(err.contains("context_windw"), "{err}");
        let err = parse(r#"{"models": {"m": {"sytem": "x"}}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sytem"), "{err}");
        let err = parse(r#"{"encoding": "p50k_base"}"#).unwrap_err().to_string();
        assert!(err.contains("o200k_base"), "{err}");
        assert!(parse(r#"{"context_window": 0}"#).is_err());
    }

    #[test]
    fn a_model_entry_overrides_field_by_field() {
        let config = parse(
            r#"{"system": "S", "context_window": 8000, "encoding": "cl100k_base",
                "models": {"m": {"context_window": 4000}}}"#,
        )
        .unwrap();
        let merged = config.default.overlay(&config.models["m"]);
        assert_eq!(merged.system, Some(TemplateSource::Inline("S".into())));
        assert_eq!(merged.context_window, NonZeroU32::new(4000));
        assert_eq!(merged.encoding, Some(Encoding::Cl100kBase));
    }

    #[test]
    fn relative_files_follow_the_base_dir() {
        let config = parse(r#"{"system": {"file": "a.j2"}, "models": {"m": {"context": {"file": "b.j2"}}}}"#)
            .unwrap()
            .with_base_dir(Path::new("conf"));
        assert_eq!(
            config.default.system,
            Some(TemplateSource::File(Path::new("conf").join("a.j2")))
        );
        assert_eq!(
            config.models["m"].context,
            Some(TemplateSource::File(Path::new("conf").join("b.j2")))
        );
    }
}
