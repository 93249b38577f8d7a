//! One client's in-process MLP job as the bench's in-process row runs it
//! (Slots, polling job threads, a polling runtime), timed in parts:
//! submit → job start, the job up to its report, report → caller resumes.
//! On stderr: how often the caller resumed on the job's core or the other,
//! and whether its answer took over 10 µs.
//! `inproc N WINDOW_US [inline|jt] [ASYNC_POLLERS]`
use mote_agent::busy_poll::BusyPoll;
use mote_agent::jobs::{JobThreads, Slots};
use std::time::{Duration, Instant};

mod common;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let (_rt, d, req) = common::mlp_passthrough();
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(5000);
    let window: u64 = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(300);
    // `inline`: each job and its later work on the caller's own thread.
    let inline = std::env::args().nth(3).is_some_and(|a| a == "inline");
    let node_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let jobs = JobThreads::polling(2, BusyPoll::new(Duration::from_micros(window))).unwrap();
    let poll = jobs.busy_poll().clone();
    // The async pollers: one per worker unless the fourth argument says.
    let pollers: usize = std::env::args().nth(4).and_then(|s| s.parse().ok()).unwrap_or(2);
    node_rt.block_on(async move { poll.start_async(pollers) });
    let slots = Slots::new(2);
    let base = Instant::now();
    let ns = move || base.elapsed().as_nanos() as u64;
    let out = node_rt.block_on(async move {
        tokio::spawn(async move {
            let mut rows = Vec::with_capacity(n);
            let mut where_ = Vec::with_capacity(n);
            for _ in 0..n + 200 {
                let (d, r) = (d.clone(), (*req).clone());
                let t0 = ns();
                let job = move || {
                    let t1 = ns();
                    let (d2, r2) = (d, r);
                    let (report, finished) = d2.run_reply_first("job".to_string(), r2, None);
                    let t2 = ns();
                    let cpu = unsafe { libc::sched_getcpu() };
                    ((report, t1, t2, cpu), move || d2.after_reply(finished))
                };
                let (report, t1, t2, jcpu) = if inline {
                    let (out, later) = job();
                    later();
                    out
                } else {
                    slots.run_then(&jobs, Duration::from_secs(10), job).await.unwrap()
                };
                let t3 = ns();
                let ccpu = unsafe { libc::sched_getcpu() };
                let tid = unsafe { libc::gettid() };
                report.result.unwrap();
                rows.push((t1 - t0, t2 - t1, t3 - t2, t3 - t0));
                where_.push((jcpu, ccpu, tid, t3 - t2 > 10_000));
            }
            let mut h = std::collections::BTreeMap::new();
            for w in &where_[200..] {
                *h.entry(*w).or_insert(0) += 1;
            }
            for (k, v) in h {
                if v > 20 {
                    eprintln!("job cpu {} caller cpu {} caller tid {} slow {}: {v}", k.0, k.1, k.2, k.3);
                }
            }
            rows.split_off(200)
        })
        .await
        .unwrap()
    });
    let p50 = |f: &dyn Fn(&(u64, u64, u64, u64)) -> u64| {
        let mut v: Vec<u64> = out.iter().map(f).collect();
        v.sort();
        v[v.len() / 2] as f64 / 1e3
    };
    println!(
        "{} window {window} µs, {pollers} async pollers: total p50 {:.1} µs; submit→start {:.1}, job {:.1}, report→caller {:.1}",
        if inline { "inline" } else { "job threads" },
        p50(&|r| r.3),
        p50(&|r| r.0),
        p50(&|r| r.1),
        p50(&|r| r.2)
    );
}
