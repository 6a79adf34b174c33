//! Ingest and retrieval end to end, on a small corpus written to a temporary directory.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;

use orchestrator_context::index::{
    IndexConfig, IndexError, IndexRetriever, Progress, RAG_QUERY_META_KEY, RagSettings, chunk_text,
    ensure_indexed, ingest,
};
use tempfile::TempDir;
use tokio_prompt_orchestrator::{ChatMessage, InferenceRequest, RetrievedChunk, Retriever, Role, SessionId};

const GUIDE: &str = "\
# Tokio pipelines

Stages pass requests through bounded queues. Backpressure flows upstream when a queue is full.

## Retries

A failed upstream call is retried on the next replica before the first token arrives.

## Zebras

The zebra crossing paragraph mentions quagga stripes exactly here, and nowhere else.
";

const NOTES: &str = "The lighthouse keeper logs the tide every morning.\n\n\
                     Storms are written down in red ink.\n";

const DEEP: &str = "Obsidian is volcanic glass. It fractures with very sharp edges.\n";

/// Line 3 is not JSON and line 4 has no `text`: both are skipped and reported.
const RECORDS: &str = "{\"text\": \"Apricot jam needs little pectin.\", \"id\": 1}\n\
                       {\"text\": \"Seville oranges make the best marmalade.\", \"id\": 2}\n\
                       {not json\n\
                       {\"body\": \"wrong field\"}\n\
                       \n";

const CHUNK_CHARS: usize = 120;
const OVERLAP_CHARS: usize = 20;

struct Corpus {
    dir: TempDir,
}

impl Corpus {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("corpus");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("guide.md"), GUIDE).unwrap();
        fs::write(root.join("notes.txt"), NOTES).unwrap();
        fs::write(root.join("sub/deep.md"), DEEP).unwrap();
        fs::write(root.join("records.jsonl"), RECORDS).unwrap();
        fs::write(root.join("diagram.png"), [0u8, 1, 2, 3]).unwrap();
        fs::write(root.join(".hidden.md"), "quagga quagga quagga").unwrap();
        Self { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("corpus")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.root().join(name)
    }

    fn source(&self, name: &str) -> String {
        self.file(name).to_string_lossy().into_owned()
    }

    fn config(&self) -> IndexConfig {
        IndexConfig {
            chunk_chars: CHUNK_CHARS,
            overlap_chars: OVERLAP_CHARS,
            ..IndexConfig::new(self.dir.path().join("index"))
        }
    }

    fn ingest(&self) -> orchestrator_context::index::IngestSummary {
        ingest(&self.config(), &[self.root()], Progress::Quiet).unwrap()
    }

    fn retriever(&self) -> IndexRetriever {
        self.retriever_with(RagSettings::default(), HashMap::new())
    }

    fn retriever_with(
        &self,
        default: RagSettings,
        per_model: HashMap<String, RagSettings>,
    ) -> IndexRetriever {
        IndexRetriever::open(&self.config(), default, per_model).unwrap()
    }
}

fn ask(text: &str) -> InferenceRequest {
    InferenceRequest::chat(SessionId::new("s"), vec![ChatMessage::user(text)])
}

async fn retrieve(retriever: &IndexRetriever, request: &InferenceRequest) -> Vec<RetrievedChunk> {
    retriever.retrieve(request).await.unwrap()
}

fn sources(chunks: &[RetrievedChunk]) -> Vec<&str> {
    chunks.iter().map(|c| c.source.as_str()).collect()
}

