//! The runtime: engine, backends, cache, deployments and jobs.

use crate::backend::ort::OrtBackend;
use crate::backend::{Backend, BackendChoice, BackendError, BackendKind};
use crate::graph_cache::{CacheStats, GraphCache, Residency};
use crate::host::bindings::{self, exports::mote::edge::handler, mote::edge::types as wit};
use crate::host::{JobState, LogLevel, LogLine};
use crate::limits::{JobAbort, Limits, Outcome};
use crate::price::PriceTable;
use crate::receipt::{sha256_hex, NodeKey, Receipt};
use crate::tensor::{Datatype, IoTensor};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::WasiCtxBuilder;

/// How often the epoch ticks; deadlines are rounded up to it.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Node-wide settings.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Threads per ONNX Runtime session (0: ORT's default, all cores).
    pub ort_threads: usize,
    /// Most bytes ONNX Runtime may hold on the CPU for all jobs and cached
    /// graphs together (the node's backend budget).
    pub backend_memory_bytes: u64,
    /// Component instances the pooling allocator keeps ready (also the most
    /// jobs that can run at once).
    pub pool_instances: u32,
    /// Largest linear memory any deployment may allow, in bytes.
    pub max_memory_bytes: u64,
    /// Bytes of loaded graphs the cache holds (see [`GraphCache`]).
    pub cache_bytes: u64,
    /// Node key directory (`node.key`), or `None` for an ephemeral key.
    pub data_dir: Option<PathBuf>,
    /// wasmtime's compiled-module cache, on disk (`None`: off).
    pub compile_cache: bool,
    /// Prices for receipts.
    pub price: PriceTable,
    /// Meter guest instructions with wasmtime fuel (and enforce
    /// `Limits::fuel`). Off only to measure its cost: receipts then report
    /// zero fuel.
    pub fuel_metering: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            ort_threads: 0,
            backend_memory_bytes: crate::backend::ort::default_memory_budget(),
            pool_instances: 64,
            max_memory_bytes: 4 << 30,
            cache_bytes: 2 << 30,
            data_dir: Some(crate::receipt::default_data_dir()),
            compile_cache: false,
            price: PriceTable::default(),
            fuel_metering: true,
        }
    }
}

/// Backends, each created on first use (loading ONNX Runtime, probing CUDA).
pub(crate) struct Backends {
    ort: crate::backend::ort::OrtOptions,
    cpu: OnceLock<Result<Arc<OrtBackend>, BackendError>>,
    cuda: OnceLock<Result<Arc<OrtBackend>, BackendError>>,
    wgpu: OnceLock<Result<Arc<dyn Backend>, BackendError>>,
}

impl Backends {
    pub(crate) fn get(&self, kind: BackendKind) -> Result<Arc<dyn Backend>, BackendError> {
        let cell = match kind {
            BackendKind::OrtCpu => &self.cpu,
            BackendKind::OrtCuda => &self.cuda,
            BackendKind::Wgpu => {
                let b = self.wgpu.get_or_init(|| {
                    let b = crate::backend::standalone(BackendKind::Wgpu);
                    if let Err(e) = &b {
                        tracing::info!(backend = %kind, "backend unavailable: {e}");
                    }
                    b.map(Arc::from)
                });
                return b.clone();
            }
        };
        let b = cell.get_or_init(|| {
            let b = match kind {
                BackendKind::OrtCpu => OrtBackend::cpu_with(self.ort),
                BackendKind::OrtCuda => OrtBackend::cuda_with(self.ort),
                BackendKind::Wgpu => unreachable!("returned above"),
            };
            if let Err(e) = &b {
                tracing::info!(backend = %kind, "backend unavailable: {e}");
            }
            b.map(Arc::new)
        });
        match b {
            Ok(b) => Ok(b.clone() as Arc<dyn Backend>),
            Err(e) => Err(e.clone()),
        }
    }

    /// The backend a deployment's named models run on (`load-by-name`, and
    /// `warm`, which must agree with it to pre-fill the cache): a fixed
    /// choice, or for `auto` the best GPU, else ORT CPU.
    pub(crate) fn for_named_models(&self, choice: BackendChoice) -> BackendKind {
        match choice {
            BackendChoice::Fixed(k) => k,
            BackendChoice::Auto => self.best_gpu().unwrap_or(BackendKind::OrtCpu),
        }
    }

