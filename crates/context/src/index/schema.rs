//! The index's layout (fields and text analysis) and opening or creating it on disk; shared by
//! ingest and search so both always agree on it.
//!
//! Two kinds of document live in the index:
//! - a **chunk**: `text` (analysed, stored), `source` (the file, an exact term), `position`;
//! - a **file record**, one per ingested file: `source`, `kind = "file"` and the xxh3 `hash` of the
//!   file's bytes, which is how a later ingest knows the file is unchanged. It has no `text`, so no
//!   query ever matches it. It does count in BM25's document total (one per file against many
//!   chunks), which shifts scores by a negligible amount.
//!
//! Deleting the term `source = path` removes a file's chunks and its record together.

use std::path::Path;

use tantivy::directory::MmapDirectory;
use tantivy::schema::{Field, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
};
use tantivy::{Index, TantivyError};

use super::error::IndexError;

/// The name the text analyser is registered under; the schema refers to it by this name, and
/// tantivy does not store analysers, so every opening of the index registers it again.
const ANALYZER: &str = "orchestrator_en";

/// The `kind` of a file record.
pub(crate) const KIND_FILE: &str = "file";

/// The same English stop words as Lucene's `EnglishAnalyzer`. Leaving them out of the index keeps
/// queries phrased as questions ("what is the ...") from walking the longest posting lists.
const STOP_WORDS: [&str; 33] = [
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no",
    "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to",
    "was", "will", "with",
];

/// Field handles of the schema.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fields {
    pub text: Field,
    pub source: Field,
    pub position: Field,
    pub kind: Field,
    pub hash: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    // Frequencies but no positions: BM25 needs term frequencies; positions only serve phrase
    // queries, which retrieval does not make, and would double the postings' size.
    let text_options = TextOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(ANALYZER)
                .set_index_option(IndexRecordOption::WithFreqs),
        )
        .set_stored();
    let text = builder.add_text_field("text", text_options);
    let source = builder.add_text_field("source", STRING | STORED);
    let position = builder.add_u64_field("position", STORED);
    let kind = builder.add_text_field("kind", STRING);
    let hash = builder.add_u64_field("hash", STORED);
    let fields = Fields {
        text,
        source,
        position,
        kind,
        hash,
    };
    (builder.build(), fields)
}

/// Words split on non-alphanumerics, very long tokens (base64, hashes) dropped, lower-cased, stop
/// words removed, then stemmed so "indexes" finds "indexing".
fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(StopWordFilter::remove(
            STOP_WORDS.iter().map(|&word| word.to_owned()),
        ))
        .filter(Stemmer::new(Language::English))
        .build()
}

fn prepare(index: &Index, path: &Path) -> Result<Fields, IndexError> {
    let (expected, fields) = schema();
    if index.schema() != expected {
        return Err(IndexError::Incompatible {
            path: path.to_owned(),
        });
    }
    index.tokenizers().register(ANALYZER, analyzer());
    Ok(fields)
}

/// Opens the index at `path`, or `None` when there is none yet.
pub(crate) fn open(path: &Path) -> Result<Option<(Index, Fields)>, IndexError> {
    if !path.is_dir() {
        return Ok(None);
    }
    let directory = MmapDirectory::open(path)
        .map_err(TantivyError::from)
        .map_err(IndexError::tantivy(path, "opening the index directory"))?;
    let exists = Index::exists(&directory)
        .map_err(TantivyError::from)
        .map_err(IndexError::tantivy(path, "looking for the index"))?;
    if !exists {
        return Ok(None);
    }
    let index = Index::open(directory).map_err(IndexError::tantivy(path, "opening the index"))?;
    let fields = prepare(&index, path)?;
    Ok(Some((index, fields)))
}

/// Opens the index at `path`, creating the directory and an empty index when there is none.
pub(crate) fn open_or_create(path: &Path) -> Result<(Index, Fields), IndexError> {
    if let Some(found) = open(path)? {
        return Ok(found);
    }
    std::fs::create_dir_all(path).map_err(|source| IndexError::CreateDir {
        path: path.to_owned(),
        source,
    })?;
    let (schema, _) = schema();
    let index =
        Index::create_in_dir(path, schema).map_err(IndexError::tantivy(path, "creating the index"))?;
    let fields = prepare(&index, path)?;
    Ok((index, fields))
}
