//! The inference capability: `wasi:nn`, `mote:edge/graph-builder` and
//! `mote:edge/inference-io`.
//!
//! Like wasmtime-wasi-nn's `WasiNnCtx`/`WasiNnView`, the capability keeps its
//! own state ([`NnCtx`]: what the job may load, where, within which limits,
//! and what it has used) and is linked through a view ([`NnView`]) that
//! borrows that state, the store's resource table and the job log. The
//! store's data only has to hand out the view.

mod compute;
mod graph_builder;
mod inference_io;
mod spare;
mod state;
mod wasi_nn;

use super::bindings;
use super::usage_log::{JobLog, LogLevel};
use spare::SpareBuffers;
use crate::backend::{
    BackendChoice, BackendError, BackendErrorKind, BackendExecutionContext, BackendGraph, BackendKind,
};
use crate::backends::Backends;
use crate::batching::{ActiveJob, Batcher, Seat};
use crate::graph_cache::{GraphCache, Residency};
use crate::limits::{JobAbort, Limits, Outcome};
use crate::tensor::ElementType;
use bindings::wasi::nn::errors::ErrorCode;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable, WasmList};
use wasmtime::StoreContextMut;

/// The WIT interface of wasi-nn's tensors, as guests import it.
const TENSOR_INTERFACE: &str = "wasi:nn/tensor@0.2.0-rc-2024-10-28";

/// What every job's inference capability shares: the node's backends and
/// graph cache.
pub(crate) struct NnNode {
    pub(crate) backends: Backends,
    pub(crate) cache: GraphCache,
}

/// A model a deployment may load by name.
#[derive(Clone)]
pub(crate) struct NamedModel {
    pub(crate) bytes: Arc<[u8]>,
    pub(crate) sha256: String,
}

/// A deployment's models, by name.
pub(crate) type NamedModels = HashMap<String, NamedModel>;

/// A wasi-nn tensor held by the host.
#[derive(Debug)]
pub struct NnTensor {
    pub(crate) dims: Vec<u32>,
    pub(crate) ty: ElementType,
    pub(crate) data: Vec<u8>,
}

/// A wasi-nn graph held by a job.
pub struct NnGraph {
    pub(crate) graph: Arc<dyn BackendGraph>,
    /// The model's sha256 and backend: its batching lane.
    pub(crate) sha256: String,
    pub(crate) kind: BackendKind,
}

/// A wasi-nn execution context: owned by one job, so it needs no lock.
pub struct NnExecContext {
    /// `None` only while `compute` runs.
    pub(crate) ctx: Option<Box<dyn BackendExecutionContext>>,
    /// `(output, input)` pairs kept on the host (`mote:edge/state`).
    pub(crate) bound: Vec<(String, String)>,
    /// Whether the backend holds values for the bound inputs.
    pub(crate) has_state: bool,
    /// Rows of the last compute with bound state (the tokens it sampled,
    /// which the next step feeds back).
    pub(crate) last_rows: u64,
    /// Its seat on the model's batching lane, where the deployment batches
    /// and the model can be batched.
    pub(crate) seat: Option<Seat>,
}

impl NnExecContext {
    pub(crate) fn new(ctx: Box<dyn BackendExecutionContext>, seat: Option<Seat>) -> Self {
        Self { ctx: Some(ctx), bound: Vec::new(), has_state: false, last_rows: 0, seat }
    }
}

/// A wasi-nn error resource.
#[derive(Debug)]
pub struct NnError {
    pub(crate) code: ErrorCode,
    pub(crate) data: String,
}

/// What a job's inference has consumed so far.
#[derive(Debug, Default)]
pub(crate) struct NnMeter {
    pub(crate) backend_ns: u64,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) graphs_loaded: u32,
    /// sha256 of every model loaded, first load first.
    pub(crate) models: Vec<String>,
    pub(crate) backend_used: Option<(BackendKind, String)>,
    /// Most backend memory one of the job's runs was charged for.
    pub(crate) backend_peak_bytes: u64,
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
}

