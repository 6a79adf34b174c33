//! `[[stages]]`: the pipeline declared as a graph of named stages with their `inputs`, checked
//! and compiled into what the engine runs.
//!
//! The engine runs the five stage kinds in their order (rag, assemble, inference, post, stream);
//! a graph says which of them each model goes through. A stage with `models` is a branch only
//! those models take (empty: every model); a model's path is the stages that apply to it, from
//! an entry (a stage with no inputs) to the one `stream` stage, which must be a single path in
//! kind order: an optional rag, assemble, inference, any number of post stages, stream. Post
//! stages carry the post-processors their models get. Without `[[stages]]`, the graph is the
//! canonical five in order, and `[[post]]` holds the post stage's processors.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use orchestrator_context::assemble::{AssembleConfig, AssembleSettings};

use super::parse::Unparsed;
use super::{Config, Problem};
use crate::post::PostConfig;

/// One `[[stages]]` entry.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageDecl {
    pub name: String,
    pub kind: StageKind,
    /// The stages whose output this one takes; none: an entry.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// The models that take this stage; empty: every model.
    #[serde(default)]
    pub models: Vec<String>,
    /// `kind = "post"` only: its post-processors, as in `[[post]]`.
    #[serde(default)]
    pub processors: Vec<PostConfig>,
    /// `kind = "assemble"` only: prompt settings (templates, budget) for the models that take
    /// this branch, over `[assemble]`'s, as a `[assemble.models."<name>"]` entry would.
    pub assemble: Option<AssembleSettings>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    Rag,
    Assemble,
    Inference,
    Post,
    Stream,
}

impl StageKind {
    /// The name a file gives this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Rag => "rag",
            StageKind::Assemble => "assemble",
            StageKind::Inference => "inference",
            StageKind::Post => "post",
            StageKind::Stream => "stream",
        }
    }
}

/// What a valid graph compiles to: the post-processors in an order that agrees with every
/// model's path, each with the models that take it.
pub struct Compiled {
    pub post: Vec<(PostConfig, Vec<String>)>,
    /// Models whose path leaves out the rag stage: they get no retrieved context.
    pub without_rag: Vec<String>,
    /// Prompt settings of assemble branches, each with the models that take it.
    pub assemble: Vec<(AssembleSettings, Vec<String>)>,
}

