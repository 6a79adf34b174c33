//! The official `openai` Python SDK against a running gateway: chat, streaming with usage,
//! completions, models, and errors as the SDK's typed exceptions (tests/python/sdk_e2e.py).
//!
//! The SDK lives in the repository's `.venv`, made by `scripts/setup-python.sh` (which the
//! README's test command runs first).

use std::path::PathBuf;

use tokio::process::Command;

use crate::support::TestServer;

#[tokio::test]
async fn openai_python_sdk_end_to_end() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "the Python venv with the openai SDK is missing: run scripts/setup-python.sh (scripts/test.sh does)"
    );
    let server = TestServer::default().await;
    let output = Command::new(&python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/sdk_e2e.py"))
        .env("OPENAI_BASE_URL", server.url("/v1"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "SDK checks failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all SDK checks passed"), "{stdout}");
    assert!(
        stdout.contains("ok: mid-stream failure is an APIError"),
        "{stdout}"
    );
}
