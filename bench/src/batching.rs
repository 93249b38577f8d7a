//! Dynamic batching: the CNN run in-process by concurrent clients, as the
//! node runs jobs (admission slots, job threads), with and without the
//! deployment's batcher. Unbatched is measured at the served default (2
//! jobs at once) and at the batched configuration's slots, and the better
//! of the two is the baseline.

use crate::endpoint::{drive, Call};
use crate::{bar, Ctx};
use anyhow::Result;
use mote_agent::jobs::{JobThreads, Slots};
use mote_runtime::batching::BatchConfig;
use mote_runtime::{DeploymentSpec, Limits, Runtime, RuntimeConfig};
use serde_json::{json, Value};
use std::sync::Arc;

/// Rows per batched run at most, and the gathering window: the best of
/// those tried on the 2-core VM (max_batch 2–16, window 0–2000 µs, 2–16
/// slots).
pub(crate) const BATCH: BatchConfig = BatchConfig { max_batch: 8, window_us: 500 };
/// Jobs admitted at once for the batched deployment (and the second
/// unbatched baseline).
pub(crate) const SLOTS: usize = 8;

pub(crate) fn run(ctx: &Ctx) -> Result<Value> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let local = Runtime::new(RuntimeConfig { data_dir: None, pool_instances: 40, ..RuntimeConfig::default() })
        .map_err(anyhow::Error::msg)?;
    let req = Arc::new(ctx.request("cnn")?);
    let mut rows = Vec::new();
    let configs: [(&'static str, usize, Option<BatchConfig>); 3] =
        [("unbatched", 2, None), ("unbatched", SLOTS, None), ("batched", SLOTS, Some(BATCH))];
    let totals = if ctx.quick { [(1, 16), (64, 64)] } else { [(1, 128), (64, 384)] };
    // Repetitions, interleaved across the configurations so that a slow
    // spell of the VM hits them alike; each configuration's median (by
    // p50 at 1 client, by throughput at 64) is reported.
    let reps = if ctx.quick { 1 } else { 3 };
    let mut served = Vec::new();
    for (name, slots, batching) in configs {
        let d = Arc::new(local.deploy(DeploymentSpec {
            name: format!("cnn-{name}-{slots}"),
            guest: ctx.read("guests/passthrough.wasm")?,
            models: vec![("model".into(), ctx.read("models/cnn.onnx")?)],
            limits: Limits { deadline_ms: 120_000, ..Limits::default() },
            batching,
            ..DeploymentSpec::default()
        })?);
        d.warm().map_err(anyhow::Error::msg)?;
        served.push((name, slots, d, Slots::new(slots), JobThreads::new(slots)?));
    }
    for (clients, total) in totals {
        let mut measured: Vec<Vec<Value>> = vec![Vec::new(); served.len()];
        for rep in 0..reps {
            for (i, (name, slots, d, line, jobs)) in served.iter().enumerate() {
                let (d2, req, line, jobs) = (d.clone(), req.clone(), line.clone(), jobs.clone());
                let call: Call = Arc::new(move || {
                    let (d, req) = (d2.clone(), req.clone());
                    let run = line
                        .run_then(&jobs, crate::endpoint::SLOT_WAIT, move || crate::replying_first(d, (*req).clone()));
                    Box::pin(async move {
                        let r = run.await?;
                        r.result.map(|_| ()).map_err(anyhow::Error::new)
                    })
                });
                drive(&rt, clients.min(16), clients.min(16) * 2, &indicatif::ProgressBar::hidden(), call.clone())?;
                let before = d.batch_stats().unwrap_or_default();
                let pb = bar(total, &format!("batching {name}/{slots} x{clients} {}/{reps}", rep + 1));
                let cpu0 = process_cpu_s();
                let (lat, rps) = drive(&rt, clients, total, &pb, call)?;
                let cpu_us_per_request = (process_cpu_s() - cpu0) * 1e6 / total as f64;
                pb.finish_and_clear();
                let after = d.batch_stats().unwrap_or_default();
                let runs = after.batched_runs - before.batched_runs;
                let computes = after.batched_computes - before.batched_computes;
                measured[i].push(json!({
                    "config": name, "slots": slots, "clients": clients, "latency": lat, "throughput_rps": rps,
                    "batched_runs": runs,
                    "mean_jobs_per_run": if runs > 0 { computes as f64 / runs as f64 } else { 0.0 },
                    "alone_computes": after.alone_computes - before.alone_computes,
                    // The merged runs' own backend time: against the
                    // per-row cost below, what batching loses around them.
                    "mean_batched_run_us": if runs > 0 {
                        (after.batched_run_ns - before.batched_run_ns) as f64 / runs as f64 / 1e3
                    } else { 0.0 },
                    "cpu_us_per_request": cpu_us_per_request,
                }));
            }
        }
        for runs in measured {
            let key = |x: &Value| if clients == 1 { x["latency"]["p50_us"].as_f64() } else { x["throughput_rps"].as_f64() };
            if let Some(m) = crate::stats::median_by(&runs, key) {
                let mut m = m.clone();
                m["repetitions"] = json!(runs.iter().filter_map(key).collect::<Vec<f64>>());
                rows.push(m);
            }
        }
    }
    Ok(json!({"runs": rows, "per_row_cost": per_row_cost(ctx)?}))
}

/// What batching can gain on each backend's compute alone: the CNN run
/// directly (no guest) at batch 1 and at `rows`, time per row. Their ratio
/// bounds the throughput a merged run can add, before any job overhead.
pub(crate) fn per_row_cost(ctx: &Ctx) -> Result<Value> {
    use mote_runtime::backend::{standalone, BackendKind, TensorView};
    let req = ctx.request("cnn")?;
    let model: Arc<[u8]> = ctx.read("models/cnn.onnx")?.into();
    let x = &req.inputs[0];
    let ty = x.datatype.element_type().expect("fp32");
    let mut out = Vec::new();
    for (kind, rows, runs) in [(BackendKind::OrtCpu, 8u32, 20usize), (BackendKind::Wgpu, 4, 2), (BackendKind::OrtCuda, 8, 20)] {
        let Ok(backend) = standalone(kind) else { continue };
        let graph = backend.load(model.clone())?;
        let mut exec = graph.init_execution_context()?;
        let mut per_row = Vec::new();
        for n in [1, rows] {
            let data = x.data.repeat(n as usize);
            let dims: Vec<u32> = std::iter::once(n).chain(x.shape[1..].iter().map(|&d| d as u32)).collect();
            let view = [(x.name.as_str(), TensorView { ty, dims: &dims, data: &data })];
            exec.compute(&view, None)?;
            let pb = indicatif::ProgressBar::hidden();
            let s = crate::time(runs, &pb, || {
                exec.compute(&view, None).expect("backend run");
            });
            per_row.push(s.p50_us / f64::from(n));
        }
        // Merged runs differ in size from one run to the next: the same
        // rows' cost with the batch size cycling 2..=rows on this context
        // (every size run once before), against the fixed size above.
        let sizes: Vec<u32> = (2..=rows).collect();
        let batches: Vec<(Vec<u8>, Vec<u32>)> = sizes
            .iter()
            .map(|&n| (x.data.repeat(n as usize), std::iter::once(n).chain(x.shape[1..].iter().map(|&d| d as u32)).collect()))
            .collect();
        let run = |exec: &mut Box<dyn mote_runtime::backend::BackendExecutionContext>, (data, dims): &(Vec<u8>, Vec<u32>)| {
            let view = [(x.name.as_str(), TensorView { ty, dims, data })];
            exec.compute(&view, None).expect("backend run");
        };
        for b in &batches {
            run(&mut exec, b);
        }
        let cycles = runs.div_ceil(batches.len()).max(1);
        let start = std::time::Instant::now();
        for _ in 0..cycles {
            for b in &batches {
                run(&mut exec, b);
            }
        }
        let cycled_rows = cycles as f64 * sizes.iter().map(|&n| f64::from(n)).sum::<f64>();
        let per_row_cycling = start.elapsed().as_secs_f64() * 1e6 / cycled_rows;
        out.push(json!({"backend": kind.as_str(), "device": backend.device().name, "rows": rows,
            "per_row_us_batch_1": per_row[0], "per_row_us_batched": per_row[1], "gain": per_row[0] / per_row[1],
            "per_row_us_cycling_sizes": per_row_cycling}));
    }
    Ok(Value::Array(out))
}

/// (throughput at 64 clients batched / best unbatched, p50 at 1 client
/// batched / unbatched at the same slots).
pub(crate) fn ratios(r: &Value) -> Option<(f64, f64)> {
    let rows = r["runs"].as_array()?;
    let get = |config: &str, slots: u64, clients: u64| {
        rows.iter().find(|x| x["config"] == config && x["slots"] == slots && x["clients"] == clients)
    };
    let rps = |x: &Value| x["throughput_rps"].as_f64();
    let slots = SLOTS as u64;
    let best_unbatched = rps(get("unbatched", 2, 64)?)?.max(rps(get("unbatched", slots, 64)?)?);
    let throughput = rps(get("batched", slots, 64)?)? / best_unbatched;
    let p50 = |x: &Value| x["latency"]["p50_us"].as_f64();
    let latency = p50(get("batched", slots, 1)?)? / p50(get("unbatched", slots, 1)?)?;
    Some((throughput, latency))
}

/// CPU time of this process so far (user + system, all threads), from
/// /proc/self/stat (clock ticks of 10 ms: use over runs of a second or so).
fn process_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command's closing parenthesis, from the state
    // (field 3): utime is field 14, stime field 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok());
    // Linux reports these in USER_HZ, which is 100 on every architecture.
    tick(11).zip(tick(12)).map_or(f64::NAN, |(u, s)| (u + s) / 100.0)
}
