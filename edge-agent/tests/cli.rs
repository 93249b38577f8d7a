//! End-to-end tests of the real `mote` binary: `run`, `verify`, `specs`,
//! and how it fails on bad input.

use std::path::PathBuf;
use std::process::{Command, Output};

fn build() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../build"))
}

fn mote(args: &[&str]) -> Output {
    mote_env(args, &[])
}

/// `mote` with extra environment variables.
fn mote_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mote"))
        .args(args)
        .env("MOTE_HOME", tmp().join("home"))
        .envs(env.iter().copied())
        .output()
        .expect("start mote")
}

fn tmp() -> PathBuf {
    let d = std::env::temp_dir().join(format!("mote-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn path(rel: &str) -> String {
    let p = build().join(rel);
    assert!(p.exists(), "{} missing: run `make guests` first", p.display());
    p.to_string_lossy().into_owned()
}

/// `mote run` of the passthrough guest on `model` and its reference
/// request, then `extra`.
#[cfg(feature = "wgpu")]
fn passthrough_run(model: &str, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "run".to_string(),
        path("guests/passthrough.wasm"),
        "--model".into(),
        format!("model={}", path(&format!("models/{model}.onnx"))),
        "--input".into(),
        path(&format!("models/{model}.request.json")),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

#[cfg(feature = "wgpu")]
fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn run_prints_a_kserve_response_and_writes_a_verifiable_receipt() {
    let receipt = tmp().join("run-receipt.json");
    let out = mote(&[
        "run",
        &path("guests/passthrough.wasm"),
        "--model",
        &format!("model={}", path("models/mlp.onnx")),
        "--input",
        &path("models/mlp.request.json"),
        "--receipt",
        receipt.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "mote run failed: {}", stderr(&out));
    let resp: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let names: Vec<&str> = resp["outputs"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["probs", "logits"]);
    assert_eq!(resp["outputs"][0]["shape"], serde_json::json!([4, 10]));
    assert!(stderr(&out).contains("usage: outcome=ok fuel="), "usage summary on stderr: {}", stderr(&out));

    let ok = mote(&[
        "verify",
        receipt.to_str().unwrap(),
        "--guest",
        &path("guests/passthrough.wasm"),
        "--model",
        &path("models/mlp.onnx"),
        "--input",
        &path("models/mlp.request.json"),
    ]);
    assert!(ok.status.success(), "verify failed: {}", stderr(&ok));
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("ok: receipt"));

    // Tampering with any field breaks the signature.
    let text = std::fs::read_to_string(&receipt).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["price_units"] = serde_json::json!(0);
    let tampered = tmp().join("tampered.json");
    std::fs::write(&tampered, v.to_string()).unwrap();
    verify_refuses(&[tampered.to_str().unwrap()], &["signature does not match"]);

    // ... and one for another request by its request digest, in the hash
    // the node picked for the MLP's short request (docs/receipts.md).
    let hash = if v.get("input_sha256").is_some() { "Sha256" } else { "Blake3" };
    let cnn_request = path("models/cnn.request.json");
    verify_refuses(&[receipt.to_str().unwrap(), "--input", &cnn_request], &["signature valid, but request", hash]);

    // A receipt for another guest is caught by the hash check.
    let classifier = path("guests/classifier.wasm");
    verify_refuses(&[receipt.to_str().unwrap(), "--guest", &classifier], &["signature valid, but guest"]);
}

/// `mote verify ARGS` fails, and its error says each of `says`.
fn verify_refuses(args: &[&str], says: &[&str]) {
    let out = mote(&[&["verify"][..], args].concat());
    assert!(!out.status.success(), "verify {args:?} passed");
    let err = stderr(&out);
    assert!(says.iter().all(|s| err.contains(s)), "verify {args:?}: expected {says:?} in: {err}");
}

/// `mote verify` of a receipt signed before request digests moved to
/// BLAKE3 (`input_sha256`): still valid, still checked against its request.
#[test]
fn verify_reads_receipts_with_sha256_digests() {
    let data = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../runtime/tests/data"));
    let (receipt, request) = (data.join("receipt-sha256.json"), data.join("receipt-sha256.request.json"));
    let ok = mote(&["verify", receipt.to_str().unwrap(), "--input", request.to_str().unwrap()]);
    assert!(ok.status.success(), "verify failed: {}", stderr(&ok));
    // Another request (the CNN's) is not the one it binds.
    let cnn_request = path("models/cnn.request.json");
    verify_refuses(&[receipt.to_str().unwrap(), "--input", &cnn_request], &["signature valid, but request", "Sha256"]);
}

#[test]
fn node_key_is_kept_between_runs() {
    let home = tmp().join("home");
    let id = |o: &Output| -> String {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["node_id"].as_str().unwrap().to_string()
    };
    let a = mote(&["specs"]);
    assert!(a.status.success(), "{}", stderr(&a));
    let b = mote(&["specs"]);
    assert_eq!(id(&a), id(&b));
    assert!(home.join("node.key").exists());
    let specs: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    assert_eq!(specs["backends"]["ort-cpu"]["available"], true, "{specs}");
    if specs["backends"]["ort-cuda"]["available"] == false {
        let reason = specs["backends"]["ort-cuda"]["reason"].as_str().unwrap();
        assert!(reason.contains("no CUDA"), "{reason}");
    }
}

#[test]
fn failures_exit_nonzero_with_a_one_line_error() {
    let req = tmp().join("bad.json");
    std::fs::write(&req, "{\"inputs\": [{\"name\": \"x\", \"shape\": [2], \"datatype\": \"FP32\", \"data\": [1]}]}")
        .unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["run".into(), path("guests/passthrough.wasm"), "--input".into(), req.to_string_lossy().into()],
            "needs 8 bytes, got 4",
        ),
        (
            vec!["run".into(), "/nonexistent.wasm".into(), "--input".into(), req.to_string_lossy().into()],
            "reading /nonexistent.wasm",
        ),
        (
            vec!["run".into(), path("models/mlp.onnx"), "--input".into(), path("models/mlp.request.json")],
            "not a valid WebAssembly component",
        ),
        (
            vec![
                "run".into(),
                path("guests/passthrough.wasm"),
                "--input".into(),
                path("models/mlp.request.json"),
                "--backend".into(),
                "tpu".into(),
            ],
            "unknown backend 'tpu'",
        ),
        (
            vec!["run".into(), path("guests/passthrough.wasm"), "--input".into(), path("models/mlp.request.json")],
            "job failed (backend_error): not-found: no model named 'model'",
        ),
    ];
    for (args, want) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = mote(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = stderr(&out);
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ") && last.contains(want),
            "{args:?}: last stderr line {last:?} should mention {want:?}"
        );
        assert!(out.stdout.is_empty(), "no response on failure");
    }
}

