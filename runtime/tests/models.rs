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
fn a_guest_looping_over_a_large_input_gets_the_same_answer_every_run() {
    // From the second run on, the CNN's 600 KB input is copied into the
    // buffer of the tensor dropped by the run before (host/nn/spare.rs):
    // the last run's outputs must still be the model's answer.
    let rt = runtime();
    let d = deploy(&rt, "inference-loop", &[("model", "cnn")], Limits::default());
    let report = d.run(&with_params(request("cnn"), &[("runs", "3")]));
    let mut response = report.result.expect("inference-loop job");
    response.outputs.pop().expect("latency_ns output");
    let got = kserve::response_json(&response, None).unwrap();
    assert_outputs_match(&got, &expected_json("cnn"), 1e-4, 1e-5);
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

/// The classifier takes a JPEG or PNG file (BYTES) and decodes it inside
/// the sandbox: a PNG of the reference image gives exactly the raw-RGB
/// answer, a JPEG of it the same top class; corrupt files, other formats
/// and decompression bombs are `invalid_input`, and the guest keeps working.
#[test]
fn the_classifier_decodes_jpeg_and_png_in_the_sandbox() {
    use mote_runtime::tensor::{join_bytes_elements, Datatype, IoTensor};
    use mote_runtime::Request;
    let rt = runtime();
    let d = deploy(&rt, "classifier", &[], Limits::default());
    let raw = request("classifier");
    let img = &raw.inputs[0];
    let (h, w) = (img.shape[0] as u32, img.shape[1] as u32);
    let rgb = image::RgbImage::from_raw(w, h, img.data.clone()).expect("reference image is HWC RGB");
    let encode = |format: image::ImageFormat| {
        let mut out = std::io::Cursor::new(Vec::new());
        rgb.write_to(&mut out, format).unwrap();
        out.into_inner()
    };
    let file_request = |bytes: &[u8]| Request {
        inputs: vec![IoTensor { name: "image".into(), datatype: Datatype::Bytes, shape: vec![1], data: join_bytes_elements([bytes]) }],
        parameters: raw.parameters.clone(),
    };
    let want = d.run(&raw).result.expect("raw RGB");
    let png = d.run(&file_request(&encode(image::ImageFormat::Png))).result.expect("PNG");
    assert_eq!(png.outputs, want.outputs, "a lossless PNG classifies exactly like its raw pixels");
    // JPEG is lossy (and this picture's top two classes are 0.001 apart):
    // the same five classes, each score within 0.05.
    let jpeg = d.run(&file_request(&encode(image::ImageFormat::Jpeg))).result.expect("JPEG");
    let scored = |r: &mote_runtime::Response| -> std::collections::BTreeMap<i64, f32> {
        let idx = r.outputs.iter().find(|t| t.name == "indices").unwrap();
        let sc = r.outputs.iter().find(|t| t.name == "scores").unwrap();
        idx.data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .zip(sc.data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())))
            .collect()
    };
    let (a, b) = (scored(&jpeg), scored(&want));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "JPEG top-5 classes");
    assert!(a.iter().all(|(k, v)| (v - b[k]).abs() < 0.05), "JPEG scores {a:?} vs {b:?}");

    let mut truncated = encode(image::ImageFormat::Png);
    truncated.truncate(truncated.len() / 2);
    // A PNG whose header claims 60000×60000 pixels (10 GB of RGB).
    let mut bomb = encode(image::ImageFormat::Png);
    bomb[16..20].copy_from_slice(&60000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&60000u32.to_be_bytes());
    let crc = crc32(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    for (what, bytes, words) in [
        ("truncated PNG", truncated, "decoding"),
        ("not an image", b"hello, world".to_vec(), "not a JPEG or PNG"),
        ("GIF", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec(), "JPEG and PNG are supported"),
        ("decompression bomb", bomb, "decoding"),
    ] {
        let r = d.run(&file_request(&bytes));
        assert_eq!(r.receipt.outcome, Outcome::InvalidInput, "{what}");
        let msg = r.result.unwrap_err().message;
        assert!(msg.contains(words), "{what}: {msg}");
    }
    assert_eq!(d.run(&raw).result.expect("still serving").outputs, want.outputs);
}

/// CRC-32 (ISO-HDLC) of a PNG chunk's type and data.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}
