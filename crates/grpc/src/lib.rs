//! The gRPC worker protocol: a gateway reaches an `orchestrator worker` directly, without a
//! broker, over one typed, streaming call per request.
//!
//! - `proto/orchestrator/worker/v1/worker.proto`: the service, compiled at build time into
//!   [`pb`] (messages, client and server);
//! - [`convert`]: the pipeline's types to the protocol's messages and back, both ways checked;
//! - [`client`]: the gateway's `kind = "grpc"` backend.
//!
//! The worker's side (the service over its router and slots) is the `orchestrator worker`'s.

pub mod client;
pub mod convert;

/// The messages and services of `orchestrator.worker.v1`, generated from the `.proto`.
#[allow(
    clippy::all,
    clippy::pedantic,
    missing_docs,
    rust_2018_idioms,
    unused_qualifications
)]
pub mod pb {
    tonic::include_proto!("orchestrator.worker.v1");
}

pub use client::{ClientTls, GrpcConfig, GrpcWorker};

/// The revision of `orchestrator.worker.v1` this build speaks; both sides check the other's.
pub const PROTOCOL: u32 = 1;

/// The largest message either side reads: a long conversation with its retrieved documents, or
/// an embedding batch's vectors, fit; a flood does not.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// The protocol's encoded descriptors, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("worker_descriptor");

/// The service's full name, as gRPC health checks and reflection name it.
pub const SERVICE: &str = "orchestrator.worker.v1.Worker";
