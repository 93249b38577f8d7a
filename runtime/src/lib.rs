//! mote runtime: runs inference jobs as sandboxed WebAssembly components.
//!
//! A [`Runtime`] owns the wasmtime engine (shared by every job), the loaded
//! backends and the graph cache. A [`Deployment`] is a compiled guest with
//! its named models, limits and backend choice; [`Deployment::run`] runs one
//! job in a fresh, pooled instance and returns its response together with a
//! signed [`Receipt`].

pub mod attack_models;
pub mod backend;
pub mod command;
mod backends;
pub mod batching;
mod deployment;
pub mod graph_builder;
pub mod graph_cache;
mod host;
mod job;
pub mod limits;
pub mod model_screen;
pub mod onnx_proto;
pub mod preinit;
mod presign;
mod request_digest;
pub mod price;
pub mod receipt;
mod runtime;

/// The data model and wire codecs (the `mote-protocol` crate).
pub use mote_protocol::{kserve, kserve_json, mote1, tensor};

pub use host::{LogLevel, LogLine, StreamSink};
pub use limits::{Limits, Outcome};
pub use price::PriceTable;
pub use receipt::{NodeKey, Receipt, Usage};
pub use deployment::{DeployError, Deployment, DeploymentSpec, ModelInfo, WarmError};
pub use job::{new_job_id, FinishedInstance, JobError, JobReport};
pub use mote_protocol::{digest, digest_with, receipt_digest, DigestAlg, Request, Response};
pub use runtime::{Runtime, RuntimeConfig, RuntimeError};
