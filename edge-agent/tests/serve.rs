//! End-to-end tests of `mote serve`: the real binary on loopback, called
//! over HTTPS (reqwest + the node's generated certificate) and QUIC (the
//! crate's own client), compared with `mote run` on the same inputs.

mod common;

use common::Server;
use mote_agent::quic::QuicClient;
use mote_agent::tls::Trust;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn build() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../build"))
}

fn artifact(rel: &str) -> String {
    let p = build().join(rel);
    assert!(p.exists(), "{} missing: run `make guests` first", p.display());
    p.to_string_lossy().into_owned()
}

const TOKEN_A: &str = "tenant-a-token";
const TOKEN_B: &str = "tenant-b-token";
const METRICS_TOKEN: &str = "operator-metrics-token";

/// A running `mote serve` with its addresses; killed on drop.
fn config(extra: &str) -> String {
    config_with("", extra)
}

fn config_with(server_extra: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
quic = "127.0.0.1:0"
grace_period_ms = 10000
metrics_token = "{METRICS_TOKEN}"
{server_extra}

[[tenant]]
name = "a"
tokens = ["{TOKEN_A}"]

[[tenant]]
name = "b"
tokens = ["{TOKEN_B}"]

[[deployment]]
name = "mlp"
guest = "{passthrough}"
models = {{ model = "{mlp}" }}
tenant = "a"

[[deployment]]
name = "cnn"
guest = "{passthrough}"
models = {{ model = "{cnn}" }}
tenant = "a"

[[deployment]]
name = "secret-b"
guest = "{passthrough}"
models = {{ model = "{mlp}" }}
tenant = "b"

[[deployment]]
name = "slow"
guest = "{misbehave}"
tenant = "a"
max_concurrency = 1
max_queue = 1
[deployment.limits]
deadline_ms = 20000
{extra}
"#,
        passthrough = artifact("guests/passthrough.wasm"),
        misbehave = artifact("guests/misbehave.wasm"),
        mlp = artifact("models/mlp.onnx"),
        cnn = artifact("models/cnn.onnx"),
    )
}

fn start(extra_config: &str, flags: &[&str]) -> Server {
    start_with(&config(extra_config), flags)
}

fn start_with(config_text: &str, flags: &[&str]) -> Server {
    common::start_serve(config_text, flags, Duration::from_secs(60))
}


fn url(s: &Server, path: &str) -> String {
    format!("https://localhost:{}{path}", s.https.port())
}

