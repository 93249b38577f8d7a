//! ONNX Runtime backend (`ort`, loaded dynamically).
//!
//! The library is not linked at build time: it is found at run time
//! (`ORT_DYLIB_PATH`, then the project's `deps/onnxruntime/`), so one `mote`
//! binary works with the CPU wheel and with `onnxruntime-gpu`.
//!
//! `ort::Session::run` needs `&mut Session` (some ORT allocators are not
//! thread safe), so a graph keeps a pool of sessions for the same model: an
//! execution context takes one for its lifetime and gives it back on drop.
//! Sequential jobs reuse one session (no rebuild); concurrent jobs get their
//! own and never wait on each other.

use super::{
    Backend, BackendError, BackendErrorKind, BackendExecutionContext, BackendGraph, BackendKind, DeviceInfo,
    OwnedTensor, TensorInfo, TensorView,
};
use crate::tensor::{Datatype, ElementType};
use ort::session::{RunOptions, Session, SessionInputValue};
use ort::value::{DynValue, TensorElementType, ValueType};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::Instant;

/// File names the ONNX Runtime shared library is found under.
const LIB_PREFIX: &str = "libonnxruntime.so";

/// Finds the ONNX Runtime shared library: `ORT_DYLIB_PATH`, then
/// `MOTE_DEPS_DIR/onnxruntime/`, then `deps/onnxruntime/` beside the source
/// tree or any ancestor of the running executable.
pub fn find_library() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "ORT_DYLIB_PATH points to {}, which is not a file: point it at libonnxruntime.so, or unset it \
                 to use the library `make setup` installs in deps/onnxruntime",
                p.display()
            ))
        };
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("MOTE_DEPS_DIR") {
        dirs.push(PathBuf::from(d).join("onnxruntime"));
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deps/onnxruntime"));
    if let Ok(exe) = std::env::current_exe() {
        dirs.extend(exe.ancestors().skip(1).map(|a| a.join("deps/onnxruntime")));
    }
    for dir in &dirs {
        if let Some(lib) = library_in(dir) {
            return Ok(std::fs::canonicalize(&lib).unwrap_or(lib));
        }
    }
    Err(format!(
        "ONNX Runtime library not found (looked in ORT_DYLIB_PATH and {}); run `make setup` \
         (scripts/setup.sh) to install it, or set ORT_DYLIB_PATH to libonnxruntime.so",
        dirs.first().map_or_else(String::new, |d| d.display().to_string())
    ))
}

fn library_in(dir: &Path) -> Option<PathBuf> {
    let exact = dir.join(LIB_PREFIX);
    if exact.is_file() {
        return Some(exact);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(LIB_PREFIX)))
        .collect();
    found.sort();
    found.pop()
}

/// The process-wide ORT environment (the library can be loaded only once).
struct OrtEnv {
    env: ort::environment::Environment,
    library: PathBuf,
    cuda_provider: bool,
    /// Intra-op threads of the global pool, as set by the first caller.
    threads: usize,
    /// The CPU arena's ceiling (all sessions together).
    memory_budget: u64,
}

/// Settings of the process's ONNX Runtime, fixed by the first backend
/// created (the environment exists once per process).
#[derive(Clone, Copy, Debug)]
pub struct OrtOptions {
    /// Intra-op threads (0: one per core).
    pub threads: usize,
    /// Most bytes ORT may hold on the CPU for all sessions together
    /// (weights, intermediates, outputs): the node's backend budget.
    pub memory_budget: u64,
    /// The intra-op pool's threads spin between a run's parallel parts
    /// instead of sleeping: no wake-up per operator (an LLM's decode step
    /// runs hundreds of small ones), at the price of cores the spinning
    /// threads take from other jobs while runs go on. Off by default.
    pub spinning: bool,
}

impl Default for OrtOptions {
    fn default() -> Self {
        Self { threads: 0, memory_budget: default_memory_budget(), spinning: false }
    }
}

/// Half the machine's memory (from /proc/meminfo), else 4 GiB.
pub fn default_memory_budget() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(4 << 30, |kib| kib * 1024 / 2)
}

/// The model of the machine's NVIDIA GPU (device 0 where all are the same
/// model), from the kernel driver's `/proc/driver/nvidia/gpus/*/information`:
/// receipts and `mote specs` name the GPU a CUDA job ran on, as they name a
/// wgpu adapter. `None` where the driver does not say or the GPUs differ
/// (CUDA's device order need not be the bus order).
pub fn nvidia_gpu_model() -> Option<String> {
    let mut models: Vec<String> = std::fs::read_dir("/proc/driver/nvidia/gpus")
        .ok()?
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("information")).ok())
        .filter_map(|info| info.lines().find_map(|l| l.strip_prefix("Model:")).map(|m| m.trim().to_string()))
        .filter(|m| !m.is_empty())
        .collect();
    models.sort();
    models.dedup();
    (models.len() == 1).then(|| models.remove(0))
}

