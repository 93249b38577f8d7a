//! Whole models on the wgpu backend: the generated ResNet-style CNN, the
//! transformer encoder and the MLP equal ONNX Runtime (the Python
//! reference made by scripts/make_models.py, and the Rust ORT backend on
//! the same inputs); jobs pinned to wgpu run guests end to end, graph
//! builder included, and their receipts name the adapter.

#![cfg(feature = "wgpu")]

mod common;

use common::*;
use mote_runtime::backend::{standalone, BackendChoice, BackendKind, DirectInputs};
use mote_runtime::{kserve, Outcome, Request};

fn model_matches(name: &str) {
    let got = run_direct(BackendKind::Wgpu, name, 1);
    // Against the Python onnxruntime reference...
    assert_outputs_match(&got, &expected_json(name), 1e-4, 1e-5);
    // ...and against the Rust ORT backend on the same inputs.
    let ort = run_direct(BackendKind::OrtCpu, name, 1);
    assert_outputs_match(&got, &ort, 1e-4, 1e-5);
}

#[test]
fn cnn_equals_onnxruntime() {
    model_matches("cnn");
}

#[test]
fn transformer_encoder_equals_onnxruntime() {
    model_matches("transformer");
}

#[test]
fn mlp_equals_onnxruntime() {
    model_matches("mlp");
}

/// Weights go up once, at load; a run uploads its inputs and nothing else.
#[test]
fn weights_are_uploaded_once_per_graph() {
    use mote_runtime::backend::wgpu::uploaded_bytes_on_this_thread as uploaded;
    let backend = standalone(BackendKind::Wgpu).expect("wgpu");
    let bytes = model("cnn");
    let before = uploaded();
    let graph = backend.load(bytes.clone().into()).expect("load cnn");
    let at_load = uploaded() - before;
    assert!(at_load > 100_000, "the CNN's weights ({at_load} bytes uploaded at load)");
    let req = request("cnn");
    let direct = DirectInputs::new(&req).unwrap();
    let views = direct.views();
    let input_bytes: u64 = req.inputs.iter().map(|t| t.data.len() as u64).sum();
    let mut ctx = graph.init_execution_context().unwrap();
    for run in 0..2 {
        let before = uploaded();
        ctx.compute(&views, None).expect("run");
        assert_eq!(uploaded() - before, input_bytes, "run {run} uploaded more than its inputs");
    }
    // A second context on the same graph shares the weights too.
    let mut other = graph.init_execution_context().unwrap();
    let before = uploaded();
    other.compute(&views, None).expect("run");
    assert_eq!(uploaded() - before, input_bytes);
}

#[test]
fn jobs_pinned_to_wgpu_run_guests_and_name_the_adapter() {
    let rt = runtime();
    let adapter = mote_runtime::backend::wgpu::WgpuBackend::new().expect("wgpu adapter").adapter().clone();
    let wgpu = BackendChoice::Fixed(BackendKind::Wgpu);

    // wasi-nn load-by-name through the passthrough guest.
    let d = deploy_on(&rt, "passthrough", &[("model", "cnn")], wgpu, None);
    let report = d.run(&request("cnn"));
    let response = report.result.unwrap_or_else(|e| panic!("cnn job on wgpu failed: {e}"));
    assert_eq!(report.receipt.outcome, Outcome::Ok);
    assert_eq!(report.receipt.backend, "wgpu");
    assert!(
        report.receipt.device.contains(&adapter.name) && report.receipt.device.contains(&adapter.api),
        "receipt device {:?} should name adapter {adapter:?}",
        report.receipt.device
    );
    assert!(report.receipt.usage.backend_ns > 0);
    let got = kserve::response_json(&response, None).unwrap();
    assert_outputs_match(&got, &expected_json("cnn"), 1e-4, 1e-5);

    // Graph builder: the MLP declared op by op, lowered, run on wgpu.
    let d = deploy_on(&rt, "mlp-builder", &[], wgpu, None);
    let report = d.run(&request("mlp_builder"));
    let got = kserve::response_json(&report.result.expect("mlp-builder on wgpu"), None).unwrap();
    assert_outputs_match(&got, &expected_json("mlp_builder"), 1e-4, 1e-6);
    assert_eq!(report.receipt.backend, "wgpu");

    // wasi-nn load with target gpu (ONNX bytes embedded in the guest).
    let d = deploy_on(&rt, "classifier", &[], wgpu, None);
    let req: Request = with_params(request("classifier"), &[("target", "gpu")]);
    let report = d.run(&req);
    let got = kserve::response_json(&report.result.expect("classifier on wgpu"), None).unwrap();
    assert_outputs_match(&got, &expected_json("classifier"), 1e-4, 1e-6);
}

#[test]
fn auto_never_picks_a_software_adapter() {
    let rt = runtime();
    let (kind, device) = rt.backend_device(BackendChoice::Auto).expect("auto resolves");
    let hardware = mote_runtime::backend::wgpu::has_hardware_adapter();
    if !hardware && kind != BackendKind::OrtCuda {
        assert_eq!(kind, BackendKind::OrtCpu, "auto chose {kind} ({device}) on a machine without a hardware adapter");
    } else {
        // With a GPU, auto must use it.
        assert!(kind.is_gpu(), "auto chose {kind} ({device}) on a machine with a GPU");
    }
    // A gpu-target load under auto without CUDA or a hardware adapter is an
    // error that says why, not a silent llvmpipe (or CPU) run.
    if !hardware && rt.backend_device(BackendChoice::Fixed(BackendKind::OrtCuda)).is_err() {
        let d = deploy_on(&rt, "classifier", &[], BackendChoice::Auto, None);
        let report = d.run(&with_params(request("classifier"), &[("target", "gpu")]));
        let err = report.result.expect_err("gpu target without a GPU");
        assert!(err.to_string().contains("no hardware wgpu adapter"), "{err}");
    }
}

