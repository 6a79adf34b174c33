//! Reading the text into a [`Config`] one item at a time, so that one bad entry does not hide the
//! rest: each section and each `[[backends]]`, `[[models]]`, `[[post]]`, `[[stages]]` and
//! `[[auth.keys]]` entry is deserialized on its own, every failure becomes a [`Problem`] with its
//! path and place, and the validation pass then checks what did parse.
//!
//! serde stops at the first error of a value, so reading the whole file in one go would report a
//! typo and hide a dangling reference three entries later. The price of reading item by item is
//! that an entry that failed is missing from the config: [`Unparsed`] remembers the names such
//! entries carried, so references to them are not reported as dangling.

use std::collections::HashSet;
use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::{Config, Problem};
use crate::words::{self, Format};

/// The names of entries that did not parse, by list, and where those that did are in the file.
#[derive(Debug, Default)]
pub(super) struct Unparsed {
    pub backends: Names,
    pub models: Names,
    pub stages: Names,
    /// For each list (`"backends"`, `"auth.keys"`, ...), the index in the file of each entry
    /// that parsed: the config's `models[1]` is the file's `models[2]` when `models[1]` failed.
    indexes: Vec<(&'static str, Vec<usize>)>,
}

impl Unparsed {
    /// `path` in the config as read, with a list index turned into the entry's index in the file.
    pub fn in_file(&self, path: &str) -> String {
        for (list, indexes) in &self.indexes {
            if let Some((index, after)) = path
                .strip_prefix(list)
                .and_then(|rest| rest.strip_prefix('['))
                .and_then(|rest| rest.split_once(']'))
                && let Some(at) = index.parse::<usize>().ok().and_then(|i| indexes.get(i))
            {
                return format!("{list}[{at}]{after}");
            }
        }
        path.to_owned()
    }
}

/// Names of entries that did not parse; `unnamed`: one of them had no readable name, so any
/// name may have been it.
#[derive(Debug, Default)]
pub(super) struct Names {
    names: HashSet<String>,
    unnamed: bool,
}

impl Names {
    /// Whether `name` may be the name of an entry that did not parse.
    pub fn covers(&self, name: &str) -> bool {
        self.unnamed || self.names.contains(name)
    }

    /// The names that were read, for the "(known: ...)" of a reference that matches none.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// Whether any entry did not parse.
    pub fn any(&self) -> bool {
        self.unnamed || !self.names.is_empty()
    }

    fn add(&mut self, value: &DeValue<'_>) {
        match value.get("name").and_then(|n| n.get_ref().as_str()) {
            Some(name) => {
                self.names.insert(name.to_owned());
            }
            None => self.unnamed = true,
        }
    }
}

/// The top-level keys, for the message about one that is not.
const SECTIONS: [&str; 16] = [
    "server",
    "auth",
    "pipeline",
    "admission",
    "dlq",
    "responses",
    "cluster",
    "rag",
    "assemble",
    "backends",
    "models",
    "post",
    "stages",
    "worker",
    "telemetry",
    "runtime",
];

/// What of `text` parsed, the names of the entries that did not, and the problems that stopped
/// them (in file order).
///
/// # Errors
/// The syntax errors, when `text` is not TOML: then nothing is read.
pub(super) fn read(text: &str) -> Result<(Config, Unparsed, Vec<Problem>), Vec<Problem>> {
    let (root, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        let mut problems: Vec<Problem> = errors
            .iter()
            .map(|e| Problem {
                path: String::new(),
                message: e.message().trim_end().to_owned(),
                location: e.span().map(|s| line_column(text, s.start)),
            })
            .collect();
        problems.sort_by_key(|p| p.location);
        return Err(problems);
    }
    let mut reader = Reader {
        text,
        problems: Vec::new(),
        indexes: Vec::new(),
    };
    let mut unparsed = Unparsed::default();
    let mut config = Config {
        backends: Vec::new(),
        models: Vec::new(),
        ..Config::default()
    };
    for (key, value) in root.into_inner() {
        match key.get_ref().as_ref() {
            "server" => reader.item("server", value, &mut config.server),
            "auth" => reader.auth(value, &mut config.auth),
            "pipeline" => reader.item("pipeline", value, &mut config.pipeline),
            "admission" => reader.item("admission", value, &mut config.admission),
            "dlq" => reader.item("dlq", value, &mut config.dlq),
            "responses" => reader.item("responses", value, &mut config.responses),
            "cluster" => reader.item("cluster", value, &mut config.cluster),
            "rag" => reader.item("rag", value, &mut config.rag),
            "assemble" => reader.item("assemble", value, &mut config.assemble),
            "backends" => config.backends = reader.list("backends", value, &mut unparsed.backends, accept),
            "models" => config.models = reader.list("models", value, &mut unparsed.models, accept),
            "post" => config.post = reader.list("post", value, &mut Names::default(), accept),
            "stages" => config.stages = reader.list("stages", value, &mut unparsed.stages, accept),
            "worker" => reader.item("worker", value, &mut config.worker),
            "telemetry" => reader.item("telemetry", value, &mut config.telemetry),
            "runtime" => reader.item("runtime", value, &mut config.runtime),
            other => reader.problems.push(Problem {
                path: other.to_owned(),
                message: format!(
                    "unknown section `{other}`, expected one of {}",
                    SECTIONS.map(|s| format!("`{s}`")).join(", ")
                ),
                location: Some(line_column(text, key.span().start)),
            }),
        }
    }
    unparsed.indexes = reader.indexes;
    let mut problems = reader.problems;
    problems.sort_by_key(|p| p.location);
    Ok((config, unparsed, problems))
}

struct Reader<'t> {
    text: &'t str,
    problems: Vec<Problem>,
    /// See [`Unparsed::in_file`].
    indexes: Vec<(&'static str, Vec<usize>)>,
}

impl<'t> Reader<'t> {
    /// Reads `value` into `into`, or records why it cannot (leaving `into` as it was).
    fn item<T: DeserializeOwned>(&mut self, path: &str, value: Spanned<DeValue<'t>>, into: &mut T) {
        if let Some(item) = self.parse(path, value) {
            *into = item;
        }
    }

