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
//! Per-job accounting samples the arena's bytes in use while runs go on
//! ([`RunWatch`]): a run costs a registration, not a read of the arena.

use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;
use ort::sys;
use ort::AsPointer;
use std::ffi::{c_char, CStr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

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
    fixed_mmap_threshold();
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
    /// Bytes the arena holds from the system (in use or free in it).
    pub(crate) reserved: u64,
}

/// ORT's own heap allocations (the parsed model while a session is built,
/// protobuf copies, kernel scratch) go to the C heap. glibc raises its
/// mmap threshold up to 32 MiB after large frees, after which a 16 MiB
/// model's buffers come from the heap and stay in the process once freed:
/// a flood of distinct models kept gigabytes after eviction. A fixed
/// threshold keeps large buffers mmapped, so freeing them returns them.
fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's policy.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Gives the C heap's free memory back to the system (after graphs were
/// evicted).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Set when graphs were dropped: the sampler trims the C heap.
pub(crate) static TRIM_PENDING: AtomicBool = AtomicBool::new(false);

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
    let stats = ArenaStats { in_use: get(c"InUse"), reserved: get(c"TotalAllocated") };
    // SAFETY: created by AllocatorGetStats above.
    unsafe { (api.ReleaseKeyValuePairs)(kv) };
    Some(stats)
}

/// How often the sampler reads the arena while runs are watched.
const SAMPLE_EVERY: Duration = Duration::from_millis(1);
/// How often it reads it otherwise (the baseline new runs start from).
const SAMPLE_IDLE: Duration = Duration::from_millis(10);
/// How long the sampler keeps its 1 ms pace after the last watched run
/// before it goes back to its idle sleep.
const LINGER: Duration = Duration::from_millis(20);

/// Free arena bytes worth giving back to the system.
const SHRINK_THRESHOLD: u64 = 64 << 20;

/// Set when the arena holds much more than it hands out (after a large
/// run, or a graph's weights were freed): the next run gives the free
/// regions back to the system.
pub(crate) static SHRINK_PENDING: AtomicBool = AtomicBool::new(false);

/// Charges runs for the arena memory they use, without costing a run
/// anything but a registration: one thread for the process reads the
/// arena's bytes in use every millisecond while runs are watched (every
/// 10 ms otherwise, for the baseline), and a run's charge is the most bytes
/// in use seen during it above the last figure before it began. A run
/// watched while the sampler sleeps idle wakes it, so a run is sampled
/// from its start (a 64 MiB intermediate took ~5 ms on a fast core: a
/// sampler left in its 10 ms sleep missed it, and the job's memory limit
/// with it); once woken, the sampler keeps its 1 ms pace until no run has
/// been watched for [`LINGER`], so back-to-back runs do not each pay a
/// wake-up (a futex call per run, and a thread woken 200,000 times a
/// second by a 3 µs model in a loop). A run that ends before the sampler sees it is charged
/// nothing: such a run cannot have used much, and the node's arena cap
/// bounds it regardless. Runs of other jobs at the same time make a figure
/// larger, never smaller.
struct Sampler {
    runs: Mutex<Vec<Weak<RunPeak>>>,
    last_in_use: AtomicU64,
    /// The sampler's thread, woken when a run is watched while it sleeps
    /// idle.
    thread: OnceLock<std::thread::Thread>,
    /// Whether the sampler keeps its 1 ms pace (no wake-up needed). Set by
    /// whoever wakes it, cleared by the sampler just before its idle sleep.
    awake: AtomicBool,
}

struct RunPeak {
    baseline: u64,
    peak: AtomicU64,
}

impl Sampler {
    fn get() -> &'static Sampler {
        static S: OnceLock<&'static Sampler> = OnceLock::new();
        S.get_or_init(|| {
            let s: &'static Sampler = Box::leak(Box::new(Sampler {
                runs: Mutex::default(),
                last_in_use: AtomicU64::new(0),
                thread: OnceLock::new(),
                awake: AtomicBool::new(false),
            }));
            let sampler = std::thread::Builder::new()
                .name("mote-ort-memory".into())
                .spawn(move || s.run())
                .expect("spawn the ORT memory sampler");
            let _ = s.thread.set(sampler.thread().clone());
            s
        })
    }

    fn run(&self) {
        let mut last_watched = Instant::now();
        loop {
            let watching = self.sample();
            let now = Instant::now();
            if watching {
                last_watched = now;
            }
            if watching || now.duration_since(last_watched) < LINGER {
                std::thread::sleep(SAMPLE_EVERY);
                continue;
            }
            self.awake.store(false, Ordering::SeqCst);
            // A run registered before `awake` was cleared saw it set and did
            // not wake us: look once more before sleeping.
            if self.runs.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|r| r.strong_count() > 0) {
                self.awake.store(true, Ordering::SeqCst);
                continue;
            }
            // Woken early by the next run watched (RunWatch::start).
            std::thread::park_timeout(SAMPLE_IDLE);
            self.awake.store(true, Ordering::SeqCst);
        }
    }

    /// Reads the arena once: raises the peak of every watched run, records
    /// the figure new runs start from, flags a shrink or a heap trim.
    /// Returns whether any run is watched.
    fn sample(&self) -> bool {
        let stats = HANDLE.get().and_then(Option::as_ref).and_then(|h| stats_of(h.0));
        let watching = {
            let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
            runs.retain(|r| r.strong_count() > 0);
            if let Some(st) = stats {
                for r in runs.iter().filter_map(Weak::upgrade) {
                    r.peak.fetch_max(st.in_use, Ordering::Relaxed);
                }
            }
            !runs.is_empty()
        };
        if TRIM_PENDING.swap(false, Ordering::Relaxed) {
            trim_heap();
        }
        if let Some(st) = stats {
            self.last_in_use.store(st.in_use, Ordering::Relaxed);
            if st.reserved.saturating_sub(st.in_use) > SHRINK_THRESHOLD {
                SHRINK_PENDING.store(true, Ordering::Relaxed);
            }
        }
        watching
    }
}

/// One run's memory watch: started before the run, read after it.
pub(crate) struct RunWatch(Arc<RunPeak>);

impl RunWatch {
    /// Starts watching the arena for a run on `session`.
    pub(crate) fn start(session: &Session) -> Option<Self> {
        handle(session)?;
        let s = Sampler::get();
        let baseline = s.last_in_use.load(Ordering::Relaxed);
        let run = Arc::new(RunPeak { baseline, peak: AtomicU64::new(baseline) });
        s.runs.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::downgrade(&run));
        // Registered before this reads `awake`: a sampler about to sleep
        // clears `awake`, then looks at the runs again (Sampler::run).
        if !s.awake.swap(true, Ordering::SeqCst) {
            if let Some(t) = s.thread.get() {
                t.unpark();
            }
        }
        Some(Self(run))
    }

    /// The bytes the run is charged.
    pub(crate) fn finish(self) -> u64 {
        self.0.peak.load(Ordering::Relaxed).saturating_sub(self.0.baseline)
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
pub(crate) const SHRINK_ENTRY: (&str, &str) = ("memory.enable_memory_arena_shrinkage", "cpu:0");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_refusals_are_recognised() {
        assert!(is_out_of_budget("bfc_arena.cc:360 Available memory of 268435200 is smaller than requested bytes of 1073741824"));
        assert!(!is_out_of_budget("Invalid rank for input"));
    }
}
