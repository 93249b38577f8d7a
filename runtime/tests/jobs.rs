//! Limits, isolation, caching, errors and receipts, on real guests.

mod common;

use common::*;
use mote_runtime::backend::{BackendChoice, BackendKind};
use mote_runtime::{DeployError, DeploymentSpec, DigestAlg, Limits, LogLevel, Outcome, Receipt, Request, Runtime};

fn misbehave(rt: &Runtime, limits: Limits) -> mote_runtime::Deployment {
    deploy(rt, "misbehave", &[("model", "mlp")], limits)
}

/// The misbehave guest built for `wasm32-wasip1` (WASI through the adapter).
fn wasi_misbehave(rt: &Runtime) -> mote_runtime::Deployment {
    rt.deploy(DeploymentSpec {
        name: "wasi".into(),
        guest: artifact("guests-wasi/misbehave.wasm"),
        ..DeploymentSpec::default()
    })
    .expect("a WASI guest deploys")
}

fn mode(m: &str) -> Request {
    with_params(Request::default(), &[("mode", m)])
}

/// After a failure the same runtime still serves a normal job.
fn still_serves(rt: &Runtime) {
    let d = deploy(rt, "passthrough", &[("model", "mlp")], Limits::default());
    let r = d.run(&request("mlp"));
    assert!(r.result.is_ok(), "normal job after a failure: {:?}", r.result.err());
}

/// Asserts that a job ended `invalid_input` with a message containing `says`.
fn assert_invalid_input(r: &mote_runtime::JobReport, says: &str) {
    let err = r.result.as_ref().expect_err(says);
    assert_eq!(err.outcome, Outcome::InvalidInput, "{err}");
    assert!(err.message.contains(says), "{err}");
}

fn output_string(r: &mote_runtime::Response, name: &str) -> String {
    let t = r.outputs.iter().find(|t| t.name == name).expect("output");
    let parts = mote_runtime::tensor::split_bytes_elements(&t.data).unwrap();
    String::from_utf8(parts[0].to_vec()).unwrap()
}

#[test]
fn infinite_loop_hits_the_deadline() {
    let rt = runtime();
    let d = misbehave(&rt, Limits { deadline_ms: 200, fuel: u64::MAX / 2, ..Limits::default() });
    let start = std::time::Instant::now();
    let r = d.run(&mode("spin"));
    let err = r.result.expect_err("spin must not finish");
    assert_eq!(err.outcome, Outcome::Deadline, "{err}");
    assert_eq!(r.receipt.outcome, Outcome::Deadline);
    assert!(start.elapsed().as_secs() < 10, "deadline enforced promptly");
    still_serves(&rt);
}

#[test]
fn infinite_loop_exhausts_fuel() {
    let rt = runtime();
    let d = misbehave(&rt, Limits { fuel: 50_000_000, deadline_ms: 60_000, ..Limits::default() });
    let r = d.run(&mode("spin"));
    assert_eq!(r.result.expect_err("spin").outcome, Outcome::FuelExhausted);
    assert_eq!(r.receipt.usage.fuel, 50_000_000, "all fuel consumed");
    still_serves(&rt);
}

#[test]
fn unbounded_memory_growth_hits_the_memory_limit() {
    let rt = runtime();
    let d = misbehave(&rt, Limits { memory_bytes: 64 << 20, ..Limits::default() });
    let r = d.run(&mode("grow"));
    let err = r.result.expect_err("grow must fail");
    assert_eq!(err.outcome, Outcome::MemoryLimit, "{err}");
    assert!(r.receipt.usage.peak_memory_bytes <= 64 << 20);
    assert!(r.receipt.usage.peak_memory_bytes > 32 << 20, "it did grow: {}", r.receipt.usage.peak_memory_bytes);
    still_serves(&rt);
}

#[test]
fn tensors_a_guest_keeps_on_the_host_count_against_its_memory_limit() {
    // 1 MiB tensors, never dropped: without the host's count they would
    // grow the node's memory by 100 GiB while the guest's stays small.
    let rt = runtime();
    let d = misbehave(&rt, Limits { memory_bytes: 64 << 20, ..Limits::default() });
    let r = d.run(&mode("hoard-tensors"));
    let err = r.result.expect_err("hoarding must fail");
    assert_eq!(err.outcome, Outcome::MemoryLimit, "{err}");
    assert!(err.message.contains("tensors held by the host"), "{err}");
    still_serves(&rt);
}