/// The inference capability's state in one job.
pub(crate) struct NnCtx {
    node: Arc<NnNode>,
    models: Arc<NamedModels>,
    /// The deployment whose cache share this job's loads count in.
    cache_owner: Arc<str>,
    backend: BackendChoice,
    max_graphs: u32,
    max_graph_nodes: u32,
    max_tensor_bytes: u64,
    memory_bytes: u64,
    /// Backend work stops here (the job's deadline).
    deadline: Instant,
    /// The deployment's dynamic batcher, if it batches.
    batcher: Option<Arc<Batcher>>,
    /// Counts this job as running in the batcher, from its beginning to its end.
    running: Option<ActiveJob>,
    pub(crate) meter: NnMeter,
    /// Data buffers of dropped tensors, for the next tensors' bytes.
    pub(crate) spare: SpareBuffers,
    /// Bytes of the tensors the job's resource table holds on the host
    /// (see [`NnView::hold_tensor_bytes`]).
    tensor_bytes: u64,
}

impl NnCtx {
    pub(crate) fn new(
        node: Arc<NnNode>,
        models: Arc<NamedModels>,
        cache_owner: Arc<str>,
        backend: BackendChoice,
        limits: &Limits,
        started: Instant,
        batcher: Option<Arc<Batcher>>,
    ) -> Self {
        Self {
            node,
            models,
            cache_owner,
            backend,
            max_graphs: limits.max_graphs,
            max_graph_nodes: limits.max_graph_nodes,
            max_tensor_bytes: limits.max_tensor_bytes,
            memory_bytes: limits.memory_bytes,
            deadline: started + limits.deadline(),
            running: None,
            batcher,
            meter: NnMeter::default(),
            spare: SpareBuffers::default(),
            tensor_bytes: 0,
        }
    }
}

impl NnCtx {
    /// The job begins: backend work stops at `deadline`, and the batcher
    /// counts it as running.
    pub(crate) fn begin_job(&mut self, deadline: Instant) {
        self.deadline = deadline;
        self.running = self.batcher.as_ref().map(|b| b.job_started());
    }

    /// The job has ended: it no longer counts as running in the batcher
    /// (a batch leader waits for running jobs), whether or not its store
    /// is dropped yet.
    pub(crate) fn end_job(&mut self) {
        self.running = None;
    }
}

/// The capability as its host calls see it: its state, the store's
/// resource table, the job log, and the guest's linear-memory peak (a
/// run's backend memory is charged together with it).
pub(crate) struct NnView<'a> {
    pub(crate) ctx: &'a mut NnCtx,
    pub(crate) table: &'a mut ResourceTable,
    pub(crate) log: &'a mut JobLog,
    pub(crate) guest_peak_bytes: u64,
}

/// Links `wasi:nn` and `mote:edge/graph-builder`, reaching the capability
/// through `view`.
pub(crate) fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> NnView<'_>,
) -> wasmtime::Result<()> {
    use bindings::{mote::edge::graph_builder, wasi::nn};
    nn::errors::add_to_linker::<T, Nn>(linker, view)?;
    nn::tensor::add_to_linker::<T, Nn>(linker, view)?;
    // The tensor constructor again, linked by hand over bindgen's: bindgen
    // lifts `data` into a fresh `Vec`; this copies it straight from guest
    // memory into a recycled buffer (`spare::SpareBuffers`).
    linker.allow_shadowing(true);
    let defined = linker.instance(TENSOR_INTERFACE)?.func_wrap(
        "[constructor]tensor",
        move |mut store: StoreContextMut<'_, T>,
              (dims, ty, data): (Vec<u32>, nn::tensor::TensorType, WasmList<u8>)| {
            let ty = ElementType::from(ty);
            let mut buf = {
                let mut v = view(store.data_mut());
                v.admit_tensor(&dims, ty, data.len())?;
                v.ctx.spare.take(data.len())
            };
            buf.extend_from_slice(data.as_le_slice(&store));
            let t = view(store.data_mut()).table.push(NnTensor { dims, ty, data: buf })?;
            Ok((t,))
        },
    );
    linker.allow_shadowing(false);
    defined?;
    nn::graph::add_to_linker::<T, Nn>(linker, view)?;
    nn::inference::add_to_linker::<T, Nn>(linker, view)?;
    graph_builder::add_to_linker::<T, Nn>(linker, view)?;
    bindings::mote::edge::state::add_to_linker::<T, Nn>(linker, view)?;
    inference_io::add_to_linker(linker, view)?;
    Ok(())
}

