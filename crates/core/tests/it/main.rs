//! Integration tests of the core pipeline (one binary keeps link times down).

mod admission;
mod assembly;
mod backpressure;
mod cancellation;
mod deadline;
mod metrics;
mod ordering;
mod per_core;
mod properties;
mod shards;
mod shutdown;
mod streaming;
mod support;