/// The process-wide environment. Every session runs on the environment's
/// one intra-op thread pool (`threads` threads, 0: one per core, set by the
/// first caller), by default without spinning: many sessions share the
/// cores with wasm jobs, so waiting threads sleep rather than burn CPU
/// (`OrtOptions::spinning` trades that for runs of many small operators).
fn environment_with(options: OrtOptions) -> Result<&'static OrtEnv, BackendError> {
    static ENV: OnceLock<Result<OrtEnv, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let threads = if options.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            options.threads
        };
        let library = find_library()?;
        // Loads the library: nothing of the ORT API may be used before.
        let builder =
            ort::init_from(&library).map_err(|e| format!("loading ONNX Runtime from {}: {e}", library.display()))?;
        let pool = ort::environment::GlobalThreadPoolOptions::default()
            .with_intra_threads(threads)
            .and_then(|p| p.with_inter_threads(1))
            .and_then(|p| p.with_spin_control(options.spinning))
            .map_err(|e| format!("configuring ONNX Runtime threads: {e}"))?;
        let env = builder
            .with_name("mote")
            .with_telemetry(false)
            .with_global_thread_pool(pool)
            .build()
            .map_err(|e| format!("initialising ONNX Runtime: {e}"))?;
        super::ort_memory::register_arena(&env, options.memory_budget)
            .map_err(|e| format!("registering ONNX Runtime's CPU arena: {e}"))?;
        let cuda_provider = <ort::ep::CUDA as ort::ep::ExecutionProvider>::is_available().unwrap_or(false);
        Ok(OrtEnv { env, library, cuda_provider, threads, memory_budget: options.memory_budget })
    })
    .as_ref()
    .map_err(|e| BackendError::new(BackendErrorKind::Unsupported, e.clone()))
}

fn environment() -> Result<&'static OrtEnv, BackendError> {
    environment_with(OrtOptions::default())
}

/// What this node's ONNX Runtime can do, for `mote specs` and receipts.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OrtProbe {
    /// Path of the loaded library.
    pub library: String,
    /// Whether the library carries the CUDA execution provider.
    pub cuda_provider: bool,
    /// Whether a CUDA device accepted a session (`None` without provider).
    pub cuda_device: Option<bool>,
    /// Why no CUDA device could be used, if so.
    pub cuda_error: Option<String>,
}

/// ONNX Runtime on one execution provider. Clones share the session
/// counter (each loaded graph keeps one to build more sessions).
#[derive(Clone)]
pub struct OrtBackend {
    kind: BackendKind,
    device: DeviceInfo,
    sessions_built: Arc<AtomicU64>,
}

impl OrtBackend {
    /// ONNX Runtime on the CPU execution provider, `intra_threads` threads
    /// (0: one per core) and the default memory budget.
    pub fn cpu(intra_threads: usize) -> Result<Self, BackendError> {
        Self::cpu_with(OrtOptions { threads: intra_threads, ..OrtOptions::default() })
    }

    /// ONNX Runtime on the CPU execution provider. The first backend of the
    /// process sets `options`; the device string reports what ORT really
    /// uses.
    pub fn cpu_with(options: OrtOptions) -> Result<Self, BackendError> {
        let env = environment_with(options)?;
        let threads = env.threads;
        tracing::debug!(library = %env.library.display(), budget = env.memory_budget, "ONNX Runtime loaded");
        Ok(Self {
            kind: BackendKind::OrtCpu,
            device: DeviceInfo {
                backend: BackendKind::OrtCpu,
                name: format!("cpu ({}, {threads} threads)", std::env::consts::ARCH),
            },
            sessions_built: Arc::default(),
        })
    }

    /// ONNX Runtime on the CUDA execution provider, device 0. Fails with a
    /// clear message when the library has no CUDA provider or no device
    /// accepts a session.
    pub fn cuda(intra_threads: usize) -> Result<Self, BackendError> {
        Self::cuda_with(OrtOptions { threads: intra_threads, ..OrtOptions::default() })
    }

    /// ONNX Runtime on the CUDA execution provider with `options` (see
    /// [`OrtBackend::cpu_with`]).
    pub fn cuda_with(options: OrtOptions) -> Result<Self, BackendError> {
        let env = environment_with(options)?;
        if !env.cuda_provider {
            return Err(BackendError::new(
                BackendErrorKind::Unsupported,
                format!(
                    "no CUDA: the ONNX Runtime at {} has no CUDA execution provider (install onnxruntime-gpu)",
                    env.library.display()
                ),
            ));
        }
        let name = match nvidia_gpu_model() {
            Some(model) => format!("cuda:0 ({model})"),
            None => "cuda:0".into(),
        };
        let backend = Self {
            kind: BackendKind::OrtCuda,
            device: DeviceInfo { backend: BackendKind::OrtCuda, name },
            sessions_built: Arc::default(),
        };
        // A device answers only if a real session can be placed on it.
        backend.commit(&identity_model(), None).map_err(|e| {
            BackendError::new(BackendErrorKind::Unsupported, format!("no CUDA: no device accepted a session: {e}"))
        })?;
        backend.sessions_built.store(0, Ordering::Relaxed);
        Ok(backend)
    }

    /// Loads the library and reports what it can do, without failing.
    pub fn probe() -> Result<OrtProbe, String> {
        let env = environment().map_err(|e| e.message)?;
        let cuda = env.cuda_provider.then(|| Self::cuda(0));
        Ok(OrtProbe {
            library: env.library.display().to_string(),
            cuda_provider: env.cuda_provider,
            cuda_device: cuda.as_ref().map(Result::is_ok),
            cuda_error: match cuda {
                Some(Err(e)) => Some(e.message),
                Some(Ok(_)) => None,
                None => Some("the ONNX Runtime library has no CUDA execution provider".into()),
            },
        })
    }

    /// Number of ORT sessions this backend has built (each is a full graph
    /// optimisation, so caching shows up here).
    pub fn sessions_built(&self) -> u64 {
        self.sessions_built.load(Ordering::Relaxed)
    }

