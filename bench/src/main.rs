//! mote benchmarks. Every figure is measured in one run together with its
//! baseline, and reported as a ratio: absolute times on shared machines mean
//! little, ratios measured side by side do.
//!
//! Sections: sandbox overhead (guest vs native ORT), instantiation and
//! compile times, endpoint transports under concurrency, backends, and fuel
//! metering. Writes `results/latest.json`, `results/latest.md` and
//! `results/latency.svg`.

/// The allocator the `mote` binary uses, so jobs here see the same one.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod batching;
mod blocking_https;
mod endpoint;
mod llm;
mod market;
mod report;
mod stats;

use anyhow::{Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use mote_runtime::backend::{standalone, BackendChoice, BackendKind, DirectInputs};
use mote_runtime::{kserve, new_job_id, DigestAlg, Deployment, DeploymentSpec, Limits, Request, Runtime, RuntimeConfig};
use serde_json::{json, Value};
use stats::Summary;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Benchmarks mote against native ONNX Runtime and across transports.
#[derive(Parser, Debug)]
struct Args {
    /// Small run counts (CI smoke run, under two minutes).
    #[arg(long)]
    quick: bool,
    /// Where to write latest.json, latest.md and latency.svg (relative to
    /// the working directory: run from the repository root, as `make bench`
    /// does; a path baked in at compile time would point into whichever
    /// checkout last built the shared target directory).
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Run only these sections (overhead, instantiation, endpoint,
    /// backends, metering, market, batching, llm); the report then covers just them. For profiling.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The repository's build/ directory (guests and models).
    #[arg(long, default_value = "build")]
    build: PathBuf,
    /// Rounds of the overhead, instantiation and endpoint comparisons: the
    /// report gives each ratio's median and spread over the rounds, and
    /// its tables show the median round (`--quick`: one round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// ONNX Runtime's threads spin between a run's parallel parts
    /// (`[server] ort_spinning`). The LLM section runs itself again with
    /// it in a process of its own (ORT's threads are set once per process).
    #[arg(long, hide = true)]
    ort_spinning: bool,
    /// Only the LLM's sandbox and native decode, as JSON on stdout (the
    /// LLM section's child process).
    #[arg(long, hide = true)]
    llm_decode_only: bool,
}

pub(crate) struct Ctx {
    pub(crate) quick: bool,
    pub(crate) build: PathBuf,
    /// ONNX Runtime's threads spin (the LLM section's child process).
    pub(crate) ort_spinning: bool,
}

impl Ctx {
    pub(crate) fn read(&self, rel: &str) -> Result<Vec<u8>> {
        let p = self.build.join(rel);
        std::fs::read(&p).with_context(|| format!("{}: run `make guests` first", p.display()))
    }
    pub(crate) fn request(&self, model: &str) -> Result<Request> {
        let v: Value = serde_json::from_slice(&self.read(&format!("models/{model}.request.json"))?)?;
        kserve::parse_request(&v).map_err(anyhow::Error::msg)
    }
    pub(crate) fn runs(&self, model: &str) -> usize {
        match (self.quick, model) {
            (true, "cnn") => 40,
            (true, _) => 100,
            (false, "cnn") => 200,
            (false, _) => 1000,
        }
    }
}

pub(crate) fn bar(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>28} [{bar:30}] {pos}/{len} {elapsed}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// Times `f` `runs` times after `runs / 10` warm-up calls.
pub(crate) fn time(runs: usize, pb: &ProgressBar, mut f: impl FnMut()) -> Summary {
    for _ in 0..(runs / 10).max(3) {
        f();
    }
    let samples: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            pb.inc(1);
            t.elapsed()
        })
        .collect();
    Summary::of(&samples)
}

fn runtime(fuel: bool) -> Result<Runtime> {
    Runtime::new(RuntimeConfig { data_dir: None, fuel_metering: fuel, ..RuntimeConfig::default() })
        .map_err(anyhow::Error::msg)
}

