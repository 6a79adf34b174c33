//! `orchestrator validate`: every problem with its place in the file and exit status 2, or a
//! summary and 0.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use orchestrator_backends::routing::retry::RetryConfig;
use orchestrator_server::Config;
use orchestrator_server::config::{BackendConfig, StageKind};

fn validate(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .arg("validate")
        .args(args)
        .env_remove("ORCHESTRATOR_TEST_VALIDATE_UNSET")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn a_file_with_mistakes_gets_every_problem_and_exit_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[[backends]]\nkind = \"openai\"\nname = \"vllm-a\"\nbase_url = \"http://127.0.0.1:8000/v1\"\n\
         api_key_env = \"ORCHESTRATOR_TEST_VALIDATE_UNSET\"\n\n\
         [[models]]\nname = \"m\"\nbackends = [\"vllm-a\", \"vllm-c\"]\n",
    )
    .unwrap();
    let (status, stdout, stderr) = validate(&[file.to_str().unwrap()]);
    assert_eq!(status, 2);
    assert_eq!(stdout, "");
    let name = file.display();
    assert_eq!(
        stderr,
        format!(
            "{name}: 2 problem(s)\n\
             \x20 {name}:5:15: backends[0].api_key_env: the environment variable \
             ORCHESTRATOR_TEST_VALIDATE_UNSET is not set or empty\n\
             \x20 {name}:9:23: models[0].backends[1]: no backend named \"vllm-c\" (known: vllm-a)\n"
        )
    );
}

#[test]
fn a_key_written_in_the_file_and_a_typo_hide_no_other_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[[auth.keys]]\nname = \"app\"\nkey = \"sk-live-123\"\n\n\
         [[auth.keys]]\nname = \"ops\"\nkey_env = \"ORCHESTRATOR_TEST_VALIDATE_UNSET\"\n\n\
         [[backends]]\nkind = \"echo\"\nname = \"e\"\ntoken_delay = 5\n\n\
         [[models]]\nname = \"m\"\nbackends = [\"e\", \"f\"]\n",
    )
    .unwrap();
    let (status, stdout, stderr) = validate(&[file.to_str().unwrap()]);
    assert_eq!((status, stdout.as_str()), (2, ""));
    let name = file.display();
    assert_eq!(
        stderr,
        format!(
            "{name}: 4 problem(s)\n\
             \x20 {name}:3:1: auth.keys[0].key: a key may not be written in the file: put it in an \
             environment variable and name that variable here with `key_env = \"VAR\"` (or give the \
             key's SHA-256 digest as `sha256`)\n\
             \x20 {name}:12:1: backends[0].token_delay: unknown field `token_delay`, expected one of \
             `name`, `token_delay_ms`, `routing`\n\
             \x20 {name}:7:11: auth.keys[1].key_env: the environment variable \
             ORCHESTRATOR_TEST_VALIDATE_UNSET is not set or empty\n\
             \x20 {name}:16:18: models[0].backends[1]: no backend named \"f\" (known: e)\n"
        )
    );
    assert!(
        !stderr.contains("sk-live-123"),
        "a key written in the file is never echoed"
    );
}

#[test]
fn a_valid_file_gets_a_summary_and_exit_status_0() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pipeline.example.toml");
    let (status, stdout, stderr) = validate(&[example]);
    assert_eq!((status, stderr.as_str()), (0, ""));
    assert!(stdout.contains(": valid\nlisten 127.0.0.1:8080"), "{stdout}");
    assert!(stdout.contains("models:\n  echo -> echo"), "{stdout}");

    let (status, stdout, _) = validate(&[]);
    assert_eq!(status, 0);
    assert!(
        stdout.starts_with("the built-in default config: valid\n"),
        "{stdout}"
    );
}

#[test]
fn an_unreadable_file_is_a_problem_too() {
    let (status, _, stderr) = validate(&["/nonexistent/pipeline.toml"]);
    assert_eq!(status, 2);
    assert!(stderr.contains("cannot read the file"), "{stderr}");
}

/// The repository's root.
fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The example configs: the `.toml` files at the repository's root and anywhere under
/// `examples/` (not Cargo's or rustfmt's own files), found by walking, so a new example is
/// checked without being listed here.
fn example_configs() -> Vec<PathBuf> {
    fn is_pipeline(path: &Path) -> bool {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        name.ends_with(".toml") && name != "Cargo.toml" && name != "rustfmt.toml"
    }
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            } else if is_pipeline(&path) {
                found.push(path);
            }
        }
    }
    let root = repository();
    let mut found: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file() && is_pipeline(path))
        .collect();
    let examples = root.join("examples");
    if examples.is_dir() {
        walk(&examples, &mut found);
    }
    found.sort();
    found
}

