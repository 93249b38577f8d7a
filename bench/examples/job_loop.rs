//! Runs one kind of job in a loop for `perf record` (profiling aid for the
//! fixed cost of a job): `job_loop empty|mlp|cnn [seconds]`, from the
//! repository root. Prints the p50 of the loop's jobs (up to the report)
//! and of the work after each reply (reset, next instance prepared). `job_loop
//! in-guest-mlp N [values|wasi-nn]` runs N inferences inside `inference-loop` jobs
//! instead (the per-inference path between guest and backend); `job_loop
//! native-mlp N` runs N inferences on the backend directly (the baseline).
//! `job_loop empty-fresh` runs each empty job on an instance of its own
//! (none prepared ahead: store, instantiation and call, the bench's "warm
//! instantiate + empty handler") and prints the receipts' wall time.
//! `job_loop instantiate-GUEST` instantiates `build/guests/GUEST.wasm` in a
//! fresh store and drops it, in a loop (no call, no model), and prints
//! the p50 of each.
//! `NATIVE_BETWEEN=WHAT job_loop native-mlp N` runs something else before
//! each inference and times the inference alone (see `native`).
//! `JOB_GAP_US=150 JOB_GAP=sleep|yield|spin` pauses between whole jobs: a
//! thread that sleeps lets its core go idle (on this VM the next job then
//! runs slower), one that yields or spins keeps it.
use mote_runtime::{kserve, DeploymentSpec, Limits, Request, Runtime, RuntimeConfig};
use std::time::{Duration, Instant};

