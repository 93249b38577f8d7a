//! Typed wrappers over `wasi:nn` graphs and tensors.

use crate::bindings::wasi::nn::{errors, graph, inference, tensor};
use crate::io_bindings::mote::edge::inference_io;
use crate::{Datatype, HandlerError, IoTensor, Target};

pub use tensor::TensorType;

/// A wasi-nn error with its code and the host's explanation.
#[derive(Debug)]
pub struct NnError {
    /// The error class.
    pub code: errors::ErrorCode,
    /// The host's message.
    pub message: String,
}

impl NnError {
    /// The WIT name of the error code, e.g. `invalid-encoding`.
    pub fn code_name(&self) -> &'static str {
        use errors::ErrorCode as C;
        match self.code {
            C::InvalidArgument => "invalid-argument",
            C::InvalidEncoding => "invalid-encoding",
            C::Timeout => "timeout",
            C::RuntimeError => "runtime-error",
            C::UnsupportedOperation => "unsupported-operation",
            C::TooLarge => "too-large",
            C::NotFound => "not-found",
            C::Security => "security",
            C::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for NnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code_name(), self.message)
    }
}

impl std::error::Error for NnError {}

impl From<errors::Error> for NnError {
    fn from(e: errors::Error) -> Self {
        Self { code: e.code(), message: e.data() }
    }
}

impl From<NnError> for HandlerError {
    fn from(e: NnError) -> Self {
        match e.code {
            errors::ErrorCode::InvalidArgument => HandlerError::InvalidInput(e.to_string()),
            _ => HandlerError::BackendError(e.to_string()),
        }
    }
}

/// A tensor owned by the host.
pub struct Tensor(pub(crate) tensor::Tensor);

impl Tensor {
    /// Creates a tensor from raw little-endian bytes.
    pub fn new(ty: TensorType, dims: &[u32], data: &[u8]) -> Self {
        Self(tensor::Tensor::new(dims, ty, data))
    }

    /// Creates an f32 tensor.
    pub fn from_f32(dims: &[u32], values: &[f32]) -> Self {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::new(TensorType::Fp32, dims, &bytes)
    }

    /// The shape.
    pub fn dims(&self) -> Vec<u32> {
        self.0.dimensions()
    }

    /// The element type.
    pub fn ty(&self) -> TensorType {
        self.0.ty()
    }

    /// A copy of the raw bytes.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.data()
    }

    /// The elements as f32, if this is an f32 tensor.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        (self.ty() == TensorType::Fp32)
            .then(|| crate::io::f32s_from_le_bytes(&self.bytes()))
    }

    /// Converts a request tensor (its datatype must exist in wasi-nn:
    /// FP16, FP32, FP64, BF16, UINT8, BOOL, INT32, INT64).
    pub fn from_io(t: &IoTensor) -> Result<Self, HandlerError> {
        let ty = match t.datatype {
            Datatype::Fp16 => TensorType::Fp16,
            Datatype::Fp32 => TensorType::Fp32,
            Datatype::Fp64 => TensorType::Fp64,
            Datatype::Bf16 => TensorType::Bf16,
            Datatype::Uint8 | Datatype::Bool => TensorType::U8,
            Datatype::Int32 => TensorType::I32,
            Datatype::Int64 => TensorType::I64,
            other => {
                return Err(HandlerError::InvalidInput(format!(
                    "input '{}' has datatype {other:?}, which wasi-nn cannot carry",
                    t.name
                )))
            }
        };
        let dims = t
            .shape
            .iter()
            .map(|&d| u32::try_from(d))
            .collect::<Result<Vec<u32>, _>>()
            .map_err(|_| HandlerError::InvalidInput(format!("input '{}': dimension too large", t.name)))?;
        Ok(Self::new(ty, &dims, &t.data))
    }

    /// Converts to a response tensor named `name`.
    pub fn to_io(&self, name: &str) -> IoTensor {
        let datatype = match self.ty() {
            TensorType::Fp16 => Datatype::Fp16,
            TensorType::Fp32 => Datatype::Fp32,
            TensorType::Fp64 => Datatype::Fp64,
            TensorType::Bf16 => Datatype::Bf16,
            TensorType::U8 => Datatype::Uint8,
            TensorType::I32 => Datatype::Int32,
            TensorType::I64 => Datatype::Int64,
        };
        IoTensor {
            name: name.to_string(),
            datatype,
            shape: self.dims().into_iter().map(u64::from).collect(),
            data: self.bytes(),
        }
    }
}