    /// The best GPU backend this node can use, if any: CUDA, else wgpu on a
    /// hardware adapter. A software adapter (llvmpipe) does not count: ORT
    /// CPU is faster than a rasteriser emulating a GPU on the same cores.
    pub(crate) fn best_gpu(&self) -> Option<BackendKind> {
        if self.get(BackendKind::OrtCuda).is_ok() {
            return Some(BackendKind::OrtCuda);
        }
        #[cfg(feature = "wgpu")]
        if crate::backend::wgpu::has_hardware_adapter() && self.get(BackendKind::Wgpu).is_ok() {
            return Some(BackendKind::Wgpu);
        }
        None
    }

    fn sessions_built(&self) -> u64 {
        [&self.cpu, &self.cuda]
            .iter()
            .filter_map(|c| c.get().and_then(|r| r.as_ref().ok()))
            .map(|b| b.sessions_built())
            .sum()
    }
}

/// State shared by all jobs.
pub(crate) struct Shared {
    pub(crate) backends: Backends,
    pub(crate) cache: GraphCache,
    key: NodeKey,
    price: PriceTable,
}

/// A model a deployment may load by name.
#[derive(Clone)]
pub(crate) struct Model {
    pub(crate) bytes: Arc<[u8]>,
    pub(crate) sha256: String,
}

pub(crate) type Models = HashMap<String, Model>;

/// The node runtime. Cheap to clone; all clones share one engine.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    /// The pool's memory slot size: no deployment may allow more.
    max_memory_bytes: u64,
    linker: Arc<Linker<JobState>>,
    shared: Arc<Shared>,
    /// Stops the epoch thread when the last clone is dropped.
    _ticker: Arc<Ticker>,
}

struct Ticker(Arc<AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Why a deployment could not be created.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The guest is not a valid component.
    #[error("guest is not a valid WebAssembly component: {0}")]
    InvalidGuest(String),
    /// The guest imports something mote does not provide, or lacks the
    /// `handler` export.
    #[error("guest does not fit the mote:edge/job world: {0}")]
    WorldMismatch(String),
    /// A bad model or setting.
    #[error("{0}")]
    Invalid(String),
}

/// Everything needed to create a [`Deployment`].
#[derive(Clone, Debug, Default)]
pub struct DeploymentSpec {
    /// Deployment name.
    pub name: String,
    /// Component bytes.
    pub guest: Vec<u8>,
    /// Named ONNX models the guest may `load-by-name`.
    pub models: Vec<(String, Vec<u8>)>,
    /// Limits per job.
    pub limits: Limits,
    /// Backend choice.
    pub backend: BackendChoice,
}

/// A compiled guest with its models, ready to run jobs.
#[derive(Clone)]
pub struct Deployment {
    name: String,
    /// Whose share of the graph cache this deployment's loads count in.
    cache_owner: Arc<str>,
    pre: bindings::JobPre<JobState>,
    guest_sha256: String,
    models: Arc<Models>,
    limits: Limits,
    backend: BackendChoice,
    runtime: Runtime,
}

/// One inference request (KServe v2 data model).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Request {
    /// Input tensors.
    pub inputs: Vec<IoTensor>,
    /// String parameters.
    pub parameters: Vec<(String, String)>,
}

/// One inference response.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Response {
    /// Output tensors.
    pub outputs: Vec<IoTensor>,
    /// String parameters.
    pub parameters: Vec<(String, String)>,
}

/// The declared inputs and outputs of one of a deployment's models.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ModelInfo {
    /// The model's name in the deployment.
    pub name: String,
    /// sha256 of the ONNX bytes.
    pub sha256: String,
    /// Declared inputs.
    pub inputs: Vec<crate::backend::TensorInfo>,
    /// Declared outputs.
    pub outputs: Vec<crate::backend::TensorInfo>,
}

/// Why a job produced no response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{outcome}: {message}")]
pub struct JobError {
    /// How the job ended.
    pub outcome: Outcome,
    /// What happened.
    pub message: String,
}

/// Everything a job produced.
#[derive(Debug)]
pub struct JobReport {
    /// The response, or why there is none.
    pub result: Result<Response, JobError>,
    /// The signed receipt.
    pub receipt: Receipt,
    /// Captured log lines (guest log, stdout, stderr).
    pub log: Vec<LogLine>,
}