    /// `value` as a `T`, or `None` with the problem recorded.
    fn parse<T: DeserializeOwned>(&mut self, path: &str, value: Spanned<DeValue<'t>>) -> Option<T> {
        // The error names a place in the file; the value's shape turns it into a path.
        let shape = value.clone();
        match T::deserialize(ValueDeserializer::from(value)) {
            Ok(item) => Some(item),
            Err(e) => {
                self.problems.push(problem_at(self.text, path, &shape, &e));
                None
            }
        }
    }

    /// Each entry of the list at `path` on its own; the names of those that fail go in `failed`.
    /// `refuse` may turn an entry down before serde sees it, with a problem of its own.
    fn list<T: DeserializeOwned>(
        &mut self,
        path: &'static str,
        value: Spanned<DeValue<'t>>,
        failed: &mut Names,
        refuse: Refuse,
    ) -> Vec<T> {
        if !value.get_ref().is_array() {
            // Not a list: serde says what was expected.
            failed.unnamed = true;
            return self.parse(path, value).unwrap_or_default();
        }
        let DeValue::Array(entries) = value.into_inner() else {
            return Vec::new();
        };
        let mut items = Vec::with_capacity(entries.len());
        let mut indexes = Vec::with_capacity(entries.len());
        for (i, entry) in entries.into_iter().enumerate() {
            let path = format!("{path}[{i}]");
            let shape = entry.get_ref().clone();
            if let Some((path, message, at)) = shape.as_table().and_then(|t| refuse(&path, t)) {
                self.problems.push(Problem {
                    path,
                    message,
                    location: Some(line_column(self.text, at)),
                });
                failed.add(&shape);
                continue;
            }
            match self.parse(&path, entry) {
                Some(item) => {
                    items.push(item);
                    indexes.push(i);
                }
                None => failed.add(&shape),
            }
        }
        self.indexes.push((path, indexes));
        items
    }

