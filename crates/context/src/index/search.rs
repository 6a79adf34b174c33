//! BM25 search over the index, and [`IndexRetriever`]: the RAG stage's [`Retriever`] backed by it.
//!
//! The query is the request's text taken as plain words, never as query syntax: it goes through
//! the index's own analyser (so it is lower-cased, stemmed and stripped of stop words exactly like
//! the chunks were) and becomes an OR of its distinct terms, scored by BM25. A user's `(((` or
//! `NOT` or `field:` therefore cannot fail a request or change its meaning. Words found in more
//! than half of the index are left out when rarer ones remain (see `drop_common_terms`).

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use tantivy::collector::TopDocs;
use tantivy::query::BooleanQuery;
use tantivy::schema::Value;
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{IndexReader, ReloadPolicy, TantivyDocument, Term};
use tokio_prompt_orchestrator::{
    InferenceRequest, PipelineError, PromptInput, RetrievedChunk, Retriever, Role,
};

use super::config::{IndexConfig, RagSettings};
use super::error::IndexError;
use super::schema::{self, Fields};

/// The request metadata key whose value, when present, is the search query instead of the
/// request's text. The gateway sets it from the `X-Rag-Query` header. Present but blank, it turns
/// retrieval off for that request.
pub const RAG_QUERY_META_KEY: &str = "rag_query";

/// Only the first this many characters of a query are read, and only the first
/// [`MAX_QUERY_TERMS`] distinct terms searched: a pasted document as a chat message must not turn
/// into a query whose cost grows with its length.
const MAX_QUERY_CHARS: usize = 4096;
const MAX_QUERY_TERMS: usize = 64;

/// The RAG stage's retriever: BM25 top-k over a tantivy index built by [`ingest`](super::ingest).
///
/// It keeps one index reader for its life. The reader reloads by itself shortly after any commit
/// to the index (`ReloadPolicy::OnCommitWithDelay`: tantivy watches the index's `meta.json`), so
/// an ingest by another process is seen without a restart; [`reload`](Self::reload) does it at
/// once. Each search takes the reader's current snapshot, so it is never mixed across a commit.
#[derive(Clone)]
pub struct IndexRetriever {
    inner: Arc<Inner>,
    default: RagSettings,
    per_model: HashMap<String, RagSettings>,
}

/// What a search needs, shared with the blocking tasks that run searches.
struct Inner {
    reader: IndexReader,
    fields: Fields,
    /// The index's text analyser. tantivy's `token_stream` takes it mutably, so each search uses
    /// a clone (a few boxed filters), which keeps searches free of a lock.
    analyzer: TextAnalyzer,
    path: PathBuf,
}

impl IndexRetriever {
    /// Opens the index at `config.path` for searching, with `default` settings for every model
    /// that has no entry in `per_model` (keyed by the request's model name).
    ///
    /// # Errors
    /// [`IndexError::NoIndex`] when nothing has been ingested there yet,
    /// [`IndexError::Incompatible`] for an index of another layout, [`IndexError::Config`] for
    /// invalid settings (each problem named `default.<field>` or `per_model.<model>.<field>`).
    pub fn open(
        config: &IndexConfig,
        default: RagSettings,
        per_model: HashMap<String, RagSettings>,
    ) -> Result<Self, IndexError> {
        let mut problems: Vec<(String, String)> = default
            .validate()
            .into_iter()
            .map(|(field, message)| (format!("default.{field}"), message))
            .collect();
        let mut models: Vec<_> = per_model.iter().collect();
        models.sort_by_key(|(model, _)| model.as_str());
        for (model, settings) in models {
            problems.extend(
                settings
                    .validate()
                    .into_iter()
                    .map(|(field, message)| (format!("per_model.{model}.{field}"), message)),
            );
        }
        if !problems.is_empty() {
            return Err(IndexError::Config { problems });
        }

        let path = config.path.clone();
        let (index, fields) =
            schema::open(&path)?.ok_or_else(|| IndexError::NoIndex { path: path.clone() })?;
        let analyzer = index
            .tokenizer_for_field(fields.text)
            .map_err(IndexError::tantivy(&path, "loading the text analyser"))?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::OnCommitWithDelay)
            .try_into()
            .map_err(IndexError::tantivy(&path, "opening a reader"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                reader,
                fields,
                analyzer,
                path,
            }),
            default,
            per_model,
        })
    }

    /// The settings for `model`: its own entry, else the default.
    pub fn settings_for(&self, model: &str) -> &RagSettings {
        self.per_model.get(model).unwrap_or(&self.default)
    }

    /// Searches now, on the calling thread (it blocks: call it from a blocking context). Returns
    /// at most `settings.top_k` chunks scoring at least `settings.min_score`, best first; none
    /// when `settings.enabled` is false or the query has no searchable words.
    ///
    /// # Errors
    /// [`IndexError::Tantivy`] when the index cannot be read (a file removed under it, say).
    pub fn search(&self, query: &str, settings: &RagSettings) -> Result<Vec<RetrievedChunk>, IndexError> {
        if !settings.enabled {
            return Ok(Vec::new());
        }
        self.inner.search(query, settings)
    }

    /// Makes the latest commit visible to searches now rather than after the reload delay.
    ///
    /// # Errors
    /// [`IndexError::Tantivy`] when the index cannot be read.
    pub fn reload(&self) -> Result<(), IndexError> {
        self.inner
            .reader
            .reload()
            .map_err(IndexError::tantivy(&self.inner.path, "reloading the index"))
    }
}