impl Runtime {
    /// Creates a runtime: engine with fuel, epochs and the pooling allocator.
    pub fn new(config: RuntimeConfig) -> Result<Self, String> {
        let mut wc = Config::new();
        wc.consume_fuel(config.fuel_metering);
        wc.epoch_interruption(true);
        wc.wasm_component_model(true);
        // Explicit bounds checks instead of guard pages. With guard pages,
        // every job whose memory grew makes the next instantiation of that
        // pool slot mprotect the grown pages back to PROT_NONE: a TLB
        // shootdown that interrupts every other core running jobs (and takes
        // the mmap lock). Measured on the MLP passthrough job (2 cores, same
        // run): 11.0k → 12.5k jobs/s on one thread, 13.7k → 22.5k on two
        // (scaling ×1.25 → ×1.8); guest-heavy jobs (classifier: image
        // resizing in the guest) unchanged within noise.
        wc.signals_based_traps(false);
        wc.memory_guard_size(0);
        let mut pool = PoolingAllocationConfig::default();
        let n = config.pool_instances.max(1);
        pool.total_component_instances(n)
            .total_core_instances(n * 8)
            .total_memories(n * 2)
            .total_tables(n * 4)
            .max_memory_size(config.max_memory_bytes as usize)
            // Reset small guests' memory with memset instead of madvise: no
            // page faults on the next job's first touches.
            .linear_memory_keep_resident(4 << 20)
            .table_keep_resident(64 << 10);
        wc.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        if config.compile_cache {
            let cache = wasmtime::Cache::from_file(None).map_err(|e| format!("compiled-module cache: {e}"))?;
            wc.cache(Some(cache));
        }
        let engine = Engine::new(&wc).map_err(|e| format!("creating the wasm engine: {e}"))?;

        let mut linker = Linker::<JobState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| format!("linking WASI: {e}"))?;
        bindings::Job::add_to_linker::<_, HasSelf<JobState>>(&mut linker, |s| s)
            .map_err(|e| format!("linking mote:edge: {e}"))?;

        let key = match &config.data_dir {
            Some(dir) => NodeKey::load_or_create(dir).map_err(|e| format!("node key in {}: {e}", dir.display()))?,
            None => NodeKey::generate(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("mote-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| format!("starting the epoch thread: {e}"))?;
        }
        Ok(Self {
            engine,
            max_memory_bytes: config.max_memory_bytes,
            linker: Arc::new(linker),
            shared: Arc::new(Shared {
                backends: Backends {
                    ort: crate::backend::ort::OrtOptions {
                        threads: config.ort_threads,
                        memory_budget: config.backend_memory_bytes,
                    },
                    cpu: OnceLock::new(),
                    cuda: OnceLock::new(),
                    wgpu: OnceLock::new(),
                },
                cache: GraphCache::new(config.cache_bytes),
                key,
                price: config.price,
            }),
            _ticker: Arc::new(Ticker(stop)),
        })
    }

    /// The node id (ed25519 public key, hex) that signs receipts.
    pub fn node_id(&self) -> String {
        self.shared.key.node_id()
    }

    /// Graph cache counters.
    pub fn cache_stats(&self) -> CacheStats {
        self.shared.cache.stats()
    }

    /// ORT sessions built so far (each one a full model optimisation).
    pub fn sessions_built(&self) -> u64 {
        self.shared.backends.sessions_built()
    }

    /// The backend and device `choice` resolves to for named models, or why
    /// it cannot be used.
    pub fn backend_device(&self, choice: BackendChoice) -> Result<(BackendKind, String), String> {
        let kind = self.shared.backends.for_named_models(choice);
        let b = self.shared.backends.get(kind).map_err(|e| e.message)?;
        Ok((kind, b.device().name.clone()))
    }

    /// Compiles a guest and prepares it (imports resolved once, so each job
    /// only instantiates).
    pub fn deploy(&self, spec: DeploymentSpec) -> Result<Deployment, DeployError> {
        if spec.limits.memory_bytes > self.max_memory_bytes {
            return Err(DeployError::Invalid(format!(
                "deployment '{}': memory limit {} exceeds this node's largest guest memory ({} bytes, \
                 RuntimeConfig::max_memory_bytes)",
                spec.name, spec.limits.memory_bytes, self.max_memory_bytes
            )));
        }
        let component =
            Component::new(&self.engine, &spec.guest).map_err(|e| DeployError::InvalidGuest(one_line(&e)))?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| DeployError::WorldMismatch(one_line(&e)))?;
        let pre = bindings::JobPre::new(pre).map_err(|e| DeployError::WorldMismatch(one_line(&e)))?;
        let mut models = Models::new();
        for (name, bytes) in spec.models {
            if bytes.is_empty() {
                return Err(DeployError::Invalid(format!("model '{name}' is empty")));
            }
            crate::model_screen::screen(&bytes).map_err(|e| DeployError::Invalid(format!("model '{name}': {e}")))?;
            let sha256 = sha256_hex(&bytes);
            if models.insert(name.clone(), Model { bytes: bytes.into(), sha256 }).is_some() {
                return Err(DeployError::Invalid(format!("model '{name}' is declared twice")));
            }
        }
        Ok(Deployment {
            cache_owner: spec.name.as_str().into(),
            name: spec.name,
            pre,
            guest_sha256: sha256_hex(&spec.guest),
            models: Arc::new(models),
            limits: spec.limits,
            backend: spec.backend,
            runtime: self.clone(),
        })
    }
}

