//! `ApiError`: every failure a client can see, with its status and the error body every API shape
//! here uses, OpenAI's `{"error": {"message", "type", "param", "code"}}`. The pipeline's errors
//! map to statuses here and only here; `api::error` writes it as an HTTP response.

use http::StatusCode;
use serde::Serialize;
use tokio_prompt_orchestrator::PipelineError;

/// A client-visible error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// The OpenAI `type`: `invalid_request_error`, `authentication_error`, `overloaded_error`, ...
    pub kind: &'static str,
    /// A stable machine-readable code.
    pub code: &'static str,
    /// The request field at fault, as a path (`messages[0].role`).
    pub param: Option<String>,
    pub message: String,
    /// Seconds the client should wait before retrying (`Retry-After`).
    pub retry_after: Option<u32>,
}

/// The wire form: `{"error": {...}}`.
#[derive(Serialize)]
pub struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: &'a str,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            param: None,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 naming the field at fault.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        let param = param.into();
        let message = message.into();
        Self {
            message: if param.is_empty() {
                message
            } else {
                format!("{param}: {message}")
            },
            param: (!param.is_empty()).then_some(param),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_value",
                "",
            )
        }
    }

    /// 400 for a body that is not valid JSON of the expected shape.
    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_body",
            message,
        )
    }

    pub fn model_not_found(model: &str) -> Self {
        Self {
            param: Some("model".into()),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
                format!("The model `{model}` does not exist; GET /v1/models lists the models served here."),
            )
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
            message,
        )
    }

    /// 429: the caller's key is over its rate limit for `which` (`requests` or `tokens`).
    pub fn rate_limited(which: &'static str, retry_after: std::time::Duration) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            which,
            "rate_limit_exceeded",
            format!(
                "Rate limit reached for {which} on this API key; retry in {} ms.",
                retry_after.as_millis()
            ),
        )
        .retry_after(whole_seconds(retry_after))
    }

    /// 429 `insufficient_quota`, OpenAI's shape for a spent budget, with `Retry-After`.
    pub fn insufficient_quota(message: String, retry_after: std::time::Duration) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "insufficient_quota",
            message,
        )
        .retry_after(whole_seconds(retry_after))
    }

    /// 400: a config file given to a reload has problems.
    pub fn invalid_config(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_config",
            message,
        )
    }

    /// 409: a reload that cannot happen now (no file to read, or the server is draining).
    pub fn reload_refused(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "reload_refused",
            message,
        )
    }

    /// 503: the cluster's shared state cannot be read from this node now (NATS is unreachable).
    pub fn cluster_unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable_error",
            "cluster_unavailable",
            message,
        )
        .retry_after(1)
    }

    /// 503: the node has not taken its first stats snapshot yet (it has just started).
    pub fn stats_not_ready() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable_error",
            "stats_not_ready",
            "The first stats snapshot has not been taken yet; retry in a second.",
        )
        .retry_after(1)
    }

    /// 503: the stored responses cannot be read or written now (their file or bucket failed).
    pub fn store_unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable_error",
            "store_unavailable",
            message,
        )
        .retry_after(1)
    }

    /// 404: an endpoint of cluster mode on a node that runs alone.
    pub fn not_clustered(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_clustered",
            format!(
                "{what} needs cluster mode: this node runs alone (add [cluster] nats_url = \
                 \"nats://HOST:4222\" to the config, or start it with --cluster)"
            ),
        )
    }

    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "permission_denied",
            message,
        )
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "body_too_large",
            format!("The request body is larger than the limit of {limit} bytes (server.max_body_bytes)."),
        )
    }

    /// 408: the body stopped arriving (`what` says how far it got and which settings allowed it).
    pub fn body_timeout(what: String) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "body_timeout",
            what,
        )
    }

    pub fn not_found_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_url",
            format!("Unknown request URL: {path}. Try POST /v1/chat/completions."),
        )
    }

    /// 404 for a thing the request named that does not exist (or a feature that is off).
    pub fn not_found(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.to_owned()),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "not_found",
                message,
            )
        }
    }

    /// 500: something on this server failed (the message says what; no request field is at fault).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            message,
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            "This method is not allowed for this URL.",
        )
    }

    /// 400: a generation request for an embedding model, or the other way round.
    pub fn wrong_kind(model: &str, embedding: bool) -> Self {
        let message = if embedding {
            format!("`{model}` is an embedding model: send its requests to POST /v1/embeddings")
        } else {
            format!(
                "`{model}` generates text: POST /v1/embeddings takes models declared with kind = \"embedding\""
            )
        };
        Self::invalid("model", message)
    }

    pub(crate) fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The body of this error, also sent as the data of an SSE `error` event.
    pub fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: ErrorObject {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising strings and options into a String cannot fail.
        serde_json::to_string(&self.body()).unwrap_or_default()
    }
}

