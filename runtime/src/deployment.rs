//! Deployments: a compiled guest with its named models, limits and backend
//! choice, ready to run jobs.

use crate::backend::{BackendChoice, BackendError};
use crate::batching::{BatchConfig, BatchStats, Batcher};
use crate::graph_cache::Residency;
use crate::host::handler::HandlerPre;
use crate::host::nn::{NamedModel, NamedModels, NnCtx};
use crate::host::JobState;
use crate::job::{one_line, JobError};
use crate::limits::Limits;
use crate::model_screen::ScreenError;
use crate::receipt::sha256_hex;
use crate::runtime::{Runtime, EPOCH_TICK};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::Component;
use wasmtime::Store;

/// Why a deployment could not be created.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The guest is not a valid component.
    #[error("guest is not a valid WebAssembly component: {0}")]
    InvalidGuest(String),
    /// The guest imports something mote does not provide, or lacks the
    /// `handler` export (or, for a command program, `wasi:cli/run`).
    #[error("guest does not fit the mote:edge/job world or wasi:cli/command: {0}")]
    WorldMismatch(String),
    /// The memory limit is larger than the node's pool slots.
    #[error(
        "deployment '{deployment}': memory limit {limit} exceeds this node's largest guest memory ({max} bytes, \
         RuntimeConfig::max_memory_bytes)"
    )]
    MemoryLimit {
        /// The deployment.
        deployment: String,
        /// Its memory limit.
        limit: u64,
        /// The node's largest.
        max: u64,
    },
    /// A model with no bytes.
    #[error("model '{0}' is empty")]
    EmptyModel(String),
    /// Two models with one name.
    #[error("model '{0}' is declared twice")]
    DuplicateModel(String),
    /// Batching settings out of bounds.
    #[error("deployment '{deployment}': {message}")]
    Batching {
        /// The deployment.
        deployment: String,
        /// What is out of bounds.
        message: String,
    },
    /// A model the screen refused (not ONNX, external data, ...).
    #[error("model '{name}': {source}")]
    Model {
        /// The model's name.
        name: String,
        /// Why.
        source: ScreenError,
    },
}

/// Why a deployment could not be warmed.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    /// The deployment's backend is not available on this node.
    #[error("{0}")]
    Backend(BackendError),
    /// A named model did not load.
    #[error("model '{name}': {source}")]
    Model {
        /// The model's name.
        name: String,
        /// Why.
        source: BackendError,
    },
    /// The guest did not instantiate.
    #[error("instantiating the guest: {}", .0.message)]
    Instantiate(JobError),
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
    /// Dynamic batching of concurrent jobs' computes (off: `None`).
    pub batching: Option<BatchConfig>,
}

/// A compiled guest with its models, ready to run jobs.
#[derive(Clone)]
pub struct Deployment {
    pub(crate) name: String,
    /// Whose share of the graph cache this deployment's loads count in.
    cache_owner: Arc<str>,
    pub(crate) entry: Entry,
    pub(crate) guest_sha256: String,
    models: Arc<NamedModels>,
    pub(crate) limits: Limits,
    backend: BackendChoice,
    batcher: Option<Arc<Batcher>>,
    pub(crate) runtime: Runtime,
    /// The next job's instance, created ahead of it
    /// ([`Deployment::prepare_instance`]).
    pub(crate) prepared: Arc<crate::job::PreparedSlot>,
}

