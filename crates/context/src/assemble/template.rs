//! The prompt templates: compiled once with minijinja when the assembler is built, rendered per
//! request with the request's own variables.
//!
//! Variables a template can use:
//! - `model`: the request's model name;
//! - `messages`: the conversation as the caller sent it, each `{ role, content }` (empty for a
//!   completion request). A template that prints it makes the prefix change with every turn, so
//!   it suits conditions (`{% if messages | length > 10 %}`) better than text;
//! - `meta`: the request's metadata (a string map);
//! - `chunks` (context template only): the retrieved chunks in canonical order, each
//!   `{ text, source, position, score }`.
//!
//! The `prompt` template (see the `prompt` module) sees other variables: the rendered parts
//! (`system`, `tools`, `context`) and, as `messages`, the conversation after the system part.
//!
//! There is deliberately no `now` or other clock: a prompt that changes every second never shares
//! a prefix with the previous request, which defeats prefix caching. Anything that must vary
//! belongs in the conversation, after the stable prefix.
//!
//! Undefined values are errors (minijinja's strict mode), so a typo fails loudly rather than
//! leaving a hole in the prompt: an unknown variable is reported when the assembler is built, an
//! unknown field (`meta.tenant` on a request without it) when the request is assembled. Optional
//! metadata is written `{% if meta.tenant is defined %}` or `{{ meta.tenant | default("none") }}`.
//!
//! Whitespace: block tags swallow the newline after them (`trim_blocks`) and the indentation
//! before them (`lstrip_blocks`), as in Hugging Face chat templates; `{% if x +%}` keeps the
//! newline. A template's final newline is kept (`keep_trailing_newline`): the system and context
//! blocks are trimmed anyway, and the `prompt` template's output is used exactly as rendered,
//! since chat formats end in a newline (`<|im_start|>assistant\n`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior, context};
use tokio_prompt_orchestrator::{InferenceRequest, PipelineError, PromptInput, RetrievedChunk};

use super::config::TemplateSource;
use super::error::{AssembleProblem, unknown_variable_hint};

/// The built-in context block, in the same form as the core's default assembly.
pub(crate) const DEFAULT_CONTEXT_TEMPLATE: &str = "Context:
{% for chunk in chunks %}
[{{ chunk.source }}#{{ chunk.position }}] {{ chunk.text }}
{% endfor %}";

/// The name the built-in context template is registered under (and reported by, if it fails).
pub(crate) const DEFAULT_CONTEXT_NAME: &str = "context (built-in)";

/// What a template is for; decides which variables it may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TemplateKind {
    System,
    Context,
    /// The whole completion prompt: see the `prompt` module.
    Prompt,
}

/// Which of the request's variables a template reads, so that rendering builds only those.
#[derive(Clone, Copy, Debug, Default)]
struct Uses {
    model: bool,
    messages: bool,
    meta: bool,
    chunks: bool,
}

/// A compiled template: its name in the environment, and what it reads.
#[derive(Clone, Debug)]
pub(crate) struct TemplateRef {
    /// Its path in the config (`models.gpt-4o.system`): the name errors report.
    name: Arc<str>,
    /// The file it was read from, for error messages.
    file: Option<PathBuf>,
    uses: Uses,
}

/// All templates of one assembler, in one minijinja environment.
pub(crate) struct Templates {
    env: Environment<'static>,
    /// The environment's global functions (`range`, `dict`, ...), which templates may use
    /// besides the request's variables.
    globals: HashSet<String>,
}