impl Deployment {
    /// The deployment's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// sha256 of the guest component.
    pub fn guest_sha256(&self) -> &str {
        &self.guest_sha256
    }

    /// The deployment's limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Gets the deployment ready to serve: loads every named model into the
    /// graph cache (on the backend `load-by-name` will use) and instantiates
    /// the guest once. Returns the models' declared inputs and outputs.
    pub fn warm(&self) -> Result<Vec<ModelInfo>, String> {
        let shared = &self.runtime.shared;
        let (kind, _) = self.runtime.backend_device(self.backend)?;
        let backend = shared.backends.get(kind).map_err(|e| e.message)?;
        let mut names: Vec<&String> = self.models.keys().collect();
        names.sort();
        let mut infos = Vec::new();
        for name in names {
            let m = &self.models[name];
            let (graph, _) = shared
                .cache
                .get_or_load(&m.sha256, kind, &self.cache_owner, Residency::Pinned, || backend.load(m.bytes.clone()))
                .map_err(|e| format!("model '{name}': {}", e.message))?;
            infos.push(ModelInfo {
                name: name.clone(),
                sha256: m.sha256.clone(),
                inputs: graph.inputs().to_vec(),
                outputs: graph.outputs().to_vec(),
            });
        }
        self.instantiate_probe()?;
        Ok(infos)
    }

    /// Instantiates the guest in a fresh store and drops it, calling
    /// nothing: the fixed cost of a job before its handler runs.
    pub fn instantiate_probe(&self) -> Result<(), String> {
        let (mut store, _) = self.new_store(WasiCtxBuilder::new().build());
        self.pre.instantiate(&mut store).map_err(|e| format!("instantiating the guest: {}", classify(&e).message))?;
        Ok(())
    }

    /// A job's store with every limit armed: memory limiter, fuel (the bool:
    /// whether metering is on) and the epoch deadline.
    fn new_store(&self, wasi: wasmtime_wasi::WasiCtx) -> (Store<JobState>, bool) {
        let rt = &self.runtime;
        let state = JobState::new(
            rt.shared.clone(),
            self.models.clone(),
            self.cache_owner.clone(),
            self.backend,
            self.limits.clone(),
            wasi,
        );
        let mut store = Store::new(&rt.engine, state);
        store.limiter(|s| &mut s.limiter);
        let fuel_armed = store.set_fuel(self.limits.fuel).is_ok();
        store.set_epoch_deadline(self.limits.deadline_ms.div_ceil(EPOCH_TICK.as_millis() as u64).max(1));
        store.epoch_deadline_trap();
        (store, fuel_armed)
    }

    /// Runs one job: a fresh instance, limits armed, `handle` called once.
    /// Never panics on guest behaviour; every failure is in the report.
    /// Copies the request once; [`Deployment::run_owned`] does not.
    pub fn run(&self, request: &Request) -> JobReport {
        self.run_owned(request.clone())
    }

