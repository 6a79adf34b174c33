//! The gateway's `kind = "grpc"` backend: one remote `orchestrator worker`, reached over its
//! gRPC port. It is a `ModelWorker` like any other backend, so the router gives it balancing,
//! affinity, retries before the first token, fallback and a breaker; a worker refusing a call
//! (every slot busy, draining, unreachable, killed before its first token) is an error the router
//! tries elsewhere.
//!
//! Dropping a call's stream resets its HTTP/2 stream, which the worker sees at once and which
//! stops its own upstream call. HTTP/2 pings find a worker that went away without closing its
//! connection.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream;
use orchestrator_backends::http::BuildError;
use orchestrator_backends::routing::health::{HealthConfig, HealthProbe};
use orchestrator_backends::routing::replica::ReplicaConfig;
use orchestrator_backends::timeouts::{TimeoutConfig, Timeouts, earliest};
use orchestrator_backends::transport;
use serde::Deserialize;
use tokio::time::Instant;
use tokio_prompt_orchestrator::{
    Cores, InferenceCall, InferenceRequest, ModelWorker, RequestId, SessionId, TokenStream, WorkerChunk,
    WorkerError,
};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status, Streaming};

use crate::convert::{self, Event};
use crate::pb;
use crate::pb::worker_client::WorkerClient;
use crate::{MAX_MESSAGE, PROTOCOL};

/// How often an idle connection to a worker is pinged, and how long a ping may go unanswered
/// before the connection (and every call on it) counts as lost.
const PING_EVERY: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a worker that refused a call for want of a free slot is left out.
const BUSY_REST: Duration = Duration::from_secs(1);

/// `[[backends]]` with `kind = "grpc"`: one worker.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    /// Names the backend in routes, logs, metrics and errors.
    pub name: String,
    /// The worker's gRPC address: `http://host:port`, or `https://host:port` for TLS.
    pub url: String,
    /// The model name the worker serves; by default the name the client asked for.
    #[serde(default)]
    pub model: Option<String>,
    /// Name of the environment variable holding the secret the worker expects (its
    /// `[worker.grpc] secret_env`), sent as a bearer token.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// `tls = { ca = "ca.pem", cert = "gateway.pem", key = "gateway.key", domain = "worker-1" }`.
    #[serde(default)]
    pub tls: Option<ClientTls>,
    /// `timeouts = { connect_ms = 5000, first_token_ms = 60000, ... }`.
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    #[serde(default)]
    pub routing: ReplicaConfig,
    /// `health_check = { interval_ms = 5000, ... }`: the worker's `Status` call (on by default:
    /// it is cheap, and it finds a worker that is draining or does not serve the model).
    #[serde(default)]
    pub health_check: HealthConfig,
}

/// How the gateway checks a TLS worker, and what it shows it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// The PEM certificate(s) that signed the worker's; by default the system's roots.
    pub ca: Option<PathBuf>,
    /// The gateway's own PEM certificate and key, for a worker that asks for one (mTLS).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name the worker's certificate must have; by default the URL's host.
    pub domain: Option<String>,
}

pub struct GrpcWorker {
    name: Arc<str>,
    url: String,
    model: Option<String>,
    endpoint: Endpoint,
    /// One connection, made at the first call; in per-core mode one per core, each driven by its
    /// own core's runtime.
    channel: OnceLock<Channel>,
    per_core: OnceLock<Box<[OnceLock<Channel>]>>,
    secret: Option<AsciiMetadataValue>,
    timeouts: Timeouts,
    /// TLS, without a certificate of the gateway's own.
    tls_without_identity: bool,
}