fn deploy(ctx: &Ctx, rt: &Runtime, guest: &str, model: Option<&str>) -> Result<Deployment> {
    deploy_on(ctx, rt, guest, model, BackendChoice::Auto)
}

/// [`deploy`] on `backend`.
fn deploy_on(ctx: &Ctx, rt: &Runtime, guest: &str, model: Option<&str>, backend: BackendChoice) -> Result<Deployment> {
    let models = match model {
        Some(m) => vec![("model".to_string(), ctx.read(&format!("models/{m}.onnx"))?)],
        None => vec![],
    };
    Ok(rt.deploy(DeploymentSpec {
        name: guest.into(),
        guest: ctx.read(&format!("guests/{guest}.wasm"))?,
        models,
        limits: Limits::default(),
        backend,
        ..DeploymentSpec::default()
    })?)
}

/// Like [`time`], but each call gets a fresh value from `make`, made
/// outside the timed part (a request the job consumes).
pub(crate) fn time_owned<T, L: FnOnce()>(
    runs: usize,
    pb: &ProgressBar,
    mut make: impl FnMut() -> T,
    mut f: impl FnMut(T) -> L,
) -> Timed {
    for _ in 0..(runs / 10).max(3) {
        f(make())();
    }
    let (mut samples, mut after) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        let v = make();
        let t = Instant::now();
        let later = f(v);
        samples.push(t.elapsed());
        let t = Instant::now();
        later();
        after.push(t.elapsed());
        pb.inc(1);
    }
    Timed { call: Summary::of(&samples), later: Summary::of(&after) }
}

/// What [`time_owned`] measured: the call, and the work it left for after
/// (a job's: its instance's reset and the next job's instance, after the
/// reply).
pub(crate) struct Timed {
    pub(crate) call: Summary,
    pub(crate) later: Summary,
}

/// Runs a job as the node does: the report, and what is left for after
/// the reply (the finished instance reset, the next one prepared).
pub(crate) fn replying_first<D: std::ops::Deref<Target = Deployment>>(
    d: D,
    request: Request,
) -> (mote_runtime::JobReport, impl FnOnce()) {
    let (report, finished) = d.run_reply_first(new_job_id(), request, None);
    (report, move || d.after_reply(finished))
}

/// Per-inference latencies a guest measured inside the sandbox: the
/// `inference-loop` guest runs the model `runs` times in one job and returns
/// each run's time as `latency_ns`. `abi`: `values` (one
/// `mote:edge/inference-io` call per run) or `wasi-nn` (tensor resources).
fn in_guest(d: &Deployment, req: &Request, runs: usize, abi: &str) -> Result<Vec<Duration>> {
    let mut req = req.clone();
    req.parameters.push(("runs".into(), runs.to_string()));
    req.parameters.push(("abi".into(), abi.into()));
    let resp = d.run_owned(req).result?;
    let t = resp.outputs.iter().find(|t| t.name == "latency_ns").context("inference-loop returned no latency_ns")?;
    Ok(t.data
        .chunks_exact(8)
        .map(|c| Duration::from_nanos(u64::from_le_bytes(c.try_into().expect("8 bytes"))))
        .collect())
}

/// How many blocks the overhead section cuts each way of running a model
/// into. The ways take turns block by block, so a spell in which this
/// shared VM runs slower (seconds long, where a block of the MLP lasts
/// about a millisecond) falls on all of them alike instead of on whichever
/// ran then: the ratios compare figures measured side by side.
const OVERHEAD_BLOCKS: usize = 10;

