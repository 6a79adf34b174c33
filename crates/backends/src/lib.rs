//! Model backends for tokio-prompt-orchestrator: each is a `ModelWorker` that talks to a real
//! model server.
//!
//! - [`openai`]: any OpenAI-compatible server (OpenAI, vLLM, SGLang, Ollama, llama.cpp `/v1`,
//!   TGI), streaming relayed token by token.

pub mod openai;

pub use openai::{OpenAiConfig, OpenAiWorker};