#[test]
fn a_guest_running_inference_in_a_loop_does_not_pile_its_inputs_on_the_host() {
    // compute takes its input tensors: 300 runs of the CNN pass 180 MB of
    // inputs, which must not add up under a 128 MiB limit.
    let rt = runtime();
    let d = deploy(&rt, "inference-loop", &[("model", "cnn")], Limits { memory_bytes: 128 << 20, ..Limits::default() });
    for abi in ["values", "wasi-nn"] {
        let r = d.run(&with_params(request("cnn"), &[("runs", "300"), ("abi", abi)]));
        assert!(r.result.is_ok(), "{abi}: {:?}", r.result.err());
    }
}

#[test]
fn inference_by_value_equals_wasi_nn_resources_and_is_metered_the_same() {
    // inference-loop runs the model through mote:edge/inference-io (one
    // call, tensors by value) or through wasi-nn's tensor resources.
    let rt = runtime();
    for model in ["mlp", "cnn", "transformer"] {
        let d = deploy(&rt, "inference-loop", &[("model", model)], Limits::default());
        let run = |abi: &str| {
            let r = d.run(&with_params(request(model), &[("runs", "3"), ("abi", abi)]));
            let resp = r.result.unwrap_or_else(|e| panic!("{model} {abi}: {e}"));
            let mut outs: Vec<_> = resp.outputs.into_iter().filter(|t| t.name != "latency_ns").collect();
            outs.sort_by(|a, b| a.name.cmp(&b.name));
            (outs, r.receipt.usage)
        };
        let (by_value, used_by_value) = run("values");
        let (by_resource, used_by_resource) = run("wasi-nn");
        assert!(!by_value.is_empty(), "{model}: no outputs");
        assert_eq!(by_value, by_resource, "{model}: outputs differ between the two ABIs");
        // Same request, same runs: the same bytes in and out of the backend.
        assert_eq!(used_by_value.bytes_in, used_by_resource.bytes_in, "{model}");
        assert_eq!(used_by_value.bytes_out, used_by_resource.bytes_out, "{model}");
        let input: u64 = request(model).inputs.iter().map(|t| t.data.len() as u64).sum();
        assert_eq!(used_by_value.bytes_in, 3 * input, "{model}: bytes in counts each run's inputs");
        assert!(used_by_value.backend_ns > 0);
        // And the model's reference outputs (the Python reference).
        let resp = mote_runtime::Response { outputs: by_value, parameters: vec![] };
        assert_outputs_match(&mote_runtime::kserve::response_json(&resp, None).unwrap(), &expected_json(model), 1e-4, 1e-5);
    }
}

#[test]
fn a_tensor_passed_by_value_that_lies_about_its_size_ends_the_job() {
    let rt = runtime();
    let d = misbehave(&rt, Limits::default());
    let claim = |c: &str| d.run(&with_params(mode("io-lie"), &[("claim", c)]));
    // 64 GiB claimed with 16 bytes; 4 floats with 8 bytes.
    assert_invalid_input(&claim("huge"), "exceeds the job's tensor limit");
    assert_invalid_input(&claim("short"), "needs 16 bytes but 8 were given");
    // A datatype wasi-nn cannot carry is the guest's error to handle.
    assert_invalid_input(&claim("bytes"), "invalid-argument: input 'x' has datatype BYTES, which wasi-nn cannot carry");
    assert_invalid_input(&claim("many"), "invalid-argument: 100000 input tensors; a compute takes at most 1024");
    still_serves(&rt);
}

#[test]
fn state_kept_on_the_host_serves_computes_by_value_and_through_wasi_nn_alike() {
    // A running sum bound output → input: fed 1, 2, 3 by value, then 4
    // through wasi-nn, on one execution context.
    let rt = runtime();
    let r = misbehave(&rt, Limits::default()).run(&mode("io-state"));
    let resp = r.result.expect("io-state");
    let y: Vec<f32> = resp.outputs[0].data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(y, [1.0, 3.0, 6.0, 10.0]);
    // The bound output stays on the host: only `y` came back, each time.
    assert_eq!(resp.parameters, [("names".to_string(), "y,y,y,y".to_string())]);
}

#[test]
fn a_huge_tensor_claim_is_invalid_input() {
    let rt = runtime();
    let r = misbehave(&rt, Limits::default()).run(&mode("huge-tensor"));
    assert_invalid_input(&r, "exceeds the job's tensor limit");
    still_serves(&rt);
}

#[test]
fn malformed_onnx_is_a_clear_invalid_encoding_error() {
    let rt = runtime();
    let r = misbehave(&rt, Limits::default()).run(&mode("bad-onnx"));
    let msg = output_string(&r.result.expect("guest handles the error"), "error");
    assert!(msg.starts_with("invalid-encoding:"), "{msg}");
    // Refused by the model screen, before ONNX Runtime sees the bytes.
    assert!(msg.contains("not an ONNX model"), "{msg}");
    still_serves(&rt);
}