impl GrpcWorker {
    /// # Errors
    /// When the URL is not an `http://` or `https://` address, the secret's variable is not set,
    /// or a TLS file cannot be read.
    pub fn new(config: &GrpcConfig) -> Result<Self, BuildError> {
        let invalid = |why: String| BuildError(format!("url: {:?} {why}", config.url));
        let uri: tonic::codegen::http::Uri = config
            .url
            .parse()
            .map_err(|e| invalid(format!("is not a valid URL ({e})")))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(invalid("must start with http:// or https://".into())),
        };
        if !tls && config.tls.is_some() {
            return Err(BuildError(format!(
                "tls: the url {:?} is http://; use https:// to reach the worker over TLS",
                config.url
            )));
        }
        let timeouts = Timeouts::from(config.timeouts);
        let mut endpoint = Endpoint::from(uri)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(PING_EVERY)
            .keep_alive_timeout(PING_TIMEOUT)
            .keep_alive_while_idle(true);
        if let Some(connect) = timeouts.connect {
            endpoint = endpoint.connect_timeout(connect);
        }
        if tls {
            let settings = config.tls.clone().unwrap_or_default();
            endpoint = endpoint
                .tls_config(client_tls(&settings)?)
                .map_err(|e| BuildError(format!("tls: {e}")))?;
        }
        let secret = match &config.secret_env {
            None => None,
            Some(variable) => Some(bearer(variable)?),
        };
        Ok(Self {
            name: config.name.as_str().into(),
            url: config.url.clone(),
            model: config.model.clone(),
            endpoint,
            channel: OnceLock::new(),
            per_core: OnceLock::new(),
            secret,
            timeouts,
            tls_without_identity: tls && config.tls.as_ref().is_none_or(|t| t.cert.is_none()),
        })
    }

    /// The connection for a call from this thread.
    fn channel(&self) -> Channel {
        match Cores::current() {
            Some((core, cores)) => {
                let channels = self
                    .per_core
                    .get_or_init(|| (0..cores).map(|_| OnceLock::new()).collect());
                channels[core % channels.len()]
                    .get_or_init(|| self.endpoint.connect_lazy())
                    .clone()
            }
            None => self.channel.get_or_init(|| self.endpoint.connect_lazy()).clone(),
        }
    }

    fn client(&self) -> WorkerClient<Channel> {
        WorkerClient::new(self.channel()).max_decoding_message_size(MAX_MESSAGE)
    }

    /// `request` with the secret and, when given, the trace context and the deadline.
    fn request<T>(
        &self,
        message: T,
        traceparent: Option<String>,
        deadline: Option<Instant>,
    ) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let metadata: &mut MetadataMap = request.metadata_mut();
        if let Some(secret) = &self.secret {
            metadata.insert("authorization", secret.clone());
        }
        if let Some(value) = traceparent.and_then(|t| AsciiMetadataValue::try_from(t).ok()) {
            metadata.insert("traceparent", value);
        }
        if let Some(at) = deadline {
            // Sent as `grpc-timeout`: the worker stops the call when it passes.
            request.set_timeout(at.saturating_duration_since(Instant::now()));
        }
        request
    }

    /// An error naming this backend.
    fn error(&self, message: &str, retryable: bool) -> WorkerError {
        WorkerError {
            retryable,
            ..WorkerError::new(format!("{}: {message}", self.name))
        }
    }

    /// The error for a call the worker refused, or that failed in transport.
    fn refused(&self, status: &Status) -> WorkerError {
        let mut what = describe(status);
        if let Some(hint) = tls_hint(&what, self.tls_without_identity) {
            what = format!("{what}: {hint}");
        }
        let (message, retryable, http) = match status.code() {
            Code::ResourceExhausted => (format!("busy: {what}"), true, 503),
            Code::Unavailable => (format!("unavailable: {what}"), true, 503),
            Code::DeadlineExceeded => (format!("the call ran out of time: {what}"), true, 504),
            Code::Unauthenticated => (
                format!(
                    "the worker refused the gateway's credentials ({what}): set secret_env to the variable holding the worker's secret"
                ),
                false,
                502,
            ),
            Code::Unimplemented => (
                format!(
                    "{} does not serve orchestrator.worker.v1.Worker ({what}): it is not an `orchestrator worker --grpc-listen`, or it speaks another major version of the protocol",
                    self.url
                ),
                true,
                502,
            ),
            // Not served here, another revision, a call it cannot read, a transport failure:
            // another worker may do better.
            _ => (what, true, 502),
        };
        let error = self.error(&message, retryable).with_status(http);
        if status.code() == Code::ResourceExhausted {
            // The router leaves a full worker out this long, and a caller every worker refused
            // gets 503 with `Retry-After`; `routing.max_in_flight` at the worker's slots keeps
            // calls waiting in the gateway instead.
            return error.with_retry_after(BUSY_REST);
        }
        error
    }
}

/// The `authorization` value for the secret in `variable`.
fn bearer(variable: &str) -> Result<AsciiMetadataValue, BuildError> {
    let secret = std::env::var(variable).map_err(|_| {
        BuildError(format!(
            "secret_env: the environment variable {variable} is not set"
        ))
    })?;
    AsciiMetadataValue::try_from(format!("Bearer {secret}")).map_err(|_| {
        BuildError(format!(
            "secret_env: the secret in {variable} has characters a header cannot carry (use printable ASCII)"
        ))
    })
}

