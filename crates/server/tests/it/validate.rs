//! `orchestrator validate`: every problem with its place in the file and exit status 2, or a
//! summary and 0.

use std::process::Command;

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
