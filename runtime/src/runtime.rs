//! The node runtime: the wasmtime engine every job shares (fuel, epochs,
//! pooling allocator), the linker with every host capability, the node's
//! backends and graph cache, and the key that signs receipts.

use crate::backend::{BackendChoice, BackendError, BackendKind};
use crate::backends::Backends;
use crate::graph_cache::{CacheStats, GraphCache};
use crate::host::nn::NnNode;
use crate::host::JobState;
use crate::price::PriceTable;
use crate::receipt::NodeKey;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch ticks; deadlines are rounded up to it.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Node-wide settings.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Threads per ONNX Runtime session (0: ORT's default, all cores).
    pub ort_threads: usize,
    /// ONNX Runtime's threads spin between a run's parallel parts instead
    /// of sleeping (see [`crate::backend::ort::OrtOptions::spinning`]).
    pub ort_spinning: bool,
    /// Most bytes ONNX Runtime may hold on the CPU for all jobs and cached
    /// graphs together (the node's backend budget).
    pub backend_memory_bytes: u64,
    /// Component instances the pooling allocator keeps ready (also the most
    /// jobs that can run at once, counting each deployment's prepared
    /// instance: `Deployment::prepare_instance`).
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
            ort_spinning: false,
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

/// What signs receipts and prices them.
pub(crate) struct Signer {
    pub(crate) key: NodeKey,
    pub(crate) price: PriceTable,
}

/// The node runtime. Cheap to clone; all clones share one engine.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) engine: Engine,
    /// The pool's memory slot size: no deployment may allow more.
    pub(crate) max_memory_bytes: u64,
    pub(crate) linker: Arc<Linker<JobState>>,
    pub(crate) nn: Arc<NnNode>,
    pub(crate) signer: Arc<Signer>,
    /// Stops the epoch thread when the last clone is dropped.
    _ticker: Arc<Ticker>,
}

struct Ticker(Arc<AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Why a runtime could not be created.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// wasmtime refused the engine configuration.
    #[error("creating the wasm engine: {0:#}")]
    Engine(#[source] wasmtime::Error),
    /// The compiled-module cache could not be opened.
    #[error("compiled-module cache: {0:#}")]
    CompileCache(#[source] wasmtime::Error),
    /// A host capability could not be linked.
    #[error("linking the host capabilities: {0:#}")]
    Link(#[source] wasmtime::Error),
    /// The node key could not be read or created.
    #[error("node key in {}: {source}", dir.display())]
    NodeKey {
        /// The data directory.
        dir: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The epoch thread could not start.
    #[error("starting the epoch thread: {0}")]
    EpochThread(#[source] std::io::Error),
}

impl Runtime {
    /// Creates a runtime: engine with fuel, epochs and the pooling allocator.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let mut wc = Config::new();
        wc.consume_fuel(config.fuel_metering);
        wc.epoch_interruption(true);
        // Profiling aid: wasmtime writes /tmp/perf-PID.map, so `perf
        // report` names guest functions (docs/benchmarks.md).
        if std::env::var_os("MOTE_PERFMAP").is_some() {
            wc.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
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
            .table_keep_resident(64 << 10)
            // Linux ≥ 6.7: reset only the pages the job dirtied
            // (PAGEMAP_SCAN) instead of memsetting the whole kept prefix.
            .pagemap_scan(wasmtime::Enabled::Auto);
        wc.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        if config.compile_cache {
            let cache = wasmtime::Cache::from_file(None).map_err(RuntimeError::CompileCache)?;
            wc.cache(Some(cache));
        }
        let engine = Engine::new(&wc).map_err(RuntimeError::Engine)?;

        let mut linker = Linker::<JobState>::new(&engine);
        crate::host::add_to_linker(&mut linker).map_err(RuntimeError::Link)?;

        let key = match &config.data_dir {
            Some(dir) => NodeKey::load_or_create(dir)
                .map_err(|source| RuntimeError::NodeKey { dir: dir.clone(), source })?,
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
                .map_err(RuntimeError::EpochThread)?;
        }
        Ok(Self {
            engine,
            max_memory_bytes: config.max_memory_bytes,
            linker: Arc::new(linker),
            nn: Arc::new(NnNode {
                backends: Backends::new(crate::backend::ort::OrtOptions {
                    threads: config.ort_threads,
                    memory_budget: config.backend_memory_bytes,
                    spinning: config.ort_spinning,
                }),
                cache: GraphCache::new(config.cache_bytes),
            }),
            signer: Arc::new(Signer { key, price: config.price }),
            _ticker: Arc::new(Ticker(stop)),
        })
    }

    /// The node id (ed25519 public key, hex) that signs receipts.
    pub fn node_id(&self) -> String {
        self.signer.key.node_id()
    }

    /// Graph cache counters.
    pub fn cache_stats(&self) -> CacheStats {
        self.nn.cache.stats()
    }

    /// ORT sessions built so far (each one a full model optimisation).
    pub fn sessions_built(&self) -> u64 {
        self.nn.backends.sessions_built()
    }

    /// The backend and device `choice` resolves to for named models, or why
    /// it cannot be used.
    pub fn backend_device(&self, choice: BackendChoice) -> Result<(BackendKind, String), BackendError> {
        let kind = self.nn.backends.for_named_models(choice);
        let b = self.nn.backends.get(kind)?;
        Ok((kind, b.device().name.clone()))
    }
}
