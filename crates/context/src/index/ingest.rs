//! Ingest: files -> chunks -> the index, incrementally (a file whose bytes have not changed since
//! the last ingest is not read again), committed once at the end.
//!
//! Ingest is synchronous and does blocking I/O; an async caller runs it on
//! `tokio::task::spawn_blocking`. One ingest at a time may write to an index (tantivy's writer
//! lock, across processes too); searches go on meanwhile and see the new state after the commit.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tantivy::collector::DocSetCollector;
use tantivy::query::TermQuery;
use tantivy::schema::{IndexRecordOption, Value};
use tantivy::{Index, IndexWriter, ReloadPolicy, TantivyDocument, Term};
use xxhash_rust::xxh3::xxh3_64;

use super::chunk::chunk_text;
use super::config::IndexConfig;
use super::error::{IndexError, LineError};
use super::files::{self, SourceFile};
use super::progress::Progress;
use super::schema::{self, Fields, KIND_FILE};

/// The writer's indexing memory, over all its threads. tantivy needs at least 15 MB per thread
/// and flushes a segment when a thread's share is full; 64 MB keeps a 2-core machine's two
/// threads at 32 MB each (few, large segments) without weighing on a small server.
const WRITER_MEMORY_BYTES: usize = 64 * 1024 * 1024;

/// Skipped `.jsonl` lines kept in the summary (and logged); the rest are only counted, so a
/// file of bad lines cannot fill memory or the log.
const LINE_ERRORS_KEPT: usize = 100;

/// What an ingest did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IngestSummary {
    /// Files read and (re)indexed: new, or changed since the last ingest.
    pub files_indexed: usize,
    /// Files whose bytes were the same as at the last ingest, left as they were.
    pub files_unchanged: usize,
    /// Files indexed before under a directory given now that are no longer on disk (deleted or
    /// renamed): their chunks were removed.
    pub files_removed: usize,
    /// Files not read: an extension other than `.txt`, `.md` or `.jsonl`, or a link to a directory.
    pub files_skipped: usize,
    /// Chunks written for the indexed files.
    pub chunks_added: usize,
    /// Bytes of the indexed files.
    pub bytes_indexed: u64,
    /// `.jsonl` lines skipped because they were not a JSON object with a string text field.
    pub lines_skipped: usize,
    /// The first skipped lines, each naming its file and line number and what was wrong.
    pub line_errors: Vec<LineError>,
    /// Wall time of the whole ingest, commit and segment merges included.
    pub seconds: f64,
}

impl fmt::Display for IngestSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Indexed {} file{} ({} chunks, {:.1} MB), {} unchanged, {} skipped (not .txt, .md or .jsonl)",
            self.files_indexed,
            if self.files_indexed == 1 { "" } else { "s" },
            self.chunks_added,
            self.bytes_indexed as f64 / 1e6,
            self.files_unchanged,
            self.files_skipped,
        )?;
        if self.files_removed > 0 {
            write!(f, ", {} removed (no longer there)", self.files_removed)?;
        }
        if self.lines_skipped > 0 {
            write!(f, ", {} bad JSONL lines skipped", self.lines_skipped)?;
        }
        write!(f, ", in {:.2} s", self.seconds)
    }
}

/// Indexes the `.txt`, `.md` and `.jsonl` files at `paths` (files, or directories walked
/// recursively in name order) into the index at `config.path`, creating it if needed.
///
/// A file is known by its path as given (`./` parts removed), so ingest from the same working
/// directory with the same paths each time. A file whose bytes hash (xxh3) to what the last ingest
/// recorded is left alone; a changed file's chunks are all replaced. A file indexed before under
/// a directory given now that is no longer there is removed from the index (files given one by
/// one must exist). In a `.jsonl` file, a line that is not a JSON object
/// with a string field `config.jsonl_text_field` is skipped, counted and reported in the summary
/// (with its file and line number); the rest of the file is indexed.
///
/// # Errors
/// Invalid `config`, a path that does not exist, a file or directory that cannot be read, an index
/// that another ingest is writing or that has another layout, or a failure inside tantivy. On any
/// error nothing is committed: the index stays as it was.
pub fn ingest(
    config: &IndexConfig,
    paths: &[PathBuf],
    progress: Progress,
) -> Result<IngestSummary, IndexError> {
    let started = Instant::now();
    check(config)?;
    let found = files::find(paths)?;
    let index_path = config.path.as_path();
    let (index, fields) = schema::open_or_create(index_path)?;
    let known = recorded_hashes(&index, fields, index_path)?;
    let mut writer: IndexWriter = index
        .writer(WRITER_MEMORY_BYTES)
        .map_err(IndexError::tantivy(index_path, "opening the index writer"))?;

    let mut summary = IngestSummary {
        files_skipped: found.skipped,
        ..IngestSummary::default()
    };
    let mut reporter = progress.start(found.files.len());
    for file in &found.files {
        let bytes = fs::read(&file.path).map_err(|source| IndexError::Read {
            path: file.path.clone(),
            source,
        })?;
        let hash = xxh3_64(&bytes);
        match known.get(&file.source) {
            Some(&recorded) if recorded == hash => {
                summary.files_unchanged += 1;
                reporter.file_done(&file.source);
                continue;
            }
            // Deletes apply to documents added before them, so the new chunks added next survive.
            Some(_) => {
                writer.delete_term(Term::from_field_text(fields.source, &file.source));
            }
            None => {}
        }
        let added = add_file(&writer, fields, config, file, &bytes, hash)?;
        summary.files_indexed += 1;
        summary.chunks_added += added.chunks;
        summary.bytes_indexed += bytes.len() as u64;
        summary.lines_skipped += added.line_errors.len();
        for error in added.line_errors {
            if summary.line_errors.len() < LINE_ERRORS_KEPT {
                tracing::warn!(path = %error.source_path, line = error.line, "{error}");
                summary.line_errors.push(error);
            }
        }
        reporter.file_done(&file.source);
    }

    // What the index holds under a directory walked now, but the walk did not find and the disk
    // no longer has, is gone. (The walk passes over hidden files and links to directories, which
    // may have been ingested by name: those stay while they exist.)
    let found_now: HashSet<&str> = found.files.iter().map(|f| f.source.as_str()).collect();
    for source in known.keys() {
        let under_walked = found.dirs.iter().any(|dir| Path::new(source).starts_with(dir));
        if under_walked && !found_now.contains(source.as_str()) && !Path::new(source).exists() {
            writer.delete_term(Term::from_field_text(fields.source, source));
            summary.files_removed += 1;
        }
    }

    if summary.files_indexed + summary.files_removed > 0 {
        writer
            .commit()
            .map_err(IndexError::tantivy(index_path, "committing the ingest"))?;
        // Merging the new segments now, rather than in the background of a later process, leaves
        // searches fewer segments to visit.
        writer
            .wait_merging_threads()
            .map_err(IndexError::tantivy(index_path, "merging segments"))?;
    }
    summary.seconds = started.elapsed().as_secs_f64();
    reporter.finish(&summary);
    Ok(summary)
}