#[test]
fn load_by_name_sees_only_the_deployment_models() {
    let rt = runtime();
    let r = misbehave(&rt, Limits::default()).run(&mode("missing-model"));
    let msg = output_string(&r.result.expect("guest handles the error"), "error");
    assert!(msg.starts_with("not-found:"), "{msg}");
    assert!(msg.contains("no model named 'no-such-model'") && msg.contains("models: model"), "{msg}");
}

#[test]
fn gpu_target_without_a_gpu_is_an_error_not_a_silent_cpu_run() {
    let rt = runtime();
    let r = misbehave(&rt, Limits::default()).run(&mode("gpu"));
    if rt.backend_device(BackendChoice::Fixed(BackendKind::OrtCuda)).is_ok() {
        // With CUDA the gpu target reaches it: the garbage model is then
        // refused as a model, not for want of a GPU.
        let msg = output_string(&r.result.expect("guest handles the error"), "error");
        assert!(msg.starts_with("invalid-encoding:"), "CUDA present, yet: {msg}");
        return;
    }
    let msg = output_string(&r.result.expect("guest handles the error"), "error");
    assert!(msg.starts_with("unsupported-operation:"), "{msg}");
    assert!(msg.contains("no usable GPU backend"), "{msg}");
    // And a deployment pinned to CUDA reports "no CUDA" cleanly.
    let err = rt.backend_device(BackendChoice::Fixed(BackendKind::OrtCuda)).unwrap_err();
    assert!(err.message.contains("no CUDA"), "{err}");
}

#[test]
fn a_panicking_guest_traps_alone() {
    let rt = runtime();
    let r = misbehave(&rt, Limits::default()).run(&mode("panic"));
    let err = r.result.expect_err("panic");
    assert_eq!(err.outcome, Outcome::Trap);
    still_serves(&rt);
}

#[test]
fn guest_errors_map_to_outcomes() {
    let rt = runtime();
    let r = misbehave(&rt, Limits::default()).run(&mode("invalid"));
    let err = r.result.expect_err("refused");
    assert_eq!(err.outcome, Outcome::InvalidInput);
    assert_eq!(err.message, "the guest refused the request");
}

#[test]
fn logs_stdout_and_usage_are_captured() {
    let rt = runtime();
    let r = misbehave(&rt, Limits::default()).run(&mode("log"));
    let resp = r.result.expect("log job");
    let has = |lvl: LogLevel, text: &str| r.log.iter().any(|l| l.level == lvl && l.message == text);
    assert!(has(LogLevel::Info, "hello from the guest log"), "{:?}", r.log);
    // stdout/stderr are WASI streams: captured for wasm32-wasip2 guests; a
    // wasm32-unknown-unknown guest (this one, built with build-std) has none.
    if r.log.iter().any(|l| l.level == LogLevel::Stdout) {
        assert!(has(LogLevel::Stdout, "hello from stdout"), "{:?}", r.log);
        assert!(has(LogLevel::Stderr, "hello from stderr"), "{:?}", r.log);
    }
    let fuel_seen = i64::from_le_bytes(resp.outputs[0].data[..8].try_into().unwrap());
    assert!(fuel_seen > 0 && (fuel_seen as u64) <= r.receipt.usage.fuel, "usage.current() fuel {fuel_seen}");
    let peak: u64 = resp.parameters[0].1.parse().unwrap();
    assert!(peak > 0);
}

#[test]
fn a_wasi_guest_gets_captured_stdio_and_nothing_else() {
    let rt = runtime();
    let d = wasi_misbehave(&rt);
    let r = d.run(&mode("log"));
    r.result.as_ref().expect("log job");
    let has = |lvl: LogLevel, text: &str| r.log.iter().any(|l| l.level == lvl && l.message == text);
    assert!(has(LogLevel::Stdout, "hello from stdout"), "{:?}", r.log);
    assert!(has(LogLevel::Stderr, "hello from stderr"), "{:?}", r.log);
    assert!(has(LogLevel::Info, "hello from the guest log"), "{:?}", r.log);

    let resp = d.run(&mode("wasi")).result.expect("wasi probe");
    let fs = mote_runtime::tensor::split_bytes_elements(&resp.outputs[0].data).unwrap();
    for what in fs {
        let what = String::from_utf8_lossy(what);
        assert!(what.starts_with("denied:"), "no filesystem: {what}");
    }
    assert_eq!(resp.outputs[1].data, 0i64.to_le_bytes(), "no environment variables");
}