/// The environment variables a config names for its secrets (`key_env`, `api_key_env`,
/// `secret_env`), anywhere.
fn key_variables(text: &str) -> Vec<String> {
    fn collect(value: &toml::Value, found: &mut Vec<String>) {
        match value {
            toml::Value::Table(table) => {
                for (key, value) in table {
                    match (key.as_str(), value) {
                        ("key_env" | "api_key_env" | "secret_env", toml::Value::String(var)) => {
                            found.push(var.clone())
                        }
                        _ => collect(value, found),
                    }
                }
            }
            toml::Value::Array(items) => items.iter().for_each(|v| collect(v, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    collect(&text.parse::<toml::Table>().unwrap().into(), &mut found);
    found
}

/// `orchestrator validate FILE` with the variables the file names for its keys set: a missing
/// variable is a problem of the host, not of the example.
fn validate_with_keys(file: &Path) -> (i32, String, String) {
    let text = std::fs::read_to_string(file).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    command.arg("validate").arg(file);
    for var in key_variables(&text) {
        command.env(var, "sk-example");
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn every_example_config_is_valid() {
    let examples = example_configs();
    let names: Vec<String> = examples
        .iter()
        .map(|p| p.strip_prefix(repository()).unwrap().display().to_string())
        .collect();
    for expected in ["pipeline.example.toml", "examples/full-pipeline.toml"] {
        assert!(names.iter().any(|n| n == expected), "{expected} not in {names:?}");
    }
    for file in &examples {
        let (status, stdout, stderr) = validate_with_keys(file);
        assert_eq!((status, stderr.as_str()), (0, ""), "{}", file.display());
        assert!(
            stdout.starts_with(&format!("{}: valid\n", file.display())),
            "{stdout}"
        );
    }
}

#[test]
fn the_full_example_turns_every_section_on() {
    let config =
        Config::load(&repository().join("examples/full-pipeline.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.auth.protect_metrics);
    assert!(config.auth.rate_limit.is_some());
    assert!(config.auth.keys.len() >= 2);
    assert!(config.auth.keys.iter().any(|k| k.admin));
    assert!(config.auth.keys.iter().any(|k| k.rate_limit.is_some()));
    assert!(config.dlq.is_some());
    assert!(config.responses.is_some());
    assert!(config.models.iter().any(|m| m.embedding_batch().is_some()));
    let rag = config.rag.as_ref().unwrap();
    assert!(!rag.models.is_empty());
    let assemble = &config.assemble;
    assert!(assemble.default.system.is_some() && assemble.default.context.is_some());
    assert!(assemble.default.context_window.is_some());
    assert!(!assemble.models.is_empty());
    assert!(config.pipeline.default_timeout_ms.is_some());

    // At least two backends of each kind.
    for kind in ["echo", "openai", "vllm", "llamacpp"] {
        let count = config
            .backends
            .iter()
            .filter(|b| match b {
                BackendConfig::Echo { .. } => kind == "echo",
                BackendConfig::Openai(_) => kind == "openai",
                BackendConfig::Vllm(_) => kind == "vllm",
                BackendConfig::Llamacpp(_) => kind == "llamacpp",
                BackendConfig::Cluster(_) => kind == "cluster",
                BackendConfig::Grpc(_) => kind == "grpc",
            })
            .count();
        assert!(count >= 2, "{count} {kind} backend(s)");
    }
    assert!(config.models.iter().any(|m| !m.fallback.is_empty()));
    assert!(config.models.iter().any(|m| m.backends.len() >= 2));
    assert!(config.models.iter().any(|m| m.retries != RetryConfig::default()));
    let balancing: HashSet<&str> = config.models.iter().map(|m| m.balancing.as_str()).collect();
    assert!(balancing.len() >= 3, "{balancing:?}");

    // The graph: some models retrieve and some skip it, one branch brings its own prompt
    // settings, and every kind of post-processor runs somewhere.
    assert!(config.stages.iter().any(|s| s.kind == StageKind::Rag));
    let graph = config.compile_graph();
    assert!(!graph.without_rag.is_empty());
    assert!(graph.without_rag.len() < config.models.len());
    assert!(
        graph
            .assemble
            .iter()
            .any(|(settings, _)| settings.prompt.is_some())
    );
    let kinds: HashSet<_> = graph
        .post
        .iter()
        .map(|(processor, _)| std::mem::discriminant(processor))
        .collect();
    assert_eq!(kinds.len(), 4, "stop, max_chars, redact and json");
}

/// The commented samples of pipeline.example.toml: each block that starts with a commented
/// `# [section]` line and runs to the next line that is not a comment.
fn commented_samples(text: &str) -> Vec<String> {
    // A table header, perhaps with a comment after it; not prose that wraps onto a `[`.
    let is_header = |line: &str| {
        let head = line.split(" #").next().unwrap_or_default().trim();
        head.starts_with('[') && head.ends_with(']') && !head.contains(' ')
    };
    let mut samples = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let uncommented = if line == "#" {
            Some("")
        } else {
            line.strip_prefix("# ")
        };
        match (uncommented, current.as_mut()) {
            (Some(rest), None) if is_header(rest) => current = Some(format!("{rest}\n")),
            (Some(rest), Some(sample)) => {
                sample.push_str(rest);
                sample.push('\n');
            }
            (None, Some(_)) => samples.extend(current.take()),
            _ => {}
        }
    }
    samples.extend(current);
    samples
}

#[test]
fn each_commented_sample_of_the_example_is_valid_uncommented() {
    let example = repository().join("pipeline.example.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    let samples = commented_samples(&text);
    let tables: Vec<&str> = samples
        .iter()
        .flat_map(|s| s.lines())
        .filter(|line| line.starts_with('['))
        .map(|line| line.split(" #").next().unwrap_or_default().trim())
        .collect();
    for expected in [
        "[dlq]",
        "[cluster]",
        "[cluster.dlq]",
        "[rag]",
        "[rag.models.echo]",
        "[assemble]",
        "[assemble.models.\"echo\"]",
        "[[backends]]",
        "[[post]]",
        "[[models]]",
        "[[stages]]",
    ] {
        assert!(tables.contains(&expected), "{expected} not in {tables:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    for (i, sample) in samples.iter().enumerate() {
        let file = dir.path().join(format!("sample-{i}.toml"));
        std::fs::write(&file, format!("{text}\n{sample}")).unwrap();
        let (status, _, stderr) = validate_with_keys(&file);
        assert_eq!((status, stderr.as_str()), (0, ""), "with\n{sample}");
    }
}
