//! LLM benchmark: SmolLM2-135M (the converted GGUF) generating through the
//! sandbox (the `chat` guest, KV cache kept on the host, text streamed)
//! against the same ONNX model driven by a native Rust loop over mote's ORT
//! backend (no guest: greedy argmax in Rust, the same state binding). Time
//! to first token and decode tokens/s for a 128-token prompt and 128
//! generated tokens (`--quick`: 32 + 16), measured in one run. Outside
//! `--quick`, llama.cpp on the same GGUF (PyPI `llama-cpp-python`, built by
//! `scripts/setup_llama_cpp.sh` for `make bench` only) runs the same prompt
//! in the same run (`bench/scripts/llama_cpp_bench.py`).

use crate::Ctx;
use anyhow::{Context, Result};
use mote_runtime::backend::{self, Backend, TensorView};
use mote_runtime::tensor::{Datatype, ElementType, IoTensor};
use mote_runtime::{DeploymentSpec, Limits, Request, Runtime, RuntimeConfig};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LAYERS: usize = 30;

/// A prompt of exactly `n` tokens: "word " repeated tokenizes one token per
/// word in SmolLM2's vocabulary (checked against the guest's count).
fn prompt_text(n: usize) -> String {
    " hello".repeat(n)
}

fn f32s(b: &[u8]) -> impl Iterator<Item = f32> + '_ {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

fn argmax(row: impl Iterator<Item = f32>) -> i64 {
    let (mut best, mut at) = (f32::NEG_INFINITY, 0);
    for (i, x) in row.enumerate() {
        if x > best {
            best = x;
            at = i;
        }
    }
    at as i64
}

fn i64_bytes(v: impl IntoIterator<Item = i64>) -> Vec<u8> {
    v.into_iter().flat_map(i64::to_le_bytes).collect()
}

/// The native loop: (time to first token, decode tokens/s).
fn native(ctx: &Ctx, model: &[u8], prompt: usize, gen: usize) -> Result<(Duration, f64)> {
    let options = backend::ort::OrtOptions { spinning: ctx.ort_spinning, ..Default::default() };
    let b = backend::ort::OrtBackend::cpu_with(options).map_err(anyhow::Error::msg)?;
    let g = b.load(model.into()).map_err(anyhow::Error::msg)?;
    let mut ctx = g.init_execution_context().map_err(anyhow::Error::msg)?;
    let pairs: Vec<(String, String)> = (0..LAYERS)
        .flat_map(|i| ["key", "value"].map(|kv| (format!("present.{i}.{kv}"), format!("past_key_values.{i}.{kv}"))))
        .collect();
    ctx.bind_state(&pairs).map_err(anyhow::Error::msg)?;
    let start = Instant::now();
    let mut first = None;
    let mut feed: Vec<i64> = (0..prompt as i64).map(|i| 28120 + (i % 7)).collect();
    let mut total = 0usize;
    let empty: Vec<u8> = Vec::new();
    let kv_dims = [1u32, 3, 0, 64];
    for step in 0..gen {
        let n = feed.len();
        let past = total;
        total += n;
        let ids = i64_bytes(feed.iter().copied());
        let mask = i64_bytes(std::iter::repeat_n(1, total));
        let pos = i64_bytes((past as i64)..(total as i64));
        let (d_ids, d_mask) = ([1u32, n as u32], [1u32, total as u32]);
        let mut inputs = vec![
            ("input_ids", TensorView { ty: ElementType::I64, dims: &d_ids, data: &ids }),
            ("attention_mask", TensorView { ty: ElementType::I64, dims: &d_mask, data: &mask }),
            ("position_ids", TensorView { ty: ElementType::I64, dims: &d_ids, data: &pos }),
        ];
        if step == 0 {
            for (_, inp) in &pairs {
                inputs.push((inp.as_str(), TensorView { ty: ElementType::F32, dims: &kv_dims, data: &empty }));
            }
        }
        let out = ctx.compute(&inputs, None).map_err(anyhow::Error::msg)?;
        let logits = &out.iter().find(|(n, _)| n == "logits").context("no logits")?.1;
        let vocab = *logits.dims.last().unwrap() as usize;
        let next = argmax(f32s(&logits.data[logits.data.len() - vocab * 4..]));
        if first.is_none() {
            first = Some(start.elapsed());
        }
        feed = vec![next];
    }
    let ttft = first.unwrap();
    Ok((ttft, (gen - 1) as f64 / (start.elapsed() - ttft).as_secs_f64()))
}

