//! Compiles the worker protocol's `.proto` with protox (pure Rust, no `protoc`), generating the
//! messages and the client and server code, and keeps the encoded descriptors for reflection.

use prost::Message;

const PROTO: &str = "proto/orchestrator/worker/v1/worker.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    let descriptors = protox::compile([PROTO], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("worker_descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
