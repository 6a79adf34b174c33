//! Retrieval for the RAG stage: documents are cut into chunks, indexed with tantivy, and searched
//! by BM25 for each request.
//!
//! - [`config`]: [`IndexConfig`] (where the index lives, chunk sizes) and [`RagSettings`] (top-k,
//!   minimum score, on/off per model), as they appear under `[rag]` in `pipeline.toml`.
//! - [`chunk`]: paragraphs, then sentences, then words, packed into overlapping chunks.
//! - [`ingest()`]: files and directories into the index, incrementally; [`ensure_indexed`] for a
//!   first run.
//! - [`IndexRetriever`]: the [`Retriever`](tokio_prompt_orchestrator::Retriever) the pipeline
//!   calls; searches run on the blocking pool, off the async workers.
//!
//! Internals: `schema` (the index layout, shared by ingest and search), `files` (walking
//! directories, reading `.jsonl`), `progress` (bar or log lines), `error`.

pub mod chunk;
pub mod config;
mod error;
mod files;
mod ingest;
mod progress;
mod schema;
mod search;

pub use chunk::chunk_text;
pub use config::{IndexConfig, RagSettings};
pub use error::{IndexError, LineError};
pub use ingest::{IngestSummary, ensure_indexed, ingest};
pub use progress::Progress;
pub use search::{IndexRetriever, RAG_QUERY_META_KEY, query_text};