#[tokio::test]
async fn a_query_finds_its_chunk_first_with_source_and_position() {
    let corpus = Corpus::new();
    let summary = corpus.ingest();
    assert_eq!(summary.files_indexed, 4, "{summary}");
    assert_eq!(summary.files_unchanged, 0);
    assert_eq!(summary.files_skipped, 1, "the .png; hidden files are not counted");
    assert!(summary.chunks_added >= 6, "{summary}");
    assert_eq!(summary.lines_skipped, 2);

    // The guide is several chunks long; "quagga" is in a later one.
    let expected_position = chunk_text(GUIDE, CHUNK_CHARS, OVERLAP_CHARS)
        .iter()
        .position(|chunk| chunk.contains("quagga"))
        .unwrap() as u64;
    assert!(expected_position > 0);

    let retriever = corpus.retriever();
    let found = retrieve(&retriever, &ask("Where are the quagga stripes?")).await;
    let first = &found[0];
    assert_eq!(first.source, corpus.source("guide.md"));
    assert_eq!(first.position, expected_position);
    assert!(first.text.contains("quagga stripes"), "{first:?}");
    assert!(first.score > 0.0);
    assert!(
        !found.iter().any(|c| c.source.ends_with(".hidden.md")),
        "hidden files are not ingested"
    );

    // Stemming: "fractured" finds "fractures"; files in subdirectories are found.
    let found = retrieve(&retriever, &ask("fractured volcanic rock")).await;
    assert_eq!(found[0].source, corpus.source("sub/deep.md"));
    assert_eq!(found[0].position, 0);
}

#[tokio::test]
async fn results_are_best_first_and_at_most_top_k() {
    let corpus = Corpus::new();
    corpus.ingest();
    let retriever = corpus.retriever();
    let found = retrieve(&retriever, &ask("queue tide zebra obsidian marmalade pectin")).await;
    assert_eq!(found.len(), 4, "{found:?}");
    assert!(found.windows(2).all(|pair| pair[0].score >= pair[1].score));
}

#[tokio::test]
async fn a_changed_file_is_replaced_and_unchanged_files_are_skipped() {
    let corpus = Corpus::new();
    corpus.ingest();
    let retriever = corpus.retriever();
    assert_eq!(
        sources(&retrieve(&retriever, &ask("lighthouse")).await),
        [corpus.source("notes.txt")]
    );

    let changed = NOTES.replace("lighthouse", "windmill");
    fs::write(corpus.file("notes.txt"), &changed).unwrap();
    let summary = corpus.ingest();
    assert_eq!(summary.files_indexed, 1, "{summary}");
    assert_eq!(summary.files_unchanged, 3, "{summary}");
    assert_eq!(summary.files_skipped, 1);
    assert_eq!(
        summary.chunks_added,
        chunk_text(&changed, CHUNK_CHARS, OVERLAP_CHARS).len()
    );
    assert_eq!(summary.lines_skipped, 0, "the unchanged .jsonl is not read again");

    // The retriever opened before the ingest sees it once reloaded.
    retriever.reload().unwrap();
    assert!(retrieve(&retriever, &ask("lighthouse")).await.is_empty());
    let found = retrieve(&retriever, &ask("windmill")).await;
    assert_eq!(sources(&found), [corpus.source("notes.txt")]);

    // The old chunks are gone, not duplicated beside the new ones.
    let found = retrieve(&corpus.retriever(), &ask("storms written red ink tide")).await;
    let notes: Vec<u64> = found
        .iter()
        .filter(|c| c.source == corpus.source("notes.txt"))
        .map(|c| c.position)
        .collect();
    assert_eq!(notes.len(), summary.chunks_added, "{found:?}");

    // Nothing changed: nothing is indexed.
    let summary = corpus.ingest();
    assert_eq!((summary.files_indexed, summary.files_unchanged), (0, 4));
}

