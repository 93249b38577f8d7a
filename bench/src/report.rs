//! Writes the results: JSON (everything), a markdown table (every figure
//! with its baseline and ratio, targets marked) and an SVG plot of latency
//! against concurrency per transport.

use anyhow::Result;
use plotters::prelude::*;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// Whether a section ran (`--only` leaves the others out of the JSON, or
/// empty).
fn has(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

pub(crate) fn write(out: &Path, r: &Value) -> Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("latest.json"), serde_json::to_string_pretty(r)?)?;
    std::fs::write(out.join("latest.md"), markdown(r))?;
    plot(&out.join("latency.svg"), r)?;
    Ok(())
}

/// p50 of `transport` minus in-process, tiny MLP, 1 client.
pub(crate) fn endpoint_overhead(endpoint: &Value, transport: &str) -> Option<f64> {
    let p50 = |t: &str| {
        endpoint.as_array()?.iter().find(|x| x["model"] == "mlp" && x["concurrency"] == 1 && x["transport"] == t)?
            ["latency"]["p50_us"]
            .as_f64()
    };
    Some(p50(transport)? - p50("in-process")?)
}

/// CNN over HTTPS at 1 client: JSON p50 / binary p50.
fn cnn_json_ratio(endpoint: &Value) -> Option<f64> {
    let p50 = |t: &str| {
        endpoint.as_array()?.iter().find(|x| x["model"] == "cnn" && x["concurrency"] == 1 && x["transport"] == t)?
            ["latency"]["p50_us"]
            .as_f64()
    };
    Some(p50("https-json")? / p50("https-binary")?)
}

/// Each target's figure over the rounds: median, min, max (the verdict by
/// the median), so a noisy machine shows as spread.
fn rounds_table(md: &mut String, r: &Value) {
    let rounds: Vec<&Value> = r["rounds"].as_array().into_iter().flatten().collect();
    if rounds.len() < 2 {
        return;
    }
    let _ = writeln!(md, "## Rounds: median and spread
");
    let _ = writeln!(
        md,
        "The overhead, instantiation and endpoint sections ran {} times in this run; the tables above show each \
         section's median round. Per figure: median, min–max, every round, and the target judged by the median.\n",
        rounds.len()
    );
    let _ = writeln!(md, "| figure | median | min – max | rounds | target | |");
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    type Pick = Box<dyn Fn(&Value) -> Option<f64>>;
    let mut figures: Vec<(String, Pick, Option<f64>)> = Vec::new();
    for (i, model) in ["mlp", "cnn", "transformer"].into_iter().enumerate() {
        let target = match model {
            "mlp" => Some(1.10),
            "cnn" => Some(1.03),
            _ => None,
        };
        figures.push((
            format!("{model}: in guest / native p50"),
            Box::new(move |x| x["overhead"][i]["ratio_p50"].as_f64()),
            target,
        ));
        figures.push((
            format!("{model}: in guest via wasi-nn resources / native p50"),
            Box::new(move |x| x["overhead"][i]["wasi_nn_ratio_p50"].as_f64()),
            None,
        ));
        let job_target = match model {
            "mlp" => Some(4.0),
            "cnn" => Some(1.15),
            _ => None,
        };
        figures.push((
            format!("{model}: whole job / native p50"),
            Box::new(move |x| x["overhead"][i]["job_ratio_p50"].as_f64()),
            job_target,
        ));
    }
    figures.push((
        "warm instantiate + empty handler p50 µs".into(),
        Box::new(|x| x["instantiation"]["empty_call"]["p50_us"].as_f64()),
        Some(10.0),
    ));
    figures.push((
        "whole job, empty handler, receipt included, p50 µs".into(),
        Box::new(|x| x["instantiation"]["empty_job"]["p50_us"].as_f64()),
        Some(20.0),
    ));
    for (t, target) in [
        ("https-json", Some(100.0)),
        ("https-binary", Some(100.0)),
        ("quic", Some(60.0)),
        ("grpc", None),
        (crate::endpoint::BLOCKING_CLIENT, None),
    ] {
        figures.push((
            format!("{t} overhead p50 µs (mlp, 1 client)"),
            Box::new(move |x| endpoint_overhead(&x["endpoint"], t)),
            target,
        ));
    }
    figures.push(("cnn https JSON / binary p50".into(), Box::new(|x| cnn_json_ratio(&x["endpoint"])), Some(2.0)));
    for (name, pick, target) in figures {
        let values: Vec<f64> = rounds.iter().filter_map(|x| pick(x)).collect();
        let Some(s) = crate::stats::Spread::of(&values) else { continue };
        let each = values.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            md,
            "| {name} | {:.2} | {:.2} – {:.2} | {each} | {} | {} |",
            s.median,
            s.min,
            s.max,
            target.map_or("—".into(), |t| format!("≤ {t}")),
            target.map_or("", |t| verdict(s.median <= t)),
        );
    }
    let _ = writeln!(md);
}