impl Config {
    /// The graph's problems, each with its path, appended to `problems`.
    ///
    /// With a stage that did not parse (in `unparsed`) the graph is incomplete: references to
    /// its name are not reported, and neither is the shape (output, cycles, paths).
    pub(super) fn graph_problems(&self, unparsed: &Unparsed, problems: &mut Vec<Problem>) {
        let mut add = |path: String, message: String| {
            problems.push(Problem {
                path,
                message,
                location: None,
            });
        };
        let stages = &self.stages;
        if stages.is_empty() {
            return;
        }
        if !self.post.is_empty() {
            add(
                "post".into(),
                "with [[stages]] declared, put post-processors in the `processors` of a post stage".into(),
            );
        }
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, stage) in stages.iter().enumerate() {
            if stage.name.is_empty() {
                add(format!("stages[{i}].name"), "must not be empty".into());
            } else if index.insert(&stage.name, i).is_some() {
                add(
                    format!("stages[{i}].name"),
                    format!(
                        "stage {:?} is declared twice; give each stage its own name",
                        stage.name
                    ),
                );
            }
            if stage.kind != StageKind::Assemble && stage.assemble.is_some() {
                add(
                    format!("stages[{i}].assemble"),
                    format!(
                        "only assemble stages take prompt settings (this one is {:?}); move them \
                         to the assemble stage of the branch",
                        stage.kind.as_str()
                    ),
                );
            }
            if stage.kind != StageKind::Post && !stage.processors.is_empty() {
                add(
                    format!("stages[{i}].processors"),
                    format!(
                        "only post stages take processors (this one is {:?}); move them to a \
                         post stage",
                        stage.kind.as_str()
                    ),
                );
            }
            for (j, processor) in stage.processors.iter().enumerate() {
                if let Err(e) = processor.build_for(&[]) {
                    let (field, message) = e.split_once(": ").unwrap_or(("", &e));
                    add(
                        format!("stages[{i}].processors[{j}].{field}"),
                        message.to_string(),
                    );
                }
                if !processor.models().is_empty() {
                    add(
                        format!("stages[{i}].processors[{j}].models"),
                        "set `models` on the stage: its models are the ones that take it".into(),
                    );
                }
            }
        }
        let known = || {
            super::validate::known(
                stages
                    .iter()
                    .map(|s| s.name.as_str())
                    .chain(unparsed.stages.iter()),
            )
        };
        let Shape {
            edges,
            entries,
            outputs,
        } = Shape::of(stages);
        for (i, stage) in stages.iter().enumerate() {
            for (j, input) in stage.inputs.iter().enumerate() {
                if !index.contains_key(input.as_str()) && !unparsed.stages.covers(input) {
                    add(
                        format!("stages[{i}].inputs[{j}]"),
                        format!("no stage named {input:?} (known: {})", known()),
                    );
                }
            }
            for (j, model) in stage.models.iter().enumerate() {
                if let Some(message) = self.unknown_model(model, unparsed) {
                    add(format!("stages[{i}].models[{j}]"), message);
                }
            }
        }
        if unparsed.stages.any() {
            return;
        }
        let [output] = outputs[..] else {
            add(
                "stages".into(),
                format!(
                    "declare exactly one stage of kind \"stream\", the output (found {})",
                    outputs.len()
                ),
            );
            return;
        };
        if let Some(cycle) = find_cycle(&edges) {
            let names: Vec<&str> = cycle.iter().map(|&i| stages[i].name.as_str()).collect();
            add("stages".into(), format!("a cycle: {}", names.join(" -> ")));
            return;
        }
        let reachable = reach(&edges, &entries);
        let reverse = reversed(&edges);
        let leads_out = reach(&reverse, &[output]);
        for (i, stage) in stages.iter().enumerate() {
            if !reachable.contains(&i) {
                add(
                    format!("stages[{i}]"),
                    format!(
                        "{:?} is unreachable: no path to it from an entry stage (one with no inputs)",
                        stage.name
                    ),
                );
            } else if !leads_out.contains(&i) {
                add(
                    format!("stages[{i}]"),
                    format!(
                        "{:?} has no path to the output stage {:?}",
                        stage.name, stages[output].name
                    ),
                );
            }
        }
        for (k, model) in self.models.iter().enumerate() {
            if let Err(message) = path_of(stages, &edges, &entries, output, &model.name) {
                add(format!("models[{k}]"), format!("{:?}: {message}", model.name));
            }
        }
    }

    /// The compiled graph of a valid config.
    pub fn compile_graph(&self) -> Compiled {
        if self.stages.is_empty() {
            return Compiled {
                post: self
                    .post
                    .iter()
                    .map(|p| (p.clone(), p.models().to_vec()))
                    .collect(),
                without_rag: Vec::new(),
                assemble: Vec::new(),
            };
        }
        let stages = &self.stages;
        let Shape {
            edges,
            entries,
            outputs,
        } = Shape::of(stages);
        // A valid graph has exactly one output.
        let output = outputs.first().copied().unwrap_or(0);
        // Which models take each stage.
        let mut takers: Vec<Vec<String>> = vec![Vec::new(); stages.len()];
        let mut without_rag = Vec::new();
        for model in &self.models {
            if let Ok(path) = path_of(stages, &edges, &entries, output, &model.name) {
                if !path.iter().any(|&i| stages[i].kind == StageKind::Rag) {
                    without_rag.push(model.name.clone());
                }
                for i in path {
                    takers[i].push(model.name.clone());
                }
            }
        }
        // A topological order agrees with every model's path.
        let mut post = Vec::new();
        let assemble = stages
            .iter()
            .zip(&takers)
            .filter_map(|(stage, takers)| Some((stage.assemble.clone()?, takers.clone())))
            .filter(|(_, takers)| !takers.is_empty())
            .collect();
        for i in topological(&edges) {
            if stages[i].kind == StageKind::Post && !takers[i].is_empty() {
                for processor in &stages[i].processors {
                    post.push((processor.clone(), takers[i].clone()));
                }
            }
        }
        Compiled {
            post,
            without_rag,
            assemble,
        }
    }
}

impl Compiled {
    /// `[assemble]` with the graph's branch settings laid over the models that take them.
    pub fn assemble_config(&self, base: &AssembleConfig) -> AssembleConfig {
        let mut config = base.clone();
        for (settings, models) in &self.assemble {
            for model in models {
                let entry = config.models.entry(model.clone()).or_default();
                *entry = entry.overlay(settings);
            }
        }
        config
    }
}

