//! What can go wrong building or opening the index, each error naming the path involved and
//! what to do about it.

use std::path::{Path, PathBuf};

/// An ingest or open that could not be done. An ingest that fails commits nothing: the index is
/// left as it was before it started.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The [`IndexConfig`](super::IndexConfig) or a [`RagSettings`](super::RagSettings) is invalid.
    #[error("invalid retrieval settings: {}", join_problems(.problems))]
    Config { problems: Vec<(String, String)> },
    /// A path given to ingest does not exist.
    #[error("{}: no such file or directory to ingest", .path.display())]
    NotFound { path: PathBuf },
    /// A file or directory could not be read.
    #[error("{}: cannot read it: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The index directory could not be created.
    #[error("{}: cannot create the index directory: {source}", .path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Searching was asked of an index that has not been built.
    #[error("{}: there is no index here yet; build it by ingesting documents first", .path.display())]
    NoIndex { path: PathBuf },
    /// The directory holds an index with other fields (another program's, or an older layout).
    #[error(
        "{}: this index was built with a different layout; delete the directory and ingest again",
        .path.display()
    )]
    Incompatible { path: PathBuf },
    /// Another writer holds the index's lock.
    #[error(
        "{}: another ingest is writing to this index; wait for it to finish (if none is running, a \
         crashed one left its lock: delete `.tantivy-writer.lock` in the directory)",
        .path.display()
    )]
    Locked { path: PathBuf },
    /// tantivy failed; `action` says what was being done.
    #[error("{}: {action} failed: {source}", .path.display())]
    Tantivy {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: tantivy::TantivyError,
    },
}

impl IndexError {
    /// Wraps a tantivy error for `path`, telling a held writer lock apart. Used as
    /// `.map_err(IndexError::tantivy(path, "doing x"))`; the path is copied only on error, which
    /// keeps the search path free of allocations it does not need.
    pub(crate) fn tantivy<'a>(
        path: &'a Path,
        action: &'static str,
    ) -> impl FnOnce(tantivy::TantivyError) -> IndexError + 'a {
        move |source| match source {
            tantivy::TantivyError::LockFailure(..) => IndexError::Locked {
                path: path.to_owned(),
            },
            source => IndexError::Tantivy {
                path: path.to_owned(),
                action,
                source,
            },
        }
    }
}

fn join_problems(problems: &[(String, String)]) -> String {
    let parts: Vec<String> = problems
        .iter()
        .map(|(field, message)| format!("`{field}` {message}"))
        .collect();
    parts.join("; ")
}

/// A `.jsonl` line that could not be indexed. Ingest skips such a line, counts it and goes on
/// with the rest of the file: one bad record in a large export should not keep the others out of
/// the index, and the summary says where every skipped line is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{source_path}:{line}: {message}; this line was skipped")]
pub struct LineError {
    /// The file, as it was given to ingest.
    pub source_path: String,
    /// 1-based line number.
    pub line: usize,
    pub message: String,
}