impl Templates {
    pub(crate) fn new() -> Result<Self, AssembleProblem> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Prompts are plain text: never HTML-escape, whatever a template file is called.
        env.set_auto_escape_callback(|_| AutoEscape::None);
        // Block tags on their own lines leave no blank lines or indentation behind, so templates
        // can be laid out readably without shaping the prompt (as in Hugging Face chat templates).
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(true)
            .build()
            .map_err(|err| AssembleProblem::Invalid {
                field: "template syntax".into(),
                message: err.to_string(),
            })?;
        env.set_syntax(syntax);
        let globals = env.globals().map(|(name, _)| name.to_owned()).collect();
        Ok(Templates { env, globals })
    }

    /// Compiles the template at config path `name`, recording any problem with it.
    pub(crate) fn add(
        &mut self,
        name: &str,
        source: &TemplateSource,
        kind: TemplateKind,
        problems: &mut Vec<AssembleProblem>,
    ) -> Option<TemplateRef> {
        let (text, file) = match source {
            TemplateSource::Inline(text) => (text.clone(), None),
            TemplateSource::File(path) => match std::fs::read_to_string(path) {
                Ok(text) => (text, Some(path.clone())),
                Err(source) => {
                    problems.push(AssembleProblem::ReadFile {
                        template: name.to_owned(),
                        file: path.clone(),
                        source,
                    });
                    return None;
                }
            },
        };
        self.compile(name, text, file, kind, problems)
    }

    /// Compiles the built-in context template.
    pub(crate) fn add_default_context(&mut self) -> Result<TemplateRef, AssembleProblem> {
        let mut problems = Vec::new();
        let name = DEFAULT_CONTEXT_NAME;
        match self.compile(
            name,
            DEFAULT_CONTEXT_TEMPLATE.into(),
            None,
            TemplateKind::Context,
            &mut problems,
        ) {
            Some(template) => Ok(template),
            // Only reachable if the constant above were edited into invalid syntax.
            None => Err(problems.pop().unwrap_or(AssembleProblem::Invalid {
                field: name.into(),
                message: "does not compile".into(),
            })),
        }
    }

    fn compile(
        &mut self,
        name: &str,
        text: String,
        file: Option<PathBuf>,
        kind: TemplateKind,
        problems: &mut Vec<AssembleProblem>,
    ) -> Option<TemplateRef> {
        if let Err(err) = self.env.add_template_owned(name.to_owned(), text) {
            problems.push(AssembleProblem::Syntax {
                template: name.to_owned(),
                file,
                line: err.line().unwrap_or(0),
                message: describe(&err),
            });
            return None;
        }
        let variables = match self.env.get_template(name) {
            Ok(template) => template.undeclared_variables(false),
            Err(err) => {
                problems.push(AssembleProblem::Invalid {
                    field: name.to_owned(),
                    message: describe(&err),
                });
                return None;
            }
        };
        let mut uses = Uses::default();
        let mut ok = true;
        // Sorted, so that several unknown variables are reported in a stable order.
        let mut variables: Vec<String> = variables.into_iter().collect();
        variables.sort();
        for variable in variables {
            match variable.as_str() {
                "model" => uses.model = true,
                "messages" => uses.messages = true,
                "meta" => uses.meta = true,
                "chunks" if kind == TemplateKind::Context => uses.chunks = true,
                // The prompt template always gets its parts: they are rendered anyway.
                "system" | "tools" | "context" if kind == TemplateKind::Prompt => {}
                _ if self.globals.contains(&variable) => {}
                _ => {
                    let hint = unknown_variable_hint(kind, &variable);
                    problems.push(AssembleProblem::UnknownVariable {
                        template: name.to_owned(),
                        file: file.clone(),
                        variable,
                        hint,
                    });
                    ok = false;
                }
            }
        }
        ok.then(|| TemplateRef {
            name: name.into(),
            file,
            uses,
        })
    }

    /// Renders `template` for `request` (and, for the context template, `chunks`), trimmed of
    /// surrounding whitespace so that the parts join the same way whatever a file ends with.
    ///
    /// # Errors
    /// [`PipelineError::Assembly`] naming the template and line, when rendering fails (an
    /// undefined field, a filter applied to the wrong type).
    pub(crate) fn render(
        &self,
        template: &TemplateRef,
        request: &InferenceRequest,
        chunks: &[&RetrievedChunk],
    ) -> Result<String, PipelineError> {
        let uses = template.uses;
        let ctx = context! {
            model => uses.model.then(|| Value::from(request.model.as_str())),
            messages => uses.messages.then(|| messages_value(&request.input)),
            meta => uses.meta.then(|| Value::from(request.meta.clone())),
            chunks => uses.chunks.then(|| chunks_value(chunks)),
        };
        let rendered = self.render_raw(template, ctx)?;
        let trimmed = rendered.trim();
        Ok(if trimmed.len() == rendered.len() {
            rendered
        } else {
            trimmed.to_owned()
        })
    }

    /// Renders `template` with `ctx` as it is, untrimmed.
    ///
    /// # Errors
    /// [`PipelineError::Assembly`] naming the template and line.
    pub(crate) fn render_raw(&self, template: &TemplateRef, ctx: Value) -> Result<String, PipelineError> {
        self.env
            .get_template(&template.name)
            .and_then(|compiled| compiled.render(ctx))
            .map_err(|err| render_error(template, &err))
    }
}