/// [`HasData`] for the capability's view.
struct Nn;

impl HasData for Nn {
    type Data<'a> = NnView<'a>;
}

type NnResult<T> = wasmtime::Result<Result<T, Resource<NnError>>>;

impl NnView<'_> {
    /// Pushes a guest-visible wasi-nn error.
    fn nn_error<T>(&mut self, code: ErrorCode, data: impl Into<String>) -> NnResult<T> {
        let data = data.into();
        tracing::debug!(?code, %data, "wasi-nn error");
        let _ = self.log.push(LogLevel::Debug, format!("wasi-nn {code:?}: {data}"));
        Ok(Err(self.table.push(NnError { code, data })?))
    }

    fn backend_error<T>(&mut self, e: BackendError) -> NnResult<T> {
        let code = match e.kind {
            BackendErrorKind::InvalidEncoding => ErrorCode::InvalidEncoding,
            BackendErrorKind::InvalidArgument => ErrorCode::InvalidArgument,
            BackendErrorKind::Unsupported => ErrorCode::UnsupportedOperation,
            BackendErrorKind::Runtime => ErrorCode::RuntimeError,
            BackendErrorKind::Timeout => {
                return Err(abort(Outcome::Deadline, format!("backend stopped at the job deadline: {}", e.message)));
            }
            BackendErrorKind::MemoryLimit => {
                return Err(abort(
                    Outcome::MemoryLimit,
                    format!("the backend refused memory (the node's backend budget): {}", e.message),
                ));
            }
        };
        self.nn_error(code, e.message)
    }

    /// Records a backend run's memory and ends the job if guest memory
    /// plus backend memory passed the job's memory limit. (The backend's
    /// own budget stops a run while it allocates; this holds the job to
    /// its own, smaller share.)
    fn charge_backend_memory(&mut self, run_peak: u64) -> wasmtime::Result<()> {
        let m = &mut self.ctx.meter;
        m.backend_peak_bytes = m.backend_peak_bytes.max(run_peak);
        let total = self.guest_peak_bytes + m.backend_peak_bytes;
        if total > self.ctx.memory_bytes {
            return Err(abort(
                Outcome::MemoryLimit,
                format!(
                    "guest memory ({} bytes) plus backend memory ({} bytes) exceeds the job's memory limit of {} bytes",
                    self.guest_peak_bytes, m.backend_peak_bytes, self.ctx.memory_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Counts `bytes` more of tensor data held on the host for the job (a
    /// tensor entering its resource table). Ends the job when its guest
    /// memory, backend memory and the tensors the host holds for it would
    /// together pass its memory limit: a guest that keeps creating tensors
    /// (each within the tensor limit) cannot grow the node's memory
    /// without bound.
    pub(crate) fn hold_tensor_bytes(&mut self, bytes: u64) -> wasmtime::Result<()> {
        let held = self.ctx.tensor_bytes.saturating_add(bytes);
        let total = self.guest_peak_bytes.saturating_add(self.ctx.meter.backend_peak_bytes).saturating_add(held);
        // Spare buffers count too; they are the first to go.
        if total.saturating_add(self.ctx.spare.kept_bytes()) > self.ctx.memory_bytes {
            self.ctx.spare.clear();
        }
        if total > self.ctx.memory_bytes {
            return Err(abort(
                Outcome::MemoryLimit,
                format!(
                    "guest memory ({} bytes), backend memory ({} bytes) and tensors held by the host ({held} bytes) \
                     exceed the job's memory limit of {} bytes",
                    self.guest_peak_bytes, self.ctx.meter.backend_peak_bytes, self.ctx.memory_bytes
                ),
            ));
        }
        self.ctx.tensor_bytes = held;
        Ok(())
    }

    /// A tensor taken out of the job's resource table (dropped by the
    /// guest, or consumed by `compute`): its bytes no longer count as
    /// held; its buffer is kept for the next tensor if guest memory,
    /// backend memory, held tensors and spare buffers still fit the job's
    /// memory limit with it, else freed.
    pub(crate) fn release_tensor(&mut self, t: NnTensor) {
        self.ctx.tensor_bytes = self.ctx.tensor_bytes.saturating_sub(t.data.len() as u64);
        let used = self
            .guest_peak_bytes
            .saturating_add(self.ctx.meter.backend_peak_bytes)
            .saturating_add(self.ctx.tensor_bytes)
            .saturating_add(self.ctx.spare.kept_bytes());
        if used.saturating_add(t.data.capacity() as u64) <= self.ctx.memory_bytes {
            self.ctx.spare.give(t.data);
        }
    }

    /// Ends the job if a tensor of `bytes` would pass the tensor limit;
    /// `what` names it in the message (formatted only then: this runs on
    /// every tensor of every compute).
    fn check_tensor_bytes(&self, what: impl FnOnce() -> String, bytes: u64) -> wasmtime::Result<()> {
        if bytes > self.ctx.max_tensor_bytes {
            return Err(abort(
                Outcome::InvalidInput,
                format!("{} of {bytes} bytes exceeds the job's tensor limit of {} bytes", what(), self.ctx.max_tensor_bytes),
            ));
        }
        Ok(())
    }

    /// Which backend serves a load with wasi-nn `target` (`None`: a
    /// `load-by-name`, which follows the deployment's choice).
    fn resolve_backend(
        &self,
        target: Option<bindings::wasi::nn::graph::ExecutionTarget>,
    ) -> Result<BackendKind, String> {
        use bindings::wasi::nn::graph::ExecutionTarget as T;
        let backends = &self.ctx.node.backends;
        match (self.ctx.backend, target) {
            (_, Some(T::Tpu)) => Err("execution target tpu is not supported on this node".into()),
            (BackendChoice::Fixed(BackendKind::OrtCpu), Some(T::Gpu)) => {
                Err("execution target gpu requested, but this job's backend is ort-cpu".into())
            }
            (BackendChoice::Fixed(k), _) => Ok(k),
            (BackendChoice::Auto, Some(T::Cpu)) => Ok(BackendKind::OrtCpu),
            (BackendChoice::Auto, Some(T::Gpu)) => backends.best_gpu().ok_or_else(|| {
                "execution target gpu requested, but this node has no usable GPU backend \
                 (no CUDA, no hardware wgpu adapter)"
                    .to_string()
            }),
            (choice, None) => Ok(backends.for_named_models(choice)),
        }
    }

    /// Loads ONNX bytes on `kind` through the cache; meters the load.
    fn load_model(&mut self, bytes: Arc<[u8]>, sha256: String, kind: BackendKind) -> NnResult<Resource<NnGraph>> {
        let ctx = &mut *self.ctx;
        if ctx.meter.graphs_loaded >= ctx.max_graphs {
            return Err(abort(
                Outcome::InvalidInput,
                format!("job tried to load more than {} graphs (max_graphs)", ctx.max_graphs),
            ));
        }
        let backend = match ctx.node.backends.get(kind) {
            Ok(b) => b,
            Err(e) => return self.backend_error(e),
        };
        let start = Instant::now();
        let deadline = ctx.deadline;
        let max_nodes = ctx.max_graph_nodes as usize;
        let loaded = ctx.node.cache.get_or_load(&sha256, kind, &ctx.cache_owner, Residency::Evictable, || {
            let nodes = crate::model_screen::screen(&bytes)?.nodes;
            if nodes > max_nodes {
                return Err(BackendError::new(
                    BackendErrorKind::Unsupported,
                    format!("the graph has {nodes} nodes; this job may load at most {max_nodes} (limits.max_graph_nodes)"),
                ));
            }
            backend.load_until(bytes, Some(deadline))
        });
        ctx.meter.backend_ns += start.elapsed().as_nanos() as u64;
        let (graph, hit) = match loaded {
            Ok(g) => g,
            Err(e) => return self.backend_error(e),
        };
        tracing::debug!(%sha256, backend = %kind, hit, "graph loaded");
        let m = &mut self.ctx.meter;
        m.graphs_loaded += 1;
        if !m.models.contains(&sha256) {
            m.models.push(sha256.clone());
        }
        m.backend_used = Some((kind, backend.device().name.clone()));
        Ok(Ok(self.table.push(NnGraph { graph, sha256, kind })?))
    }
}

/// A trap that ends the job with `outcome`.
pub(crate) fn abort(outcome: Outcome, message: impl Into<String>) -> wasmtime::Error {
    wasmtime::Error::new(JobAbort::new(outcome, message))
}
