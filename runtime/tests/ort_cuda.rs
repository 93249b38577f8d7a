//! ONNX Runtime's CUDA execution provider, where this machine has one
//! (`onnxruntime-gpu` and an NVIDIA GPU): whole models equal ORT CPU, jobs
//! pinned to CUDA run guests end to end and their receipts name the GPU,
//! dynamic batching on CUDA gives every job its own rows.
//!
//! Without CUDA each test says that it skipped and why (`common::skip`:
//! stderr and build/test-skips.log, which `make test` prints), after
//! checking that CUDA is refused with a clear error. `MOTE_REQUIRE_CUDA=1`
//! turns a missing CUDA into a failure: the device check
//! (`scripts/gpu_check.sh`) sets it, so a broken CUDA set-up there cannot
//! pass as a skip.

mod common;

use common::*;
use mote_runtime::backend::{standalone, BackendChoice, BackendKind, DirectInputs};
use mote_runtime::{kserve, DeploymentSpec, Limits, Outcome, Response};

const CUDA: BackendChoice = BackendChoice::Fixed(BackendKind::OrtCuda);

/// True where CUDA runs sessions; otherwise checks the refusal is clean,
/// says so on stderr and returns false (or fails under MOTE_REQUIRE_CUDA).
fn cuda_or_skip(test: &str) -> bool {
    match standalone(BackendKind::OrtCuda) {
        Ok(_) => true,
        Err(e) => {
            assert!(e.message.contains("no CUDA"), "CUDA refused without saying so: {e}");
            assert!(
                std::env::var("MOTE_REQUIRE_CUDA").map_or(true, |v| v != "1"),
                "MOTE_REQUIRE_CUDA=1 but CUDA is unusable: {e}"
            );
            skip(test, &format!("no CUDA on this machine ({})", e.message.trim()));
            false
        }
    }
}

/// Largest absolute difference over all float outputs (for the log).
fn worst_difference(got: &serde_json::Value, want: &serde_json::Value) -> f64 {
    let mut worst = 0f64;
    for w in want["outputs"].as_array().unwrap() {
        let g = got["outputs"].as_array().unwrap().iter().find(|g| g["name"] == w["name"]).unwrap();
        for (a, b) in g["data"].as_array().unwrap().iter().zip(w["data"].as_array().unwrap()) {
            if let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) {
                worst = worst.max((x - y).abs());
            }
        }
    }
    worst
}

fn model_matches(name: &str) {
    if !cuda_or_skip(&format!("{name}_on_cuda_equals_ort_cpu")) {
        return;
    }
    // Three runs: the first on CUDA picks cuDNN's algorithms.
    let got = run_direct(BackendKind::OrtCuda, name, 3);
    let cpu = run_direct(BackendKind::OrtCpu, name, 1);
    eprintln!("{name}: CUDA vs ORT CPU, largest |difference| {:e}", worst_difference(&got, &cpu));
    // float32 throughout (TF32 is off): summation order is the only
    // difference, as between ORT CPU and the Python reference.
    assert_outputs_match(&got, &cpu, 1e-4, 1e-5);
    assert_outputs_match(&got, &expected_json(name), 1e-4, 1e-5);
}

#[test]
fn cnn_on_cuda_equals_ort_cpu() {
    model_matches("cnn");
}

#[test]
fn transformer_on_cuda_equals_ort_cpu() {
    model_matches("transformer");
}

#[test]
fn mlp_on_cuda_equals_ort_cpu() {
    model_matches("mlp");
}

#[test]
fn jobs_pinned_to_cuda_run_guests_and_name_the_gpu() {
    let rt = runtime();
    if !cuda_or_skip("jobs_pinned_to_cuda_run_guests_and_name_the_gpu") {
        let err = rt.backend_device(CUDA).unwrap_err();
        assert!(err.message.contains("no CUDA"), "{err}");
        return;
    }
    let (kind, device) = rt.backend_device(CUDA).expect("CUDA device");
    assert_eq!(kind, BackendKind::OrtCuda);
    assert!(device.starts_with("cuda:0"), "{device}");
    if let Some(model) = mote_runtime::backend::ort::nvidia_gpu_model() {
        assert!(device.contains(&model), "device {device:?} should name the GPU {model:?}");
    }
    // Auto prefers CUDA over every other backend.
    assert_eq!(rt.backend_device(BackendChoice::Auto).expect("auto").0, BackendKind::OrtCuda);

    // wasi-nn load-by-name through the passthrough guest.
    let d = deploy_on(&rt, "passthrough", &[("model", "cnn")], CUDA, None);
    let report = d.run(&request("cnn"));
    let response = report.result.unwrap_or_else(|e| panic!("cnn job on CUDA failed: {e}"));
    assert_eq!(report.receipt.outcome, Outcome::Ok);
    assert_eq!(report.receipt.backend, "ort-cuda");
    assert_eq!(report.receipt.device, device);
    assert!(report.receipt.usage.backend_ns > 0);
    assert_outputs_match(&kserve::response_json(&response, None).unwrap(), &expected_json("cnn"), 1e-4, 1e-5);
    eprintln!("receipt: backend {} device {:?}", report.receipt.backend, report.receipt.device);

    // Graph builder: the MLP declared op by op, lowered, run on CUDA.
    let d = deploy_on(&rt, "mlp-builder", &[], CUDA, None);
    let report = d.run(&request("mlp_builder"));
    let got = kserve::response_json(&report.result.expect("mlp-builder on CUDA"), None).unwrap();
    assert_outputs_match(&got, &expected_json("mlp_builder"), 1e-4, 1e-6);
    assert_eq!(report.receipt.backend, "ort-cuda");

    // wasi-nn load with target gpu (ONNX bytes embedded in the guest).
    let d = deploy_on(&rt, "classifier", &[], BackendChoice::Auto, None);
    let report = d.run(&with_params(request("classifier"), &[("target", "gpu")]));
    let got = kserve::response_json(&report.result.expect("classifier on the GPU"), None).unwrap();
    assert_outputs_match(&got, &expected_json("classifier"), 1e-4, 1e-6);
    assert_eq!(report.receipt.backend, "ort-cuda");

    // A hostile model is refused as a model on CUDA too.
    let bad = rt.deploy(DeploymentSpec {
        name: "bad".into(),
        guest: guest("passthrough"),
        models: vec![("model".into(), b"\x08\x07garbage".to_vec())],
        limits: Limits::default(),
        backend: CUDA,
        batching: None,
    });
    if let Ok(d) = bad {
        let report = d.run(&request("cnn"));
        assert!(report.result.is_err(), "garbage model ran on CUDA");
        assert_ne!(report.receipt.outcome, Outcome::Ok);
    }
}