fn client_tls(settings: &ClientTls) -> Result<ClientTlsConfig, BuildError> {
    let mut tls = ClientTlsConfig::new();
    tls = match &settings.ca {
        Some(path) => tls.ca_certificate(Certificate::from_pem(read(path, "tls.ca")?)),
        None => tls.with_native_roots(),
    };
    match (&settings.cert, &settings.key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(read(cert, "tls.cert")?, read(key, "tls.key")?));
        }
        (None, None) => {}
        _ => {
            return Err(BuildError(
                "tls: cert and key go together (the gateway's own certificate and its key)".into(),
            ));
        }
    }
    if let Some(domain) = &settings.domain {
        tls = tls.domain_name(domain.clone());
    }
    Ok(tls)
}

/// The file at `path`, for `setting`.
fn read(path: &PathBuf, setting: &str) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(|e| BuildError(format!("{setting}: cannot read {}: {e}", path.display())))
}

/// What to do about a TLS handshake that failed as `what` says, when it is a settings matter.
/// A worker that wants the gateway's certificate and gets none ends the handshake with an alert
/// which may arrive after the connection has closed, so a closed connection is enough of a sign
/// when the gateway shows none.
fn tls_hint(what: &str, without_identity: bool) -> Option<&'static str> {
    if what.contains("CertificateRequired") || (without_identity && what.contains("connection closed")) {
        Some("if the worker asks for the gateway's own certificate (mTLS), set tls.cert and tls.key")
    } else if what.contains("UnknownIssuer") || what.contains("invalid peer certificate") {
        Some("the worker's certificate is not signed by a CA the gateway trusts (tls.ca)")
    } else if what.contains("NotValidForName") {
        Some("the worker's certificate is not for the URL's host (tls.domain names the one it is for)")
    } else {
        None
    }
}

/// What went wrong in `status`, in words: its message and, for a transport failure, the cause.
fn describe(status: &Status) -> String {
    let message = status.message();
    let cause = std::error::Error::source(status).map(transport::describe);
    match cause {
        Some(cause) if !cause.is_empty() && !message.contains(&cause) => {
            if message.is_empty() {
                cause
            } else {
                format!("{message} ({cause})")
            }
        }
        _ if message.is_empty() => format!("{:?}", status.code()),
        _ => message.to_owned(),
    }
}

#[async_trait]
impl ModelWorker for GrpcWorker {
    async fn infer(&self, prompt: &str) -> Result<Vec<String>, WorkerError> {
        let request = InferenceRequest::text(SessionId::per_request(""), prompt).with_stream(false);
        let mut tokens = self
            .infer_stream(InferenceCall::new(RequestId(0), request, prompt))
            .await?;
        let mut text = Vec::new();
        while let Some(item) = tokens.next().await {
            if let WorkerChunk::Token(token) = item? {
                text.push(token);
            }
        }
        Ok(text)
    }

    async fn infer_stream(&self, call: InferenceCall) -> Result<TokenStream, WorkerError> {
        let opened = Instant::now();
        let deadline = earliest(call.deadline, self.timeouts.total.map(|t| opened + t));
        let model = self.model.as_deref().unwrap_or(&call.request.model);
        let request = self.request(convert::request(&call, model), call.traceparent(), deadline);
        let mut client = self.client();
        // A whole answer's first output comes when the generation has ended: only the deadline
        // bounds it (as for the HTTP backends).
        let first_token = self.timeouts.first_token.filter(|_| call.request.stream);
        let first_by = earliest(deadline, first_token.map(|t| opened + t));
        let answer = async {
            match first_by {
                Some(at) => tokio::time::timeout_at(at, client.infer(request))
                    .await
                    .map_err(|_| {
                        self.error(
                            "the worker did not answer the call within the first-token timeout",
                            true,
                        )
                    })?,
                None => client.infer(request).await,
            }
            .map_err(|status| self.refused(&status))
        };
        let replies = tokio::select! {
            answer = answer => answer?.into_inner(),
            () = call.cancel.cancelled() => return Err(self.error("cancelled", false)),
        };
        let reader = Reader {
            backend: self.name.clone(),
            between_tokens: self.timeouts.between_tokens,
            replies,
            first_by,
            deadline,
            worker: None,
            got_output: false,
            done: false,
        };
        Ok(stream::unfold(reader, |mut reader| async move {
            let item = reader.next().await?;
            Some((item, reader))
        })
        .boxed())
    }

    fn address(&self) -> Option<String> {
        self.endpoint.uri().authority().map(ToString::to_string)
    }
}

