//! One client's job latency through each way of running a job from async
//! code (profiling aid for the endpoint's in-process figure): inline on the
//! caller, `block_in_place`, `spawn_blocking`, and mote's job threads.
use mote_agent::jobs::{JobThreads, Slots};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

/// The allocator the `mote` binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let (_rt, d, req) = common::mlp_passthrough();
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let multi = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let single = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let jobs = JobThreads::new(2).unwrap();
    let conc: usize = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    if conc > 1 {
        throughput(&multi, &d, &req, &jobs, n, conc);
        return;
    }
    for round in 0..3 {
        for way in ["inline", "block_in_place", "spawn_blocking", "job-threads(multi)", "job-threads(single)"] {
            let (d, req, jobs) = (d.clone(), req.clone(), jobs.clone());
            let run = async move {
                let mut t = Vec::with_capacity(n);
                let mut w = Vec::with_capacity(n);
                for _ in 0..n {
                    let (d, r) = (d.clone(), (*req).clone());
                    let s = Instant::now();
                    let report = match way {
                        "inline" => d.run_owned(r),
                        "block_in_place" => tokio::task::block_in_place(|| d.run_owned(r)),
                        "spawn_blocking" => tokio::task::spawn_blocking(move || d.run_owned(r)).await.unwrap(),
                        _ => jobs.run(move || d.run_owned(r)).await.unwrap(),
                    };
                    t.push(s.elapsed());
                    w.push(Duration::from_nanos(report.receipt.usage.wall_ns));
                    report.result.unwrap();
                }
                w.sort();
                (t, w[n / 2])
            };
            let (mut t, wall): (Vec<Duration>, Duration) = if way.ends_with("(single)") {
                single.block_on(run)
            } else {
                multi.block_on(async move { tokio::spawn(run).await.unwrap() })
            };
            t.sort();
            println!(
                "round {round} {way:>20}: p50 {:>7.1?} p99 {:>7.1?} (job wall p50 {wall:>7.1?})",
                t[n / 2],
                t[n * 99 / 100]
            );
        }
    }
}

/// Jobs per second with `conc` clients and 2 job slots (the node's
/// admission): `block_in_place`; job threads behind a semaphore, the slot
/// given back after the job's later work (the node before `Slots`); and
/// `Slots`, whose job thread runs the next job in line itself. Each job as
/// the node runs it: reply first, then the instance's reset.
fn throughput(
    rt: &tokio::runtime::Runtime,
    d: &Arc<mote_runtime::Deployment>,
    req: &Arc<mote_runtime::Request>,
    jobs: &Arc<JobThreads>,
    n: usize,
    conc: usize,
) {
    for round in 0..3 {
        for way in ["block_in_place", "semaphore", "slots"] {
            // `HANDOFF_WAY=slots` (for perf): that way alone.
            if std::env::var("HANDOFF_WAY").is_ok_and(|w| w != way) {
                continue;
            }
            let permits = Arc::new(tokio::sync::Semaphore::new(2));
            let slots = Slots::new(2);
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let start = Instant::now();
            rt.block_on(async {
                let tasks: Vec<_> = (0..conc)
                    .map(|_| {
                        let (d, req, jobs, permits, slots, next) =
                            (d.clone(), req.clone(), jobs.clone(), permits.clone(), slots.clone(), next.clone());
                        tokio::spawn(async move {
                            while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < n {
                                let (d, r) = (d.clone(), (*req).clone());
                                let job = move || {
                                    let (report, finished) = d.run_reply_first(mote_runtime::new_job_id(), r, None);
                                    (report, move || d.after_reply(finished))
                                };
                                let report = match way {
                                    "block_in_place" => {
                                        let _p = permits.acquire().await.unwrap();
                                        tokio::task::block_in_place(|| {
                                            let (report, later) = job();
                                            later();
                                            report
                                        })
                                    }
                                    "semaphore" => {
                                        let p = permits.clone().acquire_owned().await.unwrap();
                                        jobs.run_then(move || {
                                            let (report, later) = job();
                                            (report, move || {
                                                later();
                                                drop(p);
                                            })
                                        })
                                        .await
                                        .unwrap()
                                    }
                                    _ => slots.run_then(&jobs, Duration::from_secs(60), job).await.unwrap(),
                                };
                                report.result.unwrap();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            });
            println!("round {round} {way:>15} x{conc}: {:.0} jobs/s", n as f64 / start.elapsed().as_secs_f64());
        }
    }
}