/// Sandbox overhead on one model on backend `kind`, three ways against
/// native ORT on the same backend (same threads, no sandbox; the guests'
/// deployments are fixed to `kind`, so a machine with a GPU does not
/// compare its CUDA jobs with native CPU runs):
/// - in-guest: each inference of a running guest (tensors into the host,
///   compute, outputs back into the guest), timed inside the sandbox, by
///   value (`mote:edge/inference-io`, what the SDK uses) and, beside it,
///   through wasi-nn's tensor resources;
/// - whole job: the passthrough guest as the node runs every request
///   (instantiate, `load-by-name` through the cache, inference, receipt);
/// - the receipt's request digest alone (BLAKE3 over the input tensors),
///   the part of a whole job that grows with the input, and beside it the
///   sha256 that receipts carried before (what the change saves).
fn overhead(ctx: &Ctx, rt: &Runtime, model: &str, kind: BackendKind) -> Result<Value> {
    let d = deploy_on(ctx, rt, "passthrough", Some(model), BackendChoice::Fixed(kind))?;
    let looped = deploy_on(ctx, rt, "inference-loop", Some(model), BackendChoice::Fixed(kind))?;
    let req = ctx.request(model)?;
    let backend = standalone(kind)?;
    let graph = backend.load(ctx.read(&format!("models/{model}.onnx"))?.into())?;
    let mut exec = graph.init_execution_context()?;
    let direct = DirectInputs::new(&req).map_err(anyhow::Error::msg)?;
    let runs = ctx.runs(model);
    let pb = bar(runs * 4, &format!("overhead {model} {}", kind.as_str()));
    let block = runs.div_ceil(OVERHEAD_BLOCKS);
    // Warm-up of each way: caches, the graph cache, the pool's slots.
    let mut native_run = || {
        exec.compute(&direct.views(), None).expect("native run");
    };
    for _ in 0..(runs / 10).max(3) {
        native_run();
    }
    in_guest(&looped, &req, (runs / 10).max(3), "values")?;
    in_guest(&looped, &req, (runs / 10).max(3), "wasi-nn")?;
    for _ in 0..(runs / 10).max(3) {
        let (report, later) = replying_first(&d, req.clone());
        report.result?;
        later();
    }
    let (mut native, mut guest, mut guest_wasi_nn) = (Vec::new(), Vec::new(), Vec::new());
    let (mut job, mut job_after) = (Vec::new(), Vec::new());
    for b in 0..OVERHEAD_BLOCKS {
        // Each block starts with another way, so none always follows the
        // same other one (whose leftovers in the caches it would inherit).
        for way in (0..4).map(|i| (b + i) % 4) {
            match way {
                0 => native.extend((0..block).map(|_| {
                    let t = Instant::now();
                    native_run();
                    t.elapsed()
                })),
                1 => guest.extend(in_guest(&looped, &req, block, "values")?),
                2 => guest_wasi_nn.extend(in_guest(&looped, &req, block, "wasi-nn")?),
                _ => {
                    // As the node runs it: the report first; the instance's
                    // reset and the next one's preparation after.
                    for _ in 0..block {
                        let r = req.clone();
                        let t = Instant::now();
                        let (report, later) = replying_first(&d, r);
                        job.push(t.elapsed());
                        report.result?;
                        let t = Instant::now();
                        later();
                        job_after.push(t.elapsed());
                    }
                }
            }
            pb.inc(block as u64);
        }
    }
    let (native, guest, guest_wasi_nn) = (Summary::of(&native), Summary::of(&guest), Summary::of(&guest_wasi_nn));
    let job = Timed { call: Summary::of(&job), later: Summary::of(&job_after) };
    let hash = time(runs.min(200), &ProgressBar::hidden(), || {
        std::hint::black_box(mote_runtime::digest(&req.inputs, &req.parameters));
    });
    let hash_sha256 = time(runs.min(200), &ProgressBar::hidden(), || {
        std::hint::black_box(mote_runtime::digest_with(DigestAlg::Sha256, &req.inputs, &req.parameters));
    });
    pb.finish_and_clear();
    Ok(json!({"model": model, "backend": kind.as_str(), "native": native, "in_guest": guest, "in_guest_wasi_nn": guest_wasi_nn, "job": job.call, "job_after_reply": job.later, "input_hash": hash, "input_hash_sha256": hash_sha256,
              "input_bytes": req.inputs.iter().map(|t| t.data.len()).sum::<usize>(),
              "ratio_p50": guest.p50_us / native.p50_us, "ratio_mean": guest.mean_us / native.mean_us,
              "wasi_nn_ratio_p50": guest_wasi_nn.p50_us / native.p50_us,
              "job_ratio_p50": job.call.p50_us / native.p50_us}))
}

