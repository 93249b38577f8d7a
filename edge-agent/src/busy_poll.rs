//! Busy polling: for a short window after a job is handed in or finishes,
//! the node's threads look for their next piece of work instead of going
//! to sleep at once.
//!
//! Every served request crosses threads four times (the async worker that
//! reads it, the job thread, the worker again, the client). A thread that
//! sleeps between two crossings must be woken, and on a virtual machine
//! whose idle cores halt (Firecracker, KVM without guest halt polling)
//! waking a thread on an idle core waits for the hypervisor: 30 – 50 µs a
//! crossing here (docs/benchmarks.md, "Why the transport floors are what
//! they are"). A thread that is still polling when its work arrives just
//! sees it. This is what the kernel's `haltpoll` driver does for a whole
//! guest; here the node does it for its own threads, and only while it has
//! work in hand:
//!
//! - after a job is handed in or finishes, threads poll for `window`, then
//!   sleep until the next job (a lone request after a quiet spell pays the
//!   wake-ups as before);
//! - only while fewer jobs, and fewer admitted requests, are in flight
//!   than the machine has cores: a loaded node has no idle core to keep
//!   awake, and a polling thread would take time from the jobs and from
//!   the workers reading and answering requests;
//! - the job threads poll their queue (one of them at a time, and only
//!   while none runs a job); the async workers poll their I/O driver
//!   through one task each that yields until the window closes
//!   ([`BusyPoll::start_async`]). Each round of polling yields the core
//!   (`sched_yield`), so a thread with work on the same core runs first.
//!
//! The cost is CPU time while the node is lightly loaded: up to `window`
//! of a core per polling thread after each burst of requests.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The node's polling window unless its config says otherwise
/// (`[server] busy_poll_us`).
pub const DEFAULT_WINDOW: Duration = Duration::from_micros(300);

/// The node's polling state, shared by its job threads and async workers.
pub struct BusyPoll {
    /// Polling window in ns; 0: never poll.
    window_ns: u64,
    /// Jobs in flight below which threads may poll (the machine's cores).
    cores: usize,
    base: Instant,
    /// When a job was last handed in or finished (ns since `base`, plus
    /// one; 0: never).
    last: AtomicU64,
    /// Jobs handed in and not yet finished.
    in_flight: AtomicUsize,
    /// Requests the node has admitted and not yet answered (a node
    /// reading, parsing or answering requests is busy before and after
    /// their jobs).
    requests: AtomicUsize,
    /// Set by async pollers going to sleep; the next [`BusyPoll::touch`]
    /// wakes them.
    asleep: AtomicBool,
    wake: tokio::sync::Notify,
}

