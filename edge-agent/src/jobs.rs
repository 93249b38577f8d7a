//! Job threads: the node runs guest jobs on threads of their own, apart
//! from the async workers that do network I/O.
//!
//! A job is synchronous (wasmtime call, backend compute) and may run until
//! its deadline. On an async worker it would stall every connection that
//! worker polls, and tokio's I/O driver with them (a SIGTERM arriving
//! during a long job was noticed late). `block_in_place` avoids that but
//! hands the worker's scheduler to another thread on every job, which cost
//! more than a small job and kept two cores from scaling. Here a fixed set
//! of threads takes jobs from one channel: an idle thread is woken once per
//! job, a busy one takes the next job without sleeping, and the async side
//! awaits a oneshot.
//!
//! A deployment's job slots ([`Slots`]) bound how many of its jobs run at
//! once; the others wait in line. A job thread that finishes a job whose
//! deployment has others in line runs the next one itself, keeping the
//! slot: the line moves without a round trip through the async side (a
//! worker woken to hand over the next job, the job thread woken to take
//! it), which on a virtual machine costs two wake-ups per job.
//!
//! With [`BusyPoll`] on, a job thread whose queue is empty polls it for
//! the polling window before it sleeps (one thread at a time, and only
//! while no job runs), so the next job of a lightly loaded node finds it
//! awake. A job handed in while a thread polls wakes no sleeping one (a
//! wake-up the poller would make useless, on the path of the request).

use crate::busy_poll::BusyPoll;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Task = Box<dyn FnOnce() + Send>;

/// A fixed set of threads that run jobs. Dropping the last handle lets the
/// threads finish the jobs already queued, then end.
pub struct JobThreads {
    /// `None` once dropped: the threads then finish what is queued and end.
    tx: Option<crossbeam_channel::Sender<Task>>,
    idle: Arc<Idle>,
    poll: Arc<BusyPoll>,
}

/// The job threads that wait for work: at most one polls the queue, the
/// others sleep until a job is handed in. A job handed in while one polls
/// wakes no one (the poller takes it, and wakes a sleeper itself if more
/// are queued): a wake-up is a futex call and, on a VM, an interrupt to
/// another core, on the path of the request that hands the job in.
struct Idle {
    /// Threads parked for want of work.
    sleepers: Mutex<Vec<std::thread::Thread>>,
    /// Whether a thread polls the queue now.
    one_polls: AtomicBool,
    /// Set when the handle is dropped: no thread parks again.
    closed: AtomicBool,
}

impl Idle {
    fn sleepers(&self) -> std::sync::MutexGuard<'_, Vec<std::thread::Thread>> {
        self.sleepers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes one sleeping thread, if any.
    fn wake_one(&self) {
        if let Some(t) = self.sleepers().pop() {
            t.unpark();
        }
    }

    /// After a job was queued: wakes a sleeper unless a thread polls the
    /// queue. The fence pairs with the poller's after it stops polling:
    /// either it sees the job, or this sees that it stopped.
    fn job_queued(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if !self.one_polls.load(Ordering::SeqCst) {
            self.wake_one();
        }
    }

    /// Parks this thread until a job is queued (or the handle is dropped);
    /// it may return early, and the caller looks at the queue again.
    fn sleep(&self, rx: &crossbeam_channel::Receiver<Task>) {
        let me = std::thread::current();
        self.sleepers().push(me.clone());
        std::sync::atomic::fence(Ordering::SeqCst);
        // A job queued before we were listed found no one to wake.
        if rx.is_empty() && !self.closed.load(Ordering::SeqCst) {
            std::thread::park();
        }
        self.sleepers().retain(|t| t.id() != me.id());
    }
}

/// Why a job could not be handed to a thread.
#[derive(Debug, thiserror::Error)]
pub enum JobThreadsError {
    /// No job thread is left to take the job.
    #[error("job threads have stopped")]
    Stopped,
    /// The job panicked (a bug in the runtime: guest faults are reports,
    /// not panics).
    #[error("the job panicked")]
    Panicked,
    /// The job waited in line for a slot longer than it was allowed to
    /// and never ran.
    #[error("waited for a job slot for {0:?}")]
    Waited(Duration),
}

impl JobThreads {
    /// Starts `n` threads (at least one) named `mote-job-N`, without busy
    /// polling.
    pub fn new(n: usize) -> std::io::Result<Arc<Self>> {
        Self::polling(n, BusyPoll::new(Duration::ZERO))
    }

