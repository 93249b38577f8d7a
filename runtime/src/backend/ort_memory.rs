//! ONNX Runtime's CPU memory on one node-wide budget.
//!
//! A model is hostile input: a few bytes of `Expand` ask ORT for a
//! gigabytes-large intermediate. By default every ORT session owns an
//! arena with no ceiling, so such a model took the node's RSS to 8 GB. Here
//! the process registers **one** CPU arena with the environment (ORT's
//! `CreateAndRegisterAllocator`), capped at the node's backend budget
//! (`max_mem`, grown only by what is asked: `arena_extend_strategy` 1), and
//! every session uses it (`session.use_env_allocators`). An allocation past
//! the cap fails inside ORT, which turns it into an error of that run: the
//! job ends with `memory_limit` and the node stays within its budget.
//!
//! Why not a custom allocator that refuses per job: ORT does not check a
//! null return from a custom `OrtAllocator` on every path (tensors are
//! written through it), and a C++ exception cannot cross a Rust frame. The
//! arena's own refusal is the one ORT handles everywhere.
//!
//! Per-job accounting reads the arena's counters around each run (see
//! [`ArenaStats::attribute`]) and samples its bytes in use while the run
//! goes on ([`RunWatch`]); runs of other jobs at the same moment can only
//! make a job's figure larger, never smaller.

use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;
use ort::sys;
use ort::AsPointer;
use std::ffi::{c_char, CStr, CString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::Duration;

/// Turns an `OrtStatusPtr` into a result, releasing the status.
fn check(status: sys::OrtStatusPtr) -> Result<(), String> {
    if status.0.is_null() {
        return Ok(());
    }
    let api = ort::api();
    // SAFETY: a non-null status from the ORT API; its message is a C string
    // owned by the status, copied before the status is released.
    unsafe {
        let msg = CStr::from_ptr((api.GetErrorMessage)(status.0)).to_string_lossy().into_owned();
        (api.ReleaseStatus)(status.0);
        Err(msg)
    }
}

fn arena_info() -> Result<MemoryInfo<'static>, String> {
    MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Arena, MemoryType::Default).map_err(|e| e.to_string())
}

/// Registers the node's CPU arena with the environment: at most
/// `max_bytes` for all sessions together.
pub(crate) fn register_arena(env: &ort::environment::Environment, max_bytes: u64) -> Result<(), String> {
    let api = ort::api();
    let keys = [c"max_mem".as_ptr(), c"arena_extend_strategy".as_ptr()];
    let values = [usize::try_from(max_bytes).unwrap_or(usize::MAX), 1];
    let mut cfg: *mut sys::OrtArenaCfg = std::ptr::null_mut();
    // SAFETY: keys are static C strings, values as many as keys; `cfg` is
    // written by ORT and released below.
    check(unsafe { (api.CreateArenaCfgV2)(keys.as_ptr(), values.as_ptr(), keys.len(), &mut cfg) })?;
    let info = arena_info()?;
    // SAFETY: the environment outlives the process's sessions (it is a
    // static); ORT copies what it needs from `info` and `cfg`.
    let registered =
        check(unsafe { (api.CreateAndRegisterAllocator)(env.ptr().cast_mut(), info.ptr(), cfg) });
    // SAFETY: created above, no longer used.
    unsafe { (api.ReleaseArenaCfg)(cfg) };
    registered
}

/// The counters of the node's CPU arena, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ArenaStats {
    /// Bytes handed out now.
    pub(crate) in_use: u64,
    /// Most bytes ever handed out at once.
    pub(crate) max_in_use: u64,
    /// Bytes the arena holds from the system (in use or free in it).
    pub(crate) reserved: u64,
}

impl ArenaStats {
    /// The bytes a run that started at `before` and ended at `after` may
    /// be charged for: the new high-water mark above what was in use when
    /// it began, or else what it left allocated. An upper bound when other
    /// runs overlapped it.
    pub(crate) fn attribute(before: Self, after: Self) -> u64 {
        if after.max_in_use > before.max_in_use {
            after.max_in_use - before.in_use
        } else {
            after.in_use.saturating_sub(before.in_use)
        }
    }
}

/// An `OrtAllocator` pointer kept for the process's life (the arena it
/// wraps belongs to the environment, a static).
struct ArenaHandle(*mut sys::OrtAllocator);
// SAFETY: ORT allocators are thread-safe (the arena locks internally), and
// only `AllocatorGetStats` is called through this one.
unsafe impl Send for ArenaHandle {}
unsafe impl Sync for ArenaHandle {}

static HANDLE: OnceLock<Option<ArenaHandle>> = OnceLock::new();

/// The node arena's handle, found through any session that uses it.
fn handle(session: &Session) -> Option<*mut sys::OrtAllocator> {
    let h = HANDLE.get_or_init(|| {
        let info = arena_info().ok()?;
        let mut a: *mut sys::OrtAllocator = std::ptr::null_mut();
        // SAFETY: a live session and memory info; `a` is kept for the
        // process's life and never released.
        check(unsafe { (ort::api().CreateAllocator)(session.ptr(), info.ptr(), &mut a) }).ok()?;
        (!a.is_null()).then_some(ArenaHandle(a))
    });
    h.as_ref().map(|h| h.0)
}