impl BusyPoll {
    /// Polling for `window` after each job (zero: off), while fewer jobs
    /// than the machine's cores are in flight.
    pub fn new(window: Duration) -> Arc<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_cores(window, cores)
    }

    pub(crate) fn with_cores(window: Duration, cores: usize) -> Arc<Self> {
        Arc::new(Self {
            window_ns: window.as_nanos().min(u64::MAX as u128) as u64,
            cores,
            base: Instant::now(),
            last: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            asleep: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// The polling window.
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.window_ns)
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64 + 1
    }

    /// Marks activity: the window starts again, and async pollers asleep
    /// wake up unless the node is loaded (they would only go back to sleep,
    /// and a loaded node would wake them for every job and answer).
    fn touch(&self) {
        if self.window_ns == 0 {
            return;
        }
        // SeqCst throughout: a poller stores `asleep`, then loads `last` and
        // the counts; this updates a count, stores `last`, then loads the
        // counts and `asleep`. One of the two sees the other's stores.
        self.last.store(self.now(), Ordering::SeqCst);
        if self.polling() && self.asleep.swap(false, Ordering::SeqCst) {
            self.wake.notify_waiters();
        }
    }

    /// Whether threads should poll now: activity within the window, and
    /// fewer jobs and fewer requests in flight than cores.
    pub fn polling(&self) -> bool {
        if self.window_ns == 0
            || self.in_flight.load(Ordering::SeqCst) >= self.cores
            || self.requests.load(Ordering::SeqCst) >= self.cores
        {
            return false;
        }
        let last = self.last.load(Ordering::SeqCst);
        last != 0 && self.now().saturating_sub(last) < self.window_ns
    }

    /// A job handed in: counted in flight until the returned guard drops
    /// (when the job has finished, or leaves without running).
    pub(crate) fn job(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.touch();
        InFlight(self.clone())
    }

    /// A request admitted: counted until the returned guard drops (when it
    /// has been answered), which starts the window again for the client's
    /// next request.
    pub(crate) fn request(self: &Arc<Self>) -> RequestInFlight {
        self.requests.fetch_add(1, Ordering::SeqCst);
        RequestInFlight(self.clone())
    }

    /// Requests admitted and not yet answered.
    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Spins while [`BusyPoll::polling`] and not `ready()`; true once
    /// ready, false when the window closed first.
    pub(crate) fn spin_until(&self, ready: impl Fn() -> bool) -> bool {
        let mut spins = 0u32;
        while self.polling() {
            if ready() {
                return true;
            }
            spins = spins.wrapping_add(1);
            if spins % 64 == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        ready()
    }

    /// Starts `workers` tasks on the current tokio runtime that keep its
    /// workers polling their I/O driver while [`BusyPoll::polling`]: each
    /// yields to the scheduler, which then polls the driver without
    /// blocking, and to the kernel. Outside the window they sleep.
    pub fn start_async(self: &Arc<Self>, workers: usize) {
        if self.window_ns == 0 {
            return;
        }
        for _ in 0..workers {
            let poll = self.clone();
            tokio::spawn(async move {
                loop {
                    while poll.polling() {
                        tokio::task::yield_now().await;
                        std::thread::yield_now();
                    }
                    let woken = poll.wake.notified();
                    tokio::pin!(woken);
                    woken.as_mut().enable();
                    poll.asleep.store(true, Ordering::SeqCst);
                    if poll.polling() {
                        continue;
                    }
                    woken.await;
                }
            });
        }
    }
}

/// A request in flight (see [`BusyPoll::request`]).
pub(crate) struct RequestInFlight(Arc<BusyPoll>);

impl Drop for RequestInFlight {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

/// A job in flight (see [`BusyPoll::job`]).
pub(crate) struct InFlight(Arc<BusyPoll>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_never_polls() {
        let p = BusyPoll::with_cores(Duration::ZERO, 2);
        let _job = p.job();
        assert!(!p.polling());
        assert!(!p.spin_until(|| false));
    }

    #[test]
    fn polls_within_the_window_after_a_job_and_stops_after_it() {
        let p = BusyPoll::with_cores(Duration::from_millis(50), 2);
        assert!(!p.polling(), "no job yet");
        drop(p.job());
        assert!(p.polling());
        let t = Instant::now();
        assert!(!p.spin_until(|| false));
        let spun = t.elapsed();
        assert!(spun < Duration::from_secs(5), "spun {spun:?}");
        assert!(!p.polling());
    }

    #[test]
    fn a_loaded_node_does_not_poll() {
        let p = BusyPoll::with_cores(Duration::from_secs(60), 2);
        let a = p.job();
        assert!(p.polling(), "one job of two cores");
        let b = p.job();
        assert!(!p.polling(), "as many jobs as cores");
        drop(a);
        assert!(p.polling());
        drop(b);
    }

    #[test]
    fn a_node_with_as_many_requests_as_cores_does_not_poll() {
        let p = BusyPoll::with_cores(Duration::from_secs(60), 2);
        drop(p.job());
        let a = p.request();
        assert!(p.polling(), "one request of two cores");
        let b = p.request();
        assert!(!p.polling(), "as many requests as cores, jobs or not");
        drop(a);
        assert!(p.polling());
        drop(b);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_loaded_node_leaves_its_pollers_asleep_until_load_drops() {
        let p = BusyPoll::with_cores(Duration::from_secs(60), 2);
        p.start_async(2);
        let (a, b) = (p.request(), p.request());
        drop(p.job());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(p.asleep.load(Ordering::SeqCst), "pollers asleep while loaded");
        drop(p.job());
        assert!(p.asleep.load(Ordering::SeqCst), "a job of a loaded node does not wake them");
        drop(a);
        assert!(!p.asleep.load(Ordering::SeqCst), "an answer that unloads the node wakes them");
        drop(b);
    }

    #[test]
    fn spinning_ends_when_ready() {
        let p = BusyPoll::with_cores(Duration::from_secs(60), 2);
        drop(p.job());
        let n = std::sync::atomic::AtomicU32::new(0);
        assert!(p.spin_until(|| n.fetch_add(1, Ordering::Relaxed) == 10));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_pollers_sleep_outside_the_window_and_wake_on_a_job() {
        let p = BusyPoll::with_cores(Duration::from_millis(20), 2);
        p.start_async(2);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(p.asleep.load(Ordering::SeqCst), "pollers asleep without jobs");
        drop(p.job());
        assert!(!p.asleep.load(Ordering::SeqCst), "a job wakes them");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(p.asleep.load(Ordering::SeqCst), "asleep again after the window");
    }
}