#[test]
fn bad_requests_are_rejected_before_the_guest_runs() {
    let rt = runtime();
    let d = deploy(&rt, "passthrough", &[("model", "mlp")], Limits::default());
    let mut req = request("mlp");
    req.inputs[0].data.pop();
    let r = d.run(&req);
    let err = r.result.expect_err("short data");
    assert_eq!(err.outcome, Outcome::InvalidInput);
    assert!(err.message.contains("needs 256 bytes, got 255"), "{err}");
    assert_eq!(r.receipt.usage.fuel, 0, "the guest never ran");

    // Wrong shape for the model: the backend refuses, the guest reports it.
    let mut req = request("mlp");
    req.inputs[0].shape = vec![8, 8];
    let err = d.run(&req).result.expect_err("wrong shape");
    assert_eq!(err.outcome, Outcome::InvalidInput, "{err}");
    assert!(err.message.contains("invalid-argument"), "{err}");
}

#[test]
fn bad_guests_are_refused_at_deploy_time() {
    let rt = runtime();
    let spec = |guest: Vec<u8>| DeploymentSpec { name: "bad".into(), guest, ..DeploymentSpec::default() };
    let not_wasm = rt.deploy(spec(b"hello".to_vec())).err().expect("garbage refused");
    assert!(matches!(not_wasm, DeployError::InvalidGuest(_)), "{not_wasm}");
    // A core module is not a component.
    let core = rt.deploy(spec(b"\0asm\x01\0\0\0".to_vec())).err().expect("core module refused");
    assert!(matches!(core, DeployError::InvalidGuest(_)), "{core}");
    // An empty component does not export the handler.
    let empty = rt.deploy(spec(b"\0asm\x0d\0\x01\0".to_vec())).err().expect("empty component refused");
    assert!(empty.to_string().contains("handler"), "{empty}");
    still_serves(&rt);
}

/// A guest whose `handle` export has the world's names but another type:
/// deployed (names are all a deploy checks), every job then fails on the
/// type check, and the runtime, which keeps a deployment's check only once
/// it has passed, never calls the mistyped export unchecked.
#[test]
fn a_handler_of_the_wrong_type_fails_every_job_and_is_never_called() {
    let rt = runtime();
    let guest = wat::parse_str(
        r#"(component
            (core module $m (func (export "h") (result i32) i32.const 7))
            (core instance $i (instantiate $m))
            (func $h (result u32) (canon lift (core func $i "h")))
            (instance $handler (export "handle" (func $h)))
            (export "mote:edge/handler@0.1.0" (instance $handler)))"#,
    )
    .expect("valid component text");
    let d = rt
        .deploy(DeploymentSpec { name: "mistyped".into(), guest, ..DeploymentSpec::default() })
        .expect("the export's names are the world's");
    for job in 0..3 {
        // As the node runs jobs: after each reply it prepares the next
        // instance, which must fail its check the same way.
        let (report, finished) = d.run_reply_first(mote_runtime::new_job_id(), Request::default(), None);
        let err = report.result.expect_err("a mistyped handle must not run");
        assert_eq!(err.outcome, Outcome::Trap, "job {job}: {err}");
        assert!(err.message.contains("type-checking export func `handle`"), "job {job}: {err}");
        d.after_reply(finished);
    }
    still_serves(&rt);
}

#[test]
fn second_load_of_a_model_is_a_cache_hit_without_a_new_session() {
    let rt = runtime();
    let d = deploy(&rt, "passthrough", &[("model", "cnn")], Limits::default());
    let req = request("cnn");
    let first = d.run(&req);
    assert!(first.result.is_ok());
    let after_first = rt.cache_stats();
    assert_eq!((after_first.hits, after_first.misses), (0, 1));
    assert_eq!(rt.sessions_built(), 1);
    let second = d.run(&req);
    assert_eq!(second.result.unwrap(), first.result.unwrap(), "same answer");
    let after_second = rt.cache_stats();
    assert_eq!((after_second.hits, after_second.misses), (1, 1), "second load hits the cache");
    assert_eq!(rt.sessions_built(), 1, "no new ORT session for a cached graph");
}

#[test]
fn many_jobs_run_the_same_model_at_once() {
    let rt = runtime();
    let d = deploy(&rt, "passthrough", &[("model", "transformer")], Limits::default());
    let req = request("transformer");
    let want = d.run(&req).result.expect("first job");
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..6).map(|_| s.spawn(|| d.run(&req))).collect();
        for h in handles {
            assert_eq!(h.join().expect("no panic").result.expect("concurrent job"), want);
        }
    });
    assert!(rt.sessions_built() >= 1 && rt.sessions_built() <= 7, "sessions: {}", rt.sessions_built());
    assert_eq!(rt.cache_stats().misses, 1, "one graph shared by all jobs");
}