/// The graph builder's `supports(op, target)` answers for the backend the
/// job would run on: wgpu's op list on a wgpu deployment, all of ONNX on ORT.
#[test]
fn supports_answers_for_the_jobs_backend() {
    let rt = runtime();
    let ask = |backend: BackendChoice, target: &str| -> Vec<i64> {
        let d = deploy_on(&rt, "misbehave", &[], backend, None);
        let req = Request {
            inputs: vec![],
            parameters: vec![
                ("mode".into(), "supports".into()),
                ("ops".into(), "Conv,Einsum,LayerNormalization,NonMaxSuppression,NoSuchOp".into()),
                ("target".into(), target.into()),
            ],
        };
        let r = d.run(&req).result.expect("supports job");
        r.outputs[0].data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
    };
    assert_eq!(ask(BackendChoice::Fixed(BackendKind::Wgpu), "gpu"), [1, 0, 1, 0, 0]);
    assert_eq!(ask(BackendChoice::Fixed(BackendKind::OrtCpu), "cpu"), [1, 1, 1, 1, 0]);
    // ORT CPU cannot honour target gpu: nothing is supported there.
    assert_eq!(ask(BackendChoice::Fixed(BackendKind::OrtCpu), "gpu"), [0, 0, 0, 0, 0]);
}

/// The device is opened with the adapter's own limits, not wgpu's
/// defaults: a model whose one weight is 150 MB loads and computes what
/// ONNX Runtime computes where the adapter's storage-buffer limit allows
/// it (real GPUs: 2–4 GiB); where it does not (llvmpipe reports 128 MiB)
/// the load is refused with the limit named, never a crash.
#[test]
fn a_model_with_a_150_mb_weight_loads_where_the_adapter_allows_it() {
    use mote_runtime::backend::TensorView;
    use mote_runtime::onnx_proto as pb;
    use mote_runtime::tensor::ElementType;
    use prost::Message;
    let (k, n) = (37_500usize, 1_000usize); // 150 MB of float32
    let weights: Vec<u8> = (0..k * n).flat_map(|i| (((i * 7919) % 2003) as f32 / 2003.0 - 0.5).to_le_bytes()).collect();
    let vi = |name: &str, dims: &[i64]| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            tensor_type: Some(pb::TypeProtoTensor {
                elem_type: pb::data_type::FLOAT,
                shape: Some(pb::TensorShapeProto {
                    dim: dims.iter().map(|&d| pb::Dimension { value: Some(pb::DimensionValue::DimValue(d)) }).collect(),
                }),
            }),
        }),
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        producer_name: "mote-tests".into(),
        producer_version: "0".into(),
        graph: Some(pb::GraphProto {
            node: vec![pb::NodeProto {
                input: vec!["x".into(), "w".into()],
                output: vec!["y".into()],
                name: "matmul".into(),
                op_type: "MatMul".into(),
                domain: String::new(),
                attribute: vec![],
            }],
            name: "big".into(),
            initializer: vec![pb::TensorProto {
                dims: vec![k as i64, n as i64],
                data_type: pb::data_type::FLOAT,
                name: "w".into(),
                raw_data: weights,
                ..Default::default()
            }],
            input: vec![vi("x", &[1, k as i64])],
            output: vec![vi("y", &[1, n as i64])],
        }),
    }
    .encode_to_vec();
    let x: Vec<u8> = (0..k).flat_map(|i| ((i % 13) as f32 / 13.0).to_le_bytes()).collect();
    let dims = [1u32, k as u32];
    let run = |kind: BackendKind| -> Result<Vec<f32>, mote_runtime::backend::BackendError> {
        let b = standalone(kind).unwrap();
        let g = b.load(model.clone().into())?;
        let mut ctx = g.init_execution_context().unwrap();
        let out = ctx.compute(&[("x", TensorView { ty: ElementType::F32, dims: &dims, data: &x })], None).unwrap();
        Ok(out[0].1.data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
    };
    let ort = run(BackendKind::OrtCpu).expect("ORT loads a 150 MB weight");
    match run(BackendKind::Wgpu) {
        Ok(wgpu) => {
            for (i, (a, b)) in ort.iter().zip(&wgpu).enumerate() {
                assert!((a - b).abs() <= 1e-3 * a.abs().max(1.0), "y[{i}]: ort {a}, wgpu {b}");
            }
            eprintln!("the adapter holds a 150 MB buffer: loaded and equal to ORT");
        }
        Err(e) => {
            assert_eq!(e.kind, mote_runtime::backend::BackendErrorKind::Unsupported, "{e}");
            let limit: u64 = e
                .message
                .split("max_storage_buffer_binding_size of ")
                .nth(1)
                .and_then(|r| r.split(' ').next()?.parse().ok())
                .unwrap_or_else(|| panic!("the error does not name the limit: {}", e.message));
            assert!(limit < 150_000_000, "refused although the limit {limit} allows it: {}", e.message);
            eprintln!("the adapter's limit is {limit} bytes: refused with {}", e.message);
        }
    }
}
