//! `[rag]` (the index and how much context each model gets) and the checks of `[rag]` and
//! `[assemble]` that need the rest of the file.

use std::collections::HashMap;
use std::path::PathBuf;

use orchestrator_context::assemble::{AssembleProblem, TemplateAssembler};
use orchestrator_context::index::{IndexConfig, RagSettings};
use serde::Deserialize;

use super::Config;
use super::locate::key;
use super::parse::Unparsed;

/// `[rag]`: where the index is, the default retrieval settings, per-model ones.
///
/// ```toml
/// [rag.index]
/// path = "data/index"
/// [rag.search]            # every model without its own entry
/// top_k = 4
/// [rag.models.chat-fast]  # this model gets no context
/// enabled = false
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RagConfig {
    pub index: IndexConfig,
    #[serde(default)]
    pub search: RagSettings,
    #[serde(default)]
    pub models: HashMap<String, RagSettings>,
    /// Files or directories ingested when the gateway starts and the index is still empty (the
    /// built-in config's sample corpus); `orchestrator ingest` is the way to (re)index.
    #[serde(default)]
    pub ingest_on_start: Vec<PathBuf>,
}

impl RagConfig {
    /// Every problem, as (path in the file, message).
    /// `unknown_model` is the message for a name that is not a model's, if it is not.
    pub(super) fn problems(&self, unknown_model: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
        let mut problems: Vec<(String, String)> = self
            .index
            .validate()
            .into_iter()
            .map(|(field, message)| (format!("rag.index.{field}"), message))
            .collect();
        problems.extend(
            self.search
                .validate()
                .into_iter()
                .map(|(field, message)| (format!("rag.search.{field}"), message)),
        );
        let mut named: Vec<_> = self.models.iter().collect();
        named.sort_by_key(|(name, _)| name.as_str());
        for (name, settings) in named {
            if let Some(message) = unknown_model(name) {
                problems.push((format!("rag.models.{}", key(name)), message));
            }
            problems.extend(
                settings
                    .validate()
                    .into_iter()
                    .map(|(field, message)| (format!("rag.models.{}.{field}", key(name)), message)),
            );
        }
        problems
    }

    /// The settings of each model, the stage graph's say included: a model whose path in
    /// `[[stages]]` leaves out the rag stage gets no context.
    pub fn per_model(&self, without_rag: &[String]) -> HashMap<String, RagSettings> {
        let mut models = self.models.clone();
        for name in without_rag {
            let settings = models.entry(name.clone()).or_insert(self.search);
            settings.enabled = false;
        }
        models
    }
}

impl Config {
    /// `[assemble]`'s problems: its templates are compiled (and their files read) to find them.
    pub(super) fn assemble_problems(&self, unparsed: &Unparsed) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        for name in self.assemble.models.keys() {
            if let Some(message) = self.unknown_model(name, unparsed) {
                problems.push((format!("assemble.models.{}", key(name)), message));
            }
        }
        if let Err(error) = TemplateAssembler::new(self.compile_graph().assemble_config(&self.assemble)) {
            for problem in error.problems() {
                problems.push(match problem {
                    // The path names the field; its message need not again.
                    AssembleProblem::Invalid { field, message } => {
                        (format!("assemble.{field}"), message.clone())
                    }
                    AssembleProblem::Syntax { template, .. }
                    | AssembleProblem::ReadFile { template, .. }
                    | AssembleProblem::UnknownVariable { template, .. } => {
                        (format!("assemble.{template}"), problem.to_string())
                    }
                });
            }
        }
        problems
    }
}
