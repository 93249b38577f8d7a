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
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

pub(crate) use usage_log::JobLog;
pub use stream::StreamSink;
pub use usage_log::{LogLevel, LogLine};

/// A job's WASI context. A job's own is built on the guest's first WASI
/// call, not with the store: a guest built without WASI never makes one,
/// and building it (a dozen allocations, two random generators seeded,
/// two output pipes) was ≈ 1 µs of every job (docs/benchmarks.md, "A
/// fresh instance in parts"). Built or not, what the guest can reach is
/// the same: nothing but its captured stdout and stderr.
pub(crate) struct JobWasi {
    ctx: Option<WasiCtx>,
    /// The captured stdout and stderr, once a job's own context is built.
    pipes: Option<[MemoryOutputPipe; 2]>,
    max_log_bytes: usize,
}

impl JobWasi {
    /// A job's own context, built on first use: no preopened directories,
    /// no environment, no sockets or name lookup; stdout and stderr
    /// captured, up to `max_log_bytes` each.
    pub(crate) fn captured(max_log_bytes: usize) -> Self {
        Self { ctx: None, pipes: None, max_log_bytes }
    }

    /// A context built by the caller (a command program's: its mounts,
    /// arguments and streams).
    pub(crate) fn given(ctx: WasiCtx) -> Self {
        Self { ctx: Some(ctx), pipes: None, max_log_bytes: 0 }
    }

    fn ctx(&mut self) -> &mut WasiCtx {
        self.ctx.get_or_insert_with(|| {
            let pipes = [MemoryOutputPipe::new(self.max_log_bytes), MemoryOutputPipe::new(self.max_log_bytes)];
            let ctx = WasiCtxBuilder::new()
                .stdout(pipes[0].clone())
                .stderr(pipes[1].clone())
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .build();
            self.pipes = Some(pipes);
            ctx
        })
    }

    /// What the guest wrote to its captured stdout and stderr (nothing if
    /// it made no WASI call).
    pub(crate) fn captured_output(&self) -> [bytes::Bytes; 2] {
        self.pipes.as_ref().map(|[out, err]| [out.contents(), err.contents()]).unwrap_or_default()
    }
}

/// The data of one job's store.
pub struct JobState {
    pub(crate) wasi: JobWasi,
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
        WasiCtxView { ctx: self.wasi.ctx(), table: &mut self.table }
    }
}

impl JobState {
    pub(crate) fn new(
        nn: nn::NnCtx,
        limits: &Limits,
        wasi: JobWasi,
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

#[cfg(test)]
mod tests {
    use super::JobWasi;
    use wasmtime_wasi::p2::OutputStream;

    #[test]
    fn a_jobs_wasi_context_is_built_once_on_first_use_and_captures_its_output() {
        let mut wasi = JobWasi::captured(8);
        assert!(wasi.ctx.is_none() && wasi.pipes.is_none(), "nothing built before the first WASI call");
        assert_eq!(wasi.captured_output(), [bytes::Bytes::new(), bytes::Bytes::new()]);
        let first: *const _ = wasi.ctx();
        let [mut out, mut err] = wasi.pipes.clone().expect("pipes built with the context");
        out.write(bytes::Bytes::from_static(b"out")).unwrap();
        err.write(bytes::Bytes::from_static(b"err")).unwrap();
        // Later calls reach the same context and the same pipes.
        assert!(std::ptr::eq(first, wasi.ctx()));
        assert_eq!(wasi.captured_output(), [&b"out"[..], &b"err"[..]]);
        // Each pipe is bounded by the job's log limit.
        assert!(out.write(bytes::Bytes::from_static(b"123456")).is_err(), "past max_log_bytes");

        // A caller's context is kept as given, with no captured pipes.
        let mut given = JobWasi::given(wasmtime_wasi::WasiCtx::builder().build());
        let ctx: *const _ = given.ctx();
        assert!(std::ptr::eq(ctx, given.ctx()) && given.pipes.is_none());
        assert_eq!(given.captured_output(), [bytes::Bytes::new(), bytes::Bytes::new()]);
    }
}