impl TemplateRef {
    /// Whether the template reads the request's `model`, `meta`: the prompt template's render
    /// builds only those it reads.
    pub(crate) fn uses_model_and_meta(&self) -> (bool, bool) {
        (self.uses.model, self.uses.meta)
    }
}

fn messages_value(input: &PromptInput) -> Value {
    match input {
        PromptInput::Chat(messages) => messages
            .iter()
            .map(|m| context! { role => m.role.as_str(), content => m.content.as_str() })
            .collect(),
        PromptInput::Text(_) | PromptInput::Embed(_) => Value::from(Vec::<Value>::new()),
    }
}

fn chunks_value(chunks: &[&RetrievedChunk]) -> Value {
    chunks
        .iter()
        .map(|c| {
            context! {
                text => c.text.as_str(),
                source => c.source.as_str(),
                position => c.position,
                score => f64::from(c.score),
            }
        })
        .collect()
}

fn render_error(template: &TemplateRef, err: &minijinja::Error) -> PipelineError {
    let file = match &template.file {
        Some(file) => format!(" (file `{}`)", file.display()),
        None => String::new(),
    };
    let line = err.line().map(|line| format!(" line {line}")).unwrap_or_default();
    let hint = match err.kind() {
        ErrorKind::UndefinedError if err.detail().is_some_and(|detail| detail.contains("meta.")) => {
            "; the request has no such metadata (write optional metadata as `meta.key is defined` \
             or `meta.key | default(\"...\")`)"
        }
        ErrorKind::UndefinedError => {
            "; no such variable or field (a chunk has `text`, `source`, `position`, `score`; \
             a message has `role`, `content`)"
        }
        _ => "",
    };
    PipelineError::Assembly {
        message: format!(
            "template `{}`{file}{line}: {}{hint}",
            template.name,
            describe(err)
        ),
    }
}

/// The error without minijinja's own `(in name:line)` suffix, which our messages replace.
fn describe(err: &minijinja::Error) -> String {
    match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_prompt_orchestrator::{ChatMessage, SessionId};

    fn compile(source: &str, kind: TemplateKind) -> (Templates, Result<TemplateRef, Vec<AssembleProblem>>) {
        let mut templates = Templates::new().unwrap();
        let mut problems = Vec::new();
        let compiled = templates.add("t", &TemplateSource::Inline(source.into()), kind, &mut problems);
        (templates, compiled.ok_or(problems))
    }

    fn request() -> InferenceRequest {
        let mut request =
            InferenceRequest::chat(SessionId::new("s"), vec![ChatMessage::user("hi")]).with_model("m");
        request.meta.insert("team".into(), "blue".into());
        request
    }

    #[test]
    fn loops_and_globals_are_not_unknown_variables() {
        let source = "{% for m in messages %}{{ loop.index }}{{ m.role }}{% endfor %}{{ range(2) | length }}";
        let (templates, compiled) = compile(source, TemplateKind::System);
        let out = templates.render(&compiled.unwrap(), &request(), &[]).unwrap();
        assert_eq!(out, "1user2");
    }

    #[test]
    fn optional_metadata_can_be_tested() {
        let source =
            "{{ meta.team }}{% if meta.missing is defined %}!{% endif %}{{ meta.gone | default('-') }}";
        let (templates, compiled) = compile(source, TemplateKind::System);
        assert_eq!(
            templates.render(&compiled.unwrap(), &request(), &[]).unwrap(),
            "blue-"
        );
    }

    #[test]
    fn unknown_variables_are_named_at_compile_time() {
        let (_, compiled) = compile("{{ modle }} {{ chunks }}", TemplateKind::System);
        let problems = compiled.unwrap_err();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(
            text[0].contains("`chunks`") && text[0].contains("`context` template"),
            "{}",
            text[0]
        );
        assert!(text[1].contains("`modle`"), "{}", text[1]);
    }

    #[test]
    fn the_default_context_block_lists_chunks() {
        let mut templates = Templates::new().unwrap();
        let template = templates.add_default_context().unwrap();
        let chunk = |source: &str, position| RetrievedChunk {
            text: format!("text of {source}"),
            source: source.into(),
            position,
            score: 0.5,
        };
        let (a, b) = (chunk("a.md", 1), chunk("b.md", 7));
        let out = templates.render(&template, &request(), &[&a, &b]).unwrap();
        assert_eq!(out, "Context:\n[a.md#1] text of a.md\n[b.md#7] text of b.md");
    }
}
