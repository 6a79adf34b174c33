//! The backends against real model servers running a real (tiny) model on the CPU: llama.cpp's
//! own llama-server and llama-cpp-python, as `scripts/setup-llm.sh` prepares them in `.llm/`.
//!
//! Each test starts its own server on a free port and kills it when done; the tests take turns.
//! The model's text means nothing, so the tests check structure: tokens, finish reasons, counts,
//! and the server's own view of its slots. The tests are ignored unless asked for (`--ignored`):
//! `ORCHESTRATOR_REAL_LLM=1 bash scripts/test.sh` prepares both servers and runs them, and then a
//! missing server is a failure. CI does not (see docs/operations.md).

mod llama_cpp_python;
mod llama_cpp_python_tools;
mod llama_server;
mod llama_server_chat;
mod llama_server_embeddings;
mod pipeline;
mod support;
