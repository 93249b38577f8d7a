//! Inference backends behind one trait stack.
//!
//! The shape follows wasmtime-wasi-nn (`Backend → BackendGraph →
//! BackendExecutionContext`) with two differences that matter for a
//! multi-tenant node: a graph is shared (`Arc`) by every job that loads the
//! same model, and state that cannot be shared safely lives in the execution
//! context, which each job owns alone. There is no lock per graph.

pub mod ort;
mod ort_memory;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::tensor::ElementType;
use std::fmt;
use std::sync::Arc;

/// Which engine runs a graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum BackendKind {
    /// ONNX Runtime, CPU execution provider.
    #[serde(rename = "ort-cpu")]
    OrtCpu,
    /// ONNX Runtime, CUDA execution provider.
    #[serde(rename = "ort-cuda")]
    OrtCuda,
    /// burn on wgpu (Vulkan, Metal, DX12): any GPU with a graphics driver.
    #[serde(rename = "wgpu")]
    Wgpu,
}

impl BackendKind {
    /// The name used on the command line and in receipts.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrtCpu => "ort-cpu",
            Self::OrtCuda => "ort-cuda",
            Self::Wgpu => "wgpu",
        }
    }

    /// Whether this backend is a GPU backend (wgpu counts, even where its
    /// adapter is a software one such as llvmpipe).
    pub fn is_gpu(self) -> bool {
        matches!(self, Self::OrtCuda | Self::Wgpu)
    }

    /// Whether this backend runs ONNX operator `op` (ORT runs them all).
    pub fn supports_op(self, op: &str) -> bool {
        match self {
            Self::OrtCpu | Self::OrtCuda => true,
            #[cfg(feature = "wgpu")]
            Self::Wgpu => wgpu::supports_op(op),
            #[cfg(not(feature = "wgpu"))]
            Self::Wgpu => {
                let _ = op;
                false
            }
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A deployment's backend choice: a fixed backend, or `auto`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BackendChoice {
    /// The best backend this node has: CUDA, else wgpu on a hardware GPU
    /// adapter, else ORT CPU (a software adapter such as llvmpipe is never
    /// chosen over ORT CPU). Graphs loaded with target `cpu` run on ORT CPU;
    /// target `gpu` needs a GPU backend.
    #[default]
    Auto,
    /// Always this backend.
    Fixed(BackendKind),
}

impl BackendChoice {
    /// Parses `auto`, `ort-cpu`, `ort-cuda` or `wgpu`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "ort-cpu" | "cpu" => Ok(Self::Fixed(BackendKind::OrtCpu)),
            "ort-cuda" | "cuda" => Ok(Self::Fixed(BackendKind::OrtCuda)),
            "wgpu" => Ok(Self::Fixed(BackendKind::Wgpu)),
            other => Err(format!("unknown backend '{other}': expected auto, ort-cpu, ort-cuda or wgpu")),
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(k) => k.fmt(f),
        }
    }
}

/// The class of a backend failure, mapped onto wasi-nn error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendErrorKind {
    /// The model bytes are not a valid model.
    InvalidEncoding,
    /// Inputs do not fit the model (names, types, shapes).
    InvalidArgument,
    /// The backend cannot do what was asked (operator, device, type).
    Unsupported,
    /// The backend failed while running.
    Runtime,
    /// The computation was stopped at the job's deadline.
    Timeout,
    /// The backend's memory budget refused an allocation.
    MemoryLimit,
}

/// A backend failure with a message for people.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    /// What kind of failure.
    pub kind: BackendErrorKind,
    /// What went wrong, and what to do where that is known.
    pub message: String,
}

impl BackendError {
    /// Creates an error of `kind`.
    pub fn new(kind: BackendErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}

impl From<crate::model_screen::ScreenError> for BackendError {
    // (The screen's count of nodes is checked by the host, per job.)
    fn from(e: crate::model_screen::ScreenError) -> Self {
        use crate::model_screen::ScreenError as S;
        let kind = match e {
            S::NotOnnx(_) => BackendErrorKind::InvalidEncoding,
            S::ExternalData { .. } | S::EpContext { .. } | S::SessionConfig => BackendErrorKind::Unsupported,
        };
        Self::new(kind, format!("model refused: {e}"))
    }
}

/// Declared type of a graph input or output.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TensorInfo {
    /// Input or output name.
    pub name: String,
    /// KServe datatype (`None` for non-tensor values such as sequences).
    pub datatype: Option<crate::tensor::Datatype>,
    /// Shape with `-1` for dynamic axes.
    pub shape: Vec<i64>,
}

/// A borrowed input tensor.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    /// Element type.
    pub ty: ElementType,
    /// Shape.
    pub dims: &'a [u32],
    /// Row-major little-endian bytes.
    pub data: &'a [u8],
}

/// A request's input tensors as a backend takes them, for calling a backend
/// directly without a guest (the benchmark's native baseline, backend
/// tests): element types and u32 shapes checked once, data borrowed.
#[derive(Debug)]
pub struct DirectInputs<'a> {
    tensors: Vec<(&'a str, ElementType, Vec<u32>, &'a [u8])>,
}