/// One model on each backend this machine has, called directly (no guest):
/// ORT CPU is the baseline; wgpu and ORT CUDA are reported as ratios to it.
fn backends(ctx: &Ctx, model: &str) -> Result<Value> {
    let req = ctx.request(model)?;
    let bytes: std::sync::Arc<[u8]> = ctx.read(&format!("models/{model}.onnx"))?.into();
    let direct = DirectInputs::new(&req).map_err(anyhow::Error::msg)?;
    let runs = if ctx.quick { 20 } else { ctx.runs(model).min(300) };
    let mut rows = serde_json::Map::new();
    let mut base = None;
    let mut cpu_outputs: Option<Vec<f32>> = None;
    for kind in [BackendKind::OrtCpu, BackendKind::Wgpu, BackendKind::OrtCuda] {
        let backend = match standalone(kind) {
            Ok(b) => b,
            Err(e) => {
                rows.insert(kind.as_str().into(), json!({"available": false, "reason": e.to_string()}));
                continue;
            }
        };
        let graph = backend.load(bytes.clone())?;
        let mut exec = graph.init_execution_context()?;
        // The first call compiles kernels (wgpu) or plans (ORT): time it apart.
        let t0 = Instant::now();
        let outputs = exec.compute(&direct.views(), None)?;
        let first_ms = t0.elapsed().as_secs_f64() * 1e3;
        // What it computes, against ORT CPU's outputs for the same inputs.
        let floats: Vec<f32> = outputs
            .iter()
            .filter(|(_, t)| t.ty == mote_runtime::tensor::ElementType::F32)
            .flat_map(|(_, t)| t.data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))))
            .collect();
        let max_abs_diff = match &cpu_outputs {
            None => {
                cpu_outputs = Some(floats);
                None
            }
            Some(cpu) if cpu.len() == floats.len() => {
                Some(cpu.iter().zip(&floats).map(|(a, b)| f64::from((a - b).abs())).fold(0.0, f64::max))
            }
            Some(_) => anyhow::bail!("{} gave outputs of another size than ORT CPU", kind.as_str()),
        };
        let pb = bar(runs, &format!("backend {} {model}", kind.as_str()));
        let summary = time(runs, &pb, || {
            exec.compute(&direct.views(), None).expect("backend run");
        });
        pb.finish_and_clear();
        let ratio = base.map(|b: f64| summary.p50_us / b);
        if kind == BackendKind::OrtCpu {
            base = Some(summary.p50_us);
        }
        rows.insert(
            kind.as_str().into(),
            json!({"available": true, "device": backend.device().name, "first_call_ms": first_ms,
                   "latency": summary, "ratio_p50_vs_ort_cpu": ratio,
                   "max_abs_diff_vs_ort_cpu": max_abs_diff}),
        );
    }
    Ok(json!({"model": model, "backends": rows}))
}

