//! Integration tests of the `orchestrator` gateway over real HTTP.

mod auth;
mod binary;
mod cancellation;
mod dead_letters;
mod dedup;
mod dlq;
mod endpoints;
mod environment;
mod errors;
mod gateway_mock;
mod health_checks;
mod limits;
mod mock_upstream;
mod openai_backend;
mod overload;
mod parser;
mod passthrough;
mod post;
mod priority;
mod rag;
mod reload;
mod sdk;
mod shutdown;
mod streaming;
mod support;
mod validate;
