//! The OpenAI endpoints as a gateway [`Format`]: a body read as OpenAI's request, an answer
//! written as OpenAI's response.

use tokio_prompt_orchestrator::{InferenceRequest, Response};

use super::body::parse_json;
use super::error::ApiError;
use super::request::GenerationRequest;
use super::wire::{Endpoint, Header};
use crate::gateway::admit::Origin;
use crate::gateway::live::Live;
use crate::gateway::{Delivery, Format, unix_now};

/// `POST /v1/chat/completions` and `POST /v1/completions`.
pub struct OpenAi;

impl Format for OpenAi {
    fn prepare(
        &self,
        live: &Live,
        path: &str,
        body: &[u8],
        origin: &Origin<'_>,
    ) -> Result<(InferenceRequest, Delivery), ApiError> {
        let endpoint = Endpoint::from_path(path).ok_or_else(|| ApiError::not_found_route(path))?;
        let parsed: GenerationRequest = parse_json(body)?;
        let (mut request, delivery) = match endpoint {
            Endpoint::Chat => parsed.into_chat()?,
            Endpoint::Completion => parsed.into_completion()?,
        };
        if !live.models.contains(&delivery.model) {
            return Err(ApiError::model_not_found(&delivery.model));
        }
        origin.hints.apply(&mut request, &delivery, origin);
        Ok((request, delivery))
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
