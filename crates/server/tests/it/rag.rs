//! Retrieval at the gateway: the index built from the config's corpus, context in the prompt,
//! sources in the answer when asked, `X-Rag-Query`, RAG off per model (in `[rag]` or by a stage
//! graph branch without the rag stage), and `orchestrator ingest`.

use std::path::Path;

use orchestrator_server::Config;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::support::{SseReader, client, expect_error, json as frame_json, serve};

const TIDES: &str = "Tides\n\nThe moon pulls the oceans, which raises the tides twice a day.\n";
const BREAD: &str = "Bread\n\nSourdough rises because wild yeast ferments the flour overnight.\n";

/// A corpus of two files, and a gateway whose models `echo` (with RAG) and `plain` (without)
/// answer with the prompt they are sent.
async fn gateway() -> (String, TempDir) {
    gateway_with("[rag.models.plain]\nenabled = false\n").await
}

/// The corpus and the models `echo` and `plain` of [`gateway`], with `extra` (say, what turns
/// RAG off for `plain`) added to the config.
async fn gateway_with(extra: &str) -> (String, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    std::fs::write(corpus.join("tides.md"), TIDES).unwrap();
    std::fs::write(corpus.join("bread.txt"), BREAD).unwrap();
    let text = format!(
        r#"
        [rag]
        ingest_on_start = [{corpus:?}]
        [rag.index]
        path = {index:?}
        [rag.search]
        top_k = 1
        [[backends]]
        kind = "echo"
        name = "echo"
        [[models]]
        name = "echo"
        backends = ["echo"]
        [[models]]
        name = "plain"
        backends = ["echo"]
        {extra}
        "#,
        corpus = corpus.display().to_string(),
        index = dir.path().join("index").display().to_string(),
    );
    (serve(Config::parse(&text, "rag.toml").unwrap()).await, dir)
}