/// The graph of `[[stages]]` as indexes: who feeds whom (unknown inputs left out), the entries
/// and the outputs.
struct Shape {
    edges: Vec<Vec<usize>>,
    entries: Vec<usize>,
    outputs: Vec<usize>,
}

impl Shape {
    fn of(stages: &[StageDecl]) -> Self {
        let index: HashMap<&str, usize> = stages
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let mut edges = vec![Vec::new(); stages.len()];
        for (i, stage) in stages.iter().enumerate() {
            for input in &stage.inputs {
                if let Some(&from) = index.get(input.as_str()) {
                    edges[from].push(i);
                }
            }
        }
        let all = 0..stages.len();
        Self {
            edges,
            entries: all.clone().filter(|&i| stages[i].inputs.is_empty()).collect(),
            outputs: all.filter(|&i| stages[i].kind == StageKind::Stream).collect(),
        }
    }
}

/// The single path `model` takes from an entry to `output`, in kind order.
fn path_of(
    stages: &[StageDecl],
    edges: &[Vec<usize>],
    entries: &[usize],
    output: usize,
    model: &str,
) -> Result<Vec<usize>, String> {
    let takes = |i: usize| stages[i].models.is_empty() || stages[i].models.iter().any(|m| m == model);
    let mut paths = Vec::new();
    let mut stack: Vec<(usize, Vec<usize>)> = entries
        .iter()
        .filter(|&&e| takes(e))
        .map(|&e| (e, vec![e]))
        .collect();
    while let Some((at, path)) = stack.pop() {
        if at == output {
            paths.push(path);
            continue;
        }
        for &next in &edges[at] {
            // Never round a cycle (validation reports those; this must end regardless).
            if takes(next) && !path.contains(&next) {
                let mut longer = path.clone();
                longer.push(next);
                stack.push((next, longer));
            }
        }
    }
    let names = |path: &[usize]| {
        path.iter()
            .map(|&i| stages[i].name.as_str())
            .collect::<Vec<_>>()
            .join(" -> ")
    };
    let path = match &paths[..] {
        [] => return Err("no path through [[stages]] from an entry to the output".into()),
        [path] => path.clone(),
        [a, b, ..] => {
            return Err(format!(
                "more than one path through [[stages]] ({} and {}); give the branches `models`",
                names(a),
                names(b)
            ));
        }
    };
    let kinds: Vec<StageKind> = path.iter().map(|&i| stages[i].kind).collect();
    let in_order = kinds
        .windows(2)
        .all(|w| w[0] < w[1] || (w[0] == StageKind::Post && w[1] == StageKind::Post));
    let count = |k| kinds.iter().filter(|&&x| x == k).count();
    if !in_order
        || count(StageKind::Assemble) != 1
        || count(StageKind::Inference) != 1
        || count(StageKind::Rag) > 1
    {
        return Err(format!(
            "its path {} is not rag (optional), assemble, inference, post (any number), stream in that order",
            names(&path)
        ));
    }
    Ok(path)
}