/// Through the sandbox: (ttft, decode tokens/s, prompt tokens, completion
/// tokens, peak memory bytes).
fn sandbox(ctx: &Ctx, model: Vec<u8>, prompt: usize, gen: usize) -> Result<(Duration, f64, u64, u64, u64)> {
    let config = RuntimeConfig { data_dir: None, ort_spinning: ctx.ort_spinning, ..RuntimeConfig::default() };
    let rt = Runtime::new(config).map_err(anyhow::Error::msg)?;
    let dep = rt.deploy(DeploymentSpec {
        name: "chat".into(),
        guest: ctx.read("guests/chat.wasm")?,
        models: vec![("model".into(), model)],
        limits: Limits { deadline_ms: 600_000, fuel: u64::MAX / 2, ..Limits::default() },
        backend: Default::default(),
        batching: None,
    })?;
    dep.warm().map_err(anyhow::Error::msg)?;
    let body = json!({"prompt": prompt_text(prompt), "max_tokens": gen, "temperature": 0, "ignore_eos": true});
    let request = Request {
        inputs: vec![IoTensor {
            name: "request".into(),
            datatype: Datatype::Bytes,
            shape: vec![1],
            data: mote_runtime::tensor::join_bytes_elements([body.to_string().as_bytes()]),
        }],
        parameters: vec![],
    };
    // Chunk arrival times: the first is the first token the client sees.
    let times = Arc::new(Mutex::new(Vec::new()));
    let t = times.clone();
    let start = Instant::now();
    let sink: mote_runtime::StreamSink = Box::new(move |_| {
        t.lock().unwrap().push(start.elapsed());
        true
    });
    let report = dep.run_streaming("bench".into(), request, Some(sink));
    let end = start.elapsed();
    report.result.map_err(|e| anyhow::anyhow!("chat job failed: {e}"))?;
    let u = &report.receipt.usage;
    let ttft = *times.lock().unwrap().first().context("nothing streamed")?;
    let tps = (u.completion_tokens - 1) as f64 / (end - ttft).as_secs_f64();
    Ok((ttft, tps, u.prompt_tokens, u.completion_tokens, u.peak_memory_bytes))
}

/// llama.cpp through its Python binding, if it is installed: its JSON
/// line, or why there is none.
fn llama_cpp(ctx: &Ctx, prompt: u64, gen: usize) -> Value {
    let python = ctx.build.join("../deps/venv/bin/python");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/llama_cpp_bench.py");
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    match std::process::Command::new(&python).arg(script).arg(prompt.to_string()).arg(gen.to_string()).arg(threads.to_string()).output() {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).unwrap_or_else(|e| json!({"error": e.to_string()})),
        Ok(o) => json!({"error": String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("failed").to_string()}),
        Err(e) => json!({"error": e.to_string()}),
    }
}

/// The prompt and generated tokens of a run.
fn lengths(ctx: &Ctx) -> (usize, usize) {
    if ctx.quick {
        (32, 16)
    } else {
        (128, 128)
    }
}

/// The sandbox's and the native loop's generation, as JSON: what the LLM
/// section's child process (`--llm-decode-only`) prints.
pub(crate) fn decode(ctx: &Ctx) -> Result<Value> {
    let (prompt, gen) = lengths(ctx);
    let model = ctx.read("models/smollm2/model.onnx")?;
    let (s_ttft, s_tps, p_tok, ..) = sandbox(ctx, model.clone(), prompt, gen)?;
    let (n_ttft, n_tps) = native(ctx, &model, p_tok as usize, gen)?;
    Ok(json!({
        "sandbox": {"ttft_ms": s_ttft.as_secs_f64() * 1e3, "decode_tok_s": s_tps},
        "native": {"ttft_ms": n_ttft.as_secs_f64() * 1e3, "decode_tok_s": n_tps},
    }))
}

/// The same generation in a process whose ONNX Runtime threads spin
/// (`[server] ort_spinning = true`): this binary again, `--ort-spinning
/// --llm-decode-only`.
fn decode_spinning(ctx: &Ctx) -> Value {
    let mut cmd = std::process::Command::new(std::env::current_exe().expect("the bench's own path"));
    cmd.arg("--build").arg(&ctx.build).args(["--ort-spinning", "--llm-decode-only"]);
    if ctx.quick {
        cmd.arg("--quick");
    }
    match cmd.stderr(std::process::Stdio::inherit()).output() {
        Ok(o) if o.status.success() => {
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| json!({"error": e.to_string()}))
        }
        Ok(o) => json!({"error": format!("the spinning run exited with {}", o.status)}),
        Err(e) => json!({"error": e.to_string()}),
    }
}

pub(crate) fn run(ctx: &Ctx) -> Result<Value> {
    let (prompt, gen) = lengths(ctx);
    let model = ctx.read("models/smollm2/model.onnx")?;
    eprintln!("llm: SmolLM2-135M, {prompt}-token prompt, {gen} generated tokens");
    let (s_ttft, s_tps, p_tok, c_tok, peak) = sandbox(ctx, model.clone(), prompt, gen)?;
    let (n_ttft, n_tps) = native(ctx, &model, p_tok as usize, gen)?;
    let spinning = decode_spinning(ctx);
    let llama = if ctx.quick { json!({"error": "not run with --quick"}) } else { llama_cpp(ctx, p_tok, gen) };
    let vs_llama = llama["decode_tok_s"].as_f64().map(|l| s_tps / l);
    Ok(json!({
        "spinning": spinning,
        "llama_cpp": llama,
        "decode_vs_llama_cpp": vs_llama,
        "prompt_tokens": p_tok,
        "completion_tokens": c_tok,
        "sandbox": {"ttft_ms": s_ttft.as_secs_f64() * 1e3, "decode_tok_s": s_tps},
        "native": {"ttft_ms": n_ttft.as_secs_f64() * 1e3, "decode_tok_s": n_tps},
        "decode_ratio": s_tps / n_tps,
        "peak_memory_bytes": peak,
        "kv_bytes_per_token": LAYERS * 2 * 3 * 64 * 4,
    }))
}