fn instantiation(ctx: &Ctx) -> Result<Value> {
    let runs = if ctx.quick { 300 } else { 3000 };
    let rt = runtime(true)?;
    let pb = bar(runs * 4, "instantiation");
    let empty = deploy(ctx, &rt, "misbehave", None)?;
    let ok = Request { inputs: vec![], parameters: vec![("mode".into(), "ok".into())] };
    let instantiate = time(runs, &pb, || empty.instantiate_probe().expect("instantiate"));
    // As the node runs jobs: each on the instance prepared after the last
    // reply.
    let empty_job = time_owned(
        runs,
        &pb,
        || ok.clone(),
        |r| {
            let (report, later) = replying_first(&empty, r);
            report.result.expect("empty handler");
            later
        },
    );
    // Each job instantiating its own (no instance prepared ahead): the
    // receipt's wall time then covers the store, the instantiation and
    // the call, not the receipt that follows.
    let mut walls = Vec::with_capacity(runs);
    time_owned(
        runs,
        &pb,
        || ok.clone(),
        |r| {
            let (report, finished) = empty.run_reply_first(new_job_id(), r, None);
            report.result.expect("empty handler");
            walls.push(Duration::from_nanos(report.receipt.usage.wall_ns));
            move || drop(finished)
        },
    );
    let empty_call = Summary::of(&walls[walls.len() - runs..]);
    // The signature alone, to show what of a job is the receipt: with a
    // precomputed nonce (in bursts the pool holds, refilled in between, as
    // between jobs) and RFC 8032's inline nonce, side by side.
    let key = mote_runtime::NodeKey::generate();
    let mut receipt = empty.run(&ok).receipt;
    receipt.sign(&key); // starts the nonce thread
    let mut samples = Vec::with_capacity(runs);
    while samples.len() < runs {
        std::thread::sleep(Duration::from_millis(3));
        for _ in 0..32 {
            let t = Instant::now();
            receipt.sign(&key);
            samples.push(t.elapsed());
        }
    }
    pb.inc(runs as u64);
    let sign = Summary::of(&samples);
    let sign_rfc8032 = time(runs, &ProgressBar::hidden(), || receipt.sign_rfc8032(&key));
    pb.finish_and_clear();

    // Compile: cold, then from wasmtime's compiled-module cache (on disk).
    let guest = ctx.read("guests/classifier.wasm")?;
    let spec = || DeploymentSpec { name: "c".into(), guest: guest.clone(), ..DeploymentSpec::default() };
    let t = Instant::now();
    rt.deploy(spec())?;
    let cold = t.elapsed();
    let cached_rt = Runtime::new(RuntimeConfig { data_dir: None, compile_cache: true, ..RuntimeConfig::default() })
        .map_err(anyhow::Error::msg)?;
    cached_rt.deploy(spec())?; // fills the cache
    let t = Instant::now();
    cached_rt.deploy(spec())?;
    let cached = t.elapsed();
    Ok(json!({
        "instantiate": instantiate,
        "empty_job": empty_job.call, "empty_job_after_reply": empty_job.later,
        "empty_call": empty_call,
        "receipt_sign": sign,
        "receipt_sign_rfc8032": sign_rfc8032,
        "compile_cold_ms": cold.as_secs_f64() * 1e3,
        "compile_cached_ms": cached.as_secs_f64() * 1e3,
        "guest_bytes": guest.len(),
    }))
}