    /// `[auth]`, with its `keys` read one by one.
    fn auth(&mut self, value: Spanned<DeValue<'t>>, into: &mut super::AuthConfig) {
        if !value.get_ref().is_table() {
            return self.item("auth", value, into);
        }
        let span = value.span();
        let DeValue::Table(table) = value.into_inner() else {
            return;
        };
        let mut keys = None;
        let rest: DeTable<'t> = table
            .into_iter()
            .filter_map(|(k, v)| {
                if k.get_ref() == "keys" {
                    keys = Some(v);
                    None
                } else {
                    Some((k, v))
                }
            })
            .collect();
        self.item("auth", Spanned::new(span, DeValue::Table(rest)), into);
        if let Some(keys) = keys {
            into.keys = self.list("auth.keys", keys, &mut Names::default(), written_key);
        }
    }
}

/// A check of a list entry (at a path) before serde reads it: when it refuses the entry, the
/// problem's path, message and byte offset in the file.
type Refuse = fn(&str, &DeTable<'_>) -> Option<(String, String, usize)>;

/// Every entry is for serde to judge.
fn accept(_: &str, _: &DeTable<'_>) -> Option<(String, String, usize)> {
    None
}

/// An `[[auth.keys]]` entry that writes the key itself in the file (`key`), or names its variable
/// with the earlier spelling (`env`): the problem (path, message, offset) that says what to write.
fn written_key(path: &str, entry: &DeTable<'_>) -> Option<(String, String, usize)> {
    let (key, value) = entry
        .iter()
        .find(|(k, _)| matches!(k.get_ref().as_ref(), "key" | "env"))?;
    let message = if key.get_ref() == "key" {
        "a key may not be written in the file: put it in an environment variable and name that \
         variable here with `key_env = \"VAR\"` (or give the key's SHA-256 digest as `sha256`)"
            .to_owned()
    } else {
        let var = value.get_ref().as_str().unwrap_or("VAR");
        format!("`env` is now called `key_env`: write `key_env = {var:?}`")
    };
    Some((format!("{path}.{}", key.get_ref()), message, key.span().start))
}

/// The problem of a deserialization error `e` in `value`, which is at `path`: the path goes down
/// to the deepest key or entry that holds the error's place.
fn problem_at(text: &str, path: &str, value: &Spanned<DeValue<'_>>, e: &toml::de::Error) -> Problem {
    let message = e.message().trim_end().to_owned();
    // Errors inside an internally tagged enum (`kind = ...`) come without a place: serde reads
    // such an entry into a buffer first. They are placed on the entry, and then on the key or
    // value they name, when it is in the entry once.
    let at = e.span().unwrap_or_else(|| value.span());
    let (mut path, value, mut start) = descend(path.to_owned(), value, &at);
    if e.span().is_none()
        && let Some((below, place)) = named_in(&message, value)
    {
        path = format!("{path}.{below}");
        start = place;
    }
    let (path, message) = words::field_error(&path, &message, Format::Toml);
    Problem {
        path,
        message,
        location: Some(line_column(text, start)),
    }
}

/// The deepest value under `value` (at `path`) that holds `at`: its path, itself and where `at`
/// starts (the key's place when `at` is a key).
fn descend<'v, 'i>(
    path: String,
    value: &'v Spanned<DeValue<'i>>,
    at: &Range<usize>,
) -> (String, &'v Spanned<DeValue<'i>>, usize) {
    let holds = |span: Range<usize>| span.start <= at.start && at.end <= span.end;
    match value.get_ref() {
        DeValue::Table(table) => {
            for (key, inner) in table {
                if holds(key.span()) {
                    return (join(&path, key.get_ref()), inner, key.span().start);
                }
                if holds(extent(inner)) {
                    return descend(join(&path, key.get_ref()), inner, at);
                }
            }
        }
        DeValue::Array(entries) => {
            for (i, inner) in entries.iter().enumerate() {
                if holds(extent(inner)) {
                    return descend(format!("{path}[{i}]"), inner, at);
                }
            }
        }
        _ => {}
    }
    (path, value, at.start)
}

/// The text a value takes, its keys and entries included: a table's own span is only its
/// `[header]`.
fn extent(value: &Spanned<DeValue<'_>>) -> Range<usize> {
    let mut span = value.span();
    let mut widen = |other: Range<usize>| {
        span.start = span.start.min(other.start);
        span.end = span.end.max(other.end);
    };
    match value.get_ref() {
        DeValue::Table(table) => {
            for (key, inner) in table {
                widen(key.span());
                widen(extent(inner));
            }
        }
        DeValue::Array(entries) => entries.iter().for_each(|inner| widen(extent(inner))),
        _ => {}
    }
    span
}

/// The path below `entry` (and the place) that an error message from inside a `kind`-tagged
/// entry names, when it names one place only: the key of "unknown field `x`" (at any depth, as
/// in `routing = { weigth = 2 }`), or the key whose value is the "invalid type: string \"x\""
/// (or integer, float, boolean) of a type error.
fn named_in(message: &str, entry: &Spanned<DeValue<'_>>) -> Option<(String, usize)> {
    if !matches!(entry.get_ref(), DeValue::Table(_)) {
        return None;
    }
    let mut found = Vec::new();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, _) = rest.split_once('`')?;
        keys_named(String::new(), entry, field, &mut found);
        return only(found);
    }
    let unexpected = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))?
        .split_once(", expected")?
        .0;
    leaves(String::new(), entry, &mut |path, leaf| {
        let shown = match leaf.get_ref() {
            DeValue::String(s) => format!("string {s:?}"),
            DeValue::Integer(i) => format!("integer `{}`", i.as_str()),
            DeValue::Float(f) => format!("floating point `{}`", f.as_str()),
            DeValue::Boolean(b) => format!("boolean `{b}`"),
            _ => return,
        };
        if shown == unexpected {
            found.push((path.to_owned(), leaf.span().start));
        }
    });
    only(found)
}