impl fmt::Debug for IndexRetriever {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IndexRetriever")
            .field("path", &self.inner.path)
            .field("default", &self.default)
            .field("per_model", &self.per_model)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn search(&self, query: &str, settings: &RagSettings) -> Result<Vec<RetrievedChunk>, IndexError> {
        if settings.top_k == 0 {
            return Ok(Vec::new());
        }
        let failed = |action| IndexError::tantivy(&self.path, action);
        let searcher = self.reader.searcher();
        let terms = self.terms(query);
        let mut counted = Vec::with_capacity(terms.len());
        for term in terms {
            let docs = searcher
                .doc_freq(&term)
                .map_err(failed("looking up a query word"))?;
            // A word no chunk has cannot change the result; leaving it out saves its scorer.
            if docs > 0 {
                counted.push((docs, term));
            }
        }
        let terms = drop_common_terms(counted, searcher.num_docs());
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let query = BooleanQuery::new_multiterms_query(terms);
        let top = searcher
            .search(&query, &TopDocs::with_limit(settings.top_k).order_by_score())
            .map_err(failed("searching"))?;
        let mut chunks = Vec::with_capacity(top.len());
        for (score, address) in top {
            // Results come best first, so the first one below the bar ends the list.
            if score < settings.min_score {
                break;
            }
            let doc: TantivyDocument = searcher.doc(address).map_err(failed("reading a chunk"))?;
            let text = doc.get_first(self.fields.text).and_then(|v| v.as_str());
            let source = doc.get_first(self.fields.source).and_then(|v| v.as_str());
            let position = doc.get_first(self.fields.position).and_then(|v| v.as_u64());
            // Only chunks have text, and ingest gives every chunk all three fields; anything else
            // matched would be a document this crate did not write, which is skipped.
            let (Some(text), Some(source), Some(position)) = (text, source, position) else {
                continue;
            };
            chunks.push(RetrievedChunk {
                text: text.to_owned(),
                source: source.to_owned(),
                position,
                score,
            });
        }
        Ok(chunks)
    }

    /// The query's distinct analysed terms, at most [`MAX_QUERY_TERMS`].
    fn terms(&self, query: &str) -> Vec<Term> {
        let query = truncate(query);
        let mut analyzer = self.analyzer.clone();
        let mut stream = analyzer.token_stream(query);
        let mut words: Vec<String> = Vec::new();
        while stream.advance() {
            let word = &stream.token().text;
            if !words.iter().any(|seen| seen == word) {
                words.push(word.clone());
                if words.len() == MAX_QUERY_TERMS {
                    break;
                }
            }
        }
        words
            .iter()
            .map(|word| Term::from_field_text(self.fields.text, word))
            .collect()
    }
}

