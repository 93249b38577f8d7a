//! mote's data model and wire codecs, with no IO: what a client, the node
//! and the sandbox agree on, kept apart from the sandbox (wasmtime, ONNX
//! Runtime) so that it builds, tests and fuzzes on its own.
//!
//! - [`tensor`]: element types (the one table every type system is mapped
//!   through) and named tensors;
//! - [`message`]: requests, responses and their canonical digest;
//! - [`kserve`]: KServe v2 JSON and Triton's binary tensor extension;
//! - [`kserve_json`]: KServe infer requests parsed in one pass into tensor bytes;
//! - [`mote1`]: the `mote/1` QUIC frames.

pub mod kserve;
pub mod kserve_json;
pub mod message;
pub mod mote1;
pub mod tensor;

pub use message::{canonical_len, digest, digest_with, receipt_digest, DigestAlg, Request, Response, MAX_INPUTS, SHORT_FORM_BYTES};
pub use tensor::{Datatype, ElementType, IoTensor};
