//! What the mock upstream does: its fixed settings ([`MockConfig`]), the behaviour a test may
//! change while it runs ([`Behaviour`]), and the `orchestrator mock-upstream` flags ([`MockArgs`]).

use std::net::SocketAddr;
use std::num::NonZeroUsize;

use axum::http::StatusCode;
use clap::Args;

/// Settings fixed for the life of a mock server.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Address to bind; port 0 picks a free one (tests).
    pub listen: SocketAddr,
    /// Seeds the injected-error sequence: the same seed gives the same statuses, request by request.
    pub seed: u64,
    /// llama.cpp slots reported by `/slots` and accepted as `id_slot`.
    pub slots: NonZeroUsize,
    /// Names listed by `/v1/models`. Responses echo whatever model a request names.
    pub models: Vec<String>,
    /// How requests are answered at first; change it later with
    /// [`MockHandle::set_behaviour`](super::MockHandle::set_behaviour).
    pub behaviour: Behaviour,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
            seed: 0,
            slots: NonZeroUsize::new(4).unwrap_or(NonZeroUsize::MIN),
            models: vec!["mock".to_owned()],
            behaviour: Behaviour::default(),
        }
    }
}

impl MockConfig {
    /// The defaults on `127.0.0.1:0`: what in-process tests want.
    pub fn ephemeral() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Self::default()
        }
    }
}

/// How the generating endpoints answer. Cheap to clone; read once per request, so a change
/// applies to requests that arrive after it (a stream already running keeps its plan).
#[derive(Debug, Clone, PartialEq)]
pub struct Behaviour {
    /// Delay before the response head of every generated answer (not of injected errors, which
    /// are answered at once, like an overloaded server shedding load).
    pub latency_ms: u64,
    /// Streams: delay between the response head and the first token.
    pub ttft_ms: u64,
    /// Streams: pace of the tokens after the first; 0 sends them as fast as possible.
    pub tokens_per_second: f64,
    /// Completion length, capped by the request's `max_tokens` / `max_completion_tokens` /
    /// `n_predict`.
    pub tokens: u64,
    /// Fraction (0.0..=1.0) of generating requests answered with `error_status`; values outside
    /// the range act as the nearest bound.
    pub error_rate: f64,
    /// Status of injected errors.
    pub error_status: StatusCode,
    /// `Retry-After` (seconds) sent with injected errors, when set.
    pub retry_after_secs: Option<u64>,
    /// Streams send this many tokens, then the connection is closed without the end of the
    /// stream; a stream with no more tokens than that completes normally. Non-streaming
    /// answers are not affected.
    pub cut_after: Option<u64>,
    /// `false` makes `/health` answer 503 as llama-server does while it loads a model.
    pub healthy: bool,
    /// Requests waiting in the server's queue, as vLLM reports in `/metrics`
    /// (`vllm:num_requests_waiting`).
    pub queue_waiting: u64,
    /// Embedding answers wait while this is set: a test holds calls in flight, then lets them
    /// go by clearing it.
    pub hold_embeddings: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            ttft_ms: 0,
            tokens_per_second: 0.0,
            tokens: 16,
            error_rate: 0.0,
            error_status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after_secs: None,
            cut_after: None,
            healthy: true,
            queue_waiting: 0,
            hold_embeddings: false,
        }
    }
}

/// `orchestrator mock-upstream`: a fake OpenAI-compatible and llama.cpp-compatible model server
/// for tests, benchmarks and machines without a GPU.
#[derive(Debug, Clone, Args)]
pub struct MockArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// Delay before each generated answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Streams: time from the response head to the first token, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub ttft_ms: u64,
    /// Streams: pace of tokens; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    pub tokens_per_second: f64,
    /// Completion length in tokens (capped by the request's max_tokens).
    #[arg(long, default_value_t = 16)]
    pub tokens: u64,
    /// Fraction of generating requests answered with --error-status (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub error_rate: f64,
    /// HTTP status of injected errors.
    #[arg(long, default_value_t = 503, value_parser = status)]
    pub error_status: u16,
    /// Retry-After header (seconds) on injected errors.
    #[arg(long)]
    pub retry_after_secs: Option<u64>,
    /// Seed of the injected-error sequence (same seed, same sequence).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Streams send N tokens, then the connection is closed without `[DONE]`.
    #[arg(long, value_name = "N")]
    pub cut_after: Option<u64>,
    /// Number of llama.cpp slots.
    #[arg(long, default_value_t = NonZeroUsize::new(4).unwrap_or(NonZeroUsize::MIN))]
    pub slots: NonZeroUsize,
    /// A model name listed by /v1/models (repeatable).
    #[arg(long = "model", value_name = "NAME", default_value = "mock")]
    pub models: Vec<String>,
}

impl From<MockArgs> for MockConfig {
    fn from(args: MockArgs) -> Self {
        Self {
            listen: args.listen,
            seed: args.seed,
            slots: args.slots,
            models: args.models,
            behaviour: Behaviour {
                latency_ms: args.latency_ms,
                ttft_ms: args.ttft_ms,
                tokens_per_second: args.tokens_per_second,
                tokens: args.tokens,
                error_rate: args.error_rate,
                // The parser only lets valid statuses through.
                error_status: StatusCode::from_u16(args.error_status)
                    .unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                retry_after_secs: args.retry_after_secs,
                cut_after: args.cut_after,
                healthy: true,
                queue_waiting: 0,
                hold_embeddings: false,
            },
        }
    }
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number from 0.0 to 1.0")),
    }
}

fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a finite number >= 0")),
    }
}

fn status(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(v) if (400..=599).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not an error status (400 to 599)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_reject_out_of_range_values() {
        assert_eq!(fraction("0.25"), Ok(0.25));
        assert!(fraction("1.5").is_err());
        assert!(fraction("NaN").is_err());
        assert!(non_negative("-1").is_err());
        assert!(non_negative("inf").is_err());
        assert_eq!(status("429"), Ok(429));
        assert!(status("200").is_err());
        assert!(status("600").is_err());
    }
}