/// A cycle in the graph, as stage indexes with the first repeated at the end.
fn find_cycle(edges: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        at: usize,
        edges: &[Vec<usize>],
        marks: &mut [Mark],
        trail: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        marks[at] = Mark::Open;
        trail.push(at);
        for &next in &edges[at] {
            match marks[next] {
                Mark::Open => {
                    let start = trail.iter().position(|&i| i == next).unwrap_or(0);
                    let mut cycle = trail[start..].to_vec();
                    cycle.push(next);
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(next, edges, marks, trail) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        trail.pop();
        marks[at] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; edges.len()];
    (0..edges.len()).find_map(|i| {
        if marks[i] == Mark::New {
            visit(i, edges, &mut marks, &mut Vec::new())
        } else {
            None
        }
    })
}

fn reach(edges: &[Vec<usize>], from: &[usize]) -> HashSet<usize> {
    let mut seen: HashSet<usize> = from.iter().copied().collect();
    let mut todo: Vec<usize> = from.to_vec();
    while let Some(at) = todo.pop() {
        for &next in &edges[at] {
            if seen.insert(next) {
                todo.push(next);
            }
        }
    }
    seen
}

fn reversed(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let mut reverse = vec![Vec::new(); edges.len()];
    for (from, tos) in edges.iter().enumerate() {
        for &to in tos {
            reverse[to].push(from);
        }
    }
    reverse
}

/// Stage indexes in an order where every stage comes after its inputs (the graph is acyclic).
fn topological(edges: &[Vec<usize>]) -> Vec<usize> {
    let mut indegree = vec![0usize; edges.len()];
    for tos in edges {
        for &to in tos {
            indegree[to] += 1;
        }
    }
    let mut ready: Vec<usize> = (0..edges.len()).rev().filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(edges.len());
    while let Some(at) = ready.pop() {
        order.push(at);
        for &next in edges[at].iter().rev() {
            indegree[next] -= 1;
            if indegree[next] == 0 {
                ready.push(next);
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "[[backends]]\nkind = \"echo\"\nname = \"e\"\n\
                        [[models]]\nname = \"chat\"\nbackends = [\"e\"]\n\
                        [[models]]\nname = \"secure\"\nbackends = [\"e\"]\n";

    /// `stages` as TOML lines `name kind input,input [model,model]`.
    fn graph(lines: &[&str]) -> String {
        let mut text = HEAD.to_string();
        for line in lines {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let list = |s: Option<&&str>| {
                s.filter(|s| **s != "-")
                    .map(|s| {
                        s.split(',')
                            .map(|x| format!("{x:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default()
            };
            text.push_str(&format!(
                "[[stages]]\nname = {:?}\nkind = {:?}\ninputs = [{}]\nmodels = [{}]\n",
                parts[0],
                parts[1],
                list(parts.get(2)),
                list(parts.get(3))
            ));
        }
        text
    }

    fn problems(lines: &[&str]) -> Vec<String> {
        super::super::testing::problems(&graph(lines))
    }

    const CANONICAL: [&str; 5] = [
        "rag rag -",
        "assemble assemble rag",
        "infer inference assemble",
        "post post infer",
        "out stream post",
    ];

    #[test]
    fn the_canonical_graph_and_a_branch_per_model_are_valid() {
        assert_eq!(problems(&CANONICAL), Vec::<String>::new());
        // `secure` goes through one more post stage; `chat` skips RAG.
        let branched = [
            "rag rag - secure",
            "assemble assemble rag secure",
            "assemble-direct assemble - chat",
            "infer inference assemble,assemble-direct",
            "redact post infer secure",
            "plain post infer chat",
            "out stream redact,plain",
        ];
        assert_eq!(problems(&branched), Vec::<String>::new());
    }

    #[test]
    fn unknown_inputs_are_named() {
        let lines = [
            "assemble assemble -",
            "infer inference assemble",
            "out stream infr",
        ];
        assert_eq!(
            problems(&lines)[0],
            "stages[2].inputs[0]: no stage named \"infr\" (known: assemble, infer, out)"
        );
    }

    #[test]
    fn cycles_are_named() {
        let lines = [
            "assemble assemble -",
            "infer inference assemble,post",
            "post post infer",
            "out stream post",
        ];
        assert_eq!(problems(&lines), ["stages: a cycle: infer -> post -> infer"]);
    }

    #[test]
    fn unreachable_stages_and_dead_ends_are_named() {
        let lines = [
            "assemble assemble -",
            "infer inference assemble",
            "out stream infer",
            "orphan post ghost-input",
            "dead-end post infer",
        ];
        assert_eq!(
            problems(&lines),
            [
                "stages[3].inputs[0]: no stage named \"ghost-input\" (known: assemble, dead-end, infer, \
                 orphan, out)",
                "stages[3]: \"orphan\" is unreachable: no path to it from an entry stage (one with no \
                 inputs)",
                "stages[4]: \"dead-end\" has no path to the output stage \"out\"",
            ]
        );
        let lines = [
            "assemble assemble -",
            "infer inference assemble",
            "out stream infer",
            "island post island2",
            "island2 post island",
        ];
        assert_eq!(problems(&lines), ["stages: a cycle: island -> island2 -> island"]);
    }

    #[test]
    fn exactly_one_output() {
        let lines = ["assemble assemble -", "infer inference assemble"];
        assert_eq!(
            problems(&lines),
            ["stages: declare exactly one stage of kind \"stream\", the output (found 0)"]
        );
    }

    #[test]
    fn each_model_needs_one_path_in_kind_order() {
        let two_ways = [
            "assemble assemble -",
            "infer inference assemble",
            "a post infer",
            "b post infer",
            "out stream a,b",
        ];
        let found = problems(&two_ways);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("models[0]: \"chat\": more than one path through [[stages]]"),
            "{found:?}"
        );

        let backwards = [
            "infer inference -",
            "assemble assemble infer",
            "out stream assemble",
        ];
        assert_eq!(
            problems(&backwards)[0],
            "models[0]: \"chat\": its path infer -> assemble -> out is not rag (optional), assemble, \
             inference, post (any number), stream in that order"
        );
        let only_secure = [
            "assemble assemble - secure",
            "infer inference assemble",
            "out stream infer",
        ];
        assert_eq!(
            problems(&only_secure),
            ["models[0]: \"chat\": no path through [[stages]] from an entry to the output"]
        );
    }

    #[test]
    fn processors_belong_to_post_stages_and_post_to_the_graph() {
        let mut text = graph(&CANONICAL);
        text = text.replacen(
            "kind = \"inference\"\n",
            "kind = \"inference\"\nprocessors = [{ kind = \"max_chars\", max = 3 }]\n",
            1,
        );
        text.push_str("[[post]]\nkind = \"json\"\n");
        let err = Config::parse(&text, "g.toml").unwrap_err();
        let found: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            [
                "post: with [[stages]] declared, put post-processors in the `processors` of a post stage",
                "stages[2].processors: only post stages take processors (this one is \"inference\"); \
                 move them to a post stage",
            ]
        );
    }

    #[test]
    fn stage_names_must_be_there_and_unique() {
        let lines = [
            "assemble assemble -",
            "infer inference assemble",
            "infer post infer",
            "out stream infer",
        ];
        let found = problems(&lines);
        assert_eq!(
            found[0],
            "stages[2].name: stage \"infer\" is declared twice; give each stage its own name"
        );
        let text = graph(&CANONICAL).replacen("name = \"post\"", "name = \"\"", 1);
        let err = Config::parse(&text, "g.toml").unwrap_err();
        assert_eq!(err.problems[0].to_string(), "stages[3].name: must not be empty");
    }

    #[test]
    fn branches_name_known_models() {
        let lines = [
            "assemble assemble -",
            "infer inference assemble",
            "out stream infer chat,scure",
        ];
        assert_eq!(
            problems(&lines)[0],
            "stages[2].models[1]: no model named \"scure\" (known: chat, secure)"
        );
    }

    #[test]
    fn prompt_settings_belong_to_assemble_stages() {
        let text = graph(&CANONICAL).replacen(
            "kind = \"post\"\n",
            "kind = \"post\"\nassemble = { system = \"Be brief.\" }\n",
            1,
        );
        let err = Config::parse(&text, "g.toml").unwrap_err();
        let found: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            [
                "stages[3].assemble: only assemble stages take prompt settings (this one is \"post\"); \
              move them to the assemble stage of the branch"
            ]
        );
    }

    #[test]
    fn processors_are_checked_and_take_their_models_from_the_stage() {
        let text = graph(&CANONICAL).replacen(
            "kind = \"post\"\n",
            "kind = \"post\"\nprocessors = [{ kind = \"max_chars\", max = 3, models = [\"chat\"] }, \
             { kind = \"redact\", pattern = \"[\" }]\n",
            1,
        );
        let err = Config::parse(&text, "g.toml").unwrap_err();
        let found: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            [
                "stages[3].processors[0].models: set `models` on the stage: its models are the ones \
                 that take it",
                "stages[3].processors[1].pattern: not a valid regex: regex parse error:\n    [\n    \
                 ^\nerror: unclosed character class",
            ]
        );
    }

    #[test]
    fn post_stages_compile_to_processors_for_the_models_that_take_them() {
        let mut text = graph(&[
            "assemble assemble -",
            "infer inference assemble",
            "redact post infer secure",
            "plain post infer chat",
            "out stream redact,plain",
        ]);
        text = text.replacen(
            "kind = \"post\"\n",
            "kind = \"post\"\nprocessors = [{ kind = \"max_chars\", max = 3 }]\n",
            1,
        );
        let config = Config::parse(&text, "g.toml").unwrap();
        let compiled = config.compile_graph();
        assert_eq!(compiled.post.len(), 1);
        assert_eq!(compiled.post[0].1, ["secure"]);
    }
}
