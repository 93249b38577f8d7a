//! The bench's in-process row under load, for `perf`: C concurrent callers
//! (tasks on a polling runtime of their own), each MLP job admitted by
//! `Slots` (2, as the served config) and run on the polling job threads,
//! its later work after the answer. `inproc_load CLIENTS SECONDS`; prints
//! jobs per second.
use mote_agent::busy_poll::BusyPoll;
use mote_agent::jobs::{JobThreads, Slots};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let (_rt, d, req) = common::mlp_passthrough();
    let clients: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(64);
    let secs: f64 = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let node_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let jobs = JobThreads::polling(2, BusyPoll::new(mote_agent::busy_poll::DEFAULT_WINDOW)).unwrap();
    let poll = jobs.busy_poll().clone();
    node_rt.block_on(async move { poll.start_async(2) });
    let slots = Slots::new(2);
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    node_rt.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let (d, req, slots, jobs, done) = (d.clone(), req.clone(), slots.clone(), jobs.clone(), done.clone());
                tokio::spawn(async move {
                    while Instant::now() < end {
                        let (d, r) = (d.clone(), (*req).clone());
                        let report = slots
                            .run_then(&jobs, Duration::from_secs(10), move || {
                                let (report, finished) = d.run_reply_first(mote_runtime::new_job_id(), r, None);
                                (report, move || d.after_reply(finished))
                            })
                            .await
                            .unwrap();
                        report.result.unwrap();
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let n = done.load(Ordering::Relaxed);
    println!("{clients} clients: {n} jobs, {:.0} jobs/s", n as f64 / start.elapsed().as_secs_f64());
}
