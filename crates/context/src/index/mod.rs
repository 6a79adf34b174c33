//! Chunking, ingest and BM25 retrieval over a tantivy index.