#[test]
fn receipts_are_signed_and_describe_the_job() {
    let rt = runtime();
    let d = deploy(&rt, "passthrough", &[("model", "mlp")], Limits::default());
    let req = request("mlp");
    let r = d.run(&req);
    let resp = r.result.as_ref().unwrap();
    let text = r.receipt.to_json_pretty();
    let v = Receipt::verify_json(&text).expect("valid signature");
    assert_eq!(v.node_id, rt.node_id());
    assert_eq!(v.guest_sha256, mote_runtime::receipt::sha256_hex(&guest("passthrough")));
    assert_eq!(v.model_sha256, vec![mote_runtime::receipt::sha256_hex(&model("mlp"))]);
    // Request and response digests of their canonical forms, each in the
    // hash the node picks for its length: this MLP's are short (sha256 on
    // a CPU with sha256 instructions, BLAKE3 elsewhere).
    let picked = |tensors: &[mote_runtime::tensor::IoTensor], params: &[(String, String)]| {
        let (alg, hex) = mote_runtime::receipt_digest(tensors, params);
        assert_eq!(alg, DigestAlg::for_len(mote_protocol::canonical_len(tensors, params)));
        assert!(mote_protocol::canonical_len(tensors, params) < mote_protocol::SHORT_FORM_BYTES);
        Some((alg, hex))
    };
    let owned = |d: Option<(DigestAlg, &str)>| d.map(|(alg, hex)| (alg, hex.to_string()));
    assert_eq!(owned(v.input_digest()), picked(&req.inputs, &req.parameters));
    assert_eq!(owned(v.output_digest()), picked(&resp.outputs, &resp.parameters));
    assert!(v.binds_input(&req.inputs, &req.parameters) && v.binds_output(&resp.outputs, &resp.parameters));
    assert!(!v.binds_input(&resp.outputs, &resp.parameters), "another request does not match");
    assert_eq!(v.backend, "ort-cpu");
    assert!(v.usage.fuel > 0 && v.usage.wall_ns >= v.usage.backend_ns && v.usage.backend_ns > 0);
    assert_eq!(v.usage.bytes_in, 4 * 16 * 4);
    assert_eq!(v.usage.bytes_out, 2 * 4 * 10 * 4);
    assert!(v.price_units > 0);
    let tampered = text.replace(&format!("\"bytes_in\": {}", v.usage.bytes_in), "\"bytes_in\": 1");
    assert!(Receipt::verify_json(&tampered).is_err(), "tampered receipt must fail");

    // A request past SHORT_FORM_BYTES (the CNN's 588 KiB) is BLAKE3 on
    // any CPU.
    let d = deploy(&rt, "passthrough", &[("model", "cnn")], Limits::default());
    let req = request("cnn");
    let r = d.run(&req);
    r.result.as_ref().expect("cnn job");
    assert!(mote_protocol::canonical_len(&req.inputs, &req.parameters) >= mote_protocol::SHORT_FORM_BYTES);
    assert_eq!(r.receipt.input_blake3.as_deref(), Some(&*mote_runtime::digest(&req.inputs, &req.parameters)));
    assert!(r.receipt.input_sha256.is_none());
}

/// A receipt signed before request/response digests moved to BLAKE3
/// (written by that `mote run`, kept as it came): it still verifies and
/// still binds its request, in sha256.
#[test]
fn receipts_with_sha256_digests_still_verify() {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let text = std::fs::read_to_string(data.join("receipt-sha256.json")).unwrap();
    let v = Receipt::verify_json(&text).expect("an older receipt verifies");
    assert_eq!(v.input_digest().map(|(alg, _)| alg), Some(mote_runtime::DigestAlg::Sha256));
    assert!(v.input_blake3.is_none() && v.output_digest().is_some());
    let body: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("receipt-sha256.request.json")).unwrap()).unwrap();
    let req = mote_runtime::kserve::parse_request(&body).unwrap();
    assert!(v.binds_input(&req.inputs, &req.parameters), "binds its request in sha256");
    let mut other = req.clone();
    other.inputs[0].data[0] ^= 1;
    assert!(!v.binds_input(&other.inputs, &other.parameters));
    // Re-signed the same way, the receipt is byte for byte what that node
    // signed (the canonical form of the old field set is unchanged).
    assert_eq!(serde_json::to_value(&v).unwrap(), serde_json::from_str::<serde_json::Value>(&text).unwrap());

    // Both digests of a side, or neither: refused, whatever the signature.
    let key = mote_runtime::receipt::NodeKey::generate();
    let mut both = v.clone();
    both.input_blake3 = Some(mote_runtime::digest(&req.inputs, &req.parameters));
    both.sign(&key);
    let err = Receipt::verify_json(&both.to_json_pretty()).unwrap_err();
    assert!(err.to_string().contains("exactly one input digest"), "{err}");
    let mut neither = v.clone();
    neither.output_sha256 = None;
    neither.sign(&key);
    let err = Receipt::verify_json(&neither.to_json_pretty()).unwrap_err();
    assert!(err.to_string().contains("exactly one output digest"), "{err}");
}

