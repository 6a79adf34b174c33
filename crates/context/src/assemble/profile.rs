//! One model's compiled settings: its templates (compiled once, shared with the defaults where
//! the model's entry does not set its own), its budget and its tokenizer.

use super::budget::Budget;
use super::config::{AssembleSettings, DEFAULT_RESERVE_OUTPUT_TOKENS, Encoding, TemplateSource};
use super::error::AssembleProblem;
use super::template::{TemplateKind, TemplateRef, Templates};

/// One model's compiled settings.
pub(super) struct Profile {
    pub(super) system: Option<TemplateRef>,
    pub(super) context: TemplateRef,
    pub(super) prompt: Option<TemplateRef>,
    pub(super) budget: Option<Budget>,
    pub(super) encoding: Encoding,
}

/// Compiles one profile. `own` holds what this entry itself sets: only those templates are
/// compiled under its path; the others are shared with `default`.
pub(super) fn build_profile(
    templates: &mut Templates,
    path: &str,
    settings: &AssembleSettings,
    own: &AssembleSettings,
    default: Option<&Profile>,
    builtin_context: &TemplateRef,
    problems: &mut Vec<AssembleProblem>,
) -> Profile {
    let mut template = |source: &Option<TemplateSource>, field: &str, kind| {
        let source = source.as_ref()?;
        templates.add(&format!("{path}{field}"), source, kind, problems)
    };
    let system = match default {
        Some(default) if own.system.is_none() => default.system.clone(),
        _ => template(&settings.system, "system", TemplateKind::System),
    };
    let context = match default {
        Some(default) if own.context.is_none() => Some(default.context.clone()),
        _ => template(&settings.context, "context", TemplateKind::Context),
    }
    .unwrap_or_else(|| builtin_context.clone());
    let prompt = match default {
        Some(default) if own.prompt.is_none() => default.prompt.clone(),
        _ => template(&settings.prompt, "prompt", TemplateKind::Prompt),
    };

    let budget = settings.context_window.and_then(|window| {
        let window = window.get();
        let reserve = settings
            .reserve_output_tokens
            .unwrap_or(DEFAULT_RESERVE_OUTPUT_TOKENS);
        if reserve >= window {
            problems.push(AssembleProblem::Invalid {
                field: format!("{path}reserve_output_tokens"),
                message: format!(
                    "reserving {reserve} tokens for the answer leaves no room for the prompt in a \
                     context window of {window}; set `reserve_output_tokens` below `context_window`"
                ),
            });
            return None;
        }
        Some(Budget {
            window: window as usize,
            reserve: reserve as usize,
        })
    });
    Profile {
        system,
        context,
        prompt,
        budget,
        encoding: settings.encoding.unwrap_or_default(),
    }
}

/// A model name as a TOML key: bare when it can be, quoted otherwise (`gpt-4o`, `"gpt-4.1"`).
pub(super) fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if bare { key.to_owned() } else { format!("{key:?}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_become_toml_keys() {
        assert_eq!(toml_key("gpt-4o"), "gpt-4o");
        assert_eq!(toml_key("gpt-4.1"), "\"gpt-4.1\"");
    }
}