/// The allocator the `mote` binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let build = std::path::Path::new("build");
    let what = std::env::args().nth(1).unwrap_or_else(|| "empty".into());
    let secs: f64 = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(5.0);
    if let Some(m) = what.strip_prefix("native-") {
        native(build, m, secs as u64);
        return;
    }
    let rt = Runtime::new(RuntimeConfig { data_dir: None, ..RuntimeConfig::default() }).unwrap();
    if let Some(guest) = what.strip_prefix("instantiate-") {
        let d = rt
            .deploy(DeploymentSpec {
                name: "i".into(),
                guest: std::fs::read(build.join(format!("guests/{guest}.wasm"))).unwrap(),
                ..DeploymentSpec::default()
            })
            .unwrap();
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut samples = Vec::new();
        while Instant::now() < end {
            let t = Instant::now();
            d.instantiate_probe().unwrap();
            samples.push(t.elapsed());
        }
        samples.sort();
        println!("{what}: {} instances, p50 {:.2} µs", samples.len(), samples[samples.len() / 2].as_secs_f64() * 1e6);
        return;
    }
    let (guest, model) = match what.as_str() {
        "empty" | "empty-fresh" => ("misbehave", None),
        m if m.starts_with("in-guest-") => ("inference-loop", Some(&m["in-guest-".len()..])),
        m => ("passthrough", Some(m)),
    };
    let d = rt
        .deploy(DeploymentSpec {
            name: "p".into(),
            guest: std::fs::read(build.join(format!("guests/{guest}.wasm"))).unwrap(),
            models: model
                .map(|m| vec![("model".into(), std::fs::read(build.join(format!("models/{m}.onnx"))).unwrap())])
                .unwrap_or_default(),
            limits: Limits::default(),
            ..DeploymentSpec::default()
        })
        .unwrap();
    let req = match model {
        None => Request { inputs: vec![], parameters: vec![("mode".into(), "ok".into())] },
        Some(m) => request(build, m),
    };
    if guest == "inference-loop" {
        // Jobs of at most 100000 inferences (the guest's bound) until N;
        // a third argument picks the guest's `abi` (values, wasi-nn).
        let abi = std::env::args().nth(3).unwrap_or_else(|| "values".into());
        let total = secs as u64;
        let t = Instant::now();
        let (mut done, mut backend_ns) = (0, 0);
        while done < total {
            let runs = (total - done).min(100_000);
            let mut r = req.clone();
            r.parameters.push(("runs".into(), runs.to_string()));
            r.parameters.push(("abi".into(), abi.clone()));
            let report = d.run_owned(r);
            report.result.unwrap();
            backend_ns += report.receipt.usage.backend_ns;
            done += runs;
        }
        println!(
            "{what} ({abi}): {total} inferences, {:.1} µs each, {:.1} µs of them in the backend",
            t.elapsed().as_secs_f64() * 1e6 / secs,
            backend_ns as f64 / 1e3 / secs
        );
        return;
    }
    let end = Instant::now() + Duration::from_secs_f64(secs);
    if what == "empty-fresh" {
        let mut walls = Vec::new();
        while Instant::now() < end {
            let (report, finished) = d.run_reply_first(mote_runtime::new_job_id(), req.clone(), None);
            report.result.unwrap();
            walls.push(report.receipt.usage.wall_ns);
            drop(finished);
        }
        walls.sort_unstable();
        println!("{what}: {} jobs, receipt wall p50 {:.2} µs", walls.len(), walls[walls.len() / 2] as f64 / 1e3);
        return;
    }
    let (mut samples, mut resets, mut backend) = (Vec::new(), Vec::new(), Vec::new());
    // JOB_GAP_US: a pause between jobs, slept (JOB_GAP=sleep) or spun.
    let gap = Duration::from_micros(std::env::var("JOB_GAP_US").ok().and_then(|v| v.parse().ok()).unwrap_or(0));
    let mode = std::env::var("JOB_GAP").unwrap_or_default();
    let sleep = mode == "sleep";
    let yielding = mode == "yield";
    while Instant::now() < end {
        if !gap.is_zero() {
            if sleep {
                std::thread::sleep(gap);
            } else {
                let t = Instant::now();
                while t.elapsed() < gap {
                    if yielding {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
        }
        let r = req.clone();
        let t = Instant::now();
        // As the node runs a job: the report, then the instance's reset
        // and the next job's instance.
        let (report, finished) = d.run_reply_first(mote_runtime::new_job_id(), r, None);
        report.result.unwrap();
        samples.push(t.elapsed());
        backend.push(Duration::from_nanos(report.receipt.usage.backend_ns));
        let t = Instant::now();
        d.after_reply(finished);
        resets.push(t.elapsed());
    }
    samples.sort();
    resets.sort();
    backend.sort();
    let p50 = |v: &[Duration]| v[v.len() / 2].as_secs_f64() * 1e6;
    println!(
        "{what}: {} jobs, p50 {:.1} µs (backend {:.1}), after the reply {:.1} µs",
        samples.len(),
        p50(&samples),
        p50(&backend),
        p50(&resets)
    );
}

/// `native-MODEL N`: N inferences on ORT CPU with no guest, as the bench's
/// native baseline runs them. With `NATIVE_BETWEEN=WHAT`, something else
/// runs before each inference, and only the inference is timed (its p50
/// printed): what a job's other work costs the backend run that follows
/// it (docs/benchmarks.md, "The backend after a job's other work").
/// WHAT: `none`; `touch:KB` (write one byte per cache line of KB KiB,
/// a new stretch each time); `pages:N` (one byte in each of N pages:
/// N TLB entries, few cache lines); `getpid:N` (N system calls);
/// `instantiate` (an instance of `misbehave`, created and dropped);
/// `sign` (a receipt's signature, as a job signs it); `empty-job` (a
/// whole empty job as the node runs it, the work after its reply
/// included); `fresh-context` (a new execution context, with a deadline,
/// as each job opens one); `sleep:US`.
fn native(build: &std::path::Path, model: &str, total: u64) {
    use mote_runtime::backend::{standalone, BackendKind, DirectInputs};
    let req = request(build, model);
    let graph = standalone(BackendKind::OrtCpu)
        .unwrap()
        .load(std::fs::read(build.join(format!("models/{model}.onnx"))).unwrap().into())
        .unwrap();
    let mut exec = graph.init_execution_context().unwrap();
    let direct = DirectInputs::new(&req).unwrap();
    let Ok(between) = std::env::var("NATIVE_BETWEEN") else {
        let t = Instant::now();
        for _ in 0..total {
            std::hint::black_box(exec.compute(&direct.views(), None).unwrap());
        }
        println!("native-{model}: {total} inferences, {:.1} µs each", t.elapsed().as_secs_f64() * 1e6 / total as f64);
        return;
    };
    let rt = Runtime::new(RuntimeConfig { data_dir: None, ..RuntimeConfig::default() }).unwrap();
    let empty = rt
        .deploy(DeploymentSpec {
            name: "empty".into(),
            guest: std::fs::read(build.join("guests/misbehave.wasm")).unwrap(),
            ..DeploymentSpec::default()
        })
        .unwrap();
    let empty_request = || Request { inputs: vec![], parameters: vec![("mode".into(), "ok".into())] };
    let key = mote_runtime::NodeKey::generate();
    let mut receipt = empty.run_owned(empty_request()).receipt;
    let (what, arg) = between.split_once(':').unwrap_or((&between, "0"));
    let arg: usize = arg.parse().expect("NATIVE_BETWEEN=WHAT:NUMBER");
    let mut buf = vec![0u8; 64 << 20];
    let mut times = Vec::with_capacity(total as usize);
    for i in 0..total as usize {
        let mut deadline = None;
        match what {
            "none" => {}
            "touch" => {
                let n = arg << 10;
                let off = (i * n) % (buf.len() - n);
                for b in buf[off..off + n].iter_mut().step_by(64) {
                    *b = b.wrapping_add(1);
                }
            }
            "pages" => {
                for page in buf.chunks_mut(4096).take(arg) {
                    let j = (i % 64) * 64;
                    page[j] = page[j].wrapping_add(1);
                }
            }
            "getpid" => {
                for _ in 0..arg {
                    // SAFETY: a system call without arguments or effects.
                    unsafe { libc::syscall(libc::SYS_getpid) };
                }
            }
            "instantiate" => empty.instantiate_probe().unwrap(),
            "sign" => receipt.sign(&key),
            "empty-job" => {
                let (report, finished) = empty.run_reply_first(mote_runtime::new_job_id(), empty_request(), None);
                report.result.unwrap();
                empty.after_reply(finished);
            }
            "fresh-context" => {
                exec = graph.init_execution_context().unwrap();
                deadline = Some(Instant::now() + Duration::from_secs(30));
            }
            "sleep" => std::thread::sleep(Duration::from_micros(arg as u64)),
            other => panic!("NATIVE_BETWEEN={other}: see job_loop's native()"),
        }
        let t = Instant::now();
        std::hint::black_box(exec.compute(&direct.views(), deadline).unwrap());
        times.push(t.elapsed());
    }
    times.sort_unstable();
    println!("native-{model} after {between}: p50 {:.2} µs", times[times.len() / 2].as_secs_f64() * 1e6);
}

fn request(build: &std::path::Path, model: &str) -> Request {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(build.join(format!("models/{model}.request.json"))).unwrap()).unwrap();
    kserve::parse_request(&v).unwrap()
}