#[test]
fn builder_graphs_are_cached_by_content() {
    let rt = runtime();
    let d = deploy(&rt, "mlp-builder", &[], Limits::default());
    let req = request("mlp_builder");
    let a = d.run(&req).result.unwrap();
    let b = d.run(&req).result.unwrap();
    assert_eq!(a, b);
    assert_eq!(rt.cache_stats().hits, 1, "same declared graph, same cache entry");
    // Another seed declares another graph: a new entry.
    let mut other = req.clone();
    other.parameters = vec![("seed".into(), "8".into())];
    let c = d.run(&other);
    assert!(c.result.is_ok());
    assert_eq!(rt.cache_stats().misses, 2);
}

#[test]
fn max_graphs_ends_the_job() {
    let rt = runtime();
    let d = deploy(&rt, "mlp-builder", &[], Limits { max_graphs: 0, ..Limits::default() });
    let err = d.run(&request("mlp_builder")).result.expect_err("no graphs allowed");
    assert_eq!(err.outcome, Outcome::InvalidInput);
    assert!(err.message.contains("max_graphs"), "{err}");
}

#[test]
fn a_long_backend_compute_is_stopped_at_the_deadline() {
    let rt = runtime();
    // Reference: a short chain runs to completion and computes the mean (1.0).
    let d = misbehave(&rt, Limits::default());
    let short = d.run(&with_params(Request::default(), &[("mode", "heavy"), ("layers", "4")]));
    let out = short.result.expect("a short chain completes");
    assert_eq!(out.outputs[0].data, 1.0f32.to_le_bytes(), "the chain keeps the values at 1.0");
    // 400 matmuls of 1024×1024 take seconds (512×512 ones took 0.3 s on a
    // fast 2-core VM); the deadline stops ORT between two of them.
    let d = misbehave(&rt, Limits { deadline_ms: 500, ..Limits::default() });
    let start = std::time::Instant::now();
    let r = d.run(&with_params(Request::default(), &[("mode", "heavy"), ("layers", "400"), ("size", "1024")]));
    let elapsed = start.elapsed();
    let err = r.result.expect_err("must not finish in time");
    assert_eq!(err.outcome, Outcome::Deadline, "{err}");
    assert!(err.message.contains("stopped at the job deadline") && err.message.contains("terminate flag"), "{err}");
    assert!(elapsed < std::time::Duration::from_millis(2500), "stopped after {elapsed:?}, deadline 500 ms");
    still_serves(&rt);
}

/// A job run reply-first (the node's way: the report goes out, the
/// instance is reset after) hands back a complete, signed report while its
/// instance is still held, and no longer counts as running: a batching
/// deployment's next job computes at once instead of waiting the batch
/// window for it.
#[test]
fn a_job_replied_first_is_over_before_its_instance_is_reset() {
    use mote_runtime::batching::BatchConfig;
    let rt = runtime();
    let d = rt
        .deploy(DeploymentSpec {
            name: "reply-first".into(),
            guest: guest("inference-loop"),
            models: vec![("model".into(), model("mlp"))],
            limits: Limits::default(),
            backend: BackendChoice::Auto,
            batching: Some(BatchConfig { max_batch: 64, window_us: 100_000 }),
        })
        .unwrap();
    d.warm().unwrap();
    let req = request("mlp");
    // The model's outputs (the guest also returns its own timing).
    let model_outputs = |r: &mote_runtime::Response| {
        r.outputs.iter().filter(|t| t.name != "latency_ns").cloned().collect::<Vec<_>>()
    };
    let want = model_outputs(&d.run(&req).result.expect("a plain run"));
    assert_eq!(want.len(), 2);
    let (first, held) = d.run_reply_first(mote_runtime::new_job_id(), req.clone(), None);
    assert_eq!(model_outputs(first.result.as_ref().expect("reply-first run")), want);
    let v = Receipt::verify_json(&first.receipt.to_json_pretty()).expect("the report's receipt is signed");
    assert_eq!(v.outcome, Outcome::Ok);
    assert!(v.usage.backend_ns > 0);
    // With the first job still counted as running, each of these would
    // wait the whole 100 ms window for it to join a batch.
    let waited = (0..5)
        .map(|_| {
            let start = std::time::Instant::now();
            let next = d.run(&req);
            let waited = start.elapsed();
            assert_eq!(model_outputs(&next.result.expect("next job")), want);
            waited
        })
        .min()
        .unwrap();
    assert!(waited < std::time::Duration::from_millis(50), "the next jobs waited {waited:?} for a finished one");
    drop(held);
    let stats = d.batch_stats().unwrap();
    assert_eq!((stats.batched_runs, stats.fallbacks), (0, 0), "{stats:?}");
    still_serves(&rt);
}

