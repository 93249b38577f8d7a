//! The wgpu backend: ONNX graphs interpreted op by op on burn's CubeCL
//! runtime over wgpu (Vulkan, Metal, DX12), for GPUs where CUDA does not
//! exist.
//!
//! `load` decodes the model with mote's ONNX schema subset, checks every op
//! and attribute and infers element types (`program.rs`), then uploads the
//! float weights once; the graph keeps them for every later job. `compute`
//! uploads the inputs, runs the ops (`exec.rs`) and reads the outputs back,
//! which waits for the device queue: the caller's backend time is real
//! device work, not only submission.
//!
//! One wgpu device serves the process (burn registers its runtime once per
//! device); it is opened on first use. Adapters are listed without opening
//! a device, so `auto` can skip wgpu cheaply on machines without a GPU.

mod exec;
mod host;
mod program;

pub use exec::uploaded_bytes_on_this_thread;
pub use program::{supports_op, WGPU_OPS};

use super::{
    Backend, BackendError, BackendErrorKind, BackendExecutionContext, BackendGraph, BackendKind, DeviceInfo,
    OwnedTensor, TensorInfo, TensorView,
};
use crate::tensor::{Datatype, ElementType};
use exec::{Frame, Value};
use host::{HostData, HostTensor};
use prost::Message;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Element types the interpreter tracks through a graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ty {
    F32,
    I64,
    I32,
    Bool,
}

impl Ty {
    pub(crate) const ALL: [Ty; 4] = [Ty::F32, Ty::I64, Ty::I32, Ty::Bool];

    /// The ONNX data type (the one mapping; KServe and wasi-nn types follow
    /// from it through `crate::tensor`).
    pub(crate) fn onnx_data_type(self) -> i32 {
        use crate::tensor::onnx_code as o;
        match self {
            Ty::F32 => o::FLOAT,
            Ty::I64 => o::INT64,
            Ty::I32 => o::INT32,
            Ty::Bool => o::BOOL,
        }
    }
}

/// One wgpu adapter as the system reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AdapterSummary {
    /// Adapter name, e.g. `NVIDIA GeForce RTX 4070` or `llvmpipe (LLVM 19.1.7, 256 bits)`.
    pub name: String,
    /// Driver name and version information.
    pub driver: String,
    /// Graphics API: `vulkan`, `metal`, `dx12`.
    pub api: String,
    /// `discrete-gpu`, `integrated-gpu`, `virtual-gpu`, `cpu` or `other`.
    pub device_type: String,
}

impl AdapterSummary {
    fn from_info(i: &burn_wgpu::wgpu::AdapterInfo) -> Self {
        use burn_wgpu::wgpu::DeviceType as D;
        let driver = [i.driver.as_str(), i.driver_info.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        Self {
            name: i.name.clone(),
            driver,
            api: format!("{:?}", i.backend).to_lowercase(),
            device_type: match i.device_type {
                D::DiscreteGpu => "discrete-gpu",
                D::IntegratedGpu => "integrated-gpu",
                D::VirtualGpu => "virtual-gpu",
                D::Cpu => "cpu",
                D::Other => "other",
            }
            .into(),
        }
    }

    /// Whether this is a real GPU (not a software rasteriser like llvmpipe).
    pub fn is_hardware(&self) -> bool {
        self.device_type != "cpu"
    }

    /// The receipt's device string: adapter, API and kind, driver.
    pub fn describe(&self) -> String {
        let driver = if self.driver.is_empty() { String::new() } else { format!(", driver {}", self.driver) };
        format!("{} ({} {}{driver})", self.name, self.api, self.device_type)
    }
}

/// Every adapter on the primary graphics APIs, listed once per process
/// without opening a device.
pub fn adapters() -> &'static [AdapterSummary] {
    static LIST: OnceLock<Vec<AdapterSummary>> = OnceLock::new();
    LIST.get_or_init(|| {
        std::panic::catch_unwind(|| {
            use burn_wgpu::wgpu;
            let backends = wgpu::Backends::PRIMARY;
            let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
                backends,
                ..wgpu::InstanceDescriptor::new_without_display_handle()
            });
            exec::block_on(instance.enumerate_adapters(backends))
                .iter()
                .map(|a| AdapterSummary::from_info(&a.get_info()))
                .collect()
        })
        .unwrap_or_default()
    })
}

