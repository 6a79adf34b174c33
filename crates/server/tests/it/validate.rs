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
