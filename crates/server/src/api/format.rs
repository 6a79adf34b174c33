//! The OpenAI endpoints as a gateway [`Format`]: a body read as OpenAI's request, an answer
//! written as OpenAI's response; and [`ByPath`], each endpoint's format by its path.

use tokio_prompt_orchestrator::{InferenceRequest, Response};

use super::body::parse_json;
use super::error::ApiError;
use super::request::GenerationRequest;
use super::wire::{Endpoint, Header};
use crate::gateway::{Delivery, Format, unix_now};

/// `POST /v1/chat/completions` and `POST /v1/completions`.
pub struct OpenAi;

/// Each endpoint's own format, by the path a request came on: for what handles requests of
/// every API (replays of dead letters).
pub struct ByPath;

impl ByPath {
    fn of(path: &str) -> &'static dyn Format {
        if path == super::anthropic::MESSAGES {
            &super::anthropic::Anthropic
        } else if path == super::responses::RESPONSES {
            &super::responses::Responses
        } else if path == super::embeddings::EMBEDDINGS {
            &super::embeddings::Embeddings
        } else {
            &OpenAi
        }
    }
}

impl Format for ByPath {
    fn read(&self, path: &str, body: &[u8]) -> Result<(InferenceRequest, Delivery), ApiError> {
        Self::of(path).read(path, body)
    }

    fn answer(
        &self,
        path: &str,
        request_id: &str,
        delivery: Delivery,
        response: &Response,
    ) -> serde_json::Value {
        Self::of(path).answer(path, request_id, delivery, response)
    }
}

impl Format for OpenAi {
    fn read(&self, path: &str, body: &[u8]) -> Result<(InferenceRequest, Delivery), ApiError> {
        let endpoint = Endpoint::from_path(path).ok_or_else(|| ApiError::not_found_route(path))?;
        let parsed: GenerationRequest = parse_json(body)?;
        match endpoint {
            Endpoint::Chat => parsed.into_chat(),
            Endpoint::Completion => parsed.into_completion(),
        }
    }

    fn answer(
        &self,
        path: &str,
        request_id: &str,
        delivery: Delivery,
        response: &Response,
    ) -> serde_json::Value {
        let endpoint = Endpoint::from_path(path).unwrap_or(Endpoint::Chat);
        let header = Header {
            endpoint,
            id: [endpoint.id_prefix(), request_id].concat(),
            created: unix_now(),
            model: delivery.model,
        };
        let body = header.complete(
            &response.text,
            response.completion.finish_reason,
            response.completion.usage,
            response.passthrough.as_deref(),
        );
        // What `complete` writes is JSON.
        serde_json::from_str(&body).unwrap_or_default()
    }
}
