//! The official `openai` Python SDK against a running gateway: chat, streaming with usage,
//! completions, models, and errors as the SDK's typed exceptions (tests/python/sdk_e2e.py).
//!
//! The SDK lives in the repository's `.venv`, made by `scripts/setup-python.sh` (which the
//! README's test command runs first).

use std::path::PathBuf;

use tokio::process::Command;

use crate::support::TestServer;

/// Runs tests/python/sdk_e2e.py against `base_url` (`http://host:port/v1`), which must pass; its
/// standard output.
pub async fn sdk_checks(base_url: &str) -> String {
    python_checks(
        "sdk_e2e.py",
        &[("OPENAI_BASE_URL", base_url)],
        "all SDK checks passed",
    )
    .await
}

/// Runs the SDK checks of tests/python/`script` with `env`; they must pass and end by printing
/// `passed`. Their standard output.
pub async fn python_checks(script: &str, env: &[(&str, &str)], passed: &str) -> String {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        python.exists(),
        "the Python venv with the openai and anthropic SDKs is missing: run scripts/setup-python.sh (scripts/test.sh does)"
    );
    let output = Command::new(&python)
        .arg(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/python")
                .join(script),
        )
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(passed), "{stdout}");
    stdout
}

#[tokio::test]
async fn openai_python_sdk_end_to_end() {
    let server = TestServer::default().await;
    let stdout = sdk_checks(&server.url("/v1")).await;
    assert!(
        stdout.contains("ok: mid-stream failure is an APIError"),
        "{stdout}"
    );
}
