//! Host side of the `mote:edge/job` world: one module per capability, all
//! implemented on [`JobState`], the data of one job's store.

// The resource types must be `pub` for the generated bindings; the module is
// private, so they are not part of the crate's API.
#![allow(unreachable_pub)]

pub(crate) mod bindings;
mod graph_builder;
mod usage_log;
mod wasi_nn;

use crate::backend::{
    BackendChoice, BackendError, BackendErrorKind, BackendExecutionContext, BackendGraph, BackendKind,
};
use crate::graph_cache::Residency;
use crate::limits::{JobAbort, Limits, MemoryLimiter, Outcome};
use crate::runtime::{Models, Shared};
use crate::tensor::ElementType;
use bindings::wasi::nn::errors::ErrorCode;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use usage_log::{LogLevel, LogLine};

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
}

/// A wasi-nn execution context: owned by one job, so it needs no lock.
pub struct NnExecContext {
    /// `None` only while `compute` runs.
    pub(crate) ctx: Option<Box<dyn BackendExecutionContext>>,
}

/// A wasi-nn error resource.
#[derive(Debug)]
pub struct NnError {
    pub(crate) code: ErrorCode,
    pub(crate) data: String,
}

/// What a job has consumed so far (backend side).
#[derive(Debug, Default)]
pub(crate) struct Meter {
    pub(crate) backend_ns: u64,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) graphs_loaded: u32,
    pub(crate) models: Vec<String>,
    pub(crate) backend_used: Option<(BackendKind, String)>,
    /// Most backend memory one of the job's runs was charged for.
    pub(crate) backend_peak_bytes: u64,
}

/// The data of one job's store.
pub struct JobState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) shared: Arc<Shared>,
    pub(crate) models: Arc<Models>,
    /// The deployment whose cache share this job's loads count in.
    pub(crate) cache_owner: Arc<str>,
    pub(crate) backend: BackendChoice,
    pub(crate) limits: Limits,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) meter: Meter,
    pub(crate) log: usage_log::JobLog,
    pub(crate) started: Instant,
}

impl WasiView for JobState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

type NnResult<T> = wasmtime::Result<Result<T, Resource<NnError>>>;

impl JobState {
    pub(crate) fn new(
        shared: Arc<Shared>,
        models: Arc<Models>,
        cache_owner: Arc<str>,
        backend: BackendChoice,
        limits: Limits,
        wasi: WasiCtx,
    ) -> Self {
        Self {
            wasi,
            cache_owner,
            table: ResourceTable::new(),
            shared,
            models,
            backend,
            limiter: MemoryLimiter { max_bytes: limits.memory_bytes, peak_bytes: 0, hit: false },
            log: usage_log::JobLog::new(limits.max_log_bytes),
            limits,
            meter: Meter::default(),
            started: Instant::now(),
        }
    }

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

    /// The job's usage so far: the one computation behind both the guest's
    /// `usage.current()` and the receipt. `fuel_left` is `None` when fuel
    /// is not metered (then the job burned none on the meter).
    pub(crate) fn usage(&self, fuel_left: Option<u64>, wall_ns: u64) -> crate::receipt::Usage {
        let m = &self.meter;
        crate::receipt::Usage {
            fuel: fuel_left.map_or(0, |left| self.limits.fuel.saturating_sub(left)),
            wall_ns,
            backend_ns: m.backend_ns,
            bytes_in: m.bytes_in,
            bytes_out: m.bytes_out,
            // Guest linear memory plus the backend memory its runs used.
            peak_memory_bytes: self.limiter.peak_bytes + m.backend_peak_bytes,
            graphs_loaded: m.graphs_loaded,
        }
    }