    /// Builds a session for `model`. With a deadline, the build runs on a
    /// loader thread of its own and the caller stops waiting at the
    /// deadline: ORT's graph optimisation is quadratic in graph size for
    /// some graphs (a chain of 8,000 MatMul layers takes 11 s here) and
    /// checks its cancellation flag only between passes. The watchdog sets
    /// that flag at the deadline; a build that still goes on holds one of
    /// the node's load slots (one per core) until it ends, so abandoned
    /// builds can never take more than the node's cores.
    fn build_session(&self, model: &Arc<[u8]>, deadline: Option<Instant>) -> Result<Session, BackendError> {
        let Some(at) = deadline else {
            return self.commit(model, None);
        };
        let slot = LoadSlots::get().take(at).ok_or_else(|| {
            BackendError::new(BackendErrorKind::Timeout, "waited for a model-load slot past the job's deadline")
        })?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (this, model) = (self.clone(), model.clone());
        std::thread::Builder::new()
            .name("mote-ort-load".into())
            .spawn(move || {
                let _slot = slot;
                let _ = tx.send(this.commit(&model, Some(at)));
            })
            .map_err(|e| BackendError::new(BackendErrorKind::Runtime, format!("starting a loader thread: {e}")))?;
        let started = Instant::now();
        match rx.recv_timeout(at.saturating_duration_since(started)) {
            Ok(built) => built,
            Err(_) => Err(BackendError::new(
                BackendErrorKind::Timeout,
                format!("loading the model was stopped at the job's deadline after {:?}", started.elapsed()),
            )),
        }
    }

    /// Creates the session on this thread; the watchdog cancels it at
    /// `deadline`.
    fn commit(&self, model: &[u8], deadline: Option<Instant>) -> Result<Session, BackendError> {
        let env = environment()?;
        let fail = |e: ort::Error<ort::session::builder::SessionBuilder>| {
            BackendError::new(BackendErrorKind::Runtime, format!("configuring ONNX Runtime session: {e}"))
        };
        let mut builder = Session::builder(&env.env)
            .map_err(|e| BackendError::new(BackendErrorKind::Runtime, format!("creating ONNX Runtime session: {e}")))?
            // Defence in depth behind crate::model_screen: external data a
            // model names is looked up under /dev/null, which is not a
            // directory, so no path can reach a file (ORT refuses absolute
            // paths and `..` itself).
            .with_config_entry("session.model_external_initializers_file_folder_path", "/dev/null")
            .and_then(|b| b.with_config_entry("session.use_env_allocators", "1"))
            .map_err(fail)?;
        if self.kind == BackendKind::OrtCuda {
            builder = builder
                // float32 models compute in float32: TF32 tensor cores
                // (ORT's default) keep 10 mantissa bits, so a job's outputs
                // would depend on the GPU generation it lands on and drift
                // ~1e-3 from every other backend a market re-executes on.
                //
                // cuDNN's algorithms by heuristic, not by ORT's default
                // exhaustive benchmark of every algorithm at each new input
                // shape: that search runs inside the job that first brings a
                // shape (unpredictable charges; batched runs bring a new
                // shape per batch size, per session) and, measured on an
                // H200, collapsed batched throughput (docs/gpu.md).
                .with_execution_providers([ort::ep::CUDA::default()
                    .with_tf32(false)
                    .with_conv_algorithm_search(ort::ep::cuda::ConvAlgorithmSearch::Heuristic)
                    .build()
                    .error_on_failure()])
                .map_err(fail)?;
        }
        // Kept alive while the build runs: the watchdog holds it weakly.
        let cancel: Option<Arc<dyn Stop>> = match deadline {
            Some(at) => {
                if at <= Instant::now() {
                    return Err(BackendError::new(BackendErrorKind::Timeout, "the job's deadline passed before the load"));
                }
                let c: Arc<dyn Stop> = Arc::new(builder.canceler());
                Watchdog::get().watch(at, &c);
                Some(c)
            }
            None => None,
        };
        let started = Instant::now();
        let mut built = builder.commit_from_memory(model);
        // ORT's CUDA session set-up synchronises the whole device, which
        // CUDA refuses while another thread's stream is being captured
        // (error 900; seen on an H200 with sessions created beside running
        // ones, onnxruntime#18806): that is no fault of the model, so the
        // build is tried again, briefly, within the deadline.
        let mut tries = 0u64;
        while let Err(e) = &built {
            let out_of_time = deadline.is_some_and(|at| Instant::now() >= at);
            if self.kind != BackendKind::OrtCuda || tries >= 50 || out_of_time || !is_capture_conflict(&e.to_string()) {
                break;
            }
            tries += 1;
            CUDA_CAPTURE_RETRIES.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(std::time::Duration::from_millis(tries.min(10)));
            built = builder.commit_from_memory(model);
        }
        drop(cancel);
        let session = built.map_err(|e| {
            if deadline.is_some_and(|at| Instant::now() >= at) {
                BackendError::new(
                    BackendErrorKind::Timeout,
                    format!("loading the model was stopped at the job's deadline after {:?}", started.elapsed()),
                )
            } else {
                classify_load_error(&e)
            }
        })?;
        self.sessions_built.fetch_add(1, Ordering::Relaxed);
        Ok(session)
    }
}

/// Session builds running at once, abandoned ones included: one per core.
struct LoadSlots {
    free: Mutex<usize>,
    freed: Condvar,
}