/// Ingests `paths` with [`Progress::auto`] only when the index does not exist yet or holds no
/// documents; returns `None` when it already has some. This is how the gateway's default config
/// indexes its sample corpus on the first run without re-reading it on every start.
///
/// # Errors
/// As [`ingest`].
pub fn ensure_indexed(config: &IndexConfig, paths: &[PathBuf]) -> Result<Option<IngestSummary>, IndexError> {
    check(config)?;
    if let Some((index, _)) = schema::open(&config.path)? {
        let segments = index
            .searchable_segment_metas()
            .map_err(IndexError::tantivy(&config.path, "reading the index's segments"))?;
        if segments.iter().any(|segment| segment.num_docs() > 0) {
            return Ok(None);
        }
    }
    ingest(config, paths, Progress::auto()).map(Some)
}

fn check(config: &IndexConfig) -> Result<(), IndexError> {
    let problems = config.validate();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(IndexError::Config { problems })
    }
}

/// The content hash of every file the index has a record of, by source.
fn recorded_hashes(index: &Index, fields: Fields, path: &Path) -> Result<HashMap<String, u64>, IndexError> {
    let failed = |action| IndexError::tantivy(path, action);
    let reader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()
        .map_err(failed("opening a reader"))?;
    let searcher = reader.searcher();
    let query = TermQuery::new(
        Term::from_field_text(fields.kind, KIND_FILE),
        IndexRecordOption::Basic,
    );
    let records = searcher
        .search(&query, &DocSetCollector)
        .map_err(failed("listing the ingested files"))?;
    let mut hashes = HashMap::with_capacity(records.len());
    for address in records {
        let record: TantivyDocument = searcher.doc(address).map_err(failed("reading a file record"))?;
        let source = record.get_first(fields.source).and_then(|v| v.as_str());
        let hash = record.get_first(fields.hash).and_then(|v| v.as_u64());
        if let (Some(source), Some(hash)) = (source, hash) {
            hashes.insert(source.to_owned(), hash);
        }
    }
    Ok(hashes)
}

struct Added {
    chunks: usize,
    line_errors: Vec<LineError>,
}

/// Adds a file's chunks and its record (source and content hash) to the writer.
fn add_file(
    writer: &IndexWriter,
    fields: Fields,
    config: &IndexConfig,
    file: &SourceFile,
    bytes: &[u8],
    hash: u64,
) -> Result<Added, IndexError> {
    let mut position = 0u64;
    let mut failure = None;
    let line_errors = files::for_each_document(file, bytes, &config.jsonl_text_field, |text| {
        if failure.is_some() {
            return;
        }
        for chunk in chunk_text(text, config.chunk_chars, config.overlap_chars) {
            let mut doc = TantivyDocument::default();
            doc.add_text(fields.text, &chunk);
            doc.add_text(fields.source, &file.source);
            doc.add_u64(fields.position, position);
            if let Err(error) = writer.add_document(doc) {
                failure = Some(error);
                return;
            }
            position += 1;
        }
    });
    let failed = IndexError::tantivy(&config.path, "adding a document");
    if let Some(error) = failure {
        return Err(failed(error));
    }
    let mut record = TantivyDocument::default();
    record.add_text(fields.source, &file.source);
    record.add_text(fields.kind, KIND_FILE);
    record.add_u64(fields.hash, hash);
    writer.add_document(record).map_err(failed)?;
    Ok(Added {
        // At most one chunk per character of the file, so this fits a usize.
        chunks: position as usize,
        line_errors,
    })
}