    /// Starts `n` threads (at least one) named `mote-job-N` that poll for
    /// their next job as `poll` says.
    pub fn polling(n: usize, poll: Arc<BusyPoll>) -> std::io::Result<Arc<Self>> {
        let (tx, rx) = crossbeam_channel::unbounded::<Task>();
        let idle = Arc::new(Idle {
            sleepers: Mutex::new(Vec::new()),
            one_polls: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        // Threads running a task.
        let running = Arc::new(AtomicUsize::new(0));
        for i in 0..n.max(1) {
            let (rx, poll, running, idle) = (rx.clone(), poll.clone(), running.clone(), idle.clone());
            std::thread::Builder::new().name(format!("mote-job-{i}")).spawn(move || {
                loop {
                    let task = match rx.try_recv() {
                        Ok(task) => task,
                        Err(crossbeam_channel::TryRecvError::Disconnected) => return,
                        Err(crossbeam_channel::TryRecvError::Empty) => {
                            if running.load(Ordering::Relaxed) == 0 && !idle.one_polls.swap(true, Ordering::Acquire) {
                                let _ = poll.spin_until(|| !rx.is_empty() || running.load(Ordering::Relaxed) > 0);
                                idle.one_polls.store(false, Ordering::SeqCst);
                                // Pairs with `Idle::job_queued`'s fence.
                                std::sync::atomic::fence(Ordering::SeqCst);
                                if !rx.is_empty() {
                                    continue;
                                }
                            }
                            idle.sleep(&rx);
                            continue;
                        }
                    };
                    // More queued than this thread takes (jobs handed in
                    // while it polled woke no one): a sleeper runs the
                    // next, and wakes another if still more wait.
                    if !rx.is_empty() {
                        idle.wake_one();
                    }
                    running.fetch_add(1, Ordering::Relaxed);
                    task();
                    running.fetch_sub(1, Ordering::Relaxed);
                }
            })?;
        }
        Ok(Arc::new(Self { tx: Some(tx), idle, poll }))
    }

    /// Queues `task` for a thread; false once the threads have stopped.
    fn submit(&self, task: Task) -> bool {
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(task).is_ok());
        if sent {
            self.idle.job_queued();
        }
        sent
    }

    /// The threads' busy polling, for the async side
    /// ([`BusyPoll::start_async`]).
    pub fn busy_poll(&self) -> &Arc<BusyPoll> {
        &self.poll
    }

    /// Runs `job` on a job thread; the future resolves with its result.
    /// Dropping the future does not stop the job (a job ends at its own
    /// deadline); its result is then discarded.
    pub fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = Result<T, JobThreadsError>> + Send + 'static {
        self.run_then(move || (job(), || ()))
    }

    /// Like [`JobThreads::run`] for a job that leaves work for after its
    /// reply (`later`: e.g. resetting a finished guest instance and
    /// preparing the next): its result goes to the caller first, then the
    /// job thread runs `later` before it takes another job.
    pub fn run_then<T: Send + 'static, L: FnOnce()>(
        &self,
        job: impl FnOnce() -> (T, L) + Send + 'static,
    ) -> impl Future<Output = Result<T, JobThreadsError>> + Send + 'static {
        let (task, result) = task(&self.poll, job);
        let sent = self.submit(task);
        async move {
            if !sent {
                return Err(JobThreadsError::Stopped);
            }
            result.await.map_err(|_| JobThreadsError::Panicked)
        }
    }
}

impl Drop for JobThreads {
    /// The queue is closed first, then every sleeper woken: each finds
    /// the queue empty and closed and ends (jobs still queued run first).
    fn drop(&mut self) {
        self.tx = None;
        self.idle.closed.store(true, Ordering::SeqCst);
        for t in self.idle.sleepers().drain(..) {
            t.unpark();
        }
    }
}

/// `job` as a task for a job thread, and the receiver of its result. A
/// panic must not kill the thread (the pool would shrink); the caller sees
/// the dropped sender as `Panicked`. The job counts as in flight for `poll`
/// until its result is sent (or the task is dropped unrun).
fn task<T: Send + 'static, L: FnOnce()>(
    poll: &Arc<BusyPoll>,
    job: impl FnOnce() -> (T, L) + Send + 'static,
) -> (Task, tokio::sync::oneshot::Receiver<T>) {
    let (done, result) = tokio::sync::oneshot::channel();
    let in_flight = poll.job();
    let task: Task = Box::new(move || {
        if let Ok((value, later)) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)) {
            let _ = done.send(value);
            drop(in_flight);
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(later));
        }
    });
    (task, result)
}