/// Reads the node arena's counters, through any session that uses it.
pub(crate) fn arena_stats(session: &Session) -> Option<ArenaStats> {
    stats_of(handle(session)?)
}

fn stats_of(a: *mut sys::OrtAllocator) -> Option<ArenaStats> {
    let api = ort::api();
    let mut kv: *mut sys::OrtKeyValuePairs = std::ptr::null_mut();
    // SAFETY: `a` is a live allocator; `kv` is released below.
    check(unsafe { (api.AllocatorGetStats)(a, &mut kv) }).ok()?;
    let get = |key: &CStr| -> u64 {
        // SAFETY: `kv` is live until released; values are C strings.
        let v: *const c_char = unsafe { (api.GetKeyValue)(kv, key.as_ptr()) };
        if v.is_null() {
            return 0;
        }
        unsafe { CStr::from_ptr(v) }.to_str().ok().and_then(|s| s.parse().ok()).unwrap_or(0)
    };
    let stats = ArenaStats { in_use: get(c"InUse"), max_in_use: get(c"MaxInUse"), reserved: get(c"TotalAllocated") };
    // SAFETY: created by AllocatorGetStats above.
    unsafe { (api.ReleaseKeyValuePairs)(kv) };
    Some(stats)
}

/// How often the sampler reads the arena while runs are in progress.
const SAMPLE_EVERY: Duration = Duration::from_millis(1);

/// Watches the arena's bytes in use while runs are in progress, for the
/// runs that do not raise its all-time high-water mark (which is all
/// `ArenaStats::attribute` can see): a run's peak is the most bytes in use
/// seen at any sample during it. Sampling misses only peaks shorter than a
/// millisecond, which are small by construction (writing 64 MiB takes
/// longer); runs of other jobs at the same time make a figure larger, never
/// smaller. One thread for the process, asleep while no run is watched.
struct Sampler {
    runs: Mutex<Vec<Weak<AtomicU64>>>,
    wake: Condvar,
}

impl Sampler {
    fn get() -> &'static Sampler {
        static S: OnceLock<&'static Sampler> = OnceLock::new();
        S.get_or_init(|| {
            let s: &'static Sampler = Box::leak(Box::new(Sampler { runs: Mutex::default(), wake: Condvar::new() }));
            std::thread::Builder::new()
                .name("mote-ort-memory".into())
                .spawn(move || s.run())
                .expect("spawn the ORT memory sampler");
            s
        })
    }

    fn run(&self) {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            runs.retain(|r| r.strong_count() > 0);
            if runs.is_empty() {
                runs = self.wake.wait(runs).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let in_use = HANDLE.get().and_then(Option::as_ref).and_then(|h| stats_of(h.0)).map(|s| s.in_use);
            if let Some(in_use) = in_use {
                for r in runs.iter().filter_map(Weak::upgrade) {
                    r.fetch_max(in_use, Ordering::Relaxed);
                }
            }
            drop(runs);
            std::thread::sleep(SAMPLE_EVERY);
            runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// One run's memory watch: started before the run, read after it.
pub(crate) struct RunWatch {
    before: ArenaStats,
    peak_in_use: Arc<AtomicU64>,
}

impl RunWatch {
    /// Starts watching the arena for a run on `session`.
    pub(crate) fn start(session: &Session) -> Option<Self> {
        let before = arena_stats(session)?;
        let peak_in_use = Arc::new(AtomicU64::new(before.in_use));
        let s = Sampler::get();
        let mut runs = s.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.push(Arc::downgrade(&peak_in_use));
        if runs.len() == 1 {
            s.wake.notify_one();
        }
        Some(Self { before, peak_in_use })
    }

    /// The bytes the run is charged, and the arena's counters after it.
    pub(crate) fn finish(self, session: &Session) -> Option<(u64, ArenaStats)> {
        let after = arena_stats(session)?;
        let sampled = self.peak_in_use.load(Ordering::Relaxed).max(after.in_use).saturating_sub(self.before.in_use);
        Some((ArenaStats::attribute(self.before, after).max(sampled), after))
    }
}

/// Whether an ORT error says the arena refused an allocation (ORT reports
/// it with the generic FAIL code; its text is the only mark).
pub(crate) fn is_out_of_budget(message: &str) -> bool {
    message.contains("Available memory of") && message.contains("is smaller than requested bytes")
        || message.contains("Failed to allocate memory for requested buffer")
}

/// The run-options entry that makes the arena give its free regions back
/// to the system at the end of a run.
pub(crate) fn shrink_entry() -> (CString, CString) {
    (c"memory.enable_memory_arena_shrinkage".to_owned(), c"cpu:0".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_charged_its_high_water_mark() {
        let s = |in_use, max_in_use| ArenaStats { in_use, max_in_use, reserved: 0 };
        // New peak: charged from what was in use when it began.
        assert_eq!(ArenaStats::attribute(s(100, 500), s(120, 900)), 800);
        // No new peak: what it left allocated.
        assert_eq!(ArenaStats::attribute(s(100, 900), s(150, 900)), 50);
        assert_eq!(ArenaStats::attribute(s(100, 900), s(50, 900)), 0);
        assert!(is_out_of_budget("bfc_arena.cc:360 Available memory of 268435200 is smaller than requested bytes of 1073741824"));
        assert!(!is_out_of_budget("Invalid rank for input"));
    }
}
