//! wasi-nn command programs, unmodified: `guest-examples/wasi-nn-classify`
//! (wit-bindgen against the standard world `wasi:nn/ml`, `std::fs::read`
//! of `fixture/model.onnx`, `compute`, top 5 printed) run by the real
//! `mote` binary with read-only mounts, exit codes and signed receipts.

use serde_json::{json, Value};
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn build() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../build"))
}

fn artifact(rel: &str) -> PathBuf {
    let p = build().join(rel);
    assert!(p.exists(), "{} missing: run `make guests` first", p.display());
    p
}

fn sha(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

fn mote(args: &[&str], home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mote")).args(args).env("MOTE_HOME", home).output().expect("start mote")
}

/// A fixture directory as wasmtime's examples have it: the CNN as
/// `model.onnx` and its reference input as raw float32 `tensor.bin`.
fn fixture(dir: &Path) -> (PathBuf, Vec<(usize, f64)>) {
    let fx = dir.join("fixture");
    std::fs::create_dir_all(&fx).unwrap();
    std::fs::copy(artifact("models/cnn.onnx"), fx.join("model.onnx")).unwrap();
    let req: Value = serde_json::from_slice(&std::fs::read(artifact("models/cnn.request.json")).unwrap()).unwrap();
    let data: Vec<u8> = req["inputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| (v.as_f64().unwrap() as f32).to_le_bytes())
        .collect();
    std::fs::write(fx.join("tensor.bin"), data).unwrap();
    let want: Value = serde_json::from_slice(&std::fs::read(artifact("models/cnn.expected.json")).unwrap()).unwrap();
    let mut ranked: Vec<(usize, f64)> =
        want["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked.truncate(5);
    (fx, ranked)
}

/// The program's top-5 lines: `N. class I: P`.
fn top5(stdout: &str) -> Vec<(usize, f64)> {
    stdout
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once(". class ")?;
            let (i, p) = rest.split_once(": ")?;
            Some((i.parse().ok()?, p.parse().ok()?))
        })
        .collect()
}

fn check_top5(out: &Output, want: &[(usize, f64)]) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{}", out.status.code(), String::from_utf8_lossy(&out.stderr));
    let got = top5(&stdout);
    assert_eq!(got.len(), 5, "{stdout}");
    for ((gi, gp), (wi, wp)) in got.iter().zip(want) {
        assert_eq!(gi, wi, "{stdout}");
        assert!((gp - wp).abs() < 1e-5, "class {gi}: {gp} vs {wp}");
    }
}

#[test]
fn a_wasi_nn_command_program_runs_unmodified_with_read_only_mounts_and_a_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let (fx, want) = fixture(dir.path());
    let program = artifact("programs/wasi-nn-classify.wasm");
    let (prog, mount) = (program.to_str().unwrap(), format!("{}::fixture", fx.display()));
    let receipt = dir.path().join("receipt.json");

    // The model from the mounted directory, `graph.load`.
    let out = mote(&["run", prog, "--dir", &mount, "--receipt", receipt.to_str().unwrap()], &home);
    check_top5(&out, &want);
    let v = mote(&["verify", receipt.to_str().unwrap()], &home);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let r: Value = serde_json::from_slice(&std::fs::read(&receipt).unwrap()).unwrap();
    assert_eq!(r["outcome"], "ok");
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["guest_sha256"], sha(&std::fs::read(&program).unwrap()));
    // Request and response digests are BLAKE3 (files in the manifest,
    // guest and models: sha256).
    let b3 = |b: &[u8]| mote_runtime::DigestAlg::Blake3.hex(b);
    assert_eq!(r["output_blake3"], b3(&out.stdout), "the receipt binds what the program printed");
    let model = std::fs::read(fx.join("model.onnx")).unwrap();
    assert_eq!(r["model_sha256"], json!([sha(&model)]));
    // The invocation: arguments and every mounted file's hash.
    let manifest = json!({"args": ["wasi-nn-classify.wasm"], "mounts": [{"guest": "fixture", "files": [
        ["model.onnx", sha(&model)], ["tensor.bin", sha(&std::fs::read(fx.join("tensor.bin")).unwrap())]]}]});
    assert_eq!(r["input_blake3"], b3(&serde_json::to_vec(&manifest).unwrap()));
    assert!(r["fuel"].as_u64().unwrap() > 0 && r["backend"] == "ort-cpu", "{r}");

    // The same model as a host graph, `graph.load-by-name` (--nn-graph).
    let graph = format!("cnn={}", artifact("models/cnn.onnx").display());
    let out = mote(&["run", prog, "--dir", &mount, "--nn-graph", &graph, "--", "--by-name", "cnn"], &home);
    check_top5(&out, &want);

    // The program's exit status is mote's, and the receipt's.
    let out = mote(&["run", prog, "--dir", &mount, "--receipt", receipt.to_str().unwrap(), "--", "--by-name", "nope"], &home);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&std::fs::read(&receipt).unwrap()).unwrap();
    assert_eq!((r["outcome"].as_str(), r["exit_code"].as_i64()), (Some("exit"), Some(1)));

    // Inside: the mount cannot be written, nothing outside it can be read.
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, b"node secret").unwrap();
    for (write, read) in [
        ("fixture/escape.txt".to_string(), secret.display().to_string()),
        ("fixture/model.onnx".to_string(), "fixture/../secret.txt".to_string()),
        ("escape.txt".to_string(), "/etc/hostname".to_string()),
    ] {
        let out = mote(&["run", prog, "--dir", &mount, "probe", &write, &read], &home);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "the program could write {write} or read {read}:\n{stdout}");
        assert!(stdout.contains("denied") && !stdout.contains("ALLOWED"), "{stdout}");
    }
    assert!(!fx.join("escape.txt").exists(), "a file appeared in the read-only mount");
    assert_eq!(std::fs::read(fx.join("model.onnx")).unwrap(), model, "the mounted model was changed");

    // Options of the other kind of component are refused with a reason.
    let out = mote(&["run", prog, "--input", "x.json"], &home);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("command program"));
    let job = artifact("guests/passthrough.wasm");
    let out = mote(&["run", job.to_str().unwrap(), "--dir", &mount], &home);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("job guest"));
}

/// The program built for `wasm32-wasip2` (rustup's target) runs the same;
/// where that target is not installed (CI builds for wasm32-wasip1 with
/// the adapter, tested above) this says so and checks nothing.
#[test]
fn the_program_built_for_wasm32_wasip2_runs_the_same() {
    let has = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == "wasm32-wasip2"));
    if !has {
        eprintln!("skipping: rustup has no wasm32-wasip2 target here (the wasm32-wasip1 build is tested)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mote"))
        .args(["build", concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-examples/wasi-nn-classify"), "--target", "wasm32-wasip2"])
        .arg("--out")
        .arg(dir.path())
        .env("CARGO_TARGET_DIR", dir.path().join("target"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (fx, want) = fixture(dir.path());
    let prog = dir.path().join("wasi-nn-classify.wasm");
    let out = mote(&["run", prog.to_str().unwrap(), "--dir", &format!("{}::fixture", fx.display())], &dir.path().join("home"));
    check_top5(&out, &want);
}