/// What kind of component a deployment runs, told apart by its exports.
#[derive(Clone)]
pub(crate) enum Entry {
    /// A `mote:edge/job` guest: `handler.handle` per request.
    Job(HandlerPre),
    /// A `wasi:cli/command` program: `run` once per invocation.
    Command(wasmtime_wasi::p2::bindings::sync::CommandPre<JobState>),
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

impl Runtime {
    /// Compiles a guest and prepares it (imports resolved once, so each job
    /// only instantiates).
    pub fn deploy(&self, spec: DeploymentSpec) -> Result<Deployment, DeployError> {
        if spec.limits.memory_bytes > self.max_memory_bytes {
            return Err(DeployError::MemoryLimit {
                deployment: spec.name,
                limit: spec.limits.memory_bytes,
                max: self.max_memory_bytes,
            });
        }
        if let Some(b) = &spec.batching {
            b.validate().map_err(|message| DeployError::Batching { deployment: spec.name.clone(), message })?;
        }
        let component =
            Component::new(&self.engine, &spec.guest).map_err(|e| DeployError::InvalidGuest(one_line(&e)))?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| DeployError::WorldMismatch(one_line(&e)))?;
        // A component exporting `wasi:cli/run` is a command program;
        // anything else must be a job guest.
        let command = component.component_type().exports(&self.engine).any(|(name, _)| name.starts_with("wasi:cli/run@"));
        let entry = if command {
            Entry::Command(
                wasmtime_wasi::p2::bindings::sync::CommandPre::new(pre)
                    .map_err(|e| DeployError::WorldMismatch(one_line(&e)))?,
            )
        } else {
            Entry::Job(HandlerPre::new(pre).map_err(|e| DeployError::WorldMismatch(one_line(&e)))?)
        };
        let mut models = NamedModels::new();
        for (name, bytes) in spec.models {
            if bytes.is_empty() {
                return Err(DeployError::EmptyModel(name));
            }
            if let Err(source) = crate::model_screen::screen(&bytes) {
                return Err(DeployError::Model { name, source });
            }
            let sha256 = sha256_hex(&bytes);
            if models.insert(name.clone(), NamedModel { bytes: bytes.into(), sha256 }).is_some() {
                return Err(DeployError::DuplicateModel(name));
            }
        }
        // A merged run's inputs are bounded like one job's tensor.
        let batcher = spec.batching.map(|b| Arc::new(Batcher::new(b, spec.limits.max_tensor_bytes)));
        Ok(Deployment {
            cache_owner: spec.name.as_str().into(),
            name: spec.name,
            entry,
            guest_sha256: sha256_hex(&spec.guest),
            models: Arc::new(models),
            limits: spec.limits,
            backend: spec.backend,
            batcher,
            runtime: self.clone(),
            prepared: Arc::default(),
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

    /// The batcher's counters, if this deployment batches.
    pub fn batch_stats(&self) -> Option<BatchStats> {
        self.batcher.as_ref().map(|b| b.stats())
    }

    /// Gets the deployment ready to serve: loads every named model into the
    /// graph cache (on the backend `load-by-name` will use), instantiates
    /// the guest once, and leaves the first job's instance prepared
    /// ([`Deployment::prepare_instance`]: it holds one pool slot). Returns
    /// the models' declared inputs and outputs.
    pub fn warm(&self) -> Result<Vec<ModelInfo>, WarmError> {
        let nn = &self.runtime.nn;
        let kind = nn.backends.for_named_models(self.backend);
        let backend = nn.backends.get(kind).map_err(WarmError::Backend)?;
        let mut names: Vec<&String> = self.models.keys().collect();
        names.sort();
        let mut infos = Vec::new();
        for name in names {
            let m = &self.models[name];
            let (graph, _) = nn
                .cache
                .get_or_load(&m.sha256, kind, &self.cache_owner, Residency::Pinned, || backend.load(m.bytes.clone()))
                .map_err(|source| WarmError::Model { name: name.clone(), source })?;
            infos.push(ModelInfo {
                name: name.clone(),
                sha256: m.sha256.clone(),
                inputs: graph.inputs().to_vec(),
                outputs: graph.outputs().to_vec(),
            });
        }
        self.instantiate_probe().map_err(WarmError::Instantiate)?;
        self.prepare_instance();
        Ok(infos)
    }

    /// Instantiates the guest in a fresh store and drops it, calling
    /// nothing: the fixed cost of a job before its handler runs.
    pub fn instantiate_probe(&self) -> Result<(), JobError> {
        let (mut store, _) = self.new_store(crate::host::JobWasi::captured(self.limits.max_log_bytes as usize), None);
        match &self.entry {
            Entry::Job(pre) => pre.instantiate(&mut store).map(drop),
            Entry::Command(pre) => pre.instantiate(&mut store).map(drop),
        }
        .map_err(|e| crate::job::classify(&e))?;
        Ok(())
    }

    /// A job's store with every limit armed: memory limiter, fuel (the bool:
    /// whether metering is on) and the epoch deadline; the job begins now.
    pub(crate) fn new_store(
        &self,
        wasi: crate::host::JobWasi,
        sink: Option<crate::host::StreamSink>,
    ) -> (Store<JobState>, bool) {
        let (mut store, fuel_armed) = self.idle_store(wasi);
        self.begin_job(&mut store, Instant::now(), sink);
        (store, fuel_armed)
    }

    /// A store armed as [`Deployment::new_store`]'s, for a job that has
    /// not begun: its instance may be created ahead of the job
    /// ([`Deployment::prepare_instance`]), and [`Deployment::begin_job`]
    /// starts the job's clock.
    pub(crate) fn idle_store(&self, wasi: crate::host::JobWasi) -> (Store<JobState>, bool) {
        let rt = &self.runtime;
        let started = Instant::now();
        let nn = NnCtx::new(
            rt.nn.clone(),
            self.models.clone(),
            self.cache_owner.clone(),
            self.backend,
            &self.limits,
            started,
            self.batcher.clone(),
        );
        let state = JobState::new(nn, &self.limits, wasi, started, None);
        let mut store = Store::new(&rt.engine, state);
        store.limiter(|s| &mut s.limiter);
        let fuel_armed = store.set_fuel(self.limits.fuel).is_ok();
        self.arm_deadline(&mut store);
        store.epoch_deadline_trap();
        (store, fuel_armed)
    }

    /// Begins the job in `store`: its clock and deadlines run from
    /// `started`, its stream goes to `sink`, the batcher counts it.
    pub(crate) fn begin_job(&self, store: &mut Store<JobState>, started: Instant, sink: Option<crate::host::StreamSink>) {
        store.data_mut().begin_job(started, started + self.limits.deadline(), sink);
        self.arm_deadline(store);
    }

    /// The epoch deadline: the job's `deadline_ms` from now.
    fn arm_deadline(&self, store: &mut Store<JobState>) {
        store.set_epoch_deadline(self.limits.deadline_ms.div_ceil(EPOCH_TICK.as_millis() as u64).max(1));
    }
}
