//! The worker's gRPC service (`orchestrator worker --grpc-listen ADDR`): gateways with a
//! `kind = "grpc"` backend call `orchestrator.worker.v1.Worker` directly, without a broker.
//!
//! A call takes a free slot or is refused at once with RESOURCE_EXHAUSTED: it never waits here,
//! and the gateway tries another worker. It runs until its answer ends, its `grpc-timeout`
//! passes, or the gateway drops it, which drops the upstream call with it. Beside the service:
//! the standard `grpc.health.v1.Health` (NOT_SERVING once the worker drains) and reflection, so
//! `grpcurl` can list and call it.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, BoxStream, StreamExt};
use orchestrator_grpc::pb::worker_server::{Worker, WorkerServer};
use orchestrator_grpc::{MAX_MESSAGE, PROTOCOL, convert, pb};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_prompt_orchestrator::{InferenceCall, ModelWorker, TokenStream, WorkerChunk, WorkerError};
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::metadata::MetadataMap;
use tonic::transport::server::Router;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use super::config::GrpcServeConfig;
use super::{Outcome, Running, Shared};

/// `[worker.grpc]` read and checked: the secret from its variable, the certificates from their
/// files.
pub struct Settings {
    secret: Option<String>,
    tls: Option<ServerTlsConfig>,
}

impl Settings {
    /// # Errors
    /// The setting that cannot be used (after `worker.grpc.`), and why.
    pub fn load(config: GrpcServeConfig) -> Result<Self, String> {
        let secret = match config.secret_env {
            None => None,
            Some(variable) => match std::env::var(&variable) {
                Ok(secret) if !secret.is_empty() => Some(secret),
                _ => {
                    return Err(format!(
                        "secret_env: the environment variable {variable} is not set or empty"
                    ));
                }
            },
        };
        let tls = match config.tls {
            None => None,
            Some(tls) => {
                let read = |path: &std::path::PathBuf, setting: &str| {
                    std::fs::read(path)
                        .map_err(|e| format!("tls.{setting}: cannot read {}: {e}", path.display()))
                };
                let mut settings = ServerTlsConfig::new().identity(Identity::from_pem(
                    read(&tls.cert, "cert")?,
                    read(&tls.key, "key")?,
                ));
                if let Some(ca) = &tls.client_ca {
                    settings = settings.client_ca_root(Certificate::from_pem(read(ca, "client_ca")?));
                }
                Some(settings)
            }
        };
        Ok(Self { secret, tls })
    }
}

/// The worker's gRPC services, ready to serve: a certificate that cannot be used, or reflection
/// that cannot describe them, is an error here, before the worker says it is ready.
///
/// # Errors
/// What cannot be served, naming the setting.
pub async fn prepare(shared: &Arc<Shared>, settings: Settings) -> Result<Router, String> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<WorkerServer<Service>>().await;
    let mut draining = shared.draining.subscribe();
    tokio::spawn(async move {
        if draining.wait_for(|draining| *draining).await.is_ok() {
            health.set_not_serving::<WorkerServer<Service>>().await;
            // The server as a whole too (service ""), which probes ask by default.
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        }
    });
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(orchestrator_grpc::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let described =
        |e: tonic_reflection::server::Error| format!("reflection cannot describe the services: {e}");
    // v1, and v1alpha for the grpcurl releases that ask only for it.
    let reflection_v1 = reflection().build_v1().map_err(described)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(described)?;
    let service = WorkerServer::new(Service {
        shared: shared.clone(),
        secret: settings.secret,
    })
    .max_decoding_message_size(MAX_MESSAGE)
    .max_encoding_message_size(MAX_MESSAGE);
    let mut server = Server::builder();
    if let Some(tls) = settings.tls {
        server = server
            .tls_config(tls)
            .map_err(|e| format!("worker.grpc.tls: the certificate or key cannot be used: {e}"))?;
    }
    Ok(server
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service))
}

