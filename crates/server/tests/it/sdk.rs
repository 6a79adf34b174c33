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
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "the Python venv with the openai SDK is missing: run scripts/setup-python.sh (scripts/test.sh does)"
    );
    let output = Command::new(&python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/sdk_e2e.py"))
        .env("OPENAI_BASE_URL", base_url)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "SDK checks failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all SDK checks passed"), "{stdout}");
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