async fn ask(base: &str, model: &str, question: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": question}]}));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

fn content(body: &Value) -> &str {
    body["choices"][0]["message"]["content"].as_str().unwrap()
}

#[tokio::test]
async fn the_best_chunk_goes_in_front_of_the_question_and_sources_come_when_asked() {
    let (base, _dir) = gateway().await;
    let response = ask(&base, "echo", "why are there tides", &[("x-rag-sources", "true")]).await;
    assert_eq!(response.status(), 200);
    // Sources are named by the path they were ingested from.
    let header = response.headers()["x-rag-sources"].to_str().unwrap().to_owned();
    assert!(
        header.split('=').next().unwrap().ends_with("/corpus/tides.md#0"),
        "{header}"
    );
    let body: Value = response.json().await.unwrap();
    // The echo model answers with the prompt it was sent: context first, then the question.
    let prompt = content(&body);
    assert!(
        prompt.starts_with("Context:\n[") && prompt.contains("/corpus/tides.md#0] "),
        "{prompt}"
    );
    assert!(prompt.contains("The moon pulls the oceans"), "{prompt}");
    assert!(prompt.ends_with("\n\nwhy are there tides"), "{prompt}");
    assert!(!prompt.contains("Sourdough"), "top_k = 1: {prompt}");
    let sources = body["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 1);
    assert!(
        sources[0]["source"]
            .as_str()
            .unwrap()
            .ends_with("/corpus/tides.md")
    );
    assert_eq!(sources[0]["position"], 0);
    assert!(sources[0]["score"].as_f64().unwrap() > 0.0);

    // Without the header, the context is used but not listed.
    let response = ask(&base, "echo", "why are there tides", &[]).await;
    assert!(response.headers().get("x-rag-sources").is_none());
    let body: Value = response.json().await.unwrap();
    assert!(body.get("sources").is_none());
    assert!(content(&body).contains("The moon pulls"));
}

#[tokio::test]
async fn x_rag_query_searches_for_something_else_than_the_message() {
    let (base, _dir) = gateway().await;
    let response = ask(
        &base,
        "echo",
        "summarise this",
        &[("x-rag-query", "sourdough yeast")],
    )
    .await;
    let body: Value = response.json().await.unwrap();
    assert!(
        content(&body).contains("/corpus/bread.txt#0] Bread"),
        "{}",
        content(&body)
    );
}

#[tokio::test]
async fn a_model_with_rag_off_gets_the_question_alone() {
    let (base, _dir) = gateway().await;
    let response = ask(
        &base,
        "plain",
        "why are there tides",
        &[("x-rag-sources", "true")],
    )
    .await;
    assert!(response.headers().get("x-rag-sources").is_none());
    let body: Value = response.json().await.unwrap();
    assert_eq!(content(&body), "why are there tides");
    assert!(body.get("sources").is_none());
}

/// A stage graph in which `echo` goes through the rag stage and `plain` takes a branch without
/// one (nothing in `[rag]` turns retrieval off for it).
const RAG_BRANCHES: &str = r#"
    [[stages]]
    name = "retrieve"
    kind = "rag"
    models = ["echo"]
    [[stages]]
    name = "assemble"
    kind = "assemble"
    inputs = ["retrieve"]
    models = ["echo"]
    [[stages]]
    name = "assemble-direct"
    kind = "assemble"
    models = ["plain"]
    [[stages]]
    name = "infer"
    kind = "inference"
    inputs = ["assemble", "assemble-direct"]
    [[stages]]
    name = "out"
    kind = "stream"
    inputs = ["infer"]
"#;

#[tokio::test]
async fn a_graph_branch_without_the_rag_stage_sends_the_question_alone() {
    let (base, _dir) = gateway_with(RAG_BRANCHES).await;
    // The echo backend answers with the prompt it was sent, so the answer is what went upstream.
    let response = ask(
        &base,
        "plain",
        "why are there tides",
        &[("x-rag-sources", "true")],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("x-rag-sources").is_none());
    let body: Value = response.json().await.unwrap();
    assert_eq!(content(&body), "why are there tides");
    assert!(body.get("sources").is_none());

    // The model on the rag branch gets the chunk in front of the same question.
    let response = ask(&base, "echo", "why are there tides", &[("x-rag-sources", "true")]).await;
    assert!(
        response.headers()["x-rag-sources"]
            .to_str()
            .unwrap()
            .contains("/corpus/tides.md#0="),
    );
    let body: Value = response.json().await.unwrap();
    let prompt = content(&body);
    assert!(
        prompt.starts_with("Context:\n[") && prompt.contains("The moon pulls the oceans"),
        "{prompt}"
    );
    assert!(prompt.ends_with("\n\nwhy are there tides"), "{prompt}");
}

#[tokio::test]
async fn a_stream_carries_its_sources_on_its_first_chunk() {
    let (base, _dir) = gateway().await;
    let response = client()
        .post(format!("{base}/v1/chat/completions"))
        .header("x-rag-sources", "true")
        .json(&json!({"model": "echo", "stream": true, "messages": [{"role": "user", "content": "tides"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["x-rag-sources"]
            .to_str()
            .unwrap()
            .contains("/corpus/tides.md#0=")
    );
    let frames = SseReader::new(response).rest().await;
    let first = frame_json(&frames[0]);
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert!(
        first["sources"][0]["source"]
            .as_str()
            .unwrap()
            .ends_with("/corpus/tides.md")
    );
    let later = frames[1..]
        .iter()
        .filter(|f| matches!(f, crate::support::Frame::Data(d) if d != "[DONE]"))
        .filter(|f| frame_json(f).get("sources").is_some())
        .count();
    assert_eq!(later, 0, "sources only on the first chunk");
}

#[tokio::test]
async fn bad_rag_headers_are_400s_naming_them() {
    let (base, _dir) = gateway().await;
    let error = expect_error(ask(&base, "echo", "q", &[("x-rag-sources", "yes")]).await, 400).await;
    assert_eq!(error["message"], "X-Rag-Sources: must be `true` or `false`");
    let error = expect_error(ask(&base, "echo", "q", &[("x-rag-query", "  ")]).await, 400).await;
    assert_eq!(error["param"], "X-Rag-Query");
}

fn orchestrator(args: &[&str], config: &Path) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .arg("ingest")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn ingest_indexes_new_and_changed_files_and_skips_unchanged_ones() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    std::fs::write(corpus.join("tides.md"), TIDES).unwrap();
    std::fs::write(corpus.join("bread.txt"), BREAD).unwrap();
    let config = dir.path().join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            "[rag.index]\npath = {:?}\n[[backends]]\nkind = \"echo\"\nname = \"echo\"\n[[models]]\nname = \"echo\"\nbackends = [\"echo\"]\n",
            dir.path().join("index").display().to_string()
        ),
    )
    .unwrap();
    let corpus_arg = corpus.display().to_string();
    let (status, stdout, stderr) = orchestrator(&[&corpus_arg], &config);
    assert_eq!(status, 0, "{stderr}");
    assert!(stdout.starts_with("Indexed 2 files"), "{stdout}");

    std::fs::write(corpus.join("bread.txt"), "Rye bread needs a longer proof.\n").unwrap();
    let (status, stdout, _) = orchestrator(&[&corpus_arg], &config);
    assert_eq!(status, 0);
    assert!(
        stdout.starts_with("Indexed 1 file (1 chunks") && stdout.contains("1 unchanged"),
        "{stdout}"
    );

    // A config without [rag] says what to add.
    std::fs::write(&config, "[[backends]]\nkind = \"echo\"\nname = \"echo\"\n[[models]]\nname = \"echo\"\nbackends = [\"echo\"]\n").unwrap();
    let (status, _, stderr) = orchestrator(&[&corpus_arg], &config);
    assert_eq!(status, 2);
    assert!(stderr.contains("no [rag] section"), "{stderr}");
}

const TEMPLATED: &str = r#"
    [assemble]
    system = "You help with {{ model }}."

    # Two assemble branches: `terse` gets its own system prompt.
    [[stages]]
    name = "general"
    kind = "assemble"
    models = ["echo"]
    [[stages]]
    name = "short"
    kind = "assemble"
    models = ["terse"]
    assemble = { system = "Answer in one word." }
    [[stages]]
    name = "infer"
    kind = "inference"
    inputs = ["general", "short"]
    [[stages]]
    name = "post"
    kind = "post"
    inputs = ["infer"]
    [[stages]]
    name = "out"
    kind = "stream"
    inputs = ["post"]

    [[backends]]
    kind = "echo"
    name = "echo"
    [[models]]
    name = "echo"
    backends = ["echo"]
    [[models]]
    name = "terse"
    backends = ["echo"]
"#;

#[tokio::test]
async fn templates_render_the_system_prompt_and_each_branch_has_its_own() {
    let base = serve(Config::parse(TEMPLATED, "templated.toml").unwrap()).await;
    // The echo backend answers with the prompt text it was sent.
    let body: Value = ask(&base, "echo", "hi", &[]).await.json().await.unwrap();
    assert_eq!(content(&body), "system: You help with echo.\nuser: hi");
    let body: Value = ask(&base, "terse", "hi", &[]).await.json().await.unwrap();
    assert_eq!(content(&body), "system: Answer in one word.\nuser: hi");
}

#[test]
fn a_broken_template_is_a_config_problem_naming_it_and_its_line() {
    let text = TEMPLATED.replace(
        "system = \"You help with {{ model }}.\"",
        "system = \"Hello\\n{{ model \"",
    );
    let error = Config::parse(&text, "templated.toml").unwrap_err().to_string();
    assert!(error.contains("template `system` line 2"), "{error}");
    let text = TEMPLATED.replace("{{ model }}", "{{ modle }}");
    let error = Config::parse(&text, "templated.toml").unwrap_err().to_string();
    assert!(error.contains("`modle`"), "{error}");
}

#[tokio::test]
async fn a_prompt_that_cannot_fit_the_context_window_is_a_400() {
    let text = TEMPLATED.replace(
        "system = \"You help with {{ model }}.\"",
        "system = \"You help with {{ model }}.\"\ncontext_window = 60\nreserve_output_tokens = 20",
    );
    let base = serve(Config::parse(&text, "budget.toml").unwrap()).await;
    // A short question fits.
    assert_eq!(ask(&base, "echo", "hi", &[]).await.status(), 200);
    let long = "word ".repeat(200);
    let error = expect_error(ask(&base, "echo", &long, &[]).await, 400).await;
    assert_eq!(error["code"], "context_length_exceeded");
    assert_eq!(error["param"], "messages");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("context window is 60"),
        "{error}"
    );
}