/// The one element of `found`, if there is exactly one.
fn only<T>(found: Vec<T>) -> Option<T> {
    <[T; 1]>::try_from(found).ok().map(|[one]| one)
}

/// Every key called `name` in the tables under `value` (at `path`), with its path and place.
fn keys_named(path: String, value: &Spanned<DeValue<'_>>, name: &str, found: &mut Vec<(String, usize)>) {
    match value.get_ref() {
        DeValue::Table(table) => {
            for (key, inner) in table {
                let below = join(&path, key.get_ref());
                if key.get_ref() == name {
                    found.push((below.clone(), key.span().start));
                }
                keys_named(below, inner, name, found);
            }
        }
        DeValue::Array(entries) => {
            for (i, inner) in entries.iter().enumerate() {
                keys_named(format!("{path}[{i}]"), inner, name, found);
            }
        }
        _ => {}
    }
}

/// Calls `each` with every value under `value` that is neither a table nor an array, and its
/// path below `value`.
fn leaves(path: String, value: &Spanned<DeValue<'_>>, each: &mut dyn FnMut(&str, &Spanned<DeValue<'_>>)) {
    match value.get_ref() {
        DeValue::Table(table) => {
            for (key, inner) in table {
                leaves(join(&path, key.get_ref()), inner, each);
            }
        }
        DeValue::Array(entries) => {
            for (i, inner) in entries.iter().enumerate() {
                leaves(format!("{path}[{i}]"), inner, each);
            }
        }
        _ => each(&path, value),
    }
}