#[tokio::test]
async fn files_gone_from_an_ingested_directory_leave_the_index() {
    let corpus = Corpus::new();
    corpus.ingest();
    assert_eq!(
        sources(&retrieve(&corpus.retriever(), &ask("obsidian volcanic glass")).await),
        [corpus.source("sub/deep.md")]
    );
    fs::remove_file(corpus.file("sub/deep.md")).unwrap();
    let summary = corpus.ingest();
    assert_eq!(summary.files_removed, 1, "{summary}");
    assert_eq!(summary.files_unchanged, 3, "{summary}");
    assert!(
        summary.to_string().contains(", 1 removed (no longer there)"),
        "{summary}"
    );
    assert!(
        retrieve(&corpus.retriever(), &ask("obsidian volcanic glass"))
            .await
            .is_empty()
    );

    // A hidden file, which the walk passes over, stays once ingested by name while it exists.
    let hidden = ingest(&corpus.config(), &[corpus.file(".hidden.md")], Progress::Quiet).unwrap();
    assert_eq!(hidden.files_indexed, 1);
    assert_eq!(corpus.ingest().files_removed, 0);
    assert!(!retrieve(&corpus.retriever(), &ask("quagga")).await.is_empty());

    // A file given by itself is the only thing that ingest looks at: the rest stays.
    let only_notes = ingest(&corpus.config(), &[corpus.file("notes.txt")], Progress::Quiet).unwrap();
    assert_eq!((only_notes.files_unchanged, only_notes.files_removed), (1, 0));
    assert_eq!(
        sources(&retrieve(&corpus.retriever(), &ask("lighthouse")).await),
        [corpus.source("notes.txt")]
    );
    assert!(!retrieve(&corpus.retriever(), &ask("pectin")).await.is_empty());
}

#[tokio::test]
async fn jsonl_records_are_chunked_per_line_and_bad_lines_are_reported() {
    let corpus = Corpus::new();
    let summary = corpus.ingest();
    assert_eq!(summary.lines_skipped, 2);
    let lines: Vec<usize> = summary.line_errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, [3, 4]);
    let source = corpus.source("records.jsonl");
    for error in &summary.line_errors {
        assert_eq!(error.source_path, source);
        assert!(error.to_string().starts_with(&format!("{source}:")), "{error}");
    }
    assert!(summary.line_errors[0].message.contains("not valid JSON"));
    assert!(summary.line_errors[1].message.contains("no field `text`"));
    assert!(
        summary.to_string().contains("2 bad JSONL lines skipped"),
        "{summary}"
    );

    let found = retrieve(&corpus.retriever(), &ask("marmalade")).await;
    assert_eq!(found[0].source, source);
    assert_eq!(found[0].position, 1, "the second record's chunk");
    assert_eq!(found[0].text, "Seville oranges make the best marmalade.");
}

#[tokio::test]
async fn the_jsonl_text_field_is_configurable() {
    let corpus = Corpus::new();
    let config = IndexConfig {
        jsonl_text_field: "body".into(),
        ..corpus.config()
    };
    let summary = ingest(&config, &[corpus.file("records.jsonl")], Progress::Quiet).unwrap();
    assert_eq!(summary.chunks_added, 1);
    assert_eq!(summary.lines_skipped, 3);
    let retriever = IndexRetriever::open(&config, RagSettings::default(), HashMap::new()).unwrap();
    let found = retrieve(&retriever, &ask("wrong field")).await;
    assert_eq!(found[0].text, "wrong field");
    assert!(retrieve(&retriever, &ask("marmalade")).await.is_empty());
}

#[tokio::test]
async fn settings_apply_per_model() {
    let corpus = Corpus::new();
    corpus.ingest();
    let per_model = HashMap::from([
        (
            "quiet".to_owned(),
            RagSettings {
                enabled: false,
                ..RagSettings::default()
            },
        ),
        (
            "single".to_owned(),
            RagSettings {
                top_k: 1,
                ..RagSettings::default()
            },
        ),
        (
            "picky".to_owned(),
            RagSettings {
                min_score: 1000.0,
                ..RagSettings::default()
            },
        ),
    ]);
    let retriever = corpus.retriever_with(
        RagSettings {
            top_k: 2,
            ..RagSettings::default()
        },
        per_model,
    );
    let question = "queue tide zebra obsidian marmalade";
    let count = |model: &str| {
        let request = ask(question).with_model(model);
        let retriever = retriever.clone();
        async move { retrieve(&retriever, &request).await.len() }
    };
    assert_eq!(count("quiet").await, 0);
    assert_eq!(count("single").await, 1);
    assert_eq!(count("picky").await, 0);
    assert_eq!(count("any-other-model").await, 2, "the default");

    // min_score keeps what reaches it.
    let all = retriever.search(question, &RagSettings::default()).unwrap();
    let bar = all[1].score;
    let kept = retriever
        .search(
            question,
            &RagSettings {
                min_score: bar,
                ..RagSettings::default()
            },
        )
        .unwrap();
    assert!(kept.len() >= 2 && kept.iter().all(|c| c.score >= bar), "{kept:?}");
}