/// Whether this machine has a hardware wgpu adapter (what `auto` wants).
pub fn has_hardware_adapter() -> bool {
    adapters().iter().any(AdapterSummary::is_hardware)
}

struct Opened {
    device: exec::WgpuDevice,
    adapter: AdapterSummary,
    limits: BufferLimits,
}

/// The device's own buffer limits (cubecl opens the device with the
/// adapter's limits, not wgpu's conservative defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BufferLimits {
    /// Largest buffer a kernel may bind as storage.
    pub(crate) max_storage_buffer_binding_size: u64,
    /// Largest buffer.
    pub(crate) max_buffer_size: u64,
}

impl BufferLimits {
    /// Whether a tensor of `bytes` fits one buffer; the error names the
    /// limit it passes.
    pub(crate) fn check(&self, what: &str, bytes: u64) -> Result<(), BackendError> {
        let (limit, name) = if self.max_storage_buffer_binding_size <= self.max_buffer_size {
            (self.max_storage_buffer_binding_size, "max_storage_buffer_binding_size")
        } else {
            (self.max_buffer_size, "max_buffer_size")
        };
        if bytes > limit {
            return Err(BackendError::new(
                BackendErrorKind::Unsupported,
                format!(
                    "{what} is {bytes} bytes, more than this adapter's {name} of {limit} bytes: it cannot live in one \
                     device buffer (run the model on ort-cpu or a GPU with larger limits)"
                ),
            ));
        }
        Ok(())
    }
}

/// The process's wgpu device, opened on first use.
fn open_device() -> Result<&'static Opened, BackendError> {
    static DEVICE: OnceLock<Result<Opened, BackendError>> = OnceLock::new();
    let opened = DEVICE.get_or_init(|| {
        let unavailable = |detail: String| {
            BackendError::new(
                BackendErrorKind::Unsupported,
                format!(
                    "the wgpu backend found no usable adapter ({detail}); install a Vulkan driver \
                     (on Debian: `apt-get install libvulkan1 mesa-vulkan-drivers`, which `make setup` does)"
                ),
            )
        };
        if adapters().is_empty() {
            return Err(unavailable("no Vulkan, Metal or DX12 adapter is listed".into()));
        }
        let device = burn_wgpu::WgpuDevice::default();
        let setup = std::panic::catch_unwind(|| {
            burn_wgpu::try_init_setup::<burn_wgpu::graphics::AutoGraphicsApi>(
                &device,
                burn_wgpu::RuntimeOptions::default(),
            )
        })
        .map_err(|p| unavailable(format!("wgpu panicked: {}", panic_message(&p))))?
        .map_err(|e| unavailable(e.to_string()))?;
        let adapter = AdapterSummary::from_info(&setup.adapter.get_info());
        let l = setup.device.limits();
        let limits = BufferLimits {
            max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
            max_buffer_size: l.max_buffer_size,
        };
        tracing::info!(adapter = %adapter.describe(), ?limits, "wgpu device opened");
        Ok(Opened { device: burn_backend::cubecl::Device::Wgpu(device), adapter, limits })
    });
    opened.as_ref().map_err(Clone::clone)
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The wgpu backend on this process's device.
pub struct WgpuBackend {
    device: exec::WgpuDevice,
    adapter: AdapterSummary,
    limits: BufferLimits,
    info: DeviceInfo,
}

impl WgpuBackend {
    /// Opens (once per process) the default wgpu device: a hardware adapter
    /// when there is one, else a software one such as llvmpipe.
    pub fn new() -> Result<Self, BackendError> {
        let o = open_device()?;
        Ok(Self {
            device: o.device.clone(),
            adapter: o.adapter.clone(),
            limits: o.limits,
            info: DeviceInfo { backend: BackendKind::Wgpu, name: o.adapter.describe() },
        })
    }

    /// The adapter this backend runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.adapter
    }
}

/// Screens, decodes and compiles a model as [`WgpuBackend`]'s `load` does,
/// without a device: whether this backend would take it (and the fuzz
/// target of its loader).
pub fn check_model(model: &[u8]) -> Result<(), BackendError> {
    compile_model(model).map(|_| ())
}