    /// Like [`Deployment::run`], taking the request: its tensors move into
    /// the call, so the only copy of their bytes is into guest memory.
    pub fn run_owned(&self, request: Request) -> JobReport {
        let started_at = SystemTime::now();
        let start = Instant::now();
        let rt = &self.runtime;
        let stdout = MemoryOutputPipe::new(self.limits.max_log_bytes as usize);
        let stderr = MemoryOutputPipe::new(self.limits.max_log_bytes as usize);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let (mut store, armed) = self.new_store(wasi);
        let input_sha256 = digest(&request.inputs, &request.parameters);
        let result = self.call(&mut store, request);
        // Fuel left, where metering is on.
        let fuel_left = if armed { store.get_fuel().ok() } else { None };
        let wall_ns = start.elapsed().as_nanos() as u64;

        let mut state = store.into_data();
        let usage = state.usage(fuel_left, wall_ns);
        // Captured stdout/stderr go through the job log, so the kept log is
        // bounded by max_log_bytes for the whole job, not per pipe.
        for (pipe, level) in [(stdout, LogLevel::Stdout), (stderr, LogLevel::Stderr)] {
            let text = pipe.contents();
            for line in String::from_utf8_lossy(&text).lines() {
                state.log.push(level, line.to_string());
            }
        }
        let mut log = std::mem::take(&mut state.log.lines);
        if state.log.dropped > 0 {
            log.push(LogLine {
                level: LogLevel::Warn,
                message: format!("{} log lines dropped (max_log_bytes)", state.log.dropped),
            });
        }
        let m = &state.meter;
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(e) => e.outcome,
        };
        let (backend, device) = m
            .backend_used
            .clone()
            .map_or_else(|| ("none".to_string(), "none".to_string()), |(k, d)| (k.to_string(), d));
        let mut receipt = Receipt {
            job_id: hex::encode(rand::random::<[u8; 16]>()),
            node_id: String::new(),
            guest_sha256: self.guest_sha256.clone(),
            model_sha256: m.models.clone(),
            input_sha256,
            output_sha256: match &result {
                Ok(r) => digest(&r.outputs, &r.parameters),
                Err(_) => digest(&[], &[]),
            },
            started_at: humantime::format_rfc3339_millis(started_at).to_string(),
            price_units: rt.shared.price.price(usage.backend_ns, usage.fuel, usage.bytes_in + usage.bytes_out),
            usage,
            outcome,
            backend,
            device,
            signature: String::new(),
        };
        receipt.sign(&rt.shared.key);
        if let Err(e) = &result {
            tracing::info!(deployment = %self.name, outcome = %e.outcome, "job failed: {}", e.message);
        }
        JobReport { result, receipt, log }
    }

    fn call(&self, store: &mut Store<JobState>, request: Request) -> Result<Response, JobError> {
        // Checked before the guest runs: each input becomes a resource in
        // the store's bounded table, and names are how guests find them.
        let invalid = |message: String| JobError { outcome: Outcome::InvalidInput, message };
        if request.inputs.len() > crate::kserve::MAX_INPUTS {
            return Err(invalid(format!(
                "{} inputs; a request may carry at most {}",
                request.inputs.len(),
                crate::kserve::MAX_INPUTS
            )));
        }
        let mut names = std::collections::HashSet::with_capacity(request.inputs.len());
        if let Some(dup) = request.inputs.iter().find(|t| !names.insert(t.name.as_str())) {
            return Err(invalid(format!("two inputs are named '{}'; input names must be unique", dup.name)));
        }
        for t in &request.inputs {
            t.validate().map_err(|m| JobError { outcome: Outcome::InvalidInput, message: m })?;
            if t.data.len() as u64 > self.limits.max_tensor_bytes {
                return Err(JobError {
                    outcome: Outcome::InvalidInput,
                    message: format!(
                        "input '{}' is {} bytes; the deployment's tensor limit is {}",
                        t.name,
                        t.data.len(),
                        self.limits.max_tensor_bytes
                    ),
                });
            }
        }

        let job = self.pre.instantiate(&mut *store).map_err(|e| classify(&e))?;
        let wit_request =
            wit::Request { inputs: request.inputs.into_iter().map(to_wit).collect(), parameters: request.parameters };
        match job.mote_edge_handler().call_handle(&mut *store, &wit_request) {
            Ok(Ok(resp)) => {
                let outputs: Vec<IoTensor> = resp.outputs.into_iter().map(from_wit).collect();
                for t in &outputs {
                    t.validate().map_err(|m| JobError {
                        outcome: Outcome::Trap,
                        message: format!("guest returned a malformed output: {m}"),
                    })?;
                }
                Ok(Response { outputs, parameters: resp.parameters })
            }
            Ok(Err(handler::HandlerError::InvalidInput(m))) => {
                Err(JobError { outcome: Outcome::InvalidInput, message: m })
            }
            Ok(Err(handler::HandlerError::BackendError(m))) => {
                Err(JobError { outcome: Outcome::BackendError, message: m })
            }
            Err(e) => Err(classify(&e)),
        }
    }
}