#[tokio::test]
async fn the_rag_query_meta_overrides_the_message() {
    let corpus = Corpus::new();
    corpus.ingest();
    let retriever = corpus.retriever();

    let mut request = ask("lighthouse");
    request
        .meta
        .insert(RAG_QUERY_META_KEY.to_owned(), "quagga".to_owned());
    let found = retrieve(&retriever, &request).await;
    assert_eq!(found[0].source, corpus.source("guide.md"));
    assert!(!sources(&found).contains(&corpus.source("notes.txt").as_str()));

    // Present but blank: no retrieval for this request.
    request.meta.insert(RAG_QUERY_META_KEY.to_owned(), " ".to_owned());
    assert!(retrieve(&retriever, &request).await.is_empty());
}

#[tokio::test]
async fn the_query_is_the_last_user_message_or_the_prompt() {
    let corpus = Corpus::new();
    corpus.ingest();
    let retriever = corpus.retriever();

    let chat = InferenceRequest::chat(
        SessionId::new("s"),
        vec![
            ChatMessage::system("You know about obsidian."),
            ChatMessage::user("quagga"),
            ChatMessage::new(Role::Assistant, "marmalade"),
            ChatMessage::user("lighthouse"),
        ],
    );
    assert_eq!(
        sources(&retrieve(&retriever, &chat).await),
        [corpus.source("notes.txt")]
    );

    let completion = InferenceRequest::text(SessionId::new("s"), "volcanic glass");
    let found = retrieve(&retriever, &completion).await;
    assert_eq!(found[0].source, corpus.source("sub/deep.md"));

    let no_user = InferenceRequest::chat(SessionId::new("s"), vec![ChatMessage::system("lighthouse")]);
    assert!(retrieve(&retriever, &no_user).await.is_empty());
}

#[tokio::test]
async fn query_syntax_in_user_text_is_never_an_error() {
    let corpus = Corpus::new();
    corpus.ingest();
    let retriever = corpus.retriever();
    for query in [
        "\"(((\" AND",
        "(((",
        "AND OR NOT",
        ")))]]}}",
        "*",
        "~2 ^3 +- -",
        "text:",
        "\\",
        "\u{0}\u{feff}",
    ] {
        let result = retriever.retrieve(&ask(query)).await;
        assert!(result.is_ok(), "{query:?}: {result:?}");
    }
    // Words that look like syntax are searched as words.
    let found = retrieve(&retriever, &ask("title:lighthouse -tide NOT keeper")).await;
    assert_eq!(found[0].source, corpus.source("notes.txt"));
}

#[tokio::test]
async fn an_empty_query_finds_nothing() {
    let corpus = Corpus::new();
    corpus.ingest();
    let retriever = corpus.retriever();
    for query in ["", "   \n", "the of and is", "!!! ???"] {
        assert!(retrieve(&retriever, &ask(query)).await.is_empty(), "{query:?}");
    }
}

#[tokio::test]
async fn ensure_indexed_ingests_only_once() {
    let corpus = Corpus::new();
    let config = corpus.config();
    let first = ensure_indexed(&config, &[corpus.root()]).unwrap();
    assert_eq!(first.map(|s| s.files_indexed), Some(4));

    // Even a changed file is left for an explicit ingest.
    fs::write(corpus.file("notes.txt"), "changed").unwrap();
    assert_eq!(ensure_indexed(&config, &[corpus.root()]).unwrap(), None);
    let found = retrieve(&corpus.retriever(), &ask("lighthouse")).await;
    assert_eq!(found.len(), 1);
}