fn markdown(r: &Value) -> String {
    let mut md = String::new();
    let m = &r["machine"];
    let _ = writeln!(md, "# mote benchmark results{}\n", if r["quick"] == true { " (quick run)" } else { "" });
    let _ = writeln!(
        md,
        "Machine: {} ({} cores, {}/{}); mote {}, wasmtime {}, ONNX Runtime `{}`. All figures from one run; ratios compare \
         figures measured side by side. Times in µs.\n",
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        m["os"].as_str().unwrap_or("?"),
        m["arch"].as_str().unwrap_or("?"),
        m["mote"].as_str().unwrap_or("?"),
        m["wasmtime"].as_str().unwrap_or("?"),
        m["onnxruntime"].as_str().unwrap_or("?"),
    );

    if has(&r["overhead"]) {
        let _ = writeln!(md, "## Sandbox overhead vs a native ORT session (ORT CPU)\n");
        let _ = writeln!(
            md,
            "*in guest*: each inference of a running guest (`inference-loop`: tensors into the host, compute, outputs \
             back into the guest), timed inside the sandbox, tensors passed by value in one host call \
             (`mote:edge/inference-io`, the SDK's `run_io`); the targets apply to it. *via wasi-nn*: the same loop \
             through wasi-nn's tensor resources (a host call per input, `compute`, four per output). *whole job*: the `passthrough` \
             guest as the node runs every request, up to the signed report: on a pristine instance prepared after the \
             previous reply, model lookup, inference, request and response digests and the signed receipt. *after the \
             reply*: what the node does next, off the request's path (the finished instance's slot reset, the next \
             job's instance prepared). *input hash*: the request's digest alone in BLAKE3, and beside it in sha256 \
             (a node writes sha256 for forms under 16 KiB on a CPU with sha256 instructions).\n"
        );
        overhead_table(&mut md, &r["overhead"], true);
        match r["overhead_cuda"]["available"].as_bool() {
            Some(true) => {
                let _ = writeln!(
                    md,
                    "\nThe same on ORT CUDA (native: an ORT CUDA session called directly; the guests' deployments on \
                     `ort-cuda`; one round, no target):\n"
                );
                overhead_table(&mut md, &r["overhead_cuda"]["rows"], false);
            }
            Some(false) => {
                let _ = writeln!(
                    md,
                    "\nORT CUDA: not measured here ({}).",
                    r["overhead_cuda"]["reason"].as_str().unwrap_or("no reason given")
                );
            }
            None => {}
        }
    }

    if has(&r["instantiation"]) {
        let i = &r["instantiation"];
        let _ = writeln!(md, "\n## Instantiation and compilation\n");
        let _ = writeln!(md, "| what | p50 | p99 | mean | target | |");
        let _ = writeln!(md, "|---|---|---|---|---|---|");
        for (name, key, target) in [
            ("instantiate (pooled, pre-instantiated)", "instantiate", None),
            ("warm instantiate + empty handler (store, instance, call: the receipt's wall time)", "empty_call", Some(10.0)),
            ("whole job with an empty handler, as the node runs it (on an instance prepared after the last reply; digests, signed receipt)", "empty_job", Some(20.0)),
            ("… and after its reply (slot reset, next instance prepared)", "empty_job_after_reply", None),
            ("receipt signature, precomputed nonce (what a job pays)", "receipt_sign", None),
            ("receipt signature, RFC 8032 nonce (the inline fallback)", "receipt_sign_rfc8032", None),
        ] {
            let p50 = f(&i[key]["p50_us"]);
            let _ = writeln!(
                md,
                "| {name} | {:.1} | {:.1} | {:.1} | {} | {} |",
                p50,
                f(&i[key]["p99_us"]),
                f(&i[key]["mean_us"]),
                target.map_or("—".into(), |t| format!("≤ {t}")),
                target.map_or("", |t| verdict(p50 <= t))
            );
        }
        let (cold, cached) = (f(&i["compile_cold_ms"]), f(&i["compile_cached_ms"]));
        let _ = writeln!(
            md,
            "\nCompiling the classifier guest ({} KiB): cold {cold:.1} ms, from wasmtime's compiled-module cache {cached:.1} ms \
             (ratio {:.3}).\n",
            i["guest_bytes"].as_u64().unwrap_or(0) / 1024,
            cached / cold
        );
    }

    if has(&r["endpoint"]) {
        let _ = writeln!(md, "## Endpoint: latency and throughput by transport and concurrency\n");
        let _ = writeln!(md, "| model | clients | transport | p50 | p99 | mean | req/s | p50 overhead vs in-process |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        let rows: Vec<&Value> = r["endpoint"].as_array().into_iter().flatten().collect();
        let base = |model: &str, conc: &Value| {
            rows.iter()
                .find(|x| x["model"] == model && x["concurrency"] == *conc && x["transport"] == "in-process")
                .map(|x| f(&x["latency"]["p50_us"]))
                .unwrap_or(f64::NAN)
        };
        for x in rows.iter().filter(|x| x["model"] != "none") {
            let model = x["model"].as_str().unwrap_or("?");
            let p50 = f(&x["latency"]["p50_us"]);
            let _ = writeln!(
                md,
                "| {model} | {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {} |",
                x["concurrency"],
                x["transport"].as_str().unwrap_or("?"),
                p50,
                f(&x["latency"]["p99_us"]),
                f(&x["latency"]["mean_us"]),
                f(&x["throughput_rps"]),
                if x["transport"] == "in-process" {
                    "baseline".to_string()
                } else {
                    format!("{:+.1}", p50 - base(model, &x["concurrency"]))
                },
            );
        }
        let overhead = |t: &str| endpoint_overhead(&r["endpoint"], t).unwrap_or(f64::NAN);
        let (https, quic) = (overhead("https-json"), overhead("quic"));
        let tput = |t: &str, c: u64| {
            rows.iter()
                .find(|x| x["model"] == "mlp" && x["concurrency"] == c && x["transport"] == t)
                .map(|x| f(&x["throughput_rps"]))
                .unwrap_or(f64::NAN)
        };
        let floor = |t: &str| {
            rows.iter().find(|x| x["transport"] == t).map(|x| f(&x["latency"]["p50_us"])).unwrap_or(f64::NAN)
        };
        let _ = writeln!(
            md,
            "\nThe transports without a job (1 client, p50): HTTPS `GET /v2/health/live` {:.1} µs, QUIC request for a \
             missing deployment {:.1} µs. Client and server share the machine's cores. The node's hand-off of a no-op \
             to a job thread and back (async task → job thread → task, as around every served job, and the in-process \
             rows above): {:.1} µs.",
            floor("https-no-job"),
            floor("quic-no-job"),
            floor("job-thread-handoff")
        );
        let _ = writeln!(
            md,
            "\nThe node's busy polling (`busy_poll_us`, docs/serve.md): {} µs, in `mote serve` and in the in-process \
             rows' job threads and workers alike; the transports' clients do not poll.",
            r["busy_poll_us"].as_u64().unwrap_or(0)
        );
        let idle = &r["machine"]["cpuidle"];
        let idle = match (idle["driver"].as_str(), idle["guest_halt_poll_ns"].as_u64()) {
            (Some(d), Some(ns)) => format!("cpuidle driver `{d}`, guest halt polling {ns} ns"),
            (Some(d), None) => format!("cpuidle driver `{d}`"),
            _ => "cpuidle not reported".into(),
        };
        let across = floor("tcp-across-cores");
        let across = if across.is_nan() {
            "no figure across cores (this process may run on one core only)".to_string()
        } else {
            format!("{across:.1} µs with the two on different cores")
        };
        let _ = writeln!(
            md,
            "\nThe machine's floor under all of them: a loopback TCP round trip between two threads of one process \
             (blocking sockets, 64 bytes each way, no TLS, no async runtime) takes {:.1} µs p50 with both threads on \
             one core and {across} ({idle}). Each direction wakes a thread asleep in \
             `read`: on one core that is a context switch; across cores, the other core has gone idle meanwhile, and \
             the wake-up costs what leaving its idle state costs. A request and its answer cross between client and \
             server twice; the node's hand-off to a job thread and back adds two more crossings (docs/benchmarks.md, \
             \"Why the transport floors are what they are\").",
            floor("tcp-same-core"),
        );
        let _ = writeln!(md, "\nTargets (tiny MLP, 1 client):\n");
        let _ = writeln!(
            md,
            "- HTTPS p50 overhead over in-process: {https:.1} µs (target ≤ 100 µs): {}",
            verdict(https <= 100.0)
        );
        let _ =
            writeln!(md, "- QUIC p50 overhead over in-process: {quic:.1} µs (target ≤ 60 µs): {}", verdict(quic <= 60.0));
        let _ = writeln!(md, "- gRPC (KServe v2, TLS) p50 overhead over in-process: {:.1} µs", overhead("grpc"));
        let _ = writeln!(
            md,
            "- HTTPS JSON p50 overhead over in-process from a blocking client (`{}`: rustls on a std socket, one \
             thread asleep in `read`, as curl or perf_analyzer; the rows above use reqwest on tokio): {:.1} µs",
            crate::endpoint::BLOCKING_CLIENT,
            overhead(crate::endpoint::BLOCKING_CLIENT)
        );
        let json_ratio = cnn_json_ratio(&r["endpoint"]).unwrap_or(f64::NAN);
        let _ = writeln!(
            md,
            "- CNN over HTTPS, JSON / binary p50 (1 client): ×{json_ratio:.2} (target ≤ ×2): {}",
            verdict(json_ratio <= 2.0)
        );
        let _ = writeln!(
            md,
            "\nThroughput with 64 clients vs 1 (target: both of the {} cores busy, ≥ ×1.6):\n",
            r["machine"]["cores"]
        );
        for t in ["in-process", "https-json", "https-binary", "quic", "grpc"] {
            let scale = tput(t, 64) / tput(t, 1);
            let _ = writeln!(md, "- {t}: ×{scale:.2}: {}", verdict(scale >= 1.6));
        }
        let _ = writeln!(md, "\n![latency vs concurrency](latency.svg)\n");
    }
    rounds_table(&mut md, r);

    if has(&r["backends"]) {
        let _ = writeln!(md, "## Backends: each model called directly on each backend, ORT CPU as baseline\n");
        let _ = writeln!(md, "| model | backend | device | first call ms | p50 µs | p99 µs | p50 vs ORT CPU | max abs diff vs ORT CPU |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for m in r["backends"].as_array().into_iter().flatten() {
            for (k, v) in m["backends"].as_object().into_iter().flatten() {
                if v["available"] == true {
                    let _ = writeln!(
                        md,
                        "| {} | {k} | {} | {:.1} | {:.0} | {:.0} | {} | {} |",
                        m["model"].as_str().unwrap_or("?"),
                        v["device"].as_str().unwrap_or("?"),
                        f(&v["first_call_ms"]),
                        f(&v["latency"]["p50_us"]),
                        f(&v["latency"]["p99_us"]),
                        v["ratio_p50_vs_ort_cpu"].as_f64().map_or("baseline".to_string(), |x| format!("×{x:.2}")),
                        v["max_abs_diff_vs_ort_cpu"].as_f64().map_or("—".to_string(), |x| format!("{x:.1e}")),
                    );
                } else {
                    let _ = writeln!(
                        md,
                        "| {} | {k} | not available: {} | | | | | |",
                        m["model"].as_str().unwrap_or("?"),
                        v["reason"].as_str().unwrap_or("?").trim().replace('|', "/").replace('\n', " ")
                    );
                }
            }
        }
        for m in r["backends"].as_array().into_iter().flatten() {
            let b = &m["backends"];
            if b["wgpu"]["available"] == true && b["ort-cuda"]["available"] == true {
                let ratio = f(&b["wgpu"]["latency"]["p50_us"]) / f(&b["ort-cuda"]["latency"]["p50_us"]);
                let _ = writeln!(
                    md,
                    "\n{}: wgpu / ORT CUDA p50 = ×{ratio:.2}{}",
                    m["model"].as_str().unwrap_or("?"),
                    if m["model"] == "cnn" { format!(": {}", verdict(ratio <= 1.5)) } else { String::new() }
                );
            }
        }
        let _ = writeln!(
            md,
            "\nTarget (real GPU only): wgpu within 1.5× of ORT CUDA on the CNN at batch 1. \
             A software adapter (llvmpipe) emulates a GPU on the CPU cores: its figures are reported without a target."
        );
    }
    if has(&r["metering"]) {
        let _ = writeln!(md, "\n## Fuel metering: same guest, metering on vs off\n");
        let _ = writeln!(md, "| guest | off p50 | on p50 | ratio p50 |");
        let _ = writeln!(md, "|---|---|---|---|");
        for x in r["metering"].as_array().into_iter().flatten() {
            let _ = writeln!(
                md,
                "| {} | {:.1} | {:.1} | {:.3} |",
                x["guest"].as_str().unwrap_or("?"),
                f(&x["fuel_off"]["p50_us"]),
                f(&x["fuel_on"]["p50_us"]),
                f(&x["ratio_p50"])
            );
        }
    }
    let mk = &r["market"];
    if !mk.is_null() {
        let _ = writeln!(md, "\n## Market: NATS JetStream on loopback, tiny MLP job\n");
        let _ = writeln!(md, "| path | p50 µs | p99 µs | mean µs |");
        let _ = writeln!(md, "|---|---|---|---|");
        for (name, k) in [("in-process (whole job)", "in_process"), ("submit → result, 1 node", "market_1_node")] {
            let x = &mk[k];
            let _ = writeln!(md, "| {name} | {:.1} | {:.1} | {:.1} |", f(&x["p50_us"]), f(&x["p99_us"]), f(&x["mean_us"]));
        }
        let _ = writeln!(
            md,
            "\nMarket overhead p50: {:.2} ms (target ≤ 2 ms).\n\n| nodes | jobs | jobs/s | posting alone (s) |\n|---|---|---|---|",
            f(&mk["overhead_p50_us"]) / 1000.0
        );
        for t in mk["throughput"].as_array().into_iter().flatten() {
            let _ = writeln!(md, "| {} | {} | {:.0} | {:.2} |", t["nodes"], t["jobs"], f(&t["jobs_per_s"]), f(&t["post_seconds"]));
        }
        let _ = writeln!(md, "\nTarget: ≥ 1,000 jobs/s with 3 nodes on this machine (nodes, server and client share its cores).");
    }
    let b = &r["batching"];
    if !b.is_null() {
        let c = crate::batching::BATCH;
        let _ = writeln!(
            md,
            "\n## Dynamic batching: CNN in-process, jobs as the node runs them\n\nBatched: `max_batch = {}`, \
             `batch_window_us = {}`; slots = jobs admitted at once (`max_concurrency`).\n",
            c.max_batch, c.window_us
        );
        let _ = writeln!(
            md,
            "| config | slots | clients | p50 | p99 | req/s | CPU µs/request | batched runs | jobs per run | µs per batched run | repetitions (p50 at 1 client, req/s at 64) |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
        for x in b["runs"].as_array().into_iter().flatten() {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.1} | {:.1} | {:.0} | {:.0} | {} | {:.1} | {:.0} | {} |",
                x["config"].as_str().unwrap_or("?"),
                x["slots"],
                x["clients"],
                f(&x["latency"]["p50_us"]),
                f(&x["latency"]["p99_us"]),
                f(&x["throughput_rps"]),
                f(&x["cpu_us_per_request"]),
                x["batched_runs"],
                f(&x["mean_jobs_per_run"]),
                f(&x["mean_batched_run_us"]),
                x["repetitions"].as_array().into_iter().flatten().map(|v| format!("{:.0}", f(v))).collect::<Vec<_>>().join(", "),
            );
        }
        let _ = writeln!(
            md,
            "\nThe backend's compute alone (CNN, no guest), time per row at batch 1 and batched — the most a merged \
             run can gain before any job overhead:\n\n| backend | device | batch | µs/row at 1 | µs/row batched | gain | µs/row, sizes 2..batch in turn (mean) |\n|---|---|---|---|---|---|---|"
        );
        for x in b["per_row_cost"].as_array().into_iter().flatten() {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.1} | {:.1} | ×{:.2} | {:.1} |",
                x["backend"].as_str().unwrap_or("?"),
                x["device"].as_str().unwrap_or("?"),
                x["rows"],
                f(&x["per_row_us_batch_1"]),
                f(&x["per_row_us_batched"]),
                f(&x["gain"]),
                f(&x["per_row_us_cycling_sizes"])
            );
        }
        if let Some((throughput, latency)) = crate::batching::ratios(b) {
            let _ = writeln!(
                md,
                "\nThroughput at 64 clients, batched / best unbatched: **{throughput:.2}** (target ≥ 1.5: {}). \
                 p50 at 1 client, batched / unbatched: **{latency:.3}** (target ≤ 1.05: {}).",
                verdict(throughput >= 1.5),
                verdict(latency <= 1.05)
            );
        }
    }
    let l = &r["llm"];
    if !l.is_null() {
        let _ = writeln!(
            md,
            "\n## LLM: SmolLM2-135M (Q4_1 GGUF → ONNX), {} prompt + {} generated tokens, greedy\n",
            l["prompt_tokens"], l["completion_tokens"]
        );
        let _ = writeln!(md, "| path | time to first token (ms) | decode tokens/s |\n|---|---|---|");
        for (name, k) in [("sandbox (chat guest, KV on host, streamed)", "sandbox"), ("native loop (ORT backend, no guest)", "native")] {
            let _ = writeln!(md, "| {name} | {:.1} | {:.1} |", f(&l[k]["ttft_ms"]), f(&l[k]["decode_tok_s"]));
        }
        let spin = &l["spinning"];
        if spin["sandbox"].is_object() {
            for (name, k) in
                [("sandbox, `ort_spinning = true`", "sandbox"), ("native loop, `ort_spinning = true`", "native")]
            {
                let _ = writeln!(md, "| {name} | {:.1} | {:.1} |", f(&spin[k]["ttft_ms"]), f(&spin[k]["decode_tok_s"]));
            }
        }
        let llama = &l["llama_cpp"];
        if llama["decode_tok_s"].is_number() {
            let _ = writeln!(
                md,
                "| llama.cpp {} (same GGUF, llama-cpp-python) | {:.1} | {:.1} |",
                llama["version"].as_str().unwrap_or(""),
                f(&llama["ttft_ms"]),
                f(&llama["decode_tok_s"])
            );
        }
        let _ = writeln!(
            md,
            "\nSandbox / native decode rate: {:.3} (target ≥ 0.95). Peak memory of the generation (guest + backend): {:.0} MiB; KV cache {} KiB per token.",
            f(&l["decode_ratio"]),
            f(&l["peak_memory_bytes"]) / 1048576.0,
            l["kv_bytes_per_token"].as_u64().unwrap_or(0) / 1024
        );
        match l["decode_vs_llama_cpp"].as_f64() {
            Some(x) => {
                let _ = writeln!(md, "Sandbox / llama.cpp decode rate: {x:.3} (target ≥ 0.8).");
                if let Some(spun) = spin["sandbox"]["decode_tok_s"].as_f64() {
                    let _ = writeln!(
                        md,
                        "With ONNX Runtime's threads spinning between operators (`[server] ort_spinning = true`, a \
                         process of its own; docs/serve.md): sandbox / llama.cpp {:.3}.",
                        spun / f(&llama["decode_tok_s"])
                    );
                }
            }
            None => {
                let _ = writeln!(md, "llama.cpp: {}.", llama["error"].as_str().unwrap_or("not run"));
            }
        }
        if let Some(e) = spin["error"].as_str() {
            let _ = writeln!(md, "The run with `ort_spinning`: {e}.");
        }
    }
    let _ = writeln!(md, "\nTotal run time: {:.0} s.", f(&r["elapsed_s"]));
    md
}