fn metering(ctx: &Ctx) -> Result<Value> {
    let mut out = Vec::new();
    for (guest, model, req) in
        [("passthrough", Some("mlp"), ctx.request("mlp")?), ("classifier", None, ctx.request("classifier")?)]
    {
        let runs = if ctx.quick { 50 } else { 300 };
        let pb = bar(runs * 2, &format!("metering {guest}"));
        let on = deploy(ctx, &runtime(true)?, guest, model)?;
        let off = deploy(ctx, &runtime(false)?, guest, model)?;
        let with = time(runs, &pb, || {
            on.run(&req).result.expect("metered run");
        });
        let without = time(runs, &pb, || {
            off.run(&req).result.expect("unmetered run");
        });
        pb.finish_and_clear();
        out.push(
            json!({"guest": guest, "fuel_on": with, "fuel_off": without, "ratio_p50": with.p50_us / without.p50_us}),
        );
    }
    Ok(Value::Array(out))
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let ort = mote_runtime::backend::ort::find_library().map(|p| p.display().to_string()).unwrap_or_else(|e| e);
    // How an idle core sleeps: what a thread woken on it waits for (the
    // endpoint floors). `guest_halt_poll_ns` exists on KVM guests with the
    // haltpoll driver: 0 means an idle vCPU halts at once, and waking it
    // takes the hypervisor.
    let sys = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string());
    let cpuidle = json!({
        "driver": sys("/sys/devices/system/cpu/cpuidle/current_driver"),
        "guest_halt_poll_ns": sys("/sys/module/haltpoll/parameters/guest_halt_poll_ns").and_then(|s| s.parse::<u64>().ok()),
    });
    json!({
        "cpuidle": cpuidle,
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "mote": env!("CARGO_PKG_VERSION"),
        "wasmtime": "48.0.8",
        "onnxruntime": ort,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let ctx = Ctx { quick: args.quick, build: args.build.clone(), ort_spinning: args.ort_spinning };
    if args.llm_decode_only {
        println!("{}", llm::decode(&ctx)?);
        return Ok(());
    }
    let started = Instant::now();
    eprintln!("mote-bench{}: results go to {}", if ctx.quick { " --quick" } else { "" }, args.out.display());

    let want = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let rt = runtime(true)?;
    let rounds = if ctx.quick { 1 } else { args.rounds.max(1) };
    let mut per_round = Vec::new();
    for round in 0..rounds {
        if rounds > 1 {
            eprintln!("round {} of {rounds}", round + 1);
        }
        let mut overheads = Vec::new();
        if want("overhead") {
            for model in ["mlp", "cnn", "transformer"] {
                overheads.push(overhead(&ctx, &rt, model, BackendKind::OrtCpu)?);
            }
        }
        let inst = if want("instantiation") { instantiation(&ctx)? } else { Value::Null };
        let endpoint = if want("endpoint") { endpoint::run(&ctx)? } else { Value::Null };
        per_round.push(json!({"overhead": overheads, "instantiation": inst, "endpoint": endpoint}));
    }
    // Each section's tables show its median round.
    let overheads: Vec<Value> = (0..3)
        .filter_map(|i| stats::median_by(&per_round, |r| r["overhead"][i]["ratio_p50"].as_f64()).map(|r| r["overhead"][i].clone()))
        .collect();
    let inst = stats::median_by(&per_round, |r| r["instantiation"]["empty_job"]["p50_us"].as_f64())
        .map_or(Value::Null, |r| r["instantiation"].clone());
    let endpoint = stats::median_by(&per_round, |r| report::endpoint_overhead(&r["endpoint"], "https-json"))
        .map_or(Value::Null, |r| r["endpoint"].clone());
    // The same on ORT CUDA where this machine has a device (one round:
    // no target, and a lent GPU's time is short).
    let overhead_cuda = if want("overhead") {
        match standalone(BackendKind::OrtCuda) {
            Ok(_) => {
                let rows = ["cnn", "transformer"]
                    .into_iter()
                    .map(|model| overhead(&ctx, &rt, model, BackendKind::OrtCuda))
                    .collect::<Result<Vec<_>>>()?;
                json!({"available": true, "rows": rows})
            }
            Err(e) => json!({"available": false, "reason": e.to_string()}),
        }
    } else {
        Value::Null
    };
    let metering = if want("metering") { metering(&ctx)? } else { Value::Null };
    let market = if want("market") { market::run(&ctx)? } else { Value::Null };
    let batching = if want("batching") { batching::run(&ctx)? } else { Value::Null };
    let llm = if want("llm") { llm::run(&ctx)? } else { Value::Null };
    let mut backend_rows = Vec::new();
    if want("backends") {
        for model in ["cnn", "transformer", "mlp"] {
            backend_rows.push(backends(&ctx, model)?);
        }
    }
    let backends = Value::Array(backend_rows);
    let results = json!({
        "quick": ctx.quick,
        "machine": machine(),
        "busy_poll_us": endpoint::busy_poll_window().as_micros() as u64,
        "overhead": overheads,
        "overhead_cuda": overhead_cuda,
        "instantiation": inst,
        "endpoint": endpoint,
        "backends": backends,
        "metering": metering,
        "market": market,
        "batching": batching,
        "llm": llm,
        "rounds": per_round,
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    report::write(&args.out, &results)?;
    eprintln!("done in {:.1} s: {}", started.elapsed().as_secs_f64(), Path::new(&args.out).join("latest.md").display());
    Ok(())
}