/// A deployment's job slots: at most `n` of its jobs run at once, on the
/// node's job threads; the rest wait in line, first come first served. The
/// job thread that finishes a job (its later work included) takes the next
/// in line itself, in the same slot; a slot is given back only when the
/// line is empty.
pub struct Slots {
    n: usize,
    state: Mutex<Line>,
}

struct Line {
    running: usize,
    next_id: u64,
    waiting: VecDeque<(u64, Task)>,
}

impl Slots {
    /// `n` slots (at least one).
    pub fn new(n: usize) -> Arc<Self> {
        Arc::new(Self { n: n.max(1), state: Mutex::new(Line { running: 0, next_id: 0, waiting: VecDeque::new() }) })
    }

    fn line(&self) -> std::sync::MutexGuard<'_, Line> {
        // Nothing panics while the lock is held; a poisoned lock holds a
        // consistent line all the same.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many slots there are.
    pub fn count(&self) -> usize {
        self.n
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        self.line().running
    }

    /// Runs `job` in a slot on one of `threads`: at once if a slot is free,
    /// else when its turn comes. Its result goes to the caller first; its
    /// later work runs before the slot takes its next job. A job still in
    /// line after `wait` never runs (`Waited`); one whose caller goes away
    /// while it waits leaves the line. Once started, a job runs to its end
    /// whether or not anyone awaits it.
    pub fn run_then<T: Send + 'static, L: FnOnce()>(
        self: &Arc<Self>,
        threads: &JobThreads,
        wait: Duration,
        job: impl FnOnce() -> (T, L) + Send + 'static,
    ) -> impl Future<Output = Result<T, JobThreadsError>> + Send + 'static {
        let (task, mut result) = task(&threads.poll, job);
        // Err: a slot was free, the task goes to a thread now.
        let queued = {
            let mut line = self.line();
            if line.running < self.n {
                line.running += 1;
                Err(task)
            } else {
                let id = line.next_id;
                line.next_id += 1;
                line.waiting.push_back((id, task));
                Ok(id)
            }
        };
        // Made here, not in the future: a future dropped before its first
        // poll takes its job out of line too.
        let mut in_line = InLine { slots: self.clone(), id: None };
        let sent = match queued {
            Ok(id) => {
                in_line.id = Some(id);
                true
            }
            Err(task) => {
                let run = self.clone();
                let sent = threads.submit(Box::new(move || run.hold(task)));
                if !sent {
                    self.line().running -= 1;
                }
                sent
            }
        };
        async move {
            if !sent {
                return Err(JobThreadsError::Stopped);
            }
            if in_line.id.is_some() {
                match tokio::time::timeout(wait, &mut result).await {
                    Ok(r) => {
                        in_line.started();
                        return r.map_err(|_| JobThreadsError::Panicked);
                    }
                    Err(_) => {
                        if in_line.leave() {
                            return Err(JobThreadsError::Waited(wait));
                        }
                        // Its turn came as the wait ran out: it runs.
                    }
                }
            }
            result.await.map_err(|_| JobThreadsError::Panicked)
        }
    }

    /// Runs `task` in a slot this thread holds, then the jobs in line
    /// while there are any; gives the slot back when the line is empty.
    fn hold(&self, mut task: Task) {
        loop {
            task();
            let mut line = self.line();
            match line.waiting.pop_front() {
                Some((_, next)) => task = next,
                None => {
                    line.running -= 1;
                    return;
                }
            }
        }
    }
}

/// A job's place in line while its caller waits; leaves the line when the
/// caller goes away before the job's turn.
struct InLine {
    slots: Arc<Slots>,
    id: Option<u64>,
}

impl InLine {
    /// The job has left the line by starting.
    fn started(&mut self) {
        self.id = None;
    }

    /// Takes the job out of line; false if it has already started.
    fn leave(&mut self) -> bool {
        let Some(id) = self.id.take() else { return false };
        let mut line = self.slots.line();
        // Ids are handed out in order and join at the back, so the line is
        // sorted by id: a caller gone from a long line costs a binary
        // search, not a walk.
        match line.waiting.binary_search_by_key(&id, |(i, _)| *i) {
            Ok(at) => {
                // Dropped outside the lock: the task owns the caller's
                // request (and whatever its drop releases).
                let left = line.waiting.remove(at);
                drop(line);
                drop(left);
                true
            }
            Err(_) => false,
        }
    }
}