/// Serves `services` on `listener` until `stop`.
pub async fn serve(services: Router, listener: TcpListener, stop: CancellationToken) {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    if let Err(e) = services
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
    {
        tracing::warn!(error = %e, "The worker's gRPC service stopped.");
    }
}

pub struct Service {
    shared: Arc<Shared>,
    secret: Option<String>,
}

impl Service {
    /// Checks the caller's secret, when the worker has one.
    fn authorize(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let Some(secret) = &self.secret else {
            return Ok(());
        };
        let given = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(given) if bool::from(given.as_bytes().ct_eq(secret.as_bytes())) => Ok(()),
            Some(_) => Err(Status::unauthenticated(format!(
                "worker {} refused the secret: the gateway backend's secret_env must hold the worker's \
                 [worker.grpc] secret",
                self.shared.name
            ))),
            None => Err(Status::unauthenticated(format!(
                "worker {} needs a secret: set secret_env on the gateway's backend to the variable \
                 holding it",
                self.shared.name
            ))),
        }
    }
}

#[tonic::async_trait]
impl Worker for Service {
    type InferStream = BoxStream<'static, Result<pb::InferReply, Status>>;

    async fn infer(&self, request: Request<pb::InferRequest>) -> Result<Response<Self::InferStream>, Status> {
        self.authorize(request.metadata())?;
        let shared = &self.shared;
        let name = &shared.name;
        let deadline = deadline(request.metadata())
            .map_err(|why| Status::invalid_argument(format!("worker {name}: grpc-timeout {why}")))?;
        let traceparent = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let message = request.into_inner();
        if message.protocol != PROTOCOL {
            return Err(Status::failed_precondition(format!(
                "worker {name} speaks worker protocol {PROTOCOL} and the gateway sent protocol {}: run \
                 gateways and workers of one version",
                message.protocol
            )));
        }
        if *shared.draining.borrow() {
            return Err(Status::unavailable(format!(
                "worker {name} is draining (shutting down) and takes no new calls"
            )));
        }
        if !shared.router.contains(&message.model) {
            return Err(Status::not_found(format!(
                "worker {name} does not serve the model `{}` (it serves {})",
                message.model,
                shared.models.join(", ")
            )));
        }
        let Ok(slot) = shared.slots.clone().try_acquire_owned() else {
            metrics::counter!("orchestrator_worker_busy_total", "model" => message.model).increment(1);
            return Err(Status::resource_exhausted(format!(
                "worker {name}: all {} slots are busy",
                shared.config.slots
            )));
        };
        let cancel = shared.abort.child_token();
        let call = convert::call(message, traceparent, cancel.clone(), deadline)
            .map_err(|why| Status::invalid_argument(format!("worker {name} cannot read the call: {why}")))?;
        let running = Running::start(shared, call.request.model.clone(), slot);
        let answer = Answer {
            shared: shared.clone(),
            call: Some(call),
            tokens: None,
            deadline,
            started: false,
            done: false,
            running,
            _cancel_on_drop: cancel.drop_guard(),
        };
        let replies = stream::unfold(answer, |mut answer| async move {
            let reply = answer.next().await?;
            Some((reply, answer))
        });
        Ok(Response::new(replies.boxed()))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::WorkerStatus>, Status> {
        self.authorize(request.metadata())?;
        let shared = &self.shared;
        Ok(Response::new(pb::WorkerStatus {
            protocol: PROTOCOL,
            worker: shared.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            models: shared.models.clone(),
            slots: u32::try_from(shared.config.slots.get()).unwrap_or(u32::MAX),
            free_slots: u32::try_from(shared.slots.available_permits()).unwrap_or(u32::MAX),
            draining: *shared.draining.borrow(),
        }))
    }
}

/// One call's answer: `started`, then the router's stream, as replies.
struct Answer {
    shared: Arc<Shared>,
    /// Taken when the router is asked.
    call: Option<InferenceCall>,
    tokens: Option<TokenStream>,
    deadline: Option<Instant>,
    started: bool,
    done: bool,
    running: Running,
    /// Dropped with the answer (the gateway went away): the call is cancelled.
    _cancel_on_drop: DropGuard,
}

impl Answer {
    async fn next(&mut self) -> Option<Result<pb::InferReply, Status>> {
        if self.done {
            return None;
        }
        if !self.started {
            self.started = true;
            return Some(Ok(convert::started(&self.shared.name)));
        }
        let past_deadline = async {
            match self.deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let abort = self.shared.abort.clone();
        let item = tokio::select! {
            biased;
            () = abort.cancelled() => {
                let error = format!("worker {} shut down before the answer was complete", self.shared.name);
                self.finish(Outcome::Failed);
                return Some(Ok(convert::reply(Err(WorkerError::new(error)))));
            }
            () = past_deadline => {
                self.finish(Outcome::Expired);
                return Some(Err(Status::deadline_exceeded(format!(
                    "the call's deadline passed on worker {}",
                    self.shared.name
                ))));
            }
            item = pull(&self.shared, &mut self.call, &mut self.tokens) => item,
        };
        match item {
            None => {
                self.finish(Outcome::Completed);
                None
            }
            Some(Ok(chunk)) => Some(Ok(convert::reply(Ok(chunk)))),
            Some(Err(error)) => {
                self.finish(Outcome::Failed);
                Some(Ok(convert::reply(Err(error))))
            }
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        self.done = true;
        self.running.end(outcome);
        // The upstream call ends now, not when the gateway gets round to closing the stream.
        self.tokens = None;
    }
}

/// The router's next item for the call, asking the router first if it has not been asked.
async fn pull(
    shared: &Shared,
    call: &mut Option<InferenceCall>,
    tokens: &mut Option<TokenStream>,
) -> Option<Result<WorkerChunk, WorkerError>> {
    if let Some(call) = call.take() {
        match shared.router.infer_stream(call).await {
            Ok(stream) => *tokens = Some(stream),
            Err(error) => return Some(Err(error)),
        }
    }
    tokens.as_mut()?.next().await
}

/// The call's deadline from its `grpc-timeout` (`<up to 8 digits><H|M|S|m|u|n>`), if it has one.
fn deadline(metadata: &MetadataMap) -> Result<Option<Instant>, String> {
    let Some(value) = metadata.get("grpc-timeout") else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| "is not text".to_owned())?;
    let invalid = || format!("{text:?} is not a timeout (digits and one of H, M, S, m, u, n)");
    let split = text
        .len()
        .checked_sub(1)
        .filter(|&at| at > 0 && at <= 8)
        .ok_or_else(invalid)?;
    let (digits, unit) = text.split_at(split);
    let amount: u64 = digits.parse().map_err(|_| invalid())?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return Err(invalid()),
    };
    Ok(Some(Instant::now() + timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(text: &str) -> Result<Option<Duration>, String> {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", text.parse().unwrap());
        let now = Instant::now();
        deadline(&metadata).map(|at| at.map(|at| at.duration_since(now)))
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_timeouts_read_in_every_unit() {
        assert_eq!(timeout("1499997u"), Ok(Some(Duration::from_micros(1_499_997))));
        assert_eq!(timeout("2H"), Ok(Some(Duration::from_secs(7200))));
        assert_eq!(timeout("3M"), Ok(Some(Duration::from_secs(180))));
        assert_eq!(timeout("4S"), Ok(Some(Duration::from_secs(4))));
        assert_eq!(timeout("5m"), Ok(Some(Duration::from_millis(5))));
        assert_eq!(timeout("6n"), Ok(Some(Duration::from_nanos(6))));
        assert_eq!(deadline(&MetadataMap::new()), Ok(None));
        for bad in ["", "S", "12", "1x", "123456789S", "-1S"] {
            assert!(timeout(bad).is_err(), "{bad:?}");
        }
    }
}
