//! What the first two stages add to a request: context retrieved from a full-text index (RAG)
//! and the prompt assembled from templates, in a prefix-stable order, within a token budget.
//!
//! - [`index`]: chunking, ingest into a tantivy index, and the BM25 [`Retriever`](tokio_prompt_orchestrator::Retriever).
//! - [`assemble`]: minijinja templates, prefix-stable assembly and the token budget, as an
//!   [`Assembler`](tokio_prompt_orchestrator::Assembler).

pub mod assemble;
pub mod index;