/// A taken load slot, given back when dropped (when its build ends).
struct LoadSlot(&'static LoadSlots);

impl Drop for LoadSlot {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

impl LoadSlots {
    fn get() -> &'static LoadSlots {
        static SLOTS: OnceLock<LoadSlots> = OnceLock::new();
        SLOTS.get_or_init(|| LoadSlots {
            free: Mutex::new(std::thread::available_parallelism().map_or(1, |n| n.get())),
            freed: Condvar::new(),
        })
    }

    /// Waits for a slot until `deadline`.
    fn take(&'static self, deadline: Instant) -> Option<LoadSlot> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            free = self.freed.wait_timeout(free, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        *free -= 1;
        Some(LoadSlot(self))
    }
}

/// Session builds retried because another thread was capturing a CUDA
/// stream (see `OrtBackend::commit`), since the process started.
static CUDA_CAPTURE_RETRIES: AtomicU64 = AtomicU64::new(0);

/// How many CUDA session builds were tried again for a stream capture
/// elsewhere in the process (for tests and the device check).
pub fn cuda_capture_retries() -> u64 {
    CUDA_CAPTURE_RETRIES.load(Ordering::Relaxed)
}

/// Whether ORT's message (as ORT gives it, source location first) was
/// raised in its CUDA provider. Only the first word counts: the rest can
/// quote a hostile model's node names, which must not make a model's error
/// pass for a device failure (nor buy it retried builds).
fn from_cuda_provider(raw: &str) -> bool {
    // Session initialisation wraps what its steps throw in this prefix.
    let raw = raw.trim_start();
    let raw = raw.strip_prefix("Exception during initialization:").unwrap_or(raw);
    raw.split_whitespace().next().is_some_and(|w| w.contains("/providers/cuda/"))
}

/// `cudaErrorStreamCaptureUnsupported`, as ORT's CUDA provider words it.
fn is_capture_conflict(raw: &str) -> bool {
    from_cuda_provider(raw) && raw.contains("CUDA failure 900:")
}

/// A failure of the GPU's libraries (CUDA, cuDNN, cuBLAS), not of the model.
fn is_device_failure(raw: &str) -> bool {
    from_cuda_provider(raw) && ["CUDA failure", "CUDNN failure", "CUBLAS failure"].iter().any(|m| raw.contains(m))
}

/// Classifies a session-creation failure by ORT's error code.
fn classify_load_error(e: &ort::Error) -> BackendError {
    use ort::ErrorCode as C;
    let raw = e.to_string();
    let device_failure = is_device_failure(&raw);
    let kind = match e.code() {
        _ if device_failure => BackendErrorKind::Runtime,
        C::NotImplemented => BackendErrorKind::Unsupported,
        C::RuntimeException | C::EngineError | C::ExecutionProviderFailure => BackendErrorKind::Runtime,
        _ => BackendErrorKind::InvalidEncoding,
    };
    let msg = without_source_paths(&raw);
    if device_failure {
        return BackendError::new(kind, format!("the GPU failed while ONNX Runtime loaded the model: {msg}"));
    }
    BackendError::new(kind, format!("ONNX Runtime rejected the model: {msg}"))
}

/// ORT messages start with the C++ source location that raised them
/// (`/onnxruntime_src/onnxruntime/core/...cc:123 fn(...) message`): an
/// internal detail a caller has no use for.
pub(crate) fn without_source_paths(msg: &str) -> String {
    msg.split_whitespace()
        .filter(|w| !(w.contains("onnxruntime_src/") || (w.contains(".cc:") || w.contains(".h:")) && w.contains('/')))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Backend for OrtBackend {
    fn kind(&self) -> BackendKind {
        self.kind
    }

    fn device(&self) -> &DeviceInfo {
        &self.device
    }

    fn load_until(&self, model: Arc<[u8]>, deadline: Option<Instant>) -> Result<Arc<dyn BackendGraph>, BackendError> {
        crate::model_screen::screen(&model)?;
        let session = self.build_session(&model, deadline)?;
        let inputs: Vec<TensorInfo> = session.inputs().iter().map(|o| info(o.name(), o.dtype())).collect();
        let outputs: Vec<TensorInfo> = session.outputs().iter().map(|o| info(o.name(), o.dtype())).collect();
        Ok(Arc::new(OrtGraph {
            inner: Arc::new(GraphInner {
                backend: self.clone(),
                model,
                pool: Mutex::new(Pool { idle: vec![(session, 0)], total: 1, waiting: 0 }),
                freed: Condvar::new(),
                max_sessions: std::thread::available_parallelism().map_or(2, |n| n.get() * 2),
            }),
            inputs: inputs.into(),
            outputs: outputs.into(),
        }))
    }
}

fn info(name: &str, ty: &ValueType) -> TensorInfo {
    match ty {
        ValueType::Tensor { ty, shape, .. } => {
            let datatype = Datatype::from_onnx_data_type(onnx_code(*ty));
            TensorInfo { name: name.to_string(), datatype, shape: shape.iter().copied().collect() }
        }
        _ => TensorInfo { name: name.to_string(), datatype: None, shape: vec![] },
    }
}

struct GraphInner {
    backend: OrtBackend,
    model: Arc<[u8]>,
    pool: Mutex<Pool>,
    /// Signalled when a session goes back to the pool.
    freed: Condvar,
    /// Most sessions built for this model: more concurrent runs than this
    /// wait for one (they would only contend for the same cores).
    max_sessions: usize,
}

struct Pool {
    /// Sessions not running now, each with the shape key of its last run.
    idle: Vec<(Session, u64)>,
    /// Sessions built, idle or running.
    total: usize,
    /// Runs waiting in `checkout` for a session: `checkin` signals only
    /// then (a condvar's notify is a futex call even with nobody waiting,
    /// ≈ 5 % of a 3 µs model's run).
    waiting: usize,
}

impl GraphInner {
    /// Takes an idle session — one whose last run had inputs of the same
    /// shapes (`shape_key`) where there is one —, builds one while under
    /// the cap, or waits for one until `deadline`. The shape preference
    /// matters on CUDA, where a session re-plans its kernels whenever the
    /// input shape changes from its last run (≈ 20 ms for the CNN on an
    /// H200): runs of a few recurring shapes (batched runs, see
    /// crate::batching) each find a session already planned for theirs.
    fn checkout(&self, deadline: Option<Instant>, shape_key: u64) -> Result<Session, BackendError> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let same = pool.idle.iter().rposition(|(_, k)| *k == shape_key);
            if let Some(i) = same.or(pool.idle.len().checked_sub(1)) {
                return Ok(pool.idle.remove(i).0);
            }
            if pool.total < self.max_sessions {
                pool.total += 1;
                drop(pool);
                let built = self.backend.build_session(&self.model, deadline);
                if built.is_err() {
                    let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
                    pool.total -= 1;
                    // A waiter may build in its place.
                    if pool.waiting > 0 {
                        self.freed.notify_one();
                    }
                }
                return built;
            }
            let left = match deadline {
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(BackendError::new(
                            BackendErrorKind::Timeout,
                            "waited for a free session past the deadline",
                        ));
                    }
                    Some(left)
                }
                None => None,
            };
            pool.waiting += 1;
            pool = match left {
                Some(left) => self.freed.wait_timeout(pool, left).unwrap_or_else(|p| p.into_inner()).0,
                None => self.freed.wait(pool).unwrap_or_else(|p| p.into_inner()),
            };
            pool.waiting -= 1;
        }
    }

    fn checkin(&self, s: Session, shape_key: u64) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.idle.push((s, shape_key));
        if pool.waiting > 0 {
            self.freed.notify_one();
        }
    }
}