/// A loaded model with one execution context.
pub struct Graph {
    // Field order matters: the context must drop before its graph.
    ctx: inference::GraphExecutionContext,
    _graph: graph::Graph,
}

impl Graph {
    pub(crate) fn from_graph(g: graph::Graph) -> Result<Self, NnError> {
        let ctx = g.init_execution_context()?;
        Ok(Self { ctx, _graph: g })
    }

    /// Loads ONNX model bytes for `target`.
    pub fn load_onnx(model: &[u8], target: Target) -> Result<Self, NnError> {
        let parts = [model.to_vec()];
        Self::from_graph(graph::load(&parts, graph::GraphEncoding::Onnx, target)?)
    }

    /// Loads a model the deployment declares under `name`.
    pub fn by_name(name: &str) -> Result<Self, NnError> {
        Self::from_graph(graph::load_by_name(name)?)
    }

    /// Runs the model on named tensors and returns every named output.
    pub fn run(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, NnError> {
        let inputs: Vec<(String, tensor::Tensor)> = inputs.into_iter().map(|(n, t)| (n, t.0)).collect();
        Ok(self.ctx.compute(inputs)?.into_iter().map(|(n, t)| (n, Tensor(t))).collect())
    }

    /// Keeps outputs on the host and feeds them back as inputs of the next
    /// [`Graph::run`] (`mote:edge/state`): `(output, input)` pairs, e.g. a
    /// decoder's `present.N.key` → `past_key_values.N.key`. Bound outputs
    /// are no longer returned; a bound input passed to `run` replaces the
    /// kept value (how a sequence starts).
    pub fn bind_state(&self, pairs: &[(String, String)]) -> Result<(), NnError> {
        Ok(crate::bindings::mote::edge::state::bind(&self.ctx, pairs)?)
    }

    /// Drops the kept values (the bindings stay).
    pub fn reset_state(&self) {
        crate::bindings::mote::edge::state::reset(&self.ctx);
    }

    /// Runs the model on request tensors (by name) and returns response
    /// tensors, every output not bound by [`Graph::bind_state`]
    /// (`mote:edge/inference-io`): one host call per inference, the inputs
    /// read by the host where they lie, the outputs ready for a
    /// [`Response`](crate::Response) — where [`Graph::run`] takes a host
    /// call per tensor and four per output. Datatypes are those wasi-nn
    /// carries (see [`Tensor::from_io`]).
    pub fn compute(&self, inputs: &[IoTensor]) -> Result<Vec<IoTensor>, NnError> {
        Ok(inference_io::compute(&self.ctx, inputs)?)
    }

    /// [`Graph::compute`] with its errors as a handler's: the whole
    /// request/response path of a serving guest.
    pub fn run_io(&self, inputs: &[IoTensor]) -> Result<Vec<IoTensor>, HandlerError> {
        Ok(self.compute(inputs)?)
    }

    /// [`Graph::run_io`] through wasi-nn's tensor resources ([`Graph::run`]):
    /// the same result, with a host call per tensor and four per output.
    pub fn run_io_wasi_nn(&self, inputs: &[IoTensor]) -> Result<Vec<IoTensor>, HandlerError> {
        let tensors = inputs
            .iter()
            .map(|t| Ok((t.name.clone(), Tensor::from_io(t)?)))
            .collect::<Result<Vec<_>, HandlerError>>()?;
        Ok(self.run(tensors)?.iter().map(|(n, t)| t.to_io(n)).collect())
    }
}