impl Drop for InLine {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Jobs handed in while a thread polls wake no sleeper; a thread that
    /// takes a job and finds more wakes one, and a job handed in after the
    /// poller stopped wakes one itself (which happens is up to timing).
    /// Either way three jobs handed in at once, which can only finish
    /// together (each waits for the others), get a thread each.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_handed_in_while_one_polls_still_run_side_by_side() {
        let pool = JobThreads::polling(3, BusyPoll::with_cores(Duration::from_millis(200), 8)).unwrap();
        for _ in 0..20 {
            // A job just finished: a thread polls the queue now.
            pool.run(|| ()).await.unwrap();
            let barrier = Arc::new((Mutex::new(0), std::sync::Condvar::new()));
            let meet = |b: Arc<(Mutex<u32>, std::sync::Condvar)>| {
                move || {
                    let (count, cv) = &*b;
                    let mut n = count.lock().unwrap();
                    *n += 1;
                    cv.notify_all();
                    let (n, _) = cv.wait_timeout_while(n, Duration::from_secs(5), |n| *n < 3).unwrap();
                    *n >= 3
                }
            };
            let (a, b, c) =
                tokio::join!(pool.run(meet(barrier.clone())), pool.run(meet(barrier.clone())), pool.run(meet(barrier)));
            assert!(a.unwrap() && b.unwrap() && c.unwrap(), "a job waited for another one's thread");
        }
    }

    /// No job is lost between a thread going to sleep and another handing
    /// a job in: many small jobs from several tasks, polling on and off,
    /// all finish.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_job_handed_in_runs_whether_threads_poll_or_sleep() {
        for window in [Duration::ZERO, Duration::from_micros(50), Duration::from_millis(5)] {
            let pool = JobThreads::polling(4, BusyPoll::with_cores(window, 4)).unwrap();
            let done = Arc::new(AtomicUsize::new(0));
            let tasks: Vec<_> = (0..6)
                .map(|t| {
                    let (pool, done) = (pool.clone(), done.clone());
                    tokio::spawn(async move {
                        for i in 0..300u64 {
                            let done = done.clone();
                            pool.run(move || done.fetch_add(1, Ordering::Relaxed)).await.unwrap();
                            if (i + t) % 7 == 0 {
                                tokio::time::sleep(Duration::from_micros(100 * (i % 5))).await;
                            }
                        }
                    })
                })
                .collect();
            let all = async {
                for t in tasks {
                    t.await.unwrap();
                }
            };
            tokio::time::timeout(Duration::from_secs(60), all).await.expect("a job handed in never ran");
            assert_eq!(done.load(Ordering::Relaxed), 6 * 300, "window {window:?}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn jobs_run_on_their_threads_in_parallel() {
        let pool = JobThreads::new(2).unwrap();
        let name = pool.run(|| std::thread::current().name().map(str::to_string)).await.unwrap();
        assert!(name.unwrap().starts_with("mote-job-"), "a job ran off the job threads");

        // Two 200 ms jobs on two threads take about 200 ms, not 400 ms, and
        // the async side stays free meanwhile.
        let start = Instant::now();
        let a = pool.run(|| std::thread::sleep(Duration::from_millis(200)));
        let b = pool.run(|| std::thread::sleep(Duration::from_millis(200)));
        let ticks = async {
            let mut n = 0;
            while start.elapsed() < Duration::from_millis(150) {
                tokio::time::sleep(Duration::from_millis(10)).await;
                n += 1;
            }
            n
        };
        let (a, b, ticks) = tokio::join!(a, b, ticks);
        a.unwrap();
        b.unwrap();
        assert!(start.elapsed() < Duration::from_millis(390), "jobs ran one after the other: {:?}", start.elapsed());
        assert!(ticks >= 5, "the async side was blocked while jobs ran ({ticks} ticks)");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panicking_job_is_an_error_and_the_thread_survives() {
        let pool = JobThreads::new(1).unwrap();
        let r = pool.run(|| -> u32 { panic!("boom") }).await;
        assert!(matches!(r, Err(JobThreadsError::Panicked)), "{r:?}");
        assert_eq!(pool.run(|| 7).await.unwrap(), 7, "the only thread died with the panic");
    }

    /// What a job leaves for later runs after its result is delivered and
    /// before the thread's next job.
    #[tokio::test(flavor = "current_thread")]
    async fn a_jobs_later_work_runs_after_its_result_and_before_the_next_job() {
        let pool = JobThreads::new(1).unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let o = order.clone();
        let first = pool.run_then(move || {
            let later = move || {
                // Hold on until the caller has the result.
                let _ = tx.send("later");
                std::thread::sleep(Duration::from_millis(100));
                o.lock().unwrap().push("later work done");
            };
            (1, later)
        });
        assert_eq!(first.await.unwrap(), 1, "the result came first");
        order.lock().unwrap().push("result delivered");
        assert_eq!(rx.recv().unwrap(), "later");
        let o = order.clone();
        pool.run(move || o.lock().unwrap().push("next job")).await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["result delivered", "later work done", "next job"]);
        // Later work that panics does not take the thread with it.
        let r = pool.run_then(|| (2, || panic!("later"))).await;
        assert_eq!(r.unwrap(), 2);
        assert_eq!(pool.run(|| 3).await.unwrap(), 3, "the only thread died with the later work's panic");
    }

    /// Waits for every slot to be given back: a slot is freed after the
    /// job's result reached its caller (and after its later work).
    async fn all_free(slots: &Slots) {
        let start = Instant::now();
        while slots.running() > 0 {
            assert!(start.elapsed() < Duration::from_secs(5), "a slot was never given back");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A job that records when it starts and ends, under `name`.
    fn logged(
        log: &Arc<std::sync::Mutex<Vec<String>>>,
        name: &str,
        ms: u64,
    ) -> impl FnOnce() -> String + Send + 'static {
        let (log, name) = (log.clone(), name.to_string());
        move || {
            log.lock().unwrap().push(format!("{name} start"));
            std::thread::sleep(Duration::from_millis(ms));
            log.lock().unwrap().push(format!("{name} end"));
            std::thread::current().name().unwrap_or("?").to_string()
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_slot_runs_its_line_in_order_on_the_thread_that_holds_it() {
        let threads = JobThreads::new(3).unwrap();
        let slots = Slots::new(1);
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let wait = Duration::from_secs(10);
        let run = |name: &str, ms| {
            let job = logged(&log, name, ms);
            slots.run_then(&threads, wait, move || (job(), || ()))
        };
        let (a, b, c) = (run("a", 100), run("b", 10), run("c", 10));
        assert_eq!(slots.running(), 1, "one slot, one job at a time");
        let (a, b, c) = tokio::join!(a, b, c);
        let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
        assert_eq!(*log.lock().unwrap(), ["a start", "a end", "b start", "b end", "c start", "c end"]);
        // Three threads were free, yet the line ran on the slot's thread:
        // no hand-back to the async side between jobs.
        assert_eq!((&b, &c), (&a, &a), "the next job in line went to another thread");
        all_free(&slots).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn slots_run_side_by_side_and_later_work_comes_before_the_next_in_line() {
        let threads = JobThreads::new(2).unwrap();
        let slots = Slots::new(2);
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let wait = Duration::from_secs(10);
        let start = Instant::now();
        let later_log = log.clone();
        let (a, b) = (logged(&log, "a", 200), logged(&log, "b", 200));
        let a = slots.run_then(&threads, wait, move || (a(), move || later_log.lock().unwrap().push("a later".into())));
        let b = slots.run_then(&threads, wait, move || (b(), || ()));
        let c = logged(&log, "c", 10);
        let c = slots.run_then(&threads, wait, move || (c(), || ()));
        assert_eq!(slots.running(), 2);
        let (a, b, c) = tokio::join!(a, b, c);
        let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
        assert!(start.elapsed() < Duration::from_millis(390), "two slots ran one after the other");
        assert_ne!(a, b, "two slots on one thread");
        let log = log.lock().unwrap();
        let at = |e: &str| log.iter().position(|x| x == e).unwrap_or_else(|| panic!("no {e} in {log:?}"));
        assert!(at("c start") > at("a end").min(at("b end")), "c ran before a slot was free: {log:?}");
        if c == a {
            assert!(at("c start") > at("a later"), "c ran before a's later work: {log:?}");
        }
        all_free(&slots).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_job_that_waits_too_long_or_whose_caller_goes_never_runs() {
        let threads = JobThreads::new(2).unwrap();
        let slots = Slots::new(1);
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let long = logged(&log, "long", 300);
        let first = slots.run_then(&threads, Duration::from_secs(10), move || (long(), || ()));
        let late = logged(&log, "late", 10);
        let late = slots.run_then(&threads, Duration::from_millis(50), move || (late(), || ()));
        let gone = logged(&log, "gone", 10);
        let gone = slots.run_then(&threads, Duration::from_secs(10), move || (gone(), || ()));
        let kept = logged(&log, "kept", 10);
        let kept = slots.run_then(&threads, Duration::from_secs(10), move || (kept(), || ()));
        // The caller of `gone` goes away while it waits in line.
        drop(gone);
        let (first, late, kept) = tokio::join!(first, late, kept);
        assert!(matches!(late, Err(JobThreadsError::Waited(_))), "{late:?}");
        first.unwrap();
        kept.unwrap();
        assert_eq!(*log.lock().unwrap(), ["long start", "long end", "kept start", "kept end"]);
        all_free(&slots).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn callers_leaving_a_long_line_take_out_exactly_their_own_jobs() {
        let threads = JobThreads::new(1).unwrap();
        let slots = Slots::new(1);
        let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
        let wait = Duration::from_secs(10);
        let busy = slots.run_then(&threads, wait, || (std::thread::sleep(Duration::from_millis(100)), || ()));
        let mut line: Vec<_> = (0..64u32)
            .map(|i| {
                let ran = ran.clone();
                Some(slots.run_then(&threads, wait, move || (ran.lock().unwrap().push(i), || ())))
            })
            .collect();
        // Leave from the front, the back and the middle, in no order.
        let gone: Vec<u32> = (0..64u32).map(|i| (i * 37) % 64).filter(|i| i % 3 == 0 || *i == 63 || *i == 1).collect();
        for &i in &gone {
            line[i as usize] = None;
        }
        busy.await.unwrap();
        for f in line.into_iter().flatten() {
            f.await.unwrap();
        }
        let kept: Vec<u32> = (0..64).filter(|i| !gone.contains(i)).collect();
        assert_eq!(*ran.lock().unwrap(), kept);
        all_free(&slots).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panicking_job_frees_its_slot_for_the_next_in_line() {
        let threads = JobThreads::new(1).unwrap();
        let slots = Slots::new(1);
        let wait = Duration::from_secs(10);
        let boom = slots.run_then(&threads, wait, || -> (u32, fn()) {
            std::thread::sleep(Duration::from_millis(50));
            panic!("boom")
        });
        let next = slots.run_then(&threads, wait, || (7, || ()));
        let (boom, next) = tokio::join!(boom, next);
        assert!(matches!(boom, Err(JobThreadsError::Panicked)), "{boom:?}");
        assert_eq!(next.unwrap(), 7);
        all_free(&slots).await;
    }

    /// With busy polling, a job thread stays runnable (polling) for the
    /// window after each job, then sleeps until the next: the time it was
    /// runnable between two jobs (on a core or waiting for one, so the
    /// figure holds on a loaded machine) is about the window, not the
    /// whole gap. Without polling it sleeps at once.
    #[tokio::test(flavor = "current_thread")]
    async fn a_polling_thread_spins_for_the_window_after_a_job_then_sleeps() {
        fn runnable() -> Duration {
            let stat = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
            // Time on a core and time waiting in a run queue, in ns.
            let ns: u64 = stat.split_whitespace().take(2).map(|f| f.parse::<u64>().expect("ns")).sum();
            Duration::from_nanos(ns)
        }
        async fn runnable_between_jobs(pool: &JobThreads) -> Vec<Duration> {
            let mut at = Vec::new();
            for _ in 0..3 {
                at.push(pool.run(runnable).await.unwrap());
                tokio::time::sleep(Duration::from_millis(600)).await;
            }
            at.windows(2).map(|w| w[1] - w[0]).collect()
        }
        let window = Duration::from_millis(100);
        let polling = JobThreads::polling(1, BusyPoll::with_cores(window, 8)).unwrap();
        for r in runnable_between_jobs(&polling).await {
            assert!(r >= window / 2, "runnable {r:?} after a job with a {window:?} window");
            assert!(r <= Duration::from_millis(400), "runnable {r:?} of a 600 ms gap: never slept");
        }
        let sleeping = JobThreads::new(1).unwrap();
        for r in runnable_between_jobs(&sleeping).await {
            assert!(r < Duration::from_millis(25), "runnable {r:?} between jobs without polling");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn dropping_the_pool_finishes_queued_jobs() {
        let pool = JobThreads::new(1).unwrap();
        let slow = pool.run(|| {
            std::thread::sleep(Duration::from_millis(50));
            1
        });
        let queued = pool.run(|| 2);
        drop(pool);
        assert_eq!((slow.await.unwrap(), queued.await.unwrap()), (1, 2));
    }
}