/// Model bytes to a program: screen, decode, compile (a panic in the
/// compiler is a refused model).
fn compile_model(model: &[u8]) -> Result<program::Program, BackendError> {
    crate::model_screen::screen(model)?;
    let proto = crate::onnx_proto::ModelProto::decode(model)
        .map_err(|e| BackendError::new(BackendErrorKind::InvalidEncoding, format!("not an ONNX model: {e}")))?;
    // The compiler is ours, but its input is a stranger's.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| program::compile(&proto)))
        .map_err(|p| {
            BackendError::new(BackendErrorKind::InvalidEncoding, format!("compiling the model failed: {}", panic_message(&p)))
        })?
        .map_err(|r| match r {
            program::Refused::Unsupported(m) => BackendError::new(BackendErrorKind::Unsupported, m),
            program::Refused::Invalid(m) => BackendError::new(BackendErrorKind::InvalidEncoding, m),
        })
}

fn invalid(kind: BackendErrorKind) -> impl Fn(String) -> BackendError {
    move |m| BackendError::new(kind, m)
}

fn datatype_of(ty: Ty) -> Datatype {
    Datatype::from_onnx_data_type(ty.onnx_data_type()).expect("interpreter types are KServe types")
}

impl Backend for WgpuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Wgpu
    }

    fn device(&self) -> &DeviceInfo {
        &self.info
    }

    fn load_until(
        &self,
        model: Arc<[u8]>,
        deadline: Option<std::time::Instant>,
    ) -> Result<Arc<dyn BackendGraph>, BackendError> {
        let mut program = compile_model(&model)?;
        // Every weight must fit one device buffer: say which limit a
        // too-large one passes, before anything is uploaded.
        for (_, h) in program.consts.iter().filter(|(_, h)| h.ty() == Ty::F32 && h.data.len() > 1) {
            self.limits.check(&format!("a weight of shape {:?}", h.shape), h.data.len() as u64 * 4)?;
        }
        let device = self.device.clone();
        let past_deadline = || deadline.is_some_and(|at| std::time::Instant::now() >= at);
        // Weights go up once, here; small scalars stay on the host so ops
        // can use scalar kernels. The deadline is checked between uploads.
        let consts = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // The program's host copies go: what is uploaded lives on the
            // device only.
            let host_consts = std::mem::take(&mut program.consts);
            let mut consts = Vec::with_capacity(host_consts.len());
            for (s, h) in host_consts {
                if past_deadline() {
                    return None;
                }
                let v = if h.ty() == Ty::F32 && h.data.len() > 1 {
                    Value::F(exec::upload(&device, &h))
                } else {
                    Value::H(h)
                };
                consts.push((s, v));
            }
            Some(consts)
        }))
        .map_err(|p| {
            BackendError::new(BackendErrorKind::Runtime, format!("uploading weights failed: {}", panic_message(&p)))
        })?
        .ok_or_else(|| BackendError::new(BackendErrorKind::Timeout, "loading the model was stopped at the job's deadline"))?;
        let inputs = program
            .inputs
            .iter()
            .map(|i| TensorInfo { name: i.name.clone(), datatype: Some(datatype_of(i.ty)), shape: i.shape.clone() })
            .collect();
        let outputs = program
            .outputs
            .iter()
            .map(|(n, _, ty, shape)| TensorInfo {
                name: n.clone(),
                datatype: Some(datatype_of(*ty)),
                shape: shape.clone(),
            })
            .collect();
        let model_bytes = model.len() as u64;
        let limits = self.limits;
        Ok(Arc::new(WgpuGraph(Arc::new(GraphInner { model_bytes, program, consts, device, limits, inputs, outputs }))))
    }
}

struct GraphInner {
    /// Size of the ONNX bytes the graph was loaded from.
    model_bytes: u64,
    program: program::Program,
    consts: Vec<(usize, Value)>,
    device: exec::WgpuDevice,
    limits: BufferLimits,
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
}

struct WgpuGraph(Arc<GraphInner>);

impl BackendGraph for WgpuGraph {
    fn init_execution_context(&self) -> Result<Box<dyn BackendExecutionContext>, BackendError> {
        Ok(Box::new(WgpuContext { graph: self.0.clone(), pairs: Vec::new(), kept: Default::default() }))
    }
    fn inputs(&self) -> &[TensorInfo] {
        &self.0.inputs
    }
    fn outputs(&self) -> &[TensorInfo] {
        &self.0.outputs
    }
    fn memory_bytes(&self) -> u64 {
        // The decoded program keeps the weights on the host; float weights
        // are also uploaded to the device.
        2 * self.0.model_bytes
    }
}