impl<'a> DirectInputs<'a> {
    /// Checks that every input has a wasi-nn element type and a shape that
    /// fits u32 dimensions.
    pub fn new(request: &'a crate::Request) -> Result<Self, String> {
        let tensors = request
            .inputs
            .iter()
            .map(|t| {
                let ty = t
                    .datatype
                    .element_type()
                    .ok_or_else(|| format!("input '{}': {} is not a wasi-nn element type", t.name, t.datatype.as_str()))?;
                let dims = t
                    .shape
                    .iter()
                    .map(|&d| u32::try_from(d).map_err(|_| format!("input '{}': dimension {d} exceeds u32", t.name)))
                    .collect::<Result<Vec<u32>, String>>()?;
                Ok((t.name.as_str(), ty, dims, t.data.as_slice()))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { tensors })
    }

    /// The inputs as `compute` takes them.
    pub fn views(&self) -> Vec<(&str, TensorView<'_>)> {
        self.tensors.iter().map(|(name, ty, dims, data)| (*name, TensorView { ty: *ty, dims, data })).collect()
    }
}

/// An output tensor produced by a backend.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedTensor {
    /// Element type.
    pub ty: ElementType,
    /// Shape.
    pub dims: Vec<u32>,
    /// Row-major little-endian bytes.
    pub data: Vec<u8>,
}

/// The device a backend computes on, as recorded in receipts.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeviceInfo {
    /// Backend that owns the device.
    pub backend: BackendKind,
    /// Human-readable device name, e.g. `cpu (x86_64, 2 threads)`.
    pub name: String,
}

/// One backend on its own (tests and benchmarks compare backends directly).
pub fn standalone(kind: BackendKind) -> Result<Box<dyn Backend>, BackendError> {
    match kind {
        BackendKind::OrtCpu => Ok(Box::new(ort::OrtBackend::cpu(0)?)),
        BackendKind::OrtCuda => Ok(Box::new(ort::OrtBackend::cuda(0)?)),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => Ok(Box::new(wgpu::WgpuBackend::new()?)),
        #[cfg(not(feature = "wgpu"))]
        BackendKind::Wgpu => Err(wgpu_not_built()),
    }
}

/// The error for `wgpu` in a build without the `wgpu` feature.
#[cfg(not(feature = "wgpu"))]
pub(crate) fn wgpu_not_built() -> BackendError {
    BackendError::new(
        BackendErrorKind::Unsupported,
        "this mote was built without the wgpu backend (cargo feature `wgpu` of mote-runtime)",
    )
}

/// An engine that turns model bytes into graphs.
pub trait Backend: Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// The device it computes on.
    fn device(&self) -> &DeviceInfo;
    /// Loads an ONNX model with no deadline (trusted callers: tests, the
    /// benchmark).
    fn load(&self, model: Arc<[u8]>) -> Result<Arc<dyn BackendGraph>, BackendError> {
        self.load_until(model, None)
    }
    /// Loads an ONNX model; a load (parse, optimisation, weight upload)
    /// still going at `deadline` is stopped with
    /// [`BackendErrorKind::Timeout`]. Every implementation screens the bytes
    /// first ([`crate::model_screen::screen`]): they may come from a
    /// stranger.
    fn load_until(
        &self,
        model: Arc<[u8]>,
        deadline: Option<std::time::Instant>,
    ) -> Result<Arc<dyn BackendGraph>, BackendError>;
}

/// A loaded model, shareable by any number of jobs.
pub trait BackendGraph: Send + Sync {
    /// Opens a context that computes independently of all others.
    fn init_execution_context(&self) -> Result<Box<dyn BackendExecutionContext>, BackendError>;
    /// The model's declared inputs.
    fn inputs(&self) -> &[TensorInfo];
    /// The model's declared outputs.
    fn outputs(&self) -> &[TensorInfo];
    /// Bytes this graph holds (weights in every form the backend keeps,
    /// host and device): what the graph cache charges for it.
    fn memory_bytes(&self) -> u64;
}

/// One job's inference state over a graph.
pub trait BackendExecutionContext: Send {
    /// Runs the graph on named inputs; returns every output, by name, in the
    /// model's output order. A run still going at `deadline` is stopped
    /// with [`BackendErrorKind::Timeout`].
    fn compute(
        &mut self,
        inputs: &[(&str, TensorView<'_>)],
        deadline: Option<std::time::Instant>,
    ) -> Result<Vec<(String, OwnedTensor)>, BackendError>;

    /// Binds outputs to inputs (`(output, input)` pairs, names checked by
    /// the caller): from the next compute on, each bound output is kept by
    /// the context, in the backend's own memory, instead of being returned,
    /// and fed as the bound input of the following compute unless the
    /// caller passes that input. Replaces earlier bindings; drops kept
    /// values.
    fn bind_state(&mut self, pairs: &[(String, String)]) -> Result<(), BackendError> {
        if pairs.is_empty() {
            return Ok(());
        }
        Err(BackendError::new(BackendErrorKind::Unsupported, "this backend cannot keep state between computes"))
    }

    /// Drops the kept values; the bindings stay.
    fn reset_state(&mut self) {}

    /// Backend memory the last run of this context was charged for, in
    /// bytes (0 where the backend cannot tell). The caller keeps the
    /// maximum; a batched run's memory is shared out by the batcher.
    fn backend_peak_bytes(&self) -> u64 {
        0
    }
}
