//! Host side of the `mote:edge/job` world. Each capability keeps its own
//! state and links itself (`add_to_linker`) through a view of the store's
//! data: WASI (wasmtime-wasi), inference (`nn`: wasi-nn and the graph
//! builder), the job log. [`JobState`] only composes them, with the memory
//! limiter and the usage meter that reads them all.

// The resource types must be `pub` for the generated bindings; the module is
// private, so they are not part of the crate's API.
#![allow(unreachable_pub)]

pub(crate) mod bindings;
pub(crate) mod handler;
pub(crate) mod nn;
pub(crate) mod stream;
mod usage_log;

use crate::limits::{Limits, MemoryLimiter};
use std::time::Instant;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub(crate) use usage_log::JobLog;
pub use stream::StreamSink;
pub use usage_log::{LogLevel, LogLine};

/// The data of one job's store.
pub struct JobState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) nn: nn::NnCtx,
    pub(crate) log: JobLog,
    pub(crate) stream: stream::JobStream,
    pub(crate) limiter: MemoryLimiter,
    /// Fuel the job started with (what `usage` counts down from).
    fuel: u64,
    pub(crate) started: Instant,
}

impl WasiView for JobState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl JobState {
    pub(crate) fn new(
        nn: nn::NnCtx,
        limits: &Limits,
        wasi: WasiCtx,
        started: Instant,
        sink: Option<StreamSink>,
    ) -> Self {
        Self {
            stream: stream::JobStream::new(sink, limits.max_tensor_bytes),
            wasi,
            table: ResourceTable::new(),
            nn,
            limiter: MemoryLimiter { max_bytes: limits.memory_bytes, peak_bytes: 0, hit: false },
            log: JobLog::new(limits.max_log_bytes),
            fuel: limits.fuel,
            started,
        }
    }

    fn nn_view(&mut self) -> nn::NnView<'_> {
        nn::NnView {
            ctx: &mut self.nn,
            table: &mut self.table,
            log: &mut self.log,
            guest_peak_bytes: self.limiter.peak_bytes,
        }
    }

    /// The job begins: its clock runs from `started`, backend work stops
    /// at `deadline`, its stream goes to `sink`.
    pub(crate) fn begin_job(&mut self, started: Instant, deadline: Instant, sink: Option<StreamSink>) {
        self.started = started;
        self.stream.set_sink(sink);
        self.nn.begin_job(deadline);
    }

    /// The job's usage so far: the one computation behind both the guest's
    /// `usage.current()` and the receipt. `fuel_left` is `None` when fuel
    /// is not metered (then the job burned none on the meter).
    pub(crate) fn usage(&self, fuel_left: Option<u64>, wall_ns: u64) -> crate::receipt::Usage {
        let m = &self.nn.meter;
        crate::receipt::Usage {
            fuel: fuel_left.map_or(0, |left| self.fuel.saturating_sub(left)),
            wall_ns,
            backend_ns: m.backend_ns,
            bytes_in: m.bytes_in,
            bytes_out: m.bytes_out,
            // Guest linear memory plus the backend memory its runs used.
            peak_memory_bytes: self.limiter.peak_bytes + m.backend_peak_bytes,
            graphs_loaded: m.graphs_loaded,
            prompt_tokens: m.prompt_tokens,
            completion_tokens: m.completion_tokens,
        }
    }
}

/// Links every capability of the `mote:edge/job` world.
pub(crate) fn add_to_linker(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    nn::add_to_linker(linker, JobState::nn_view)?;
    usage_log::add_to_linker(linker, |s| &mut s.log)?;
    stream::add_to_linker(linker, |s| &mut s.stream)?;
    usage_log::add_usage_to_linker(linker)?;
    bindings::mote::edge::types::add_to_linker::<_, HasSelf<JobState>>(linker, |s| s)?;
    Ok(())
}
