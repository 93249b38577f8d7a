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

use std::future::Future;
use std::sync::Arc;

type Task = Box<dyn FnOnce() + Send>;

/// A fixed set of threads that run jobs. Dropping the last handle lets the
/// threads finish the jobs already queued, then end.
pub struct JobThreads {
    tx: crossbeam_channel::Sender<Task>,
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
}

impl JobThreads {
    /// Starts `n` threads (at least one) named `mote-job-N`.
    pub fn new(n: usize) -> std::io::Result<Arc<Self>> {
        let (tx, rx) = crossbeam_channel::unbounded::<Task>();
        for i in 0..n.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new().name(format!("mote-job-{i}")).spawn(move || {
                for task in rx {
                    task();
                }
            })?;
        }
        Ok(Arc::new(Self { tx }))
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
        let (done, result) = tokio::sync::oneshot::channel();
        let task: Task = Box::new(move || {
            // A panic must not kill the thread (the pool would shrink); the
            // caller sees the dropped sender as `Panicked`.
            if let Ok((value, later)) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)) {
                let _ = done.send(value);
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(later));
            }
        });
        let sent = self.tx.send(task).is_ok();
        async move {
            if !sent {
                return Err(JobThreadsError::Stopped);
            }
            result.await.map_err(|_| JobThreadsError::Panicked)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

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