/// A job's context. Bound outputs (`bind_state`) are kept as values where
/// they were computed (on the device) and fed to the next run by
/// reference: a KV cache never comes back to the host.
struct WgpuContext {
    graph: Arc<GraphInner>,
    /// `(output, input)` pairs.
    pairs: Vec<(String, String)>,
    /// Kept values by input name.
    kept: std::collections::HashMap<String, Value>,
}

/// Decodes a job's input bytes into the interpreter's host form.
fn host_input(name: &str, want: Ty, v: &TensorView<'_>) -> Result<HostTensor, BackendError> {
    let shape: Vec<usize> = v.dims.iter().map(|&d| d as usize).collect();
    let bad = |got: &str| {
        BackendError::new(
            BackendErrorKind::InvalidArgument,
            format!("input '{name}' is {got}, but the model declares {:?}", want),
        )
    };
    let data = match (want, v.ty) {
        (Ty::F32, ElementType::F32) => {
            HostData::F32(v.data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
        }
        (Ty::I64, ElementType::I64) => {
            HostData::I64(v.data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect())
        }
        (Ty::I32, ElementType::I32) => HostData::I64(
            v.data.chunks_exact(4).map(|c| i64::from(i32::from_le_bytes(c.try_into().unwrap()))).collect(),
        ),
        (Ty::Bool, ElementType::U8) => HostData::Bool(v.data.iter().map(|&b| b != 0).collect()),
        (_, other) => return Err(bad(&format!("{other:?}"))),
    };
    if data.len() != host::numel(&shape) {
        return Err(BackendError::new(
            BackendErrorKind::InvalidArgument,
            format!("input '{name}' has {} bytes for shape {shape:?}", v.data.len()),
        ));
    }
    Ok(HostTensor::new(shape, data))
}

fn to_owned(h: HostTensor, ty: Ty) -> OwnedTensor {
    let dims = h.shape.iter().map(|&d| d as u32).collect();
    match (h.data, ty) {
        (HostData::F32(v), _) => {
            OwnedTensor { ty: ElementType::F32, dims, data: v.iter().flat_map(|x| x.to_le_bytes()).collect() }
        }
        (HostData::I64(v), Ty::I32) => {
            OwnedTensor { ty: ElementType::I32, dims, data: v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect() }
        }
        (HostData::I64(v), _) => {
            OwnedTensor { ty: ElementType::I64, dims, data: v.iter().flat_map(|x| x.to_le_bytes()).collect() }
        }
        (HostData::Bool(v), _) => {
            OwnedTensor { ty: ElementType::U8, dims, data: v.iter().map(|&b| u8::from(b)).collect() }
        }
    }
}

impl WgpuContext {
    fn run(
        &mut self,
        inputs: &[(&str, TensorView<'_>)],
        deadline: Option<Instant>,
    ) -> Result<Vec<(String, OwnedTensor)>, BackendError> {
        let g = &*self.graph;
        let p = &g.program;
        let mut frame = Frame { program: p, values: vec![None; p.slots], dev: g.device.clone() };
        for (s, v) in &g.consts {
            frame.values[*s] = Some(v.clone());
        }
        for (name, _) in inputs {
            if !p.inputs.iter().any(|i| i.name == *name) {
                let known: Vec<&str> = p.inputs.iter().map(|i| i.name.as_str()).collect();
                return Err(BackendError::new(
                    BackendErrorKind::InvalidArgument,
                    format!("the model has no input '{name}' (inputs: {})", known.join(", ")),
                ));
            }
        }
        for decl in &p.inputs {
            let Some((_, view)) = inputs.iter().find(|(n, _)| *n == decl.name) else {
                if let Some(v) = self.kept.get(&decl.name) {
                    frame.values[decl.slot] = Some(v.clone());
                    continue;
                }
                let bound = self.pairs.iter().any(|(_, i)| *i == decl.name);
                return Err(BackendError::new(
                    BackendErrorKind::InvalidArgument,
                    if bound {
                        format!("input '{}' is bound to an output but no value is kept yet: pass it to start a sequence", decl.name)
                    } else {
                        format!("input '{}' was not set", decl.name)
                    },
                ));
            };
            let fits = decl.shape.is_empty()
                || (decl.shape.len() == view.dims.len()
                    && decl.shape.iter().zip(view.dims).all(|(&want, &got)| want < 0 || want == i64::from(got)));
            if !fits {
                return Err(BackendError::new(
                    BackendErrorKind::InvalidArgument,
                    format!("input '{}' has shape {:?}, the model expects {:?}", decl.name, view.dims, decl.shape),
                ));
            }
            g.limits.check(&format!("input '{}'", decl.name), view.data.len() as u64)?;
            let h = host_input(&decl.name, decl.ty, view)?;
            // Floats go to the device; scalars and empty tensors (an empty
            // KV cache) stay (ops use scalar kernels; the device holds no
            // zero-sized buffers).
            let on_device = decl.ty == Ty::F32 && !h.shape.is_empty() && h.data.len() > 0;
            frame.values[decl.slot] = Some(if on_device { Value::F(exec::upload(&g.device, &h)) } else { Value::H(h) });
        }
        for i in 0..p.nodes.len() {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(BackendError::new(BackendErrorKind::Timeout, "the job's deadline passed during inference"));
            }
            frame.step(i).map_err(invalid(BackendErrorKind::Runtime))?;
        }
        let mut out = Vec::with_capacity(p.outputs.len());
        let mut kept = std::collections::HashMap::with_capacity(self.pairs.len());
        for (name, slot, ty, _) in &p.outputs {
            let v = frame.values[*slot].clone().ok_or_else(|| {
                BackendError::new(BackendErrorKind::Runtime, format!("output '{name}' was not computed"))
            })?;
            if let Some((_, input)) = self.pairs.iter().find(|(o, _)| o == name) {
                kept.insert(input.clone(), v);
                continue;
            }
            // Ops are submitted asynchronously: this read is where the job
            // waits for the device, so this is where the deadline must hold.
            let h = v.host_until(deadline).map_err(invalid(BackendErrorKind::Runtime))?.ok_or_else(|| {
                BackendError::new(BackendErrorKind::Timeout, "the job's deadline passed while the device was computing")
            })?;
            out.push((name.clone(), to_owned(h, *ty)));
        }
        if !self.pairs.is_empty() {
            self.kept = kept;
        }
        Ok(out)
    }
}

impl BackendExecutionContext for WgpuContext {
    fn compute(
        &mut self,
        inputs: &[(&str, TensorView<'_>)],
        deadline: Option<Instant>,
    ) -> Result<Vec<(String, OwnedTensor)>, BackendError> {
        // A kernel or driver failure inside burn/wgpu panics; it must end
        // this inference with an error, not the host.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(inputs, deadline)))
            .unwrap_or_else(|p| {
                Err(BackendError::new(BackendErrorKind::Runtime, format!("the wgpu backend failed: {}", panic_message(&p))))
            });
        if result.is_err() {
            // A failed step leaves the sequence undefined: start over.
            self.kept.clear();
        }
        result
    }

    fn bind_state(&mut self, pairs: &[(String, String)]) -> Result<(), BackendError> {
        let g = &*self.graph;
        for (out, inp) in pairs {
            if !g.outputs.iter().any(|o| &o.name == out) {
                return Err(BackendError::new(BackendErrorKind::InvalidArgument, format!("the model has no output named '{out}'")));
            }
            if !g.inputs.iter().any(|i| &i.name == inp) {
                return Err(BackendError::new(BackendErrorKind::InvalidArgument, format!("the model has no input named '{inp}'")));
            }
        }
        self.pairs = pairs.to_vec();
        self.kept.clear();
        Ok(())
    }

    fn reset_state(&mut self) {
        self.kept.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tensor_past_the_adapter_limit_is_an_error_naming_it() {
        let l = BufferLimits { max_storage_buffer_binding_size: 128 << 20, max_buffer_size: 256 << 20 };
        assert!(l.check("w", 128 << 20).is_ok());
        let e = l.check("a weight of shape [40000, 1000]", 160_000_000).unwrap_err();
        assert_eq!(e.kind, BackendErrorKind::Unsupported);
        assert!(e.message.contains("max_storage_buffer_binding_size of 134217728"), "{}", e.message);
        let l = BufferLimits { max_storage_buffer_binding_size: 1 << 40, max_buffer_size: 1 << 30 };
        assert!(l.check("x", (1 << 30) + 1).unwrap_err().message.contains("max_buffer_size"));
    }
}