struct OrtGraph {
    inner: Arc<GraphInner>,
    inputs: Arc<[TensorInfo]>,
    outputs: Arc<[TensorInfo]>,
}

impl BackendGraph for OrtGraph {
    fn init_execution_context(&self) -> Result<Box<dyn BackendExecutionContext>, BackendError> {
        let run_options = RunOptions::new()
            .map(Arc::new)
            .map_err(|e| BackendError::new(BackendErrorKind::Runtime, format!("creating run options: {e}")))?;
        Ok(Box::new(OrtContext {
            graph: self.inner.clone(),
            io: (self.inputs.clone(), self.outputs.clone()),
            run_options,
            watched: None,
            peak_bytes: 0,
            state: KeptState::default(),
        }))
    }

    fn inputs(&self) -> &[TensorInfo] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorInfo] {
        &self.outputs
    }

    fn memory_bytes(&self) -> u64 {
        // The model bytes, plus each session's copy of its weights.
        let sessions = self.inner.pool.lock().unwrap_or_else(|p| p.into_inner()).total as u64;
        self.inner.model.len() as u64 * (1 + sessions.max(1))
    }
}

/// Called when graphs were dropped: the next run gives the arena's free
/// regions (their weights) back to the system.
pub fn memory_freed() {
    super::ort_memory::SHRINK_PENDING.store(true, Ordering::Relaxed);
    super::ort_memory::TRIM_PENDING.store(true, Ordering::Relaxed);
}

/// A job's context: it holds a session only while `compute` runs, so the
/// number of sessions follows concurrent runs, not open contexts.
struct OrtContext {
    graph: Arc<GraphInner>,
    /// The graph's declared inputs and outputs.
    io: (Arc<[TensorInfo]>, Arc<[TensorInfo]>),
    /// Lets the watchdog stop a run at the job's deadline.
    run_options: Arc<RunOptions>,
    /// The deadline `run_options` is registered for.
    watched: Option<Instant>,
    /// Arena bytes this context's last run was charged for.
    peak_bytes: u64,
    /// Outputs fed back as inputs (`mote:edge/state`).
    state: KeptState,
}

/// Bound outputs kept between runs as ORT values (for the CPU provider in
/// host memory, for CUDA where ORT put them): the next run takes them by
/// reference, so a KV cache is never copied out of ORT or into the guest.
#[derive(Default)]
struct KeptState {
    /// `(output, input)` pairs.
    pairs: Vec<(String, String)>,
    /// Kept values by input name.
    values: std::collections::HashMap<String, DynValue>,
}


/// Stops ORT runs that pass their job's deadline. ORT checks the terminate
/// flag between kernels, so a long inference ends soon after the deadline
/// instead of holding the node. One thread serves the whole process.
struct Watchdog {
    due: Mutex<Due>,
    wake: Condvar,
}

/// Something the watchdog can stop: a run (its `RunOptions`' terminate
/// flag) or a session build (its load-cancellation flag).
trait Stop: Send + Sync {
    fn stop(&self);
}

impl Stop for RunOptions {
    fn stop(&self) {
        let _ = self.terminate();
    }
}

impl Stop for ort::session::builder::LoadCanceler {
    fn stop(&self) {
        let _ = self.cancel();
    }
}