/// Leaves out the query's words that are in more than half of all documents, as long as a rarer
/// word remains (a query of only common words is searched as it is).
///
/// Such a word says little about which chunk is relevant: its BM25 weight (idf) is below ln 2,
/// against 4 to 7 for a word in a few hundredths to thousandths of the chunks, so it rarely
/// changes the top results. But its posting list is the longest there is, and walking it is what
/// made the slowest queries slow: in the benchmark, dropping such words halved the median search
/// time and cut the 99th percentile by a third. Lucene's `CommonTermsQuery` makes the same trade.
/// The scores reported are then those of the remaining words.
fn drop_common_terms(counted: Vec<(u64, Term)>, total_docs: u64) -> Vec<Term> {
    let common = |docs: u64| docs.saturating_mul(2) > total_docs;
    let any_rare = counted.iter().any(|&(docs, _)| !common(docs));
    counted
        .into_iter()
        .filter(|&(docs, _)| !any_rare || !common(docs))
        .map(|(_, term)| term)
        .collect()
}

/// The first [`MAX_QUERY_CHARS`] characters of `query`.
fn truncate(query: &str) -> &str {
    match query.char_indices().nth(MAX_QUERY_CHARS) {
        Some((end, _)) => &query[..end],
        None => query,
    }
}

/// The text a request is searched with: its [`RAG_QUERY_META_KEY`] metadata if set, else the last
/// user message of a chat, else a completion's prompt. `None` when there is none (a chat with no
/// user message, inputs to embed).
pub fn query_text(request: &InferenceRequest) -> Option<&str> {
    if let Some(query) = request.meta.get(RAG_QUERY_META_KEY) {
        return Some(query);
    }
    match &request.input {
        PromptInput::Chat(messages) => messages
            .iter()
            .rev()
            .find(|message| message.role == Role::User)
            .map(|message| message.content.as_str()),
        PromptInput::Text(prompt) => Some(prompt),
        PromptInput::Embed(_) => None,
    }
}

#[async_trait]
impl Retriever for IndexRetriever {
    /// Searches with the request model's settings. The search runs on tokio's blocking pool
    /// (`spawn_blocking`), never on the async workers, so a slow query (a cold page cache, a huge
    /// index) delays only its own request, not the other stages' lanes. The blocking pool rather
    /// than a dedicated one: the RAG stage's concurrency limit already bounds how many searches
    /// run at once, and tokio's pool reuses its threads, so a pool of our own would add only
    /// code. A request cancelled mid-search stops waiting at once; its search finishes on its
    /// thread (a search cannot be interrupted) and the result is dropped.
    ///
    /// # Errors
    /// [`PipelineError::Retrieval`] naming the index when it cannot be read.
    async fn retrieve(&self, request: &InferenceRequest) -> Result<Vec<RetrievedChunk>, PipelineError> {
        let settings = *self.settings_for(&request.model);
        if !settings.enabled {
            return Ok(Vec::new());
        }
        let Some(query) = query_text(request).filter(|query| !query.trim().is_empty()) else {
            return Ok(Vec::new());
        };
        let query = truncate(query).to_owned();
        let inner = Arc::clone(&self.inner);
        let result = tokio::task::spawn_blocking(move || inner.search(&query, &settings)).await;
        match result {
            Ok(Ok(chunks)) => Ok(chunks),
            Ok(Err(error)) => Err(PipelineError::Retrieval {
                message: error.to_string(),
            }),
            Err(join_error) => Err(PipelineError::Retrieval {
                message: format!(
                    "{}: the search task ended without an answer: {join_error}",
                    self.inner.path.display()
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use tantivy::schema::Field;

    use super::*;

    fn counted(docs: &[u64]) -> Vec<(u64, Term)> {
        docs.iter()
            .enumerate()
            .map(|(i, &n)| (n, Term::from_field_text(Field::from_field_id(0), &i.to_string())))
            .collect()
    }

    fn kept(docs: &[u64], total: u64) -> Vec<String> {
        drop_common_terms(counted(docs), total)
            .iter()
            .filter_map(|term| term.value().as_str().map(str::to_owned))
            .collect()
    }

    #[test]
    fn common_words_are_dropped_only_beside_rarer_ones() {
        assert_eq!(
            kept(&[90, 3, 51, 50], 100),
            ["1", "3"],
            "50 of 100 is not more than half"
        );
        assert_eq!(kept(&[90, 80], 100), ["0", "1"], "all common: searched as given");
        assert!(kept(&[], 100).is_empty());
    }

    #[test]
    fn long_queries_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_QUERY_CHARS + 10);
        assert_eq!(truncate(&long).chars().count(), MAX_QUERY_CHARS);
        assert_eq!(truncate("short"), "short");
    }
}