/// Every job gets a pristine instance, whether it instantiates its own or
/// takes the one prepared ahead of it (`prepare_instance`, what the node
/// does after each reply): nothing one tenant's job left in guest memory
/// reaches the next job, and the prepared instance's clock, deadline and
/// usage are the job's own.
#[test]
fn a_prepared_instance_is_pristine_and_the_jobs_own() {
    let rt = runtime();
    let d = misbehave(&rt, Limits { deadline_ms: 300, ..Limits::default() });
    let remember = |secret: &str| with_params(Request::default(), &[("mode", "remember"), ("secret", secret)]);
    let seen = |r: &mote_runtime::JobReport| {
        let out = r.result.as_ref().expect("remember job");
        let earlier = out.outputs.iter().find(|t| t.name == "earlier").expect("earlier");
        let calls = out.outputs.iter().find(|t| t.name == "calls").expect("calls");
        (String::from_utf8(earlier.data.clone()).unwrap(), f32::from_le_bytes(calls.data[..4].try_into().unwrap()))
    };
    for (i, prepared) in [false, true, true, false, true].into_iter().enumerate() {
        if prepared {
            d.prepare_instance();
        }
        let secret = format!("tenant {i}'s secret");
        let (report, finished) = d.run_reply_first(mote_runtime::new_job_id(), remember(&secret), None);
        assert_eq!(seen(&report), (String::new(), 1.0), "job {i} (prepared: {prepared}) saw an earlier job");
        drop(finished);
    }
    // Prepared long before its job: the deadline and the wall time run
    // from the job's start, not from the instance's.
    d.prepare_instance();
    std::thread::sleep(std::time::Duration::from_millis(600));
    let r = d.run(&mode("ok"));
    assert!(r.result.is_ok(), "a job on an instance prepared 600 ms earlier (deadline 300 ms): {:?}", r.result.err());
    assert!(r.receipt.usage.wall_ns < 300_000_000, "wall time counted from the preparation: {}", r.receipt.usage.wall_ns);
    // ... and the deadline still stops a job that runs past it.
    d.prepare_instance();
    let r = d.run(&mode("spin"));
    assert_eq!(r.result.expect_err("spins past its deadline").outcome, Outcome::Deadline);
    // A guest that cannot be instantiated (its initial memory is over the
    // limit): nothing is prepared, and every job still says why.
    let tiny = misbehave(&rt, Limits { memory_bytes: 64 << 10, ..Limits::default() });
    for _ in 0..3 {
        tiny.prepare_instance();
        let err = tiny.run(&mode("ok")).result.expect_err("cannot instantiate");
        assert_eq!(err.outcome, Outcome::MemoryLimit, "{err}");
    }
    still_serves(&rt);
}