/// An error chain on one line (wasmtime's messages span several).
fn one_line(e: &wasmtime::Error) -> String {
    format!("{e:#}").split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Maps a trap to the outcome the receipt records.
fn classify(e: &wasmtime::Error) -> JobError {
    if let Some(a) = e.downcast_ref::<JobAbort>() {
        return JobError { outcome: a.outcome, message: a.message.clone() };
    }
    let outcome = match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => Outcome::FuelExhausted,
        Some(wasmtime::Trap::Interrupt) => Outcome::Deadline,
        _ => Outcome::Trap,
    };
    let message = match outcome {
        Outcome::FuelExhausted => "guest ran out of fuel (limits.fuel)".to_string(),
        Outcome::Deadline => "job ran past its deadline (limits.deadline_ms)".to_string(),
        _ => format!("guest trapped: {}", one_line(e)),
    };
    JobError { outcome, message }
}

fn to_wit(t: IoTensor) -> wit::IoTensor {
    wit::IoTensor { name: t.name, datatype: wit_datatype(t.datatype), shape: t.shape, data: t.data }
}

fn from_wit(t: wit::IoTensor) -> IoTensor {
    IoTensor { name: t.name, datatype: host_datatype(t.datatype), shape: t.shape, data: t.data }
}

fn wit_datatype(d: Datatype) -> wit::Datatype {
    use wit::Datatype as W;
    match d {
        Datatype::Bool => W::Bool,
        Datatype::Uint8 => W::Uint8,
        Datatype::Uint16 => W::Uint16,
        Datatype::Uint32 => W::Uint32,
        Datatype::Uint64 => W::Uint64,
        Datatype::Int8 => W::Int8,
        Datatype::Int16 => W::Int16,
        Datatype::Int32 => W::Int32,
        Datatype::Int64 => W::Int64,
        Datatype::Fp16 => W::Fp16,
        Datatype::Fp32 => W::Fp32,
        Datatype::Fp64 => W::Fp64,
        Datatype::Bf16 => W::Bf16,
        Datatype::Bytes => W::Bytes,
    }
}

fn host_datatype(d: wit::Datatype) -> Datatype {
    use wit::Datatype as W;
    match d {
        W::Bool => Datatype::Bool,
        W::Uint8 => Datatype::Uint8,
        W::Uint16 => Datatype::Uint16,
        W::Uint32 => Datatype::Uint32,
        W::Uint64 => Datatype::Uint64,
        W::Int8 => Datatype::Int8,
        W::Int16 => Datatype::Int16,
        W::Int32 => Datatype::Int32,
        W::Int64 => Datatype::Int64,
        W::Fp16 => Datatype::Fp16,
        W::Fp32 => Datatype::Fp32,
        W::Fp64 => Datatype::Fp64,
        W::Bf16 => Datatype::Bf16,
        W::Bytes => Datatype::Bytes,
    }
}

/// sha256 of tensors and parameters in the canonical binary form of
/// docs/receipts.md: every length is little-endian, tensors in order,
/// parameters sorted.
pub fn digest(tensors: &[IoTensor], parameters: &[(String, String)]) -> String {
    let mut h = Sha256::new();
    let put = |h: &mut Sha256, b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    h.update((tensors.len() as u64).to_le_bytes());
    for t in tensors {
        put(&mut h, t.name.as_bytes());
        put(&mut h, t.datatype.as_str().as_bytes());
        h.update((t.shape.len() as u64).to_le_bytes());
        for d in &t.shape {
            h.update(d.to_le_bytes());
        }
        put(&mut h, &t.data);
    }
    let mut params: Vec<&(String, String)> = parameters.iter().collect();
    params.sort();
    h.update((params.len() as u64).to_le_bytes());
    for (k, v) in params {
        put(&mut h, k.as_bytes());
        put(&mut h, v.as_bytes());
    }
    hex::encode(h.finalize())
}