#[test]
fn errors_name_the_path_and_the_fix() {
    let corpus = Corpus::new();
    let missing = corpus.dir.path().join("nope");
    let err = ingest(&corpus.config(), std::slice::from_ref(&missing), Progress::Quiet).unwrap_err();
    assert!(
        matches!(&err, IndexError::NotFound { path } if *path == missing),
        "{err}"
    );
    assert!(err.to_string().contains(&missing.display().to_string()), "{err}");
    assert!(!corpus.config().path.exists(), "a failed ingest creates nothing");

    let err = IndexRetriever::open(&corpus.config(), RagSettings::default(), HashMap::new()).unwrap_err();
    assert!(matches!(err, IndexError::NoIndex { .. }), "{err}");
    assert!(err.to_string().contains("ingesting"), "{err}");

    let bad = IndexConfig {
        chunk_chars: 10,
        overlap_chars: 10,
        ..corpus.config()
    };
    let err = ingest(&bad, &[corpus.root()], Progress::Quiet).unwrap_err();
    assert!(err.to_string().contains("`overlap_chars`"), "{err}");

    corpus.ingest();
    let err = IndexRetriever::open(
        &corpus.config(),
        RagSettings::default(),
        HashMap::from([(
            "m".to_owned(),
            RagSettings {
                top_k: 0,
                ..RagSettings::default()
            },
        )]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("`per_model.m.top_k`"), "{err}");
}

#[test]
fn an_index_of_another_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    fs::create_dir_all(&path).unwrap();
    let mut schema = tantivy::schema::Schema::builder();
    schema.add_text_field("title", tantivy::schema::TEXT);
    tantivy::Index::create_in_dir(&path, schema.build()).unwrap();

    let err =
        IndexRetriever::open(&IndexConfig::new(&path), RagSettings::default(), HashMap::new()).unwrap_err();
    assert!(matches!(err, IndexError::Incompatible { .. }), "{err}");
    assert!(err.to_string().contains("delete the directory"), "{err}");
    assert!(ingest(&IndexConfig::new(&path), &[], Progress::Quiet).is_err());
}

#[test]
fn every_progress_mode_ingests_the_same() {
    let corpus = Corpus::new();
    let mut summaries = Vec::new();
    for (name, progress) in [
        ("bar", Progress::Bar),
        ("log", Progress::Log { every: 1 }),
        ("log0", Progress::Log { every: 0 }),
        ("auto", Progress::auto()),
    ] {
        let config = IndexConfig {
            path: corpus.dir.path().join(name),
            ..corpus.config()
        };
        let summary = ingest(&config, &[corpus.root()], progress).unwrap();
        summaries.push((summary.files_indexed, summary.chunks_added, summary.lines_skipped));
    }
    assert!(
        summaries.windows(2).all(|pair| pair[0] == pair[1]),
        "{summaries:?}"
    );
}

#[tokio::test]
async fn words_in_most_chunks_are_left_out_beside_rarer_ones() {
    let dir = tempfile::tempdir().unwrap();
    let records: String = (0..8)
        .map(|i| {
            let extra = if i == 5 { " A quokka guards it." } else { "" };
            format!("{{\"text\": \"The gateway handles request number{i}.{extra}\"}}\n")
        })
        .collect();
    let file = dir.path().join("records.jsonl");
    fs::write(&file, records).unwrap();
    let config = IndexConfig::new(dir.path().join("index"));
    ingest(&config, &[file], Progress::Quiet).unwrap();
    let retriever = IndexRetriever::open(&config, RagSettings::default(), HashMap::new()).unwrap();
    let settings = RagSettings::default();

    // "gateway" is in every chunk: beside "quokka" it is left out, so only the quokka chunk
    // matches, with the score "quokka" alone gives it.
    let both = retriever.search("gateway quokka", &settings).unwrap();
    let rare = retriever.search("quokka", &settings).unwrap();
    assert_eq!(both, rare);
    assert_eq!(both.len(), 1);
    assert_eq!(both[0].position, 5);

    // Alone, a common word is still searched.
    assert_eq!(retriever.search("gateway", &settings).unwrap().len(), 4);
}
