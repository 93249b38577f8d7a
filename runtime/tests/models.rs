//! The passthrough guest and the example guests produce what ONNX Runtime
//! itself produces (references made by scripts/make_models.py with the
//! Python `onnxruntime` on the same inputs).

mod common;

use common::*;
use mote_runtime::{kserve, Limits, Outcome};

fn passthrough_matches(model_name: &str, rtol: f64, atol: f64) {
    let rt = runtime();
    let d = deploy(&rt, "passthrough", &[("model", model_name)], Limits::default());
    let report = d.run(&request(model_name));
    let response = report.result.unwrap_or_else(|e| panic!("{model_name}: job failed: {e}"));
    assert_eq!(report.receipt.outcome, Outcome::Ok);
    let got = kserve::response_json(&response, None).unwrap();
    assert_outputs_match(&got, &expected_json(model_name), rtol, atol);
}

#[test]
fn passthrough_mlp_equals_onnxruntime() {
    passthrough_matches("mlp", 1e-5, 1e-6);
}

#[test]
fn passthrough_cnn_equals_onnxruntime() {
    passthrough_matches("cnn", 1e-4, 1e-6);
}

#[test]
fn passthrough_transformer_equals_onnxruntime() {
    passthrough_matches("transformer", 1e-4, 1e-5);
}

#[test]
fn every_tensor_type_round_trips() {
    // FP16, FP32, FP64, BF16, UINT8, INT32, INT64 and BOOL (as U8) in and out.
    passthrough_matches("types", 0.0, 0.0);
}

#[test]
fn inference_loop_times_every_run_and_returns_the_model_outputs() {
    // The benchmark's in-guest timing: the same outputs as passthrough, plus
    // one positive latency per run, each within the job's own wall time.
    let rt = runtime();
    let d = deploy(&rt, "inference-loop", &[("model", "mlp")], Limits::default());
    let report = d.run(&with_params(request("mlp"), &[("runs", "5")]));
    let mut response = report.result.expect("inference-loop job");
    let latency = response.outputs.pop().expect("latency_ns output");
    assert_eq!((latency.name.as_str(), latency.shape.as_slice()), ("latency_ns", &[5u64][..]));
    let ns: Vec<u64> = latency.data.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
    assert!(ns.iter().all(|&t| t > 0 && t < report.receipt.usage.wall_ns), "latencies {ns:?}");
    assert_eq!(report.receipt.usage.bytes_in, 5 * request("mlp").inputs.iter().map(|t| t.data.len() as u64).sum::<u64>());
    let got = kserve::response_json(&response, None).unwrap();
    assert_outputs_match(&got, &expected_json("mlp"), 1e-5, 1e-6);

    let bad = d.run(&with_params(request("mlp"), &[("runs", "0")]));
    assert_eq!(bad.receipt.outcome, Outcome::InvalidInput);
    assert!(bad.result.unwrap_err().message.contains("runs='0'"));
}

#[test]
fn classifier_top5_equals_numpy_and_onnxruntime() {
    let rt = runtime();
    let d = deploy(&rt, "classifier", &[], Limits::default());
    let response = d.run(&request("classifier")).result.expect("classifier job");
    let got = kserve::response_json(&response, None).unwrap();
    assert_outputs_match(&got, &expected_json("classifier"), 1e-4, 1e-6);
    assert_eq!(response.parameters, vec![("input_size".to_string(), "180x240".to_string())]);
}

#[test]
fn mlp_builder_equals_the_same_network_run_natively() {
    let rt = runtime();
    let d = deploy(&rt, "mlp-builder", &[], Limits::default());
    let report = d.run(&request("mlp_builder"));
    let response = report.result.expect("mlp-builder job");
    let got = kserve::response_json(&response, None).unwrap();
    assert_outputs_match(&got, &expected_json("mlp_builder"), 1e-5, 1e-6);
    assert_eq!(report.receipt.usage.graphs_loaded, 1);
    assert_eq!(report.receipt.model_sha256.len(), 1, "the lowered graph is hashed into the receipt");
}