/// Dynamic batching on the real guest and ONNX Runtime: concurrent jobs of
/// a batching deployment are merged into shared runs, and every job gets
/// the outputs an unbatched deployment gives for its own input — its rows,
/// never another job's.
#[test]
fn batched_jobs_get_exactly_their_own_rows() {
    use mote_runtime::batching::BatchConfig;
    let rt = runtime();
    let spec = |batching| DeploymentSpec {
        name: "batched".into(),
        guest: guest("inference-loop"),
        models: vec![("model".into(), model("mlp"))],
        limits: Limits::default(),
        backend: BackendChoice::Auto,
        batching,
    };
    let plain = rt.deploy(spec(None)).unwrap();
    let batched = rt.deploy(spec(Some(BatchConfig { max_batch: 64, window_us: 50_000 }))).unwrap();
    batched.warm().unwrap();
    assert!(plain.batch_stats().is_none());
    // Job i: the MLP's 4×16 request with every element shifted by i.
    let base = request("mlp");
    let input = |i: usize| shifted(&base, i as f32 * 0.25);
    let floats = |r: &mote_runtime::Response, name: &str| -> Vec<f32> {
        let t = r.outputs.iter().find(|t| t.name == name).expect("output");
        t.data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    };
    const JOBS: usize = 12;
    // Each batched job runs the model RUNS times, so the jobs started
    // together are computing at once whatever the scheduling (a job of one
    // 3 µs compute can end before the next one starts, and a compute with
    // no other job running is not held back to wait for one).
    const RUNS: usize = 20;
    let want: Vec<_> = (0..JOBS).map(|i| plain.run(&input(i)).result.expect("unbatched job")).collect();
    // Rounds alternate the guest's ABI: tensors by value (inference-io)
    // and wasi-nn resources; jobs of both kinds merge in round 2.
    let abi = |round: usize, i: usize| ["values", "wasi-nn"][(round + i * (round / 2)) % 2];
    for round in 0..3 {
        let runs = RUNS.to_string();
        let reports = run_together(
            &batched,
            (0..JOBS).map(|i| with_params(input(i), &[("abi", abi(round, i)), ("runs", &runs)])).collect(),
        );
        for (i, report) in reports.iter().enumerate() {
            let got = report.result.as_ref().unwrap_or_else(|e| panic!("round {round} job {i}: {e:?}"));
            for out in ["probs", "logits"] {
                let (g, w) = (floats(got, out), floats(&want[i], out));
                assert_eq!(g.len(), w.len(), "job {i} {out}: shape");
                let worst = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(worst <= 1e-5, "round {round} job {i} {out}: differs from its unbatched result by {worst}");
            }
            assert_eq!(report.receipt.outcome, Outcome::Ok);
            assert!(report.receipt.usage.backend_ns > 0, "job {i} was charged no backend time");
        }
    }
    let stats = batched.batch_stats().unwrap();
    eprintln!("batching: {stats:?}");
    assert!(stats.batched_runs > 0, "no batch was formed in 3 rounds of {JOBS} jobs: {stats:?}");
    assert_eq!(stats.fallbacks, 0, "{stats:?}");
    assert_eq!(stats.batched_computes + stats.alone_computes, (3 * JOBS * RUNS) as u64, "{stats:?}");
    assert!(stats.batched_rows <= stats.batched_runs * 64);
}

/// `mote build` pre-initialized the misbehave guest (`export_initializer!`):
/// its table is in the instance before the job runs, costs the job none of
/// the fuel it took to build, and a job that writes into that pre-built
/// memory leaves the next job (prepared instance or fresh, another tenant's
/// request) the untouched image. The WASI build of the same guest is not
/// pre-initialized (its libc calls WASI at start-up) and builds it lazily,
/// with the same result.
#[test]
fn a_pre_initialized_guest_starts_from_its_snapshot_and_every_job_sees_it_unchanged() {
    use mote_runtime::preinit;
    let guest = artifact("guests/misbehave.wasm");
    assert!(preinit::exports_initializer(&guest), "built with the SDK's initializer");
    let rt = runtime();
    let d = misbehave(&rt, Limits::default());
    let run = |d: &mote_runtime::Deployment, secret: &str| {
        let r = d.run(&with_params(Request::default(), &[("mode", "preinit"), ("secret", secret)]));
        let out = r.result.as_ref().expect("preinit job").clone();
        let flag = f32::from_le_bytes(out.outputs[0].data[..4].try_into().unwrap());
        let sum = i64::from_le_bytes(out.outputs[1].data[..8].try_into().unwrap());
        (flag, sum, r.receipt.usage.fuel)
    };
    let (flag, sum, fuel) = run(&d, "tenant a");
    assert_eq!(flag, 1.0, "the table was built before the job");
    for (i, prepared) in [true, false, true].into_iter().enumerate() {
        if prepared {
            d.prepare_instance();
        }
        let (f, s, _) = run(&d, &format!("tenant {i} writes more"));
        assert_eq!((f, s), (1.0, sum), "job {i} (prepared: {prepared}) saw an earlier job's write or no snapshot");
    }

    // Not pre-initialized: the same table, built in the job, for more fuel.
    let wasi = wasi_misbehave(&rt);
    let (lazy_flag, lazy_sum, lazy_fuel) = run(&wasi, "tenant b");
    assert_eq!((lazy_flag, lazy_sum), (0.0, sum), "built lazily, same table");
    // Building the table (≈ 1.8 M instructions at build time) is no longer
    // the job's: each build's `preinit` job against its own empty job.
    let ok_fuel = |d: &mote_runtime::Deployment| d.run(&mode("ok")).receipt.usage.fuel;
    let (own, lazy_own) = (fuel - ok_fuel(&d), lazy_fuel - ok_fuel(&wasi));
    assert!(lazy_own > own + 1_000_000, "job's own fuel: pre-initialized {own}, lazy {lazy_own}");
    still_serves(&rt);
}