/// `path.key`, quoting a key that is not a plain name (`assemble.models."llama-3.1"`).
fn join(path: &str, key: &str) -> String {
    let key = super::locate::key(key);
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// The 1-based line and column of byte `offset` in `text`.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.len(), |n| before.len() - n - 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{BASE, placed_problems as problems};

    /// Each kind of mistake serde finds, as a file (`BASE` and then the text, or the text alone
    /// after a `!`), and its exact problems.
    #[test]
    fn each_mistake_serde_finds_has_its_exact_message_and_place() {
        let openai = "[[backends]]\nkind = \"openai\"\nname = \"o\"\nbase_url = \"http://x\"\n";
        let cases: Vec<(String, Vec<&str>)> = vec![
            (
                "[server]\nlisten_addr = \"x\"".into(),
                vec![
                    "9:1: server.listen_addr: unknown field `listen_addr`, expected one of `listen`, \
                     `max_body_bytes`, `shutdown_grace_ms`, `drain_delay_ms`, `max_header_bytes`, \
                     `header_read_timeout_ms`, `body_read_timeout_ms`, `body_min_bytes_per_sec`, \
                     `max_connections`, `max_body_bytes_in_flight`",
                ],
            ),
            (
                "[servre]\nlisten = \"x\"".into(),
                vec![
                    "8:2: servre: unknown section `servre`, expected one of `server`, `auth`, \
                     `pipeline`, `admission`, `dlq`, `responses`, `cluster`, `rag`, `assemble`, `backends`, `models`, `post`, \
                     `stages`, `worker`, `telemetry`, `runtime`",
                ],
            ),
            (
                "[[backends]]\nkind = \"gpu\"\nname = \"g\"".into(),
                vec![
                    "9:8: backends[1].kind: must be one of `echo`, `openai`, `vllm`, `llamacpp`, `cluster`, `grpc` \
                     (got `gpu`)",
                ],
            ),
            (
                "[[post]]\nkind = \"upper\"".into(),
                vec![
                    "9:8: post[0].kind: must be one of `stop`, `max_chars`, `redact`, `json` (got \
                     `upper`)",
                ],
            ),
            (
                "[dlq]\npath = \"d.redb\"\nrecord = [\"lost\"]".into(),
                vec!["10:11: dlq.record[0]: must be one of `failed`, `timeout`, `shed` (got `lost`)"],
            ),
            // Inside a `kind`-tagged entry serde gives no place: the key or value is looked up.
            (
                format!("{openai}modle = \"m\""),
                vec![
                    "12:1: backends[1].modle: unknown field `modle`, expected one of `name`, \
                     `base_url`, `api_key_env`, `model`, `headers`, `timeouts`, `routing`, \
                     `health_check`",
                ],
            ),
            (
                format!("{openai}routing = {{ weigth = 2 }}"),
                vec![
                    "12:13: backends[1].routing.weigth: unknown field `weigth`, expected one of \
                     `weight`, `max_in_flight`, `breaker`",
                ],
            ),
            (
                format!("{openai}timeouts = {{ first_token_ms = \"fast\" }}"),
                vec![
                    "12:31: backends[1].timeouts.first_token_ms: must be a whole number, 0 or more (got \"fast\")",
                ],
            ),
            (
                format!("{openai}timeouts = {{ total_ms = -1 }}"),
                vec!["12:25: backends[1].timeouts.total_ms: must be a whole number, 0 or more (got -1)"],
            ),
            (
                "[[post]]\nkind = \"max_chars\"\nmax = \"10\"".into(),
                vec!["10:7: post[0].max: must be a whole number, 0 or more (got \"10\")"],
            ),
            (
                "[[stages]]\nname = \"s\"\nkind = \"rag\"\nmodles = []".into(),
                vec![
                    "11:1: stages[0].modles: unknown field `modles`, expected one of `name`, `kind`, \
                     `inputs`, `models`, `processors`, `assemble`",
                ],
            ),
            (
                "[assemble.models.\"llama-3.1\"]\ncontext_windw = 3".into(),
                vec![
                    "9:1: assemble.models.\"llama-3.1\".context_windw: unknown field `context_windw`, \
                     expected one of `system`, `context`, `prompt`, `context_window`, \
                     `reserve_output_tokens`, `encoding`",
                ],
            ),
            (
                "[server]\nmax_body_bytes = \"big\"".into(),
                vec!["9:18: server.max_body_bytes: must be a whole number, 0 or more (got \"big\")"],
            ),
            (
                "[pipeline]\nshards = 0".into(),
                vec!["9:10: pipeline.shards: must be a whole number, 1 or more (got 0)"],
            ),
            (
                "[[models]]\nname = \"n\"".into(),
                vec!["8:1: models[1].backends: is required"],
            ),
            (
                "[[backends]]\nname = \"x\"".into(),
                vec!["8:1: backends[1].kind: is required"],
            ),
            (
                "[auth]\nkeys = 3".into(),
                vec!["9:8: auth.keys: must be an array (got 3)"],
            ),
            (
                "!models = \"m\"\n[[backends]]\nkind = \"echo\"\nname = \"e\"".into(),
                vec!["1:10: models: must be an array (got \"m\")"],
            ),
            // Not TOML: every syntax error, and nothing else.
            (
                "!a = 1\nb = \n[[x]]]\n[[models]]\nname = 3".into(),
                vec![
                    "2:5: string values must be quoted, expected literal string",
                    "3:6: unexpected key or value, expected newline, `#`",
                ],
            ),
        ];
        let mut failed = Vec::new();
        for (text, expected) in &cases {
            let text = match text.strip_prefix('!') {
                Some(alone) => alone.to_owned(),
                None => format!("{BASE}{text}\n"),
            };
            let found = problems(&text);
            if found != *expected {
                failed.push(format!("{text}\n  found    {found:?}\n  expected {expected:?}"));
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }

    #[test]
    fn keys_written_in_the_file_are_refused_with_the_way_to_name_them() {
        let text = format!("{BASE}[[auth.keys]]\nkey = \"sk-1\"\n[[auth.keys]]\nenv = \"APP_KEY\"\n");
        assert_eq!(
            problems(&text),
            [
                "9:1: auth.keys[0].key: a key may not be written in the file: put it in an \
                 environment variable and name that variable here with `key_env = \"VAR\"` (or give \
                 the key's SHA-256 digest as `sha256`)",
                "11:1: auth.keys[1].env: `env` is now called `key_env`: write `key_env = \"APP_KEY\"`",
            ]
        );
    }

    /// A typo in one entry does not hide the mistakes of the others, and a reference to the
    /// entry with the typo is not reported as dangling.
    /// A cycle among the stages that parsed, beside one that did not: reported, never followed.
    #[test]
    fn a_stage_that_did_not_parse_beside_a_cycle_ends_with_problems() {
        let text = format!(
            "{BASE}\n\
             [[stages]]\nname = \"a\"\nkind = \"assemble\"\ninputs = []\n\n\
             [[stages]]\nname = \"i\"\nkind = \"inference\"\ninputs = [\"a\"]\n\n\
             [[stages]]\nname = \"p1\"\nkind = \"post\"\ninputs = [\"i\", \"p2\"]\n\n\
             [[stages]]\nname = \"p2\"\nkind = \"post\"\ninputs = [\"p1\"]\n\n\
             [[stages]]\nname = \"out\"\nkind = \"stream\"\ninputs = [\"p2\"]\n\n\
             [[stages]]\nname = \"x\"\nkind = \"pots\"\ninputs = [\"out\"]\n"
        );
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("stages[5].kind"), "{found:?}");
    }

    #[test]
    fn a_typo_does_not_hide_the_other_problems() {
        let text = "[[backends]]\n\
                    kind = \"openai\"\n\
                    name = \"vllm-a\"\n\
                    base_url = \"http://127.0.0.1:8000/v1\"\n\
                    modle = \"llama\"\n\
                    \n\
                    [[backends]]\n\
                    kind = \"echo\"\n\
                    name = \"e\"\n\
                    token_delay_ms = \"fast\"\n\
                    \n\
                    [[backends]]\n\
                    kind = \"echo\"\n\
                    name = \"ok\"\n\
                    \n\
                    [[backends]]\n\
                    kind = \"echo\"\n\
                    name = \"\"\n\
                    \n\
                    [[models]]\n\
                    name = \"llama\"\n\
                    backends = [\"vllm-a\", \"vllm-c\"]\n\
                    fallback = [\"e\"]\n\
                    \n\
                    [[models]]\n\
                    name = \"chat\"\n\
                    backend = [\"ok\"]\n\
                    \n\
                    [[post]]\n\
                    kind = \"json\"\n\
                    models = [\"chat\", \"lama\"]\n";
        assert_eq!(
            problems(text),
            [
                "5:1: backends[0].modle: unknown field `modle`, expected one of `name`, `base_url`, \
                 `api_key_env`, `model`, `headers`, `timeouts`, `routing`, `health_check`",
                "10:18: backends[1].token_delay_ms: must be a whole number, 0 or more (got \"fast\")",
                "27:1: models[1].backend: unknown field `backend`, expected one of `name`, \
                 `backends`, `fallback`, `balancing`, `retries`, `dedup`, `cache`, `kind`, `batch_size`",
                // Paths are the file's: the second backend that parsed is the file's fourth.
                "18:8: backends[3].name: must not be empty",
                "22:23: models[0].backends[1]: no backend named \"vllm-c\" (known: e, ok, vllm-a)",
                "31:19: post[0].models[1]: no model named \"lama\" (known: chat, llama)",
            ]
        );
    }

    /// With a stage that did not parse the graph is incomplete: references to it are not
    /// reported, and neither is its shape; a list that did not parse at all hides nothing else.
    #[test]
    fn entries_that_did_not_parse_leave_no_false_problems() {
        let text = format!(
            "{BASE}[[stages]]\nname = \"assemble\"\nkind = \"assemble\"\n\
             [[stages]]\nname = \"infer\"\nkind = \"inferense\"\ninputs = [\"assemble\"]\n\
             [[stages]]\nname = \"out\"\nkind = \"stream\"\ninputs = [\"infer\", \"nope\"]\n"
        );
        assert_eq!(
            problems(&text),
            [
                "13:8: stages[1].kind: must be one of `rag`, `assemble`, `inference`, `post`, \
                 `stream` (got `inferense`)",
                "18:20: stages[2].inputs[1]: no stage named \"nope\" (known: assemble, infer, out)",
            ]
        );
        let text = "models = 3\n[[post]]\nkind = \"json\"\nmodels = [\"m\"]\n";
        assert_eq!(problems(text), ["1:10: models: must be an array (got 3)"]);
    }
}