/// `Retry-After` counts whole seconds: `wait` rounded up, at least 1.
fn whole_seconds(wait: std::time::Duration) -> u32 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    u32::try_from(seconds).unwrap_or(u32::MAX).max(1)
}

impl From<PipelineError> for ApiError {
    fn from(error: PipelineError) -> Self {
        Self::from(&error)
    }
}

impl From<&PipelineError> for ApiError {
    fn from(error: &PipelineError) -> Self {
        let message = match error {
            // The backends' own account (which were tried, what each said) is the message.
            PipelineError::Worker(upstream) => upstream.message.clone(),
            other => other.to_string(),
        };
        match error {
            PipelineError::Overloaded { .. } => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded_error",
                "overloaded",
                message,
            )
            .retry_after(1),
            PipelineError::Closed => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "draining",
                "The server is shutting down and accepts no new requests; retry on another replica.",
            )
            .retry_after(1),
            PipelineError::Shutdown => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "shutdown",
                message,
            )
            .retry_after(1),
            PipelineError::Timeout { .. } => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout_error",
                "deadline_exceeded",
                message,
            ),
            PipelineError::Cancelled => Self::new(
                // nginx's "client closed request": nobody is left to read it.
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
                "invalid_request_error",
                "cancelled",
                message,
            ),
            PipelineError::Worker(upstream) => match upstream.status {
                Some(404) => Self::new(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    "model_not_found",
                    upstream.message.clone(),
                ),
                // Larger than the path to the model takes (a job over the broker's message limit).
                Some(413) => Self::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request_error",
                    "request_too_large",
                    upstream.message.clone(),
                ),
                // The upstream refused the request itself (e.g. a prompt over its context
                // length): the client's to fix, in the upstream's words.
                Some(400 | 422) => Self::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "upstream_rejected",
                    upstream.message.clone(),
                ),
                // Every backend is rate limited or resting after its `Retry-After`: the client
                // is told when the first comes back, rather than given a bare 502.
                status => match upstream.retry_after {
                    Some(wait) if status == Some(429) => Self::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "upstream_error",
                        "upstream_rate_limited",
                        message,
                    )
                    .retry_after(whole_seconds(wait)),
                    Some(wait) => Self::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "upstream_error",
                        "upstream_unavailable",
                        message,
                    )
                    .retry_after(whole_seconds(wait)),
                    None => Self::new(
                        StatusCode::BAD_GATEWAY,
                        "upstream_error",
                        "upstream_error",
                        message,
                    ),
                },
            },
            // The model answered, but not in a form the config accepts (e.g. JSON mode).
            PipelineError::Output { .. } => Self::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "invalid_output",
                message,
            ),
            PipelineError::Retrieval { .. } => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "retrieval_failed",
                message,
            ),
            // Even the parts never dropped (system prompt, last message) do not fit: the
            // client's to fix, with OpenAI's code for it.
            PipelineError::ContextLength { .. } => Self {
                param: Some("messages".into()),
                ..Self::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "context_length_exceeded",
                    message,
                )
            },
            // A template failed at request time (e.g. a `meta` field the request lacks).
            PipelineError::Assembly { .. } => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "assembly_failed",
                message,
            ),
            _ => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal_error",
                message,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_prompt_orchestrator::{Stage, WorkerError};

    #[test]
    fn statuses_follow_the_error() {
        let status = |e: PipelineError| ApiError::from(e).status.as_u16();
        assert_eq!(status(PipelineError::Overloaded { stage: Stage::Rag }), 429);
        assert_eq!(status(PipelineError::Closed), 503);
        assert_eq!(status(PipelineError::Shutdown), 503);
        assert_eq!(
            status(PipelineError::Timeout {
                stage: Stage::Inference
            }),
            504
        );
        assert_eq!(status(WorkerError::retryable("connection refused").into()), 502);
        let rejected = WorkerError::new("prompt too long").with_status(400);
        assert_eq!(status(rejected.into()), 400);
        assert_eq!(status(PipelineError::ContextLength { needed: 9, limit: 8 }), 400);
        let broken = PipelineError::Assembly {
            message: "template `system` line 1: `meta.x` is undefined".into(),
        };
        assert_eq!(status(broken), 500);
    }

    #[test]
    fn body_has_the_openai_shape() {
        let e = ApiError::invalid("messages[0].role", "unknown variant `robot`");
        assert_eq!(
            e.to_json(),
            r#"{"error":{"message":"messages[0].role: unknown variant `robot`","type":"invalid_request_error","param":"messages[0].role","code":"invalid_value"}}"#
        );
    }
}