    /// Records a backend run's memory and ends the job if guest memory
    /// plus backend memory passed the job's memory limit. (The backend's
    /// own budget stops a run while it allocates; this holds the job to
    /// its own, smaller share.)
    pub(crate) fn charge_backend_memory(&mut self, run_peak: u64) -> wasmtime::Result<()> {
        self.meter.backend_peak_bytes = self.meter.backend_peak_bytes.max(run_peak);
        let total = self.limiter.peak_bytes + self.meter.backend_peak_bytes;
        if total > self.limits.memory_bytes {
            return Err(abort(
                Outcome::MemoryLimit,
                format!(
                    "guest memory ({} bytes) plus backend memory ({} bytes) exceeds the job's memory limit of {} bytes",
                    self.limiter.peak_bytes, self.meter.backend_peak_bytes, self.limits.memory_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Ends the job if a tensor of `bytes` would pass the tensor limit.
    fn check_tensor_bytes(&self, what: &str, bytes: u64) -> wasmtime::Result<()> {
        if bytes > self.limits.max_tensor_bytes {
            return Err(abort(
                Outcome::InvalidInput,
                format!(
                    "{what} of {bytes} bytes exceeds the job's tensor limit of {} bytes",
                    self.limits.max_tensor_bytes
                ),
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
        match (self.backend, target) {
            (_, Some(T::Tpu)) => Err("execution target tpu is not supported on this node".into()),
            (BackendChoice::Fixed(BackendKind::OrtCpu), Some(T::Gpu)) => {
                Err("execution target gpu requested, but this job's backend is ort-cpu".into())
            }
            (BackendChoice::Fixed(k), _) => Ok(k),
            (BackendChoice::Auto, Some(T::Cpu)) => Ok(BackendKind::OrtCpu),
            (BackendChoice::Auto, Some(T::Gpu)) => self.shared.backends.best_gpu().ok_or_else(|| {
                "execution target gpu requested, but this node has no usable GPU backend \
                 (no CUDA, no hardware wgpu adapter)"
                    .to_string()
            }),
            (choice, None) => Ok(self.shared.backends.for_named_models(choice)),
        }
    }

    /// Loads ONNX bytes on `kind` through the cache; meters the load.
    fn load_model(&mut self, bytes: Arc<[u8]>, sha256: String, kind: BackendKind) -> NnResult<Resource<NnGraph>> {
        if self.meter.graphs_loaded >= self.limits.max_graphs {
            return Err(abort(
                Outcome::InvalidInput,
                format!("job tried to load more than {} graphs (max_graphs)", self.limits.max_graphs),
            ));
        }
        let backend = match self.shared.backends.get(kind) {
            Ok(b) => b,
            Err(e) => return self.backend_error(e),
        };
        let start = Instant::now();
        let deadline = self.started + self.limits.deadline();
        let max_nodes = self.limits.max_graph_nodes as usize;
        let loaded = self.shared.cache.get_or_load(&sha256, kind, &self.cache_owner, Residency::Evictable, || {
            let nodes = crate::model_screen::screen(&bytes)?.nodes;
            if nodes > max_nodes {
                return Err(BackendError::new(
                    BackendErrorKind::Unsupported,
                    format!("the graph has {nodes} nodes; this job may load at most {max_nodes} (limits.max_graph_nodes)"),
                ));
            }
            backend.load_until(bytes, Some(deadline))
        });
        self.meter.backend_ns += start.elapsed().as_nanos() as u64;
        let (graph, hit) = match loaded {
            Ok(g) => g,
            Err(e) => return self.backend_error(e),
        };
        tracing::debug!(%sha256, backend = %kind, hit, "graph loaded");
        self.meter.graphs_loaded += 1;
        if !self.meter.models.contains(&sha256) {
            self.meter.models.push(sha256);
        }
        self.meter.backend_used = Some((kind, backend.device().name.clone()));
        Ok(Ok(self.table.push(NnGraph { graph })?))
    }
}

/// A trap that ends the job with `outcome`.
pub(crate) fn abort(outcome: Outcome, message: impl Into<String>) -> wasmtime::Error {
    wasmtime::Error::new(JobAbort::new(outcome, message))
}
