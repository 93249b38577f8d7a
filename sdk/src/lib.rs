//! mote guest SDK: write inference jobs for the mote runtime in a few lines.
//!
//! A guest implements [`Handler`] and exports it with [`export_handler!`]:
//!
//! ```ignore
//! use mote_sdk::{Graph, Handler, HandlerError, Request, Response};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     fn handle(req: Request) -> Result<Response, HandlerError> {
//!         let model = Graph::by_name("model")?;
//!         let outputs = model.run_io(&req.inputs)?;
//!         Ok(Response { outputs, parameters: vec![] })
//!     }
//! }
//! mote_sdk::export_handler!(Echo);
//! ```
//!
//! Models come either as ONNX bytes ([`Graph::load_onnx`]), by name from the
//! deployment ([`Graph::by_name`]), or declared op by op with
//! [`GraphBuilder`]. Everything goes through the standard `wasi:nn` API and
//! mote's `mote:edge` interfaces, so the host decides where it runs:
//! [`Graph::run_io`] / [`Graph::compute`] in one host call
//! (`mote:edge/inference-io`), [`Graph::run`] through wasi-nn's tensors.

#![allow(unreachable_pub)]

/// Raw bindings generated from mote's WIT (`mote:edge/job`).
pub mod bindings {
    #![allow(missing_docs)]
    wit_bindgen::generate!({
        path: "../wit",
        world: "mote:edge/job",
        pub_export_macro: true,
        default_bindings_module: "mote_sdk::bindings",
        export_macro_name: "export",
        generate_all,
    });
}

/// Bindings of `mote:edge/inference-io`, over the types of [`bindings`]
/// (kept apart so that its interface is imported only by guests that
/// call it).
pub mod io_bindings {
    #![allow(missing_docs)]
    wit_bindgen::generate!({
        inline: "package mote:sdk; world inference-io { import mote:edge/inference-io@0.1.0; }",
        path: "../wit",
        world: "mote:sdk/inference-io",
        with: {
            "mote:edge/types@0.1.0": crate::bindings::mote::edge::types,
            "wasi:nn/tensor@0.2.0-rc-2024-10-28": crate::bindings::wasi::nn::tensor,
            "wasi:nn/inference@0.2.0-rc-2024-10-28": crate::bindings::wasi::nn::inference,
            "wasi:nn/errors@0.2.0-rc-2024-10-28": crate::bindings::wasi::nn::errors,
            "mote:edge/inference-io@0.1.0": generate,
        },
    });
}

/// Bindings of the pre-initializer export (`wizer-initialize`), kept apart
/// so that only guests using [`export_initializer!`] export it.
#[doc(hidden)]
pub mod init_bindings {
    #![allow(missing_docs)]
    wit_bindgen::generate!({
        inline: "package mote:sdk-init; world initializer { export wizer-initialize: func(); }",
        world: "mote:sdk-init/initializer",
        pub_export_macro: true,
        default_bindings_module: "mote_sdk::init_bindings",
        export_macro_name: "export",
    });
}

mod builder;
mod graph;
mod io;

pub use bindings::exports::mote::edge::handler::Guest as Handler;
pub use bindings::mote::edge::types::{Datatype, HandlerError, IoTensor, Request, Response};
pub use bindings::wasi::nn::graph::ExecutionTarget as Target;
pub use builder::{GraphBuilder, Operand};
pub use graph::{Graph, NnError, Tensor, TensorType};
pub use io::{f32s_from_le_bytes, RequestExt, TensorData};

/// Exports a [`Handler`] implementation as the guest's `handle` function.
#[macro_export]
macro_rules! export_handler {
    ($t:ident) => {
        $crate::bindings::export!($t with_types_in $crate::bindings);
    };
}

/// Exports `$init` as the guest's pre-initializer (`wizer-initialize`).
///
/// `mote build` runs it once, in a sandbox where every import traps, and
/// ships the memory it leaves as the component's data: work done there
/// (parsing a tokenizer, building tables) is done before any job, not in
/// each one. Keep its results in statics that the handler reads lazily
/// (`std::sync::OnceLock`), so a guest that was not pre-initialized still
/// works. It may not call mote's or wasi-nn's functions, and what it
/// computes must not depend on a job (docs/cli.md, `mote build`).
///
/// ```ignore
/// static TABLE: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
/// fn table() -> &'static [u32] { TABLE.get_or_init(|| (0..1024).collect()) }
/// fn init() { table(); }
/// mote_sdk::export_initializer!(init);
/// ```
#[macro_export]
macro_rules! export_initializer {
    ($init:path) => {
        const _: () = {
            struct MoteInitializer;
            impl $crate::init_bindings::Guest for MoteInitializer {
                fn wizer_initialize() {
                    $init()
                }
            }
            $crate::init_bindings::export!(MoteInitializer with_types_in $crate::init_bindings);
        };
    };
}

/// The job's meter as the host counts it.
pub fn usage() -> bindings::mote::edge::usage::Usage {
    bindings::mote::edge::usage::current()
}

/// Tokens the host counted so far (contexts with bound state): what the
/// receipt will carry.
pub fn tokens() -> bindings::mote::edge::usage::TokenUsage {
    bindings::mote::edge::usage::tokens()
}

/// Sends a chunk of output to the client now (`mote:edge/output`): printed
/// by `mote run`, a server-sent event over HTTPS, a chunk frame over QUIC.
/// If the client has gone, the job ends here (outcome `cancelled`).
pub fn emit(chunk: &[u8]) {
    bindings::mote::edge::output::emit(chunk);
}

/// Leveled logging into the job log (kept by the host, bounded).
pub mod log {
    use crate::bindings::mote::edge::log::{log, Level};

    /// Logs at info level.
    pub fn info(msg: impl AsRef<str>) {
        log(Level::Info, msg.as_ref());
    }
    /// Logs at warn level.
    pub fn warn(msg: impl AsRef<str>) {
        log(Level::Warn, msg.as_ref());
    }
    /// Logs at error level.
    pub fn error(msg: impl AsRef<str>) {
        log(Level::Error, msg.as_ref());
    }
    /// Logs at debug level.
    pub fn debug(msg: impl AsRef<str>) {
        log(Level::Debug, msg.as_ref());
    }
}