#[async_trait]
impl HealthProbe for GrpcWorker {
    /// The worker's `Status`: healthy when it answers, speaks this protocol, is not draining and
    /// serves the model this backend asks for.
    async fn probe(&self) -> Result<Option<usize>, String> {
        let request = self.request(pb::StatusRequest {}, None, None);
        let status = self
            .client()
            .status(request)
            .await
            .map_err(|s| self.refused(&s).message)?
            .into_inner();
        if status.protocol != PROTOCOL {
            return Err(protocol_mismatch(&status.worker, status.protocol));
        }
        if status.draining {
            return Err(format!("worker {} is draining", status.worker));
        }
        if let Some(model) = &self.model
            && !status.models.contains(model)
        {
            return Err(format!(
                "worker {} does not serve the model `{model}` (it serves {})",
                status.worker,
                status.models.join(", ")
            ));
        }
        Ok(None)
    }
}

fn protocol_mismatch(worker: &str, protocol: u32) -> String {
    format!(
        "worker {worker} speaks worker protocol {protocol} and this gateway speaks {PROTOCOL}: run gateways and \
         workers of one version"
    )
}

/// One call's replies, read as the router asks for stream items.
struct Reader {
    /// The backend's name, for errors.
    backend: Arc<str>,
    between_tokens: Option<Duration>,
    replies: Streaming<pb::InferReply>,
    first_by: Option<Instant>,
    deadline: Option<Instant>,
    /// The worker's name, from its `started` reply.
    worker: Option<String>,
    got_output: bool,
    done: bool,
}

impl Reader {
    async fn next(&mut self) -> Option<Result<WorkerChunk, WorkerError>> {
        while !self.done {
            let limit = if self.got_output {
                earliest(self.between_tokens.map(|w| Instant::now() + w), self.deadline)
            } else {
                self.first_by
            };
            let message = match limit {
                Some(at) => match tokio::time::timeout_at(at, self.replies.message()).await {
                    Ok(message) => message,
                    Err(_) => {
                        let why = if Some(at) == self.deadline {
                            "the call took longer than its total timeout"
                        } else if self.got_output {
                            "no token within the between-tokens timeout"
                        } else {
                            "no answer within the first-token timeout"
                        };
                        return Some(Err(self.fail(why.into(), 504)));
                    }
                },
                None => self.replies.message().await,
            };
            let reply = match message {
                Ok(Some(reply)) => reply,
                Ok(None) if self.worker.is_some() => {
                    self.done = true;
                    return None;
                }
                Ok(None) => {
                    return Some(Err(
                        self.fail("the worker ended the call without a reply".into(), 502)
                    ));
                }
                Err(status) => {
                    let why = match status.code() {
                        Code::DeadlineExceeded => {
                            format!("the call ran out of time on the worker: {}", describe(&status))
                        }
                        Code::Internal if status.message().contains("decode") => {
                            format!("the worker sent a malformed message: {}", describe(&status))
                        }
                        _ => format!("the call failed: {}", describe(&status)),
                    };
                    return Some(Err(self.fail(why, 502)));
                }
            };
            let event = match Event::read(reply) {
                Ok(event) => event,
                Err(why) => {
                    return Some(Err(
                        self.fail(format!("the worker sent a malformed reply: {why}"), 502)
                    ));
                }
            };
            match (event, &self.worker) {
                (Event::Started { protocol, worker }, None) => {
                    if protocol != PROTOCOL {
                        return Some(Err(self.fail(protocol_mismatch(&worker, protocol), 502)));
                    }
                    self.worker = Some(worker);
                }
                (Event::Started { .. }, Some(_)) => {
                    return Some(Err(self.fail(
                        "the worker sent a malformed reply: a second `started`".into(),
                        502,
                    )));
                }
                (_, None) => {
                    return Some(Err(self.fail(
                        "the worker sent a malformed reply: the first reply is not `started`".into(),
                        502,
                    )));
                }
                (Event::Chunk(chunk), Some(_)) => {
                    self.got_output = true;
                    return Some(Ok(chunk));
                }
                (Event::Failed(mut error), Some(worker)) => {
                    self.done = true;
                    error.message = format!("{} (worker {worker}): {}", self.backend, error.message);
                    // Past the first output, nothing can be tried again elsewhere.
                    error.retryable &= !self.got_output;
                    return Some(Err(error));
                }
            }
        }
        None
    }

    /// Ends the stream with `message`: retryable while nothing reached the caller.
    fn fail(&mut self, message: String, status: u16) -> WorkerError {
        self.done = true;
        let at = match &self.worker {
            Some(worker) => format!("{} (worker {worker})", self.backend),
            None => self.backend.to_string(),
        };
        WorkerError {
            retryable: !self.got_output,
            ..WorkerError::new(format!("{at}: {message}"))
        }
        .with_status(status)
    }
}