fn mote_run(deployment_guest: &str, model: &str, request: &str) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_mote"))
        .args([
            "run",
            &artifact(deployment_guest),
            "--model",
            &format!("model={}", artifact(model)),
            "--input",
            request,
            "--ephemeral-key",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// POSTs a JSON infer request for tenant A's deployment `name`; expects 200.
fn infer_json(rt: &tokio::runtime::Runtime, http: &reqwest::Client, s: &Server, name: &str, body: &[u8]) -> Value {
    rt.block_on(async {
        let r = http
            .post(url(s, &format!("/v2/models/{name}/infer")))
            .bearer_auth(TOKEN_A)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
        r.json().await.unwrap()
    })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

#[test]
fn https_and_quic_answer_like_mote_run() {
    let s = start("", &[]);
    let rt = rt();
    let http = s.https_client();
    for (name, model) in [("mlp", "models/mlp.onnx"), ("cnn", "models/cnn.onnx")] {
        let req_path = artifact(&format!("models/{name}.request.json"));
        let want = mote_run("guests/passthrough.wasm", model, &req_path);
        let body = std::fs::read(&req_path).unwrap();

        // HTTPS, JSON.
        let got = infer_json(&rt, &http, &s, name, &body);
        assert_eq!(got["outputs"], want["outputs"], "{name} over HTTPS");
        let receipt = got["parameters"]["mote_receipt"].as_str().expect("receipt in parameters");
        mote_runtime::Receipt::verify_json(receipt).expect("HTTPS receipt verifies");

        // QUIC.
        let req = mote_runtime::kserve::parse_request(&serde_json::from_slice(&body).unwrap()).unwrap();
        let reply = rt.block_on(async {
            let c = QuicClient::connect(s.quic, "localhost", &Trust::CaFile(s.cert.clone())).await.unwrap();
            c.infer(name, TOKEN_A, &req).await.unwrap()
        });
        assert!(reply.is_ok(), "{:?}", reply.error());
        let resp = reply.response.unwrap();
        let got = mote_runtime::kserve::response_json(&resp, None).unwrap();
        assert_eq!(got["outputs"], want["outputs"], "{name} over QUIC");
        mote_runtime::Receipt::verify_json(reply.header["parameters"]["mote_receipt"].as_str().unwrap()).unwrap();

        // QUIC from the command line, several requests on one connection.
        let out = Command::new(env!("CARGO_BIN_EXE_mote"))
            .args(["infer", "--quic", &s.quic.to_string(), "--model", name, "--input", &req_path])
            .args(["--token", TOKEN_A, "--cert", s.cert.to_str().unwrap(), "--repeat", "3"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "mote infer: {stderr}");
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got["outputs"], want["outputs"], "{name} over `mote infer`");
        assert_eq!(stderr.lines().filter(|l| l.starts_with("request ")).count(), 3, "{stderr}");
        assert!(stderr.contains("latency over 3 requests: min "), "{stderr}");
    }
}

/// `ort_spinning` changes how ONNX Runtime's threads wait, not what they
/// compute: the answers are `mote run`'s, bit for bit.
#[test]
fn a_node_whose_ort_threads_spin_answers_alike() {
    let s = start_with(&config_with("ort_spinning = true", ""), &[]);
    let rt = rt();
    let http = s.https_client();
    for (name, model) in [("mlp", "models/mlp.onnx"), ("cnn", "models/cnn.onnx")] {
        let req_path = artifact(&format!("models/{name}.request.json"));
        let want = mote_run("guests/passthrough.wasm", model, &req_path);
        let got = infer_json(&rt, &http, &s, name, &std::fs::read(&req_path).unwrap());
        assert_eq!(got["outputs"], want["outputs"], "{name} with ort_spinning");
    }
}

#[test]
fn binary_tensor_extension_over_https() {
    let s = start("", &[]);
    let rt = rt();
    let http = s.https_client();
    let req: Value = serde_json::from_slice(&std::fs::read(artifact("models/mlp.request.json")).unwrap()).unwrap();
    let x: Vec<f32> = req["inputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let bin: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = json!({
        "inputs": [{"name": "x", "shape": [4, 16], "datatype": "FP32", "parameters": {"binary_data_size": bin.len()}}],
        "outputs": [{"name": "probs", "parameters": {"binary_data": true}}],
    });
    let mut body = serde_json::to_vec(&header).unwrap();
    let json_len = body.len();
    body.extend(&bin);
    let (headers, bytes) = rt.block_on(async {
        let r = http
            .post(url(&s, "/v2/models/mlp/infer"))
            .bearer_auth(TOKEN_A)
            .header("Inference-Header-Content-Length", json_len.to_string())
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        (r.headers().clone(), r.bytes().await.unwrap())
    });
    let n: usize = headers["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let meta: Value = serde_json::from_slice(&bytes[..n]).unwrap();
    assert_eq!(meta["outputs"].as_array().unwrap().len(), 1, "only the requested output");
    assert_eq!(meta["outputs"][0]["parameters"]["binary_data_size"], 4 * 10 * 4);
    let probs: Vec<f32> = bytes[n..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let want = mote_run("guests/passthrough.wasm", "models/mlp.onnx", &artifact("models/mlp.request.json"));
    let want: Vec<f32> =
        want["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    assert_eq!(probs, want);
}

#[test]
fn tenants_tokens_and_bad_requests_get_clear_4xx() {
    let s = start("", &[]);
    let rt = rt();
    let http = s.https_client();
    let mlp_req = std::fs::read(artifact("models/mlp.request.json")).unwrap();
    let call = |path: &str, token: Option<&str>, body: Option<Vec<u8>>| -> (u16, Value) {
        rt.block_on(async {
            let mut r = match &body {
                Some(b) => http.post(url(&s, path)).body(b.clone()),
                None => http.get(url(&s, path)),
            };
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            let resp = r.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json().await.unwrap_or(Value::Null))
        })
    };
    let bad_dtype = json!({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "INT32", "data": vec![1; 16]}]});
    let bad_shape = json!({"inputs": [{"name": "x", "shape": [2, 8], "datatype": "FP32", "data": vec![1.0; 16]}]});
    type Case<'a> = (&'a str, Option<&'a str>, Option<Vec<u8>>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("/v2/models/mlp/infer", None, Some(mlp_req.clone()), 401, "bearer token"),
        ("/v2/models/mlp/infer", Some("wrong-token-xyz"), Some(mlp_req.clone()), 401, "bearer token"),
        ("/v2/models/secret-b/infer", Some(TOKEN_A), Some(mlp_req.clone()), 404, "no deployment named 'secret-b'"),
        ("/v2/models/secret-b", Some(TOKEN_A), None, 404, "no deployment named"),
        ("/v2/models/nope/infer", Some(TOKEN_A), Some(mlp_req.clone()), 404, "no deployment named 'nope'"),
        ("/v2/models/mlp/infer", Some(TOKEN_A), Some(b"{not json".to_vec()), 400, "not valid JSON"),
        ("/v2/models/mlp/infer", Some(TOKEN_A), Some(serde_json::to_vec(&bad_dtype).unwrap()), 400, "invalid-argument"),
        ("/v2/models/mlp/infer", Some(TOKEN_A), Some(serde_json::to_vec(&bad_shape).unwrap()), 400, "invalid-argument"),
        (
            "/v2/models/mlp/infer",
            Some(TOKEN_A),
            Some(br#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1]}]}"#.to_vec()),
            400,
            "needs 12 bytes",
        ),
    ];
    // (413 for a body over the limit has its own test with a small limit:
    // a 65 MiB body raced the server's early answer and broke the pipe.)
    let cases = [cases, vec![("/v2/nope", Some(TOKEN_A), None, 404, "no route /v2/nope")]].concat();
    for (path, token, body, status, text) in cases {
        let (got, v) = call(path, token, body);
        assert_eq!(got, status, "{path} with {token:?}: {v}");
        assert!(v["error"].as_str().unwrap_or_default().contains(text), "{path}: {v} should mention {text:?}");
    }
    // Tenant b sees its own deployment, and only it.
    assert_eq!(call("/v2/models/secret-b/infer", Some(TOKEN_B), Some(mlp_req.clone())).0, 200);
    let (_, meta) = call("/v2", Some(TOKEN_B), None);
    assert_eq!(meta["models"], json!(["secret-b"]));
    // Still serving after all of that.
    assert_eq!(call("/v2/models/mlp/infer", Some(TOKEN_A), Some(mlp_req)).0, 200);
    assert_eq!(call("/v2/health/live", None, None).0, 200);
    let (_, meta) = call("/v2/models/mlp", Some(TOKEN_A), None);
    assert_eq!(meta["inputs"], json!([{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]));
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn overload_gets_503_at_once_and_admitted_requests_succeed() {
    let s = start("", &[]);
    let rt = rt();
    let http = s.https_client();
    let body = serde_json::to_vec(&json!({"inputs": [], "parameters": {"mode": "work", "ms": "600"}})).unwrap();
    let rss_before = rss_kib(s.child.id());
    let results: Vec<(u16, Duration)> = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..12 {
            let (http, u, body) = (http.clone(), url(&s, "/v2/models/slow/infer"), body.clone());
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let r = http.post(u).bearer_auth(TOKEN_A).body(body).send().await.unwrap();
                (r.status().as_u16(), t.elapsed())
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let busy: Vec<&Duration> = results.iter().filter(|(s, _)| *s == 503).map(|(_, d)| d).collect();
    assert_eq!(ok + busy.len(), 12, "only 200 or 503: {results:?}");
    assert!((1..=2).contains(&ok), "one running + one queued may succeed: {results:?}");
    assert!(busy.iter().all(|d| d.as_millis() < 500), "503s come at once, not after waiting: {busy:?}");
    // QUIC reports the same as a busy frame.
    let req = mote_runtime::Request {
        inputs: vec![],
        parameters: vec![("mode".into(), "work".into()), ("ms".into(), "600".into())],
    };
    let busy_quic = rt.block_on(async {
        let c = std::sync::Arc::new(
            QuicClient::connect(s.quic, "localhost", &Trust::CaFile(s.cert.clone())).await.unwrap(),
        );
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let (c, req) = (c.clone(), req.clone());
                tokio::spawn(async move { c.infer("slow", TOKEN_A, &req).await.unwrap() })
            })
            .collect();
        let mut busy = 0;
        for t in tasks {
            if t.await.unwrap().is_busy() {
                busy += 1;
            }
        }
        busy
    });
    assert!(busy_quic >= 4, "busy frames over QUIC: {busy_quic}");
    let rss_after = rss_kib(s.child.id());
    assert!(rss_after < rss_before + 200 * 1024, "memory stays bounded: {rss_before} KiB -> {rss_after} KiB");
    let metrics = rt.block_on(async {
        http.get(url(&s, "/metrics")).bearer_auth(METRICS_TOKEN).send().await.unwrap().text().await.unwrap()
    });
    assert!(metrics.contains("mote_requests_total{deployment=\"slow\",outcome=\"busy\"}"), "{metrics}");
    assert!(metrics.contains("mote_in_flight_requests 0"), "{metrics}");
}

/// A deployment's line: requests beyond its one slot wait their turn and
/// run one after another (the job thread that frees the slot takes the
/// next); one still in line at its deadline gets 503 and never runs.
#[test]
fn queued_requests_run_in_turn_and_those_past_their_deadline_get_503() {
    let extra = format!(
        r#"
[[deployment]]
name = "line"
guest = "{}"
tenant = "a"
max_concurrency = 1
max_queue = 4
[deployment.limits]
deadline_ms = 2000
"#,
        artifact("guests/misbehave.wasm")
    );
    let s = start(&extra, &[]);
    let rt = rt();
    let http = s.https_client();
    // Each job is busy for 1.2 s of its 2 s deadline: of four sent at
    // once, the first runs at once, the second after 1.2 s in line, and
    // the other two would start at 2.4 s, past their deadline in line.
    let body = serde_json::to_vec(&json!({"inputs": [], "parameters": {"mode": "work", "ms": "1200"}})).unwrap();
    let results: Vec<(u16, String, Duration)> = rt.block_on(async {
        // Four connections open first, so that the four requests arrive
        // together.
        let warm: Vec<_> = (0..4)
            .map(|_| {
                let (http, u) = (http.clone(), url(&s, "/v2/health/live"));
                tokio::spawn(async move { http.get(u).send().await.unwrap().status().as_u16() })
            })
            .collect();
        for w in warm {
            assert_eq!(w.await.unwrap(), 200);
        }
        let sent = Instant::now();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (http, u, body) = (http.clone(), url(&s, "/v2/models/line/infer"), body.clone());
                tokio::spawn(async move {
                    let r = http.post(u).bearer_auth(TOKEN_A).body(body).send().await.unwrap();
                    let status = r.status().as_u16();
                    (status, r.text().await.unwrap(), sent.elapsed())
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let mut ran: Vec<Duration> = results.iter().filter(|r| r.0 == 200).map(|r| r.2).collect();
    let late: Vec<&(u16, String, Duration)> = results.iter().filter(|r| r.0 == 503).collect();
    assert_eq!((ran.len(), late.len()), (2, 2), "two run, two wait past their deadline: {results:?}");
    ran.sort();
    assert!(ran[1] >= ran[0] + Duration::from_millis(1100), "the second ran after the first, in one slot: {ran:?}");
    for (_, body, after) in &late {
        assert!(body.contains("past the deadline"), "{body}");
        assert!(*after >= Duration::from_millis(1900), "a 503 only once its wait ran out: {after:?}");
    }
    // Past the time the two would have finished had they stayed in line
    // (3.6 s and 4.8 s after sending), they have not run: two jobs, two
    // busy, nothing in flight.
    std::thread::sleep(Duration::from_millis(5000).saturating_sub(late.iter().map(|r| r.2).max().unwrap()));
    let metrics = rt.block_on(async {
        http.get(url(&s, "/metrics")).bearer_auth(METRICS_TOKEN).send().await.unwrap().text().await.unwrap()
    });
    assert!(metrics.contains("mote_requests_total{deployment=\"line\",outcome=\"ok\"} 2"), "{metrics}");
    assert!(metrics.contains("mote_requests_total{deployment=\"line\",outcome=\"busy\"} 2"), "{metrics}");
    assert!(metrics.contains("mote_in_flight_requests 0"), "{metrics}");
}

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let mut s = start("", &[]);
    let rt = rt();
    let http = s.https_client();
    let body = serde_json::to_vec(&json!({"inputs": [], "parameters": {"mode": "work", "ms": "800"}})).unwrap();
    let mlp_req = mote_runtime::kserve::parse_request(
        &serde_json::from_slice(&std::fs::read(artifact("models/mlp.request.json")).unwrap()).unwrap(),
    )
    .unwrap();
    let pid = s.child.id();
    let statuses = rt.block_on(async {
        let quic = QuicClient::connect(s.quic, "localhost", &Trust::CaFile(s.cert.clone())).await.unwrap();
        let https = {
            let (http, u, body) = (http.clone(), url(&s, "/v2/models/slow/infer"), body.clone());
            tokio::spawn(async move {
                http.post(u).bearer_auth(TOKEN_A).body(body).send().await.map(|r| r.status().as_u16())
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // New work is refused while draining.
        let refused = quic.infer("mlp", TOKEN_A, &mlp_req).await.map(|r| r.is_busy()).unwrap_or(true);
        (https.await.unwrap(), refused)
    });
    assert_eq!(statuses.0.expect("in-flight HTTPS request completes"), 200);
    assert!(statuses.1, "requests after SIGTERM are refused");
    let status = s.child.wait().unwrap();
    assert!(status.success(), "exit 0 after draining: {status:?}");
    let lines: Vec<String> = s.lines.try_iter().collect();
    assert!(lines.iter().any(|l| l == "stopped: all in-flight requests completed"), "{lines:?}");
    let _ = &s.dir;
}

#[test]
fn a_broken_deployment_is_reported_and_the_others_serve() {
    let extra = r#"
[[deployment]]
name = "broken"
guest = "/nonexistent/guest.wasm"
"#;
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("mote.toml");
    std::fs::write(&cfg_path, config(extra)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mote"))
        .args(["serve", "--config", cfg_path.to_str().unwrap()])
        .env("MOTE_HOME", dir.path().join("home"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.starts_with("ready:") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.iter().any(|l| l.starts_with("deployment broken: FAILED: reading guest /nonexistent/guest.wasm")),
        "{seen:?}"
    );
    assert!(seen.iter().any(|l| l == "ready: 4 deployment(s), 1 failed"), "{seen:?}");
}

#[test]
fn tritons_own_python_client_works_unmodified() {
    let python = build().join("../deps/venv/bin/python");
    let have = Command::new(&python).args(["-c", "import tritonclient.http"]).status().is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var_os("CI").is_none(),
            "tritonclient[http] missing in deps/venv: scripts/setup.sh installs it"
        );
        eprintln!("skipping: tritonclient[http] is not installed in deps/venv (run scripts/setup.sh)");
        return;
    }
    let s = start("", &[]);
    let out = Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/triton_client.py"))
        .arg(format!("localhost:{}", s.https.port()))
        .arg(&s.cert)
        .arg(TOKEN_A)
        .arg(artifact("models/mlp.expected.json"))
        .arg(artifact("models/mlp.request.json"))
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tritonclient failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("tritonclient: 3 passed, 0 failed"), "{stdout}");
}

/// KServe v2 gRPC: Triton's `tritonclient[grpc]` unmodified (health,
/// metadata, raw and typed tensor contents, errors), outputs equal to the
/// REST answer; the listener is announced; `--insecure-http` makes it
/// plaintext on loopback.
#[test]
fn tritons_grpc_client_works_unmodified_and_equals_rest() {
    let python = build().join("../deps/venv/bin/python");
    let have = Command::new(&python).args(["-c", "import tritonclient.grpc"]).status().is_ok_and(|s| s.success());
    if !have {
        assert!(std::env::var_os("CI").is_none(), "tritonclient[grpc] missing in deps/venv: scripts/setup.sh installs it");
        eprintln!("skipping: tritonclient[grpc] is not installed in deps/venv (run scripts/setup.sh)");
        return;
    }
    let s = start_with(&config_with("grpc = \"127.0.0.1:0\"", ""), &[]);
    let grpc = s.grpc.expect("`listening grpc://` announced");
    let out = Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/triton_grpc_client.py"))
        .arg("infer")
        .arg(format!("localhost:{}", grpc.port()))
        .arg(format!("localhost:{}", s.https.port()))
        .arg(&s.cert)
        .arg(TOKEN_A)
        .arg(artifact("models/mlp.expected.json"))
        .arg(artifact("models/mlp.request.json"))
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tritonclient[grpc] failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("tritonclient-grpc: 5 passed, 0 failed"), "{stdout}");
    // Plaintext only with the flag (and on loopback, as plain HTTP).
    let plain = start_with(&config_with("grpc = \"127.0.0.1:0\"", ""), &["--insecure-http"]);
    let line = format!("127.0.0.1:{}", plain.grpc.unwrap().port());
    let ok = Command::new(&python)
        .args(["-c", &format!("import tritonclient.grpc as g; assert g.InferenceServerClient('{line}').is_server_live()")])
        .status()
        .unwrap();
    assert!(ok.success(), "plaintext gRPC with --insecure-http");
}

#[test]
fn plain_http_needs_the_flag_and_loopback() {
    // With the flag, on loopback: plain HTTP works.
    let s = start("", &["--insecure-http"]);
    let rt = rt();
    let status = rt.block_on(async {
        reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/v2/health/live", s.https.port()))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200);
    // Without it the same port speaks only TLS.
    let tls = start("", &[]);
    let plain = rt.block_on(async {
        reqwest::Client::new().get(format!("http://127.0.0.1:{}/v2/health/live", tls.https.port())).send().await
    });
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true), "plain HTTP must not be served on the TLS port");
    // And never off loopback.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("mote.toml");
    std::fs::write(&cfg, "[server]\nlisten = \"0.0.0.0:0\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mote"))
        .args(["serve", "--config", cfg.to_str().unwrap(), "--insecure-http"])
        .env("MOTE_HOME", dir.path().join("home"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("loopback addresses only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn oversized_bodies_get_413_with_a_json_error() {
    // A small limit, and a body small enough that the client has written it
    // all before the server answers.
    let s = start_with(&config_with("max_body_bytes = 2048", ""), &[]);
    let rt = rt();
    let http = s.https_client();
    let (status, v): (u16, Value) = rt.block_on(async {
        let r = http
            .post(url(&s, "/v2/models/mlp/infer"))
            .bearer_auth(TOKEN_A)
            .body(vec![b' '; 4096])
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    });
    assert_eq!(status, 413, "{v}");
    assert!(v["error"].as_str().unwrap().contains("larger than 2048 bytes"), "{v}");
    // The node keeps serving.
    let ok = rt.block_on(async {
        let body = std::fs::read(artifact("models/mlp.request.json")).unwrap();
        http.post(url(&s, "/v2/models/mlp/infer")).bearer_auth(TOKEN_A).body(body).send().await.unwrap().status()
    });
    assert_eq!(ok, 200, "a request under the limit (1.4 KB) is served");
}

/// A deployment pinned to the wgpu backend serves over HTTPS: outputs equal
/// the ORT deployment's within 1e-4, and its receipt names wgpu and the
/// adapter.
#[cfg(feature = "wgpu")]
#[test]
fn a_wgpu_deployment_serves_like_the_ort_one() {
    let s = start(
        &format!(
            r#"
[[deployment]]
name = "cnn-wgpu"
guest = "{}"
models = {{ model = "{}" }}
tenant = "a"
backend = "wgpu"
"#,
            artifact("guests/passthrough.wasm"),
            artifact("models/cnn.onnx")
        ),
        &[],
    );
    let rt = rt();
    let http = s.https_client();
    let body = std::fs::read(artifact("models/cnn.request.json")).unwrap();
    let (ort, wgpu) = (infer_json(&rt, &http, &s, "cnn", &body), infer_json(&rt, &http, &s, "cnn-wgpu", &body));
    let nums = |v: &Value| -> Vec<f64> {
        v["outputs"][0]["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    let (a, b) = (nums(&ort), nums(&wgpu));
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= 1e-4 * x.abs().max(1e-3), "output {i}: ort {x}, wgpu {y}");
    }
    assert_eq!(wgpu["parameters"]["mote_backend"], "wgpu");
    let receipt = wgpu["parameters"]["mote_receipt"].as_str().unwrap();
    mote_runtime::Receipt::verify_json(receipt).expect("receipt verifies");
    let r: Value = serde_json::from_str(receipt).unwrap();
    assert_eq!(r["backend"], "wgpu");
    assert!(r["device"].as_str().unwrap().contains('('), "device names the adapter: {}", r["device"]);
}

/// Sends raw bytes on a plain-HTTP connection and returns what the server
/// answered before it closed the connection or `wait` passed.
fn raw_http(addr: SocketAddr, bytes: &[u8], wait: Duration) -> (String, Duration) {
    use std::io::{Read, Write};
    let started = Instant::now();
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    // The server may answer and close before all is sent (that is the point).
    let _ = c.write_all(bytes);
    c.set_read_timeout(Some(wait)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                // One response is enough.
                if out.windows(4).any(|w| w == b"\r\n\r\n") && out.ends_with(b"}") {
                    break;
                }
            }
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), started.elapsed())
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

/// The attacks of the security review, one by one, each answered from the
/// headers alone and fast, the JSON error shape everywhere.
#[test]
fn strangers_are_answered_before_their_bodies_are_read() {
    let s = start_with(&config_with("header_timeout_ms = 500\nbody_timeout_ms = 500", ""), &["--insecure-http"]);
    let second = Duration::from_secs(2);
    let post = |auth: &str, extra: &str| {
        format!("POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {auth}\r\n{extra}\r\n")
    };

    // 60 MB announced, 1 KB sent, wrong token: 401 at once.
    let mut req = post("not-a-token", "Content-Length: 60000000\r\n").into_bytes();
    req.extend(vec![b'{'; 1024]);
    let (resp, took) = raw_http(s.https, &req, second);
    assert!(status_line(&resp).contains(" 401 "), "{resp}");
    assert!(resp.contains("\"error\""), "{resp}");
    assert!(took < Duration::from_secs(1), "401 took {took:?}");

    // A token with spaces around it is not the token.
    let (resp, _) = raw_http(s.https, post(&format!(" {TOKEN_A} "), "Content-Length: 2\r\n\r\n{}").as_bytes(), second);
    assert!(status_line(&resp).contains(" 401 "), "{resp}");

    // Announced over the limit: 413 without reading.
    let (resp, took) = raw_http(s.https, post(TOKEN_A, "Content-Length: 100000000\r\n").as_bytes(), second);
    assert!(status_line(&resp).contains(" 413 "), "{resp}");
    assert!(took < Duration::from_secs(1), "413 took {took:?}");

    // Admitted, then the body stalls: 408 after body_timeout_ms.
    let mut req = post(TOKEN_A, "Content-Length: 1000\r\n").into_bytes();
    req.extend(b"{\"inputs\"");
    let (resp, took) = raw_http(s.https, &req, Duration::from_secs(5));
    assert!(status_line(&resp).contains(" 408 "), "{resp}");
    assert!(took < Duration::from_secs(3), "408 took {took:?}");

    // Headers that never end: the connection is closed after header_timeout_ms.
    let (resp, took) = raw_http(s.https, b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nX-Slow", Duration::from_secs(5));
    assert!(took < Duration::from_secs(3), "partial headers held the connection {took:?}: {resp}");

    // A non-ASCII binary header length is refused, not ignored.
    let mut req = post(TOKEN_A, "Content-Length: 2\r\nInference-Header-Content-Length: \u{e9}\r\n").into_bytes();
    req.extend(b"{}");
    let (resp, _) = raw_http(s.https, &req, second);
    assert!(status_line(&resp).contains(" 400 "), "{resp}");

    // 405 speaks JSON too.
    let (resp, _) = raw_http(s.https, b"GET /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\n\r\n", second);
    assert!(status_line(&resp).contains(" 405 ") && resp.contains("\"error\""), "{resp}");

    let rt = rt();
    let http = reqwest::Client::new();
    let base = format!("http://{}", s.https);
    let (metrics_anon, metrics_tenant, metrics_op, bad_float, empty) = rt.block_on(async {
        let get = |token: Option<&str>| {
            let mut r = http.get(format!("{base}/metrics"));
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            async move { r.send().await.unwrap() }
        };
        let post = |body: Value| {
            let r = http.post(format!("{base}/v2/models/mlp/infer")).bearer_auth(TOKEN_A).json(&body);
            async move {
                let r = r.send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        };
        let op = get(Some(METRICS_TOKEN)).await;
        let op = (op.status().as_u16(), op.text().await.unwrap());
        (
            get(None).await.status().as_u16(),
            get(Some(TOKEN_A)).await.status().as_u16(),
            op,
            post(json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1e39]}]})).await,
            post(json!({"inputs": []})).await,
        )
    });
    assert_eq!((metrics_anon, metrics_tenant), (404, 404), "metrics name every tenant's deployments");
    assert_eq!(metrics_op.0, 200);
    assert!(metrics_op.1.contains("deployment=\"secret-b\"") || metrics_op.1.contains("mote_in_flight_requests"));
    assert_eq!(bad_float.0, 400, "{}", bad_float.1);
    assert!(bad_float.1.contains("out of range"), "{}", bad_float.1);
    assert!(!empty.1.contains("onnxruntime_src") && !empty.1.contains(".cc:"), "internal paths leak: {}", empty.1);

    // QUIC: the frame's first fields with a wrong token, the rest never
    // sent: refused as unauthorized without waiting for the body.
    let reply = rt.block_on(async {
        let quic = QuicClient::connect(s.quic, "localhost", &Trust::CaFile(s.cert.clone())).await.unwrap();
        let (mut send, mut recv) = quic.open_stream().await.unwrap();
        let mut prefix = b"MOTE\x01".to_vec();
        for field in ["mlp", "not-a-token"] {
            prefix.extend((field.len() as u16).to_le_bytes());
            prefix.extend(field.as_bytes());
        }
        prefix.extend((60u32 << 20).to_le_bytes());
        send.write_all(&prefix).await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), recv.read_to_end(1 << 20)).await
    });
    let reply = reply.expect("no answer before the body").unwrap();
    assert_eq!(reply.first(), Some(&3u8), "status 3 = unauthorized: {:?}", String::from_utf8_lossy(&reply));
}

/// Connections beyond `max_connections` are closed at once; idle ones are
/// closed after the idle timeout (here 1 s, raised to the deadline + 5 s),
/// freeing their places.
#[test]
fn connections_are_capped_and_idle_ones_closed() {
    let cfg = format!(
        r#"
[server]
listen = "127.0.0.1:0"
quic = "127.0.0.1:0"
max_connections = 2
idle_timeout_ms = 1000

[[deployment]]
name = "mlp"
guest = "{passthrough}"
models = {{ model = "{mlp}" }}
[deployment.limits]
deadline_ms = 100
"#,
        passthrough = artifact("guests/passthrough.wasm"),
        mlp = artifact("models/mlp.onnx"),
    );
    let s = start_with(&cfg, &["--insecure-http"]);
    use std::io::Read;
    let opened = Instant::now();
    let held: Vec<std::net::TcpStream> = (0..2).map(|_| std::net::TcpStream::connect(s.https).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    let live = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n";
    let (resp, _) = raw_http(s.https, live, Duration::from_secs(1));
    assert!(resp.is_empty(), "a third connection was served: {resp}");
    // The held connections are closed once idle...
    for mut c in held {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let n = c.read(&mut [0u8; 16]);
        assert!(matches!(n, Ok(0)) || n.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset), "{n:?}");
    }
    assert!(opened.elapsed() < Duration::from_secs(8), "idle connections held {:?}", opened.elapsed());
    // ...and their places serve again.
    std::thread::sleep(Duration::from_millis(100));
    let (resp, _) = raw_http(s.https, live, Duration::from_secs(2));
    assert!(status_line(&resp).contains(" 200 "), "{resp}");
}

/// Load under faults: a steady stream of good requests over HTTPS and QUIC
/// while a hostile tenant sends everything the security review found —
/// models that name the node's files, a model that asks ORT for 8 GiB, a
/// graph that takes ORT seconds to optimise, unauthenticated 60 MB uploads
/// and connections
/// that never finish their headers. Every good request succeeds with the
/// right output, and the node's RSS stays under its backend budget plus a
/// fixed margin.
#[test]
fn good_requests_succeed_while_hostile_ones_run() {
    use mote_runtime::attack_models;
    let budget: u64 = 512 << 20;
    let extra = format!(
        r#"
[[deployment]]
name = "attack"
guest = "{misbehave}"
tenant = "b"
max_concurrency = 2
max_queue = 8
[deployment.limits]
deadline_ms = 3000
"#,
        misbehave = artifact("guests/misbehave.wasm"),
    );
    let server_extra = format!("backend_memory_bytes = {budget}\nheader_timeout_ms = 1000\nbody_timeout_ms = 2000");
    let s = start_with(&config_with(&server_extra, &extra), &[]);
    let rt = rt();
    let http = s.https_client();
    let req_path = artifact("models/mlp.request.json");
    let want = mote_run("guests/passthrough.wasm", "models/mlp.onnx", &req_path);
    let body = std::fs::read(&req_path).unwrap();
    let mlp_req = mote_runtime::kserve::parse_request(&serde_json::from_slice(&body).unwrap()).unwrap();
    let rss_before = rss_kib(s.child.id());

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peak_rss = {
        let (stop, pid) = (stop.clone(), s.child.id());
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    // Slow connections: headers that never end.
    let slow: Vec<std::net::TcpStream> = (0..16)
        .map(|_| {
            use std::io::Write;
            let mut c = std::net::TcpStream::connect(s.https).unwrap();
            let _ = c.write_all(b"\x16\x03\x01");
            c
        })
        .collect();

    let hostile_outcomes = rt.block_on(async {
        let attack = |params: Value, inputs: Value| {
            let (http, u) = (http.clone(), url(&s, "/v2/models/attack/infer"));
            async move {
                let r = http
                    .post(u)
                    .bearer_auth(TOKEN_B)
                    .json(&json!({"inputs": inputs, "parameters": params}))
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        };
        let model_input = |bytes: Vec<u8>| json!({"name": "model", "datatype": "UINT8", "shape": [bytes.len()], "data": bytes});
        let hostile = {
            let exfil = model_input(attack_models::external_data_model("Cargo.toml", 64));
            let bomb = model_input(attack_models::memory_bomb_model(1 << 30));
            let x = json!({"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]});
            let stop = stop.clone();
            let unauth = {
                let addr = s.https;
                tokio::task::spawn_blocking(move || {
                    // TLS is not even started: the bytes are garbage to the
                    // server, which must drop them without buffering.
                    (0..8)
                        .map(|_| raw_http(addr, &vec![b'x'; 1 << 20], Duration::from_millis(200)).0)
                        .filter(|answer| answer.contains("HTTP/"))
                        .count()
                })
            };
            let unauth_https = {
                let (http, u) = (http.clone(), url(&s, "/v2/models/mlp/infer"));
                async move {
                    let mut n = 0;
                    for _ in 0..8 {
                        let r = http.post(u.clone()).bearer_auth("wrong-token").body(vec![0u8; 60 << 20]).send().await;
                        if let Ok(r) = r {
                            assert_eq!(r.status(), 401);
                            n += 1;
                        }
                    }
                    n
                }
            };
            async move {
                let mut outcomes = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (a, b, c) = tokio::join!(
                        attack(json!({"mode": "load-model"}), json!([exfil.clone()])),
                        attack(json!({"mode": "load-model"}), json!([bomb.clone(), x.clone()])),
                        attack(json!({"mode": "heavy", "layers": "4900"}), json!([])),
                    );
                    outcomes.push((a, b, c));
                }
                let (unauth, unauth_https) = tokio::join!(unauth, unauth_https);
                (outcomes, unauth.unwrap(), unauth_https)
            }
        };
        let good = {
            let quic = QuicClient::connect(s.quic, "localhost", &Trust::CaFile(s.cert.clone())).await.unwrap();
            let (http, u, body, want, stop) = (http.clone(), url(&s, "/v2/models/mlp/infer"), body.clone(), want.clone(), stop.clone());
            async move {
                for i in 0..25 {
                    let r = http.post(u.clone()).bearer_auth(TOKEN_A).body(body.clone()).send().await.unwrap();
                    assert_eq!(r.status(), 200, "good HTTPS request {i}");
                    let v: Value = r.json().await.unwrap();
                    assert_eq!(v["outputs"], want["outputs"], "good HTTPS request {i}");
                    let reply = quic.infer("mlp", TOKEN_A, &mlp_req).await.unwrap();
                    assert!(reply.is_ok(), "good QUIC request {i}: {:?}", reply.error());
                    let json_out = mote_runtime::kserve::response_json(&reply.response.unwrap(), None).unwrap();
                    assert_eq!(json_out["outputs"], want["outputs"], "good QUIC request {i}");
                }
                // Let the hostile loop see at least one full round.
                tokio::time::sleep(Duration::from_secs(4)).await;
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        };
        let (outcomes, ()) = tokio::join!(hostile, good);
        outcomes
    });
    drop(slow);
    let peak = peak_rss.join().unwrap();
    let (rounds, unauth_raw, unauth_https) = hostile_outcomes;
    assert!(!rounds.is_empty());
    for ((exfil_status, exfil), (bomb_status, bomb), (heavy_status, heavy)) in &rounds {
        assert_ne!(*exfil_status, 200, "{exfil}");
        assert!(exfil.contains("external file"), "{exfil}");
        assert_eq!(*bomb_status, 500, "{bomb}");
        assert!(bomb.contains("memory_limit"), "{bomb}");
        assert!(heavy.contains("deadline") || *heavy_status == 503, "{heavy_status}: {heavy}");
    }
    assert_eq!(unauth_raw, 0, "garbage got an HTTP answer (at most a TLS alert is expected)");
    let _ = unauth_https;
    let limit = rss_before + (budget >> 10) + 400 * 1024;
    assert!(peak < limit, "node RSS peaked at {peak} KiB (before {rss_before} KiB, limit {limit} KiB)");
}

/// Dynamic batching through the real server: concurrent HTTPS requests to
/// a deployment with `max_batch` are merged into shared runs (the metrics
/// say so), and each answer equals the unbatched deployment's answer for
/// that request's own input. The batched guest runs the model 50 times
/// per request (`inference-loop`), so that concurrent jobs are computing
/// at the same time whatever the scheduling: a job of a single 3 µs
/// compute may finish before the next request is even decoded, and a
/// compute with no other job running is not held back to wait for one.
#[test]
fn batched_requests_each_get_their_own_answer() {
    let s = start(
        &format!(
            "[[deployment]]\nname = \"mlp-batched\"\nguest = \"{}\"\nmodels = {{ model = \"{}\" }}\ntenant = \"a\"\n\
             max_concurrency = 8\nmax_queue = 64\nmax_batch = 32\nbatch_window_us = 20000\n",
            artifact("guests/inference-loop.wasm"),
            artifact("models/mlp.onnx")
        ),
        &[],
    );
    let rt = rt();
    let http = s.https_client();
    let base: Value = serde_json::from_slice(&std::fs::read(artifact("models/mlp.request.json")).unwrap()).unwrap();
    // Request i: every element shifted by i.
    let body = |i: usize| {
        let mut r = base.clone();
        for v in r["inputs"][0]["data"].as_array_mut().unwrap() {
            *v = serde_json::json!(v.as_f64().unwrap() + i as f64 * 0.5);
        }
        serde_json::to_vec(&r).unwrap()
    };
    const N: usize = 24;
    let want: Vec<Value> = (0..N).map(|i| infer_json(&rt, &http, &s, "mlp", &body(i))["outputs"].clone()).collect();
    let looped = |i: usize| {
        let mut r: Value = serde_json::from_slice(&body(i)).unwrap();
        r["parameters"] = serde_json::json!({"runs": "50"});
        serde_json::to_vec(&r).unwrap()
    };
    for round in 0..3 {
        let got: Vec<Value> = rt.block_on(async {
            let calls = (0..N).map(|i| {
                let (http, url, body) = (http.clone(), url(&s, "/v2/models/mlp-batched/infer"), looped(i));
                tokio::spawn(async move {
                    let r = http.post(url).bearer_auth(TOKEN_A).body(body).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    r.json::<Value>().await.unwrap()
                })
            });
            futures_util::future::join_all(calls).await.into_iter().map(|r| r.unwrap()).collect()
        });
        for (i, answer) in got.iter().enumerate() {
            // The model's outputs (the guest also returns its timings).
            let g: Vec<&Value> =
                answer["outputs"].as_array().unwrap().iter().filter(|o| o["name"] != "latency_ns").collect();
            let w = want[i].as_array().unwrap();
            assert_eq!(g.len(), w.len());
            for (go, wo) in g.iter().zip(w) {
                assert_eq!((&go["name"], &go["shape"]), (&wo["name"], &wo["shape"]));
                let close = go["data"].as_array().unwrap().iter().zip(wo["data"].as_array().unwrap()).all(|(a, b)| {
                    (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() <= 1e-5
                });
                assert!(close, "round {round}, request {i}: not its own unbatched answer\n{go}\n{wo}");
            }
            mote_runtime::Receipt::verify_json(answer["parameters"]["mote_receipt"].as_str().unwrap()).unwrap();
        }
    }
    let metrics = rt.block_on(async {
        http.get(url(&s, "/metrics")).bearer_auth(METRICS_TOKEN).send().await.unwrap().text().await.unwrap()
    });
    let gauge = |name: &str| -> u64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("mote_{name}{{deployment=\"mlp-batched\"}}")))
            .unwrap_or_else(|| panic!("no {name} for mlp-batched in /metrics"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(gauge("batched_runs") > 0, "no request was batched:\n{metrics}");
    assert!(gauge("batched_computes") >= 2 * gauge("batched_runs"));
    assert_eq!(gauge("batch_fallbacks"), 0);
}

/// A gRPC `ModelInfer` body is taken in like a REST body: a stranger is
/// refused before any of it is read, and a caller that starts a message and
/// stalls is cut at `body_timeout_ms` (DEADLINE_EXCEEDED), not held until
/// the connection idles out. Raw HTTP/2, since no well-behaved client
/// sends half a message.
#[test]
fn grpc_bodies_are_authenticated_first_and_cut_at_the_body_timeout() {
    let s = start_with(&config_with("grpc = \"127.0.0.1:0\"\nbody_timeout_ms = 1000", ""), &["--insecure-http"]);
    let addr = s.grpc.expect("grpc listener");
    let rt = rt();
    // (grpc-status, seconds until the answer) for a call that sends the
    // 5-byte prefix of a 1000-byte message and then nothing.
    let stalled = |token: Option<&str>| {
        rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
            tokio::spawn(conn);
            let mut req = http::Request::post(format!("http://{addr}/inference.GRPCInferenceService/ModelInfer"))
                .header("content-type", "application/grpc")
                .header("te", "trailers");
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let started = Instant::now();
            let (answer, mut send) = client.send_request(req.body(()).unwrap(), false).unwrap();
            // A stranger may be answered, and its stream closed, before
            // this is even sent (the point of the test): h2 then refuses the
            // send. An authenticated caller's stream must still be open.
            if let Err(e) = send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 3, 232]), false) {
                assert!(token.is_none(), "the body's prefix could not be sent: {e}");
            }
            let resp = tokio::time::timeout(Duration::from_secs(20), answer).await.expect("an answer").unwrap();
            let (parts, mut body) = resp.into_parts();
            let status = match parts.headers.get("grpc-status") {
                Some(v) => v.to_str().unwrap().to_string(),
                None => {
                    while body.data().await.is_some() {}
                    let trailers = body.trailers().await.unwrap().expect("trailers");
                    trailers["grpc-status"].to_str().unwrap().to_string()
                }
            };
            (status, started.elapsed())
        })
    };
    let (status, took) = stalled(None);
    assert_eq!(status, "16", "no token: UNAUTHENTICATED");
    assert!(took < Duration::from_millis(900), "a stranger was answered only after {took:?}");
    let (status, took) = stalled(Some(TOKEN_A));
    assert_eq!(status, "4", "a stalled body: DEADLINE_EXCEEDED");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "cut after {took:?}");
}