#[derive(Default)]
struct Due {
    entries: Vec<(Instant, Weak<dyn Stop>)>,
    /// When the thread next wakes (it may be earlier than any live entry).
    earliest: Option<Instant>,
}

impl Watchdog {
    fn get() -> &'static Watchdog {
        static DOG: OnceLock<&'static Watchdog> = OnceLock::new();
        DOG.get_or_init(|| {
            let dog: &'static Watchdog = Box::leak(Box::new(Watchdog { due: Mutex::default(), wake: Condvar::new() }));
            std::thread::Builder::new()
                .name("mote-ort-watchdog".into())
                .spawn(move || dog.run())
                .expect("spawn the ORT watchdog thread");
            dog
        })
    }

    /// O(1) amortised: registering is on every job's path.
    fn watch(&self, deadline: Instant, run: &Arc<dyn Stop>) {
        let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
        // Drop entries of finished contexts now and then, not per insert.
        let n = due.entries.len();
        if n >= 1024 && n.is_power_of_two() {
            due.entries.retain(|(_, r)| r.strong_count() > 0);
        }
        due.entries.push((deadline, Arc::downgrade(run)));
        // The thread sleeps until the earliest deadline: wake it only if
        // this one comes sooner (the usual later deadline costs no wake-up).
        if due.earliest.is_none_or(|e| deadline < e) {
            due.earliest = Some(deadline);
            self.wake.notify_one();
        }
    }

    fn run(&self) {
        let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let now = Instant::now();
            due.entries.retain(|(at, run)| {
                if *at > now {
                    return run.strong_count() > 0;
                }
                if let Some(run) = run.upgrade() {
                    run.stop();
                }
                false
            });
            due.earliest = due.entries.iter().map(|(at, _)| *at).min();
            due = match due.earliest {
                Some(next) => {
                    let wait = next.saturating_duration_since(now);
                    self.wake.wait_timeout(due, wait).unwrap_or_else(|p| p.into_inner()).0
                }
                None => self.wake.wait(due).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }
}

/// ONNX Runtime's element types are ONNX's data types, same numbers.
fn onnx_code(t: TensorElementType) -> i32 {
    ort::sys::ONNXTensorElementDataType::from(t) as i32
}

/// The ORT element types a wasi-nn tensor can be.
const ORT_ELEMENT_TYPES: [TensorElementType; 8] = [
    TensorElementType::Float16,
    TensorElementType::Float32,
    TensorElementType::Float64,
    TensorElementType::Bfloat16,
    TensorElementType::Uint8,
    TensorElementType::Bool,
    TensorElementType::Int32,
    TensorElementType::Int64,
];

fn element_of(t: ElementType) -> TensorElementType {
    let code = t.onnx_data_type();
    *ORT_ELEMENT_TYPES.iter().find(|o| onnx_code(**o) == code).expect("every element type is an ORT type")
}

fn element_from(t: TensorElementType) -> Option<ElementType> {
    // Booleans are one byte 0/1, the same bytes as U8.
    ElementType::from_onnx_data_type(onnx_code(t))
}

/// Wraps guest bytes as an ORT tensor without copying them.
fn input_value<'a>(
    view: &TensorView<'a>,
    want: Option<TensorElementType>,
) -> Result<SessionInputValue<'a>, BackendError> {
    let mut ty = element_of(view.ty);
    // A model input declared `bool` accepts U8 bytes (wasi-nn has no bool).
    if view.ty == ElementType::U8 && want == Some(TensorElementType::Bool) {
        ty = TensorElementType::Bool;
    }
    let shape = ort::value::Shape::new(view.dims.iter().map(|&d| i64::from(d)));
    let count: usize = view.dims.iter().map(|&d| d as usize).product();
    if count * view.ty.size() != view.data.len() {
        return Err(BackendError::new(
            BackendErrorKind::InvalidArgument,
            format!(
                "tensor data is {} bytes but shape {:?} needs {}",
                view.data.len(),
                view.dims,
                count * view.ty.size()
            ),
        ));
    }
    if ty == TensorElementType::Bool {
        if let Some(i) = view.data.iter().position(|&b| b > 1) {
            return Err(BackendError::new(
                BackendErrorKind::InvalidArgument,
                format!("element {i} of a bool input is {}; bool tensors hold 0 or 1", view.data[i]),
            ));
        }
    }
    let misaligned = (view.data.as_ptr() as usize) % view.ty.size() != 0;
    macro_rules! wrap {
        ($t:ty) => {{
            if misaligned {
                // Rare (the ABI copy is normally aligned): copy into an owned,
                // aligned tensor.
                let mut owned = ort::value::DynTensor::new(&ort::memory::Allocator::default(), ty, shape)
                    .map_err(|e| BackendError::new(BackendErrorKind::Runtime, e.to_string()))?;
                // SAFETY: the tensor was just allocated with exactly `data.len()` bytes on the CPU.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        view.data.as_ptr(),
                        owned.data_ptr_mut().cast::<u8>(),
                        view.data.len(),
                    )
                };
                SessionInputValue::from(owned.into_dyn())
            } else {
                // SAFETY: `data` is aligned for `$t` (checked above), holds
                // exactly `count` elements, and every bit pattern is a valid
                // `$t` (bool bytes were checked to be 0 or 1). The slice
                // borrows `data` for 'a: a shared, read-only view.
                let elems: &'a [$t] = unsafe { std::slice::from_raw_parts(view.data.as_ptr().cast::<$t>(), count) };
                let t = ort::value::TensorRef::<'a, $t>::from_array_view((shape, elems))
                    .map_err(|e| BackendError::new(BackendErrorKind::InvalidArgument, e.to_string()))?;
                SessionInputValue::from(t)
            }
        }};
    }
    Ok(match ty {
        TensorElementType::Float16 => wrap!(half::f16),
        TensorElementType::Float32 => wrap!(f32),
        TensorElementType::Float64 => wrap!(f64),
        TensorElementType::Bfloat16 => wrap!(half::bf16),
        TensorElementType::Uint8 => wrap!(u8),
        TensorElementType::Bool => wrap!(bool),
        TensorElementType::Int32 => wrap!(i32),
        TensorElementType::Int64 => wrap!(i64),
        other => {
            return Err(BackendError::new(BackendErrorKind::Unsupported, format!("unsupported input type {other}")));
        }
    })
}