#[test]
fn a_missing_onnx_runtime_is_one_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_mote"))
        .args(["run", &path("guests/passthrough.wasm"), "--model", &format!("model={}", path("models/mlp.onnx"))])
        .args(["--input", &path("models/mlp.request.json"), "--backend", "ort-cpu", "--ephemeral-key"])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ORT_DYLIB_PATH points to /nonexistent/libonnxruntime.so")
            && last.contains("make setup"),
        "{last}"
    );
    // `auto` without a usable library: the job fails with the same reason.
    let out = Command::new(env!("CARGO_BIN_EXE_mote"))
        .args(["run", &path("guests/passthrough.wasm"), "--model", &format!("model={}", path("models/mlp.onnx"))])
        .args(["--input", &path("models/mlp.request.json"), "--ephemeral-key"])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("ORT_DYLIB_PATH points to"), "{}", stderr(&out));
}

/// `mote run --backend wgpu`: the CNN through the real binary on the wgpu
/// backend equals the ORT run; the receipt names the adapter; `specs` lists
/// the adapters; an op wgpu lacks is an error naming it.
#[cfg(feature = "wgpu")]
#[test]
fn run_on_the_wgpu_backend() {
    let run = |backend: &str, receipt: &std::path::Path| {
        let a = passthrough_run("cnn", &["--backend", backend, "--receipt", receipt.to_str().unwrap()]);
        let out = mote(&as_strs(&a));
        assert!(out.status.success(), "mote run --backend {backend} failed: {}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
        let probs: Vec<f64> = v["outputs"][0]["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(receipt).unwrap()).unwrap();
        (probs, r)
    };
    let (ort, r_ort) = run("ort-cpu", &tmp().join("cnn-ort.json"));
    let (wgpu, r_wgpu) = run("wgpu", &tmp().join("cnn-wgpu.json"));
    assert_eq!(r_ort["backend"], "ort-cpu");
    assert_eq!(r_wgpu["backend"], "wgpu");
    assert_eq!(ort.len(), wgpu.len());
    for (i, (a, b)) in ort.iter().zip(&wgpu).enumerate() {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1e-3), "output {i}: ort {a}, wgpu {b}");
    }

    let specs = mote(&["specs"]);
    let specs: serde_json::Value = serde_json::from_slice(&specs.stdout).unwrap();
    let adapters = specs["wgpu_adapters"].as_array().expect("adapter list");
    let device = r_wgpu["device"].as_str().unwrap();
    assert!(
        adapters.iter().any(|a| device.starts_with(a["name"].as_str().unwrap())),
        "receipt device {device:?} is not among the listed adapters {adapters:?}"
    );
    assert_eq!(specs["backends"]["wgpu"]["available"], true, "{specs}");

    // The types model holds ops/types wgpu refuses (float16, float64...):
    // the job fails with the reason, the process exits cleanly.
    let out = mote(&as_strs(&passthrough_run("types", &["--backend", "wgpu"])));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("wgpu backend"), "{}", stderr(&out));

    // A machine without any Vulkan driver: one clear error naming the fix.
    let out = mote_env(
        &as_strs(&passthrough_run("mlp", &["--backend", "wgpu"])),
        &[("VK_ICD_FILENAMES", "/nonexistent/icd.json"), ("VK_DRIVER_FILES", "/nonexistent/icd.json")],
    );
    assert!(!out.status.success(), "ran without a Vulkan driver?");
    let err = stderr(&out);
    assert!(err.contains("no usable adapter") && err.contains("mesa-vulkan-drivers"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

/// A guest sends model bytes whose weights are "external data" naming
/// files of the node, resolved against `mote`'s working directory: the
/// node key, the config with tenants' tokens. The model is refused before
/// ONNX Runtime sees it, and no byte of the files comes back.
#[test]
fn a_model_cannot_read_the_nodes_files_through_external_data() {
    use mote_runtime::attack_models;
    let dir = tmp().join("exfil");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let secret = b"tenant-token-SECRET-0123456789ab";
    std::fs::write(dir.join("mote.toml"), secret).unwrap();
    std::fs::write(dir.join("data/node.key"), secret).unwrap();
    for (what, model) in [
        ("top-level initializer", attack_models::external_data_model("mote.toml", secret.len())),
        ("subgraph initializer", attack_models::nested_external_data_model("data/node.key", secret.len())),
    ] {
        let request = serde_json::json!({
            "inputs": [{"name": "model", "datatype": "UINT8", "shape": [model.len()], "data": model}],
            "parameters": {"mode": "load-model"},
        });
        let req_path = dir.join("request.json");
        std::fs::write(&req_path, request.to_string()).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_mote"))
            .args(["run", &path("guests/misbehave.wasm"), "--input", req_path.to_str().unwrap()])
            .current_dir(&dir)
            .env("MOTE_HOME", tmp().join("home"))
            .output()
            .expect("start mote");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let all = format!("{stdout}{}", stderr(&out));
        // The secret as JSON numbers (a UINT8 output) or as text.
        let as_numbers = secret.iter().map(u8::to_string).collect::<Vec<_>>().join(",");
        assert!(
            !all.contains(&as_numbers) && !all.contains("SECRET"),
            "{what}: the model read a file of the node: {all}"
        );
        assert!(!out.status.success(), "{what}: the job succeeded: {all}");
        assert!(all.contains("external file"), "{what}: refused without saying why: {all}");
    }
}
