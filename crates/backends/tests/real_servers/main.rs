//! The backends against real model servers running a real (tiny) model on the CPU: llama.cpp's
//! own llama-server and llama-cpp-python, as `scripts/setup-llm.sh` prepares them in `.llm/`.
//!
//! Each test starts its own server on a free port and kills it when done; the tests take turns.
//! The model's text means nothing, so the tests check structure: tokens, finish reasons, counts,
//! and the server's own view of its slots. Without the servers the tests skip with a message,
//! unless CI=true (for the servers CI prepares) or ORCHESTRATOR_REAL_LLM=1 demands them.

mod llama_cpp_python;
mod llama_server;
mod pipeline;
mod support;