fn output_tensor(name: &str, value: &DynValue) -> Result<OwnedTensor, BackendError> {
    let ValueType::Tensor { ty, shape, .. } = value.dtype() else {
        return Err(BackendError::new(
            BackendErrorKind::Unsupported,
            format!("output '{name}' is a {}, not a tensor; wasi-nn returns tensors only", value.dtype()),
        ));
    };
    let elem = element_from(*ty).ok_or_else(|| {
        BackendError::new(
            BackendErrorKind::Unsupported,
            format!("output '{name}' has element type {ty}, which wasi-nn cannot carry"),
        )
    })?;
    let dims = shape
        .iter()
        .map(|&d| u32::try_from(d))
        .collect::<Result<Vec<u32>, _>>()
        .map_err(|_| BackendError::new(BackendErrorKind::Runtime, format!("output '{name}' has a bad shape")))?;
    let len = dims.iter().map(|&d| d as usize).product::<usize>() * elem.size();
    let tensor = value
        .view()
        .downcast::<ort::value::DynTensorValueType>()
        .map_err(|e| BackendError::new(BackendErrorKind::Runtime, e.to_string()))?;
    let ptr = tensor.data_ptr().cast::<u8>();
    let data = if len == 0 || ptr.is_null() {
        Vec::new()
    } else {
        // SAFETY: a CPU output tensor of `len` bytes (outputs are bound to
        // CPU memory; for CUDA sessions ORT copies outputs back by default).
        unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec()
    };
    Ok(OwnedTensor { ty: elem, dims, data })
}