/// Dynamic batching on CUDA: concurrent jobs merged into shared runs get
/// the outputs an unbatched CUDA deployment gives for their own input.
#[test]
fn batched_cuda_jobs_get_exactly_their_own_rows() {
    use mote_runtime::batching::BatchConfig;
    if !cuda_or_skip("batched_cuda_jobs_get_exactly_their_own_rows") {
        return;
    }
    let rt = runtime();
    let plain = deploy_on(&rt, "passthrough", &[("model", "cnn")], CUDA, None);
    let batched =
        deploy_on(&rt, "passthrough", &[("model", "cnn")], CUDA, Some(BatchConfig { max_batch: 16, window_us: 50_000 }));
    batched.warm().unwrap();
    let base = request("cnn");
    let input = |i: usize| shifted(&base, i as f32 * 0.05);
    let floats = |r: &Response| -> Vec<f32> {
        r.outputs.iter().flat_map(|t| t.data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()))).collect()
    };
    const JOBS: usize = 8;
    let want: Vec<_> = (0..JOBS).map(|i| floats(&plain.run(&input(i)).result.expect("unbatched job"))).collect();
    let mut worst = 0f32;
    for round in 0..3 {
        let reports = run_together(&batched, (0..JOBS).map(input).collect());
        for (i, report) in reports.iter().enumerate() {
            let got = floats(report.result.as_ref().unwrap_or_else(|e| panic!("round {round} job {i}: {e:?}")));
            assert_eq!(got.len(), want[i].len());
            for (j, (g, w)) in got.iter().zip(&want[i]).enumerate() {
                // Another job's rows would be off by ≥ 0.05 in the input.
                assert!((g - w).abs() <= 1e-4 + 1e-4 * w.abs(), "round {round} job {i} [{j}]: {g} vs unbatched {w}");
                worst = worst.max((g - w).abs());
            }
            assert_eq!(report.receipt.backend, "ort-cuda");
            assert!(report.receipt.usage.backend_ns > 0, "job {i} was charged no backend time");
        }
    }
    let stats = batched.batch_stats().unwrap();
    eprintln!(
        "CUDA batching: {stats:?}; largest |batched − unbatched| {worst:e}; session builds retried: {}",
        mote_runtime::backend::ort::cuda_capture_retries()
    );
    assert!(stats.batched_runs > 0, "no batch was formed in 3 rounds of {JOBS} jobs: {stats:?}");
    assert_eq!(stats.fallbacks, 0, "{stats:?}");
}

/// Sessions built while others run (what a node does as new deployments
/// arrive): every build and run succeeds. On an H200, ORT's session set-up
/// met another thread's stream capture (CUDA error 900) and the job failed
/// as a bad model; builds are now tried again (`cuda_capture_retries`).
#[test]
fn cuda_sessions_built_beside_running_ones_all_succeed() {
    if !cuda_or_skip("cuda_sessions_built_beside_running_ones_all_succeed") {
        return;
    }
    let backend = standalone(BackendKind::OrtCuda).expect("CUDA");
    let req = request("cnn");
    let direct = DirectInputs::new(&req).unwrap();
    let models = ["cnn", "transformer", "mlp", "mlp_builder.reference"];
    std::thread::scope(|s| {
        for t in 0..8 {
            let (backend, direct) = (&backend, &direct);
            s.spawn(move || {
                for round in 0..3 {
                    // A fresh session of another model, then a CNN run.
                    let name = models[(t + round) % models.len()];
                    backend.load(model(name).into()).unwrap_or_else(|e| panic!("thread {t} round {round}: load {name}: {e}"));
                    let graph = backend.load(model("cnn").into()).expect("load cnn");
                    let mut ctx = graph.init_execution_context().unwrap();
                    ctx.compute(&direct.views(), None).unwrap_or_else(|e| panic!("thread {t} round {round}: run: {e}"));
                }
            });
        }
    });
    eprintln!("CUDA session builds retried for a stream capture elsewhere: {}", mote_runtime::backend::ort::cuda_capture_retries());
}
