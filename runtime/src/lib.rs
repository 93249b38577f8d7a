//! mote runtime: runs inference jobs as sandboxed WebAssembly components.
//!
//! A [`Runtime`] owns the wasmtime engine (shared by every job), the loaded
//! backends and the graph cache. A [`Deployment`] is a compiled guest with
//! its named models, limits and backend choice; [`Deployment::run`] runs one
//! job in a fresh, pooled instance and returns its response together with a
//! signed [`Receipt`].

pub mod attack_models;
pub mod backend;
pub mod graph_builder;
pub mod graph_cache;
mod host;
pub mod kserve;
pub mod limits;
pub mod model_screen;
pub mod onnx_proto;
pub mod price;
pub mod receipt;
mod runtime;
pub mod tensor;

pub use host::{LogLevel, LogLine};
pub use limits::{Limits, Outcome};
pub use price::PriceTable;
pub use receipt::{NodeKey, Receipt, Usage};
pub use runtime::{
    digest, DeployError, Deployment, DeploymentSpec, JobError, JobReport, ModelInfo, Request, Response, Runtime,
    RuntimeConfig,
};