impl BackendExecutionContext for OrtContext {
    fn compute(
        &mut self,
        inputs: &[(&str, TensorView<'_>)],
        deadline: Option<Instant>,
    ) -> Result<Vec<(String, OwnedTensor)>, BackendError> {
        if let Some(at) = deadline {
            if at <= Instant::now() {
                return Err(BackendError::new(BackendErrorKind::Timeout, "the job's deadline passed before compute"));
            }
            // One registration per context and deadline: every run of the
            // job shares the job's deadline, so once it fires, it stops them all.
            if self.watched != Some(at) {
                let stop: Arc<dyn Stop> = self.run_options.clone();
                Watchdog::get().watch(at, &stop);
                self.watched = Some(at);
            }
        }
        let shape_key = shape_key(inputs);
        let mut session = self.graph.checkout(deadline, shape_key)?;
        let watch = super::ort_memory::RunWatch::start(&session);
        // A run that gives the arena's free regions back has its own run
        // options (the context's are shared with the watchdog).
        let shrinking = if super::ort_memory::SHRINK_PENDING.swap(false, Ordering::Relaxed) { shrink_options(deadline) } else { None };
        let result =
            run(&mut session, inputs, &mut self.state, shrinking.as_deref().unwrap_or(&self.run_options), deadline);
        if result.is_err() {
            // A failed step leaves the sequence undefined: start over.
            self.state.values.clear();
        }
        self.peak_bytes = watch.map_or(0, |w| w.finish());
        self.graph.checkin(session, shape_key);
        result
    }

    fn backend_peak_bytes(&self) -> u64 {
        self.peak_bytes
    }

    fn bind_state(&mut self, pairs: &[(String, String)]) -> Result<(), BackendError> {
        let (inputs, outputs) = &self.io;
        for (out, inp) in pairs {
            if !outputs.iter().any(|o| &o.name == out) {
                return Err(BackendError::new(BackendErrorKind::InvalidArgument, format!("the model has no output named '{out}'")));
            }
            if !inputs.iter().any(|i| &i.name == inp) {
                return Err(BackendError::new(BackendErrorKind::InvalidArgument, format!("the model has no input named '{inp}'")));
            }
        }
        self.state = KeptState { pairs: pairs.to_vec(), values: Default::default() };
        Ok(())
    }

    fn reset_state(&mut self) {
        self.state.values.clear();
    }
}

/// A hash of the inputs' shapes (FNV-1a over the dimensions), for
/// matching a run to a session that last ran the same shapes; a collision
/// only costs that preference.
fn shape_key(inputs: &[(&str, TensorView<'_>)]) -> u64 {
    inputs.iter().flat_map(|(_, t)| t.dims.iter().chain(std::iter::once(&u32::MAX))).fold(
        0xcbf2_9ce4_8422_2325u64,
        |h, &d| (h ^ u64::from(d)).wrapping_mul(0x0000_0100_0000_01b3),
    )
}

/// Run options that shrink the CPU arena after the run, watched for the
/// job's deadline like the context's own.
fn shrink_options(deadline: Option<Instant>) -> Option<Arc<RunOptions>> {
    let mut o = RunOptions::new().ok()?;
    let (key, value) = super::ort_memory::SHRINK_ENTRY;
    o.set(key, value).ok()?;
    let o = Arc::new(o);
    if let Some(at) = deadline {
        // The watchdog holds it weakly; the caller's Arc lives until the
        // run ends.
        Watchdog::get().watch(at, &(o.clone() as Arc<dyn Stop>));
    }
    Some(o)
}

fn run(
    session: &mut Session,
    inputs: &[(&str, TensorView<'_>)],
    state: &mut KeptState,
    run_options: &RunOptions,
    deadline: Option<Instant>,
) -> Result<Vec<(String, OwnedTensor)>, BackendError> {
    let mut values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
    for (name, view) in inputs {
        let declared = session.inputs().iter().find(|o| o.name() == *name).ok_or_else(|| {
            let names: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
            BackendError::new(
                BackendErrorKind::InvalidArgument,
                format!("the model has no input named '{name}' (inputs: {})", names.join(", ")),
            )
        })?;
        let want = declared.dtype().tensor_type();
        values.push((Cow::Borrowed(*name), input_value(view, want)?));
    }
    for (out, inp) in &state.pairs {
        if inputs.iter().any(|(n, _)| n == inp) {
            continue;
        }
        let kept = state.values.get(inp).ok_or_else(|| {
            BackendError::new(
                BackendErrorKind::InvalidArgument,
                format!("input '{inp}' is bound to output '{out}' but no value is kept yet: pass it to start a sequence"),
            )
        })?;
        values.push((Cow::Borrowed(inp.as_str()), SessionInputValue::from(kept)));
    }
    let mut outputs = session.run_with_options(values, run_options).map_err(|e| {
        let msg = without_source_paths(&e.to_string());
        let kind = if deadline.is_some_and(|at| Instant::now() >= at) {
            BackendErrorKind::Timeout
        } else if super::ort_memory::is_out_of_budget(&msg) {
            BackendErrorKind::MemoryLimit
        } else if e.code() == ort::ErrorCode::InvalidArgument {
            BackendErrorKind::InvalidArgument
        } else {
            BackendErrorKind::Runtime
        };
        BackendError::new(kind, format!("inference failed: {msg}"))
    })?;
    if !state.pairs.is_empty() {
        let mut kept = std::collections::HashMap::with_capacity(state.pairs.len());
        for (out, inp) in &state.pairs {
            let value = outputs.remove(out.as_str()).ok_or_else(|| {
                BackendError::new(BackendErrorKind::Runtime, format!("the run produced no output '{out}'"))
            })?;
            kept.insert(inp.clone(), value);
        }
        state.values = kept;
    }
    let mut result = Vec::with_capacity(outputs.len());
    for (name, value) in outputs.iter() {
        result.push((name.to_string(), output_tensor(name, &value)?));
    }
    Ok(result)
}

/// A one-node ONNX model (`Identity` on a float tensor), used to ask a
/// device whether it accepts a session.
fn identity_model() -> Vec<u8> {
    let mut d = crate::graph_builder::GraphDraft::default();
    let x = d.input("x", ElementType::F32, &[1]).expect("valid input");
    d.lower(&[("y".into(), x)]).expect("valid graph")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As ORT 1.31's CUDA provider reported it on an H200 (a session built
    /// while another thread's stream was capturing).
    const CAPTURE: &str = "/onnxruntime_src/onnxruntime/core/providers/cuda/cuda_call.cc:129 std::conditional_t<THRW, void, \
        onnxruntime::common::Status> onnxruntime::CudaCall(ERRTYPE, const char*, const char*, SUCCTYPE, const char*, \
        const char*, int) [with ERRTYPE = cudaError; bool THRW = true] CUDA failure 900: operation not permitted when \
        stream is capturing ; GPU=0 ; hostname=vm ; ; line=358 ; expr=cudaDeviceSynchronize();";

    #[test]
    fn a_stream_capture_elsewhere_is_a_device_failure_to_retry_not_a_bad_model() {
        assert!(is_capture_conflict(CAPTURE));
        assert!(is_device_failure(CAPTURE));
        let cuda = "/onnxruntime_src/onnxruntime/core/providers/cuda/cuda_call.cc:129 CudaCall";
        assert!(!is_capture_conflict(&format!("{cuda} CUDA failure 2: out of memory ; GPU=0")));
        assert!(is_device_failure(&format!("{cuda} CUDNN failure 5000: CUDNN_STATUS_EXECUTION_FAILED")));
        // A model's own words (a node named so) are not a device failure.
        let hostile = "/onnxruntime_src/onnxruntime/core/graph/graph.cc:1234 Node (CUDA failure 900: operation not \
            permitted when stream is capturing) has input size 0";
        assert!(!is_capture_conflict(hostile) && !is_device_failure(hostile));
        assert!(is_device_failure(&format!("Exception during initialization: {cuda} CUDNN failure 4: INTERNAL_ERROR")));
        // Plain model errors stay model errors.
        for msg in ["Protobuf parsing failed.", "This is an invalid model. Error: two nodes with same node name (n)."] {
            assert!(!is_device_failure(msg) && !is_capture_conflict(msg), "{msg}");
        }
        assert!(!without_source_paths(CAPTURE).contains("onnxruntime_src"));
    }
}
