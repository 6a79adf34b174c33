//! What can be wrong with an `[assemble]` config, found when the assembler is built; every problem
//! is collected so the user fixes them in one pass.
//!
//! Problems found while a request is assembled are
//! [`PipelineError::Assembly`](tokio_prompt_orchestrator::PipelineError::Assembly) and
//! [`PipelineError::ContextLength`](tokio_prompt_orchestrator::PipelineError::ContextLength) instead.

use std::fmt;
use std::path::PathBuf;

use super::template::TemplateKind;

/// Every problem found in an `[assemble]` config.
#[derive(Debug)]
pub struct AssembleError {
    problems: Vec<AssembleProblem>,
}

impl AssembleError {
    pub(crate) fn new(problems: Vec<AssembleProblem>) -> Self {
        AssembleError { problems }
    }

    /// The problems, in config order (defaults first, then models by name).
    pub fn problems(&self) -> &[AssembleProblem] {
        &self.problems
    }
}

impl fmt::Display for AssembleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [one] => write!(f, "{one}"),
            many => {
                write!(f, "{} problems in the assemble config:", many.len())?;
                for problem in many {
                    write!(f, "\n  - {problem}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for AssembleError {}

/// One problem, naming the setting it is in by its path within the `[assemble]` section
/// (`system`, `models."gpt-4o".context`, ...).
#[derive(Debug, thiserror::Error)]
pub enum AssembleProblem {
    /// The template does not parse.
    #[error("template `{template}`{} line {line}: {message}", in_file(.file))]
    Syntax {
        template: String,
        file: Option<PathBuf>,
        line: usize,
        message: String,
    },
    /// The template file cannot be read.
    #[error("template `{template}`: cannot read `{}`: {source}; check the path (a relative path is resolved against the config file's directory, or the working directory)", .file.display())]
    ReadFile {
        template: String,
        file: PathBuf,
        source: std::io::Error,
    },
    /// The template uses a variable that no request provides (most likely a typo).
    #[error("template `{template}`{} uses `{variable}`, which is not defined; {hint}", in_file(.file))]
    UnknownVariable {
        template: String,
        file: Option<PathBuf>,
        variable: String,
        hint: &'static str,
    },
    /// A number is out of range.
    #[error("`{field}`: {message}")]
    Invalid { field: String, message: String },
}

/// What to write instead of `variable`, which a `kind` template does not have.
pub(crate) fn unknown_variable_hint(kind: TemplateKind, variable: &str) -> &'static str {
    match (kind, variable) {
        (TemplateKind::Prompt, "chunks") => {
            "the retrieved chunks belong in the `context` template; the `prompt` \
             template gets that block, rendered, as `context`"
        }
        (_, "chunks") => {
            "the retrieved chunks belong in the `context` template (when the budget \
             drops chunks, only that block is rendered again)"
        }
        (_, "system" | "tools" | "context") => {
            "`system`, `tools` and `context` exist only in the `prompt` template"
        }
        (TemplateKind::Context, _) => "the variables are `model`, `messages`, `meta` and `chunks`",
        (TemplateKind::System, _) => "the variables are `model`, `messages` and `meta`",
        (TemplateKind::Prompt, _) => {
            "the variables are `system`, `tools`, `context`, `messages`, `model` and `meta`"
        }
    }
}

fn in_file(file: &Option<PathBuf>) -> String {
    match file {
        Some(file) => format!(" (file `{}`)", file.display()),
        None => String::new(),
    }
}