fn plot(path: &Path, r: &Value) -> Result<()> {
    let rows: Vec<&Value> = r["endpoint"].as_array().into_iter().flatten().filter(|x| x["model"] == "mlp").collect();
    let max = rows.iter().map(|x| f(&x["latency"]["p50_us"])).fold(1.0, f64::max);
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("tiny MLP: p50 latency vs concurrent clients", ("sans-serif", 20))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((0.9f64..80f64).log_scale(), (1f64..max * 1.5).log_scale())?;
    chart.configure_mesh().x_desc("concurrent clients").y_desc("p50 latency (µs)").draw()?;
    let colors = [RED, BLUE, GREEN, MAGENTA, CYAN];
    for (i, t) in ["in-process", "https-json", "https-binary", "quic", "grpc"].iter().enumerate() {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|x| x["transport"] == *t)
            .map(|x| (f(&x["concurrency"]), f(&x["latency"]["p50_us"])))
            .collect();
        let c = colors[i];
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(*t)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, c.filled())))?;
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.8)).draw()?;
    root.present()?;
    Ok(())
}

/// The sandbox-overhead table of `rows` (one per model); `with_targets`:
/// judge the in-guest ratios by the targets (ORT CPU).
fn overhead_table(md: &mut String, rows: &Value, with_targets: bool) {
    let _ = writeln!(
        md,
        "| model | input KiB | native p50 | native p99 | in guest p50 | in guest p99 | ratio p50 | target | | \
         via wasi-nn p50 | ratio p50 | whole job p50 | whole job p99 | ratio p50 | after the reply p50 | input hash p50 | sha256 p50 |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for o in rows.as_array().into_iter().flatten() {
        let target = match o["model"].as_str() {
            Some("cnn") if with_targets => Some(1.03),
            Some("mlp") if with_targets => Some(1.10),
            _ => None,
        };
        let ratio = f(&o["ratio_p50"]);
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.3} | {} | {} | {:.1} | {:.3} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} | {:.1} |",
            o["model"].as_str().unwrap_or("?"),
            f(&o["input_bytes"]) / 1024.0,
            f(&o["native"]["p50_us"]),
            f(&o["native"]["p99_us"]),
            f(&o["in_guest"]["p50_us"]),
            f(&o["in_guest"]["p99_us"]),
            ratio,
            target.map_or("—".into(), |t| format!("≤ {t}")),
            target.map_or("", |t| verdict(ratio <= t)),
            f(&o["in_guest_wasi_nn"]["p50_us"]),
            f(&o["wasi_nn_ratio_p50"]),
            f(&o["job"]["p50_us"]),
            f(&o["job"]["p99_us"]),
            f(&o["job_ratio_p50"]),
            f(&o["job_after_reply"]["p50_us"]),
            f(&o["input_hash"]["p50_us"]),
            f(&o["input_hash_sha256"]["p50_us"]),
        );
    }
}
