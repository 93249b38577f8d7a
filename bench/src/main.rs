//! mote benchmarks (see issue "Benchmarks"): for now, the sandbox overhead
//! of the passthrough guest over the same model run by the runtime's ORT
//! backend directly, on the generated MLP. Prints one JSON line.

use mote_runtime::backend::{backend_for_bench, TensorView};
use mote_runtime::{kserve, DeploymentSpec, Limits, Runtime, RuntimeConfig};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../build");
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let model = std::fs::read(format!("{root}/models/mlp.onnx"))?;
    let guest = std::fs::read(format!("{root}/guests/passthrough.wasm"))?;
    let req_json: serde_json::Value = serde_json::from_slice(&std::fs::read(format!("{root}/models/mlp.request.json"))?)?;
    let request = kserve::parse_request(&req_json).map_err(anyhow::Error::msg)?;

    let rt = Runtime::new(RuntimeConfig { data_dir: None, ..RuntimeConfig::default() }).map_err(anyhow::Error::msg)?;
    let d = rt.deploy(DeploymentSpec {
        name: "bench".into(),
        guest,
        models: vec![("model".into(), model.clone())],
        limits: Limits::default(),
        ..DeploymentSpec::default()
    })?;

    // Native: the same ORT backend, no sandbox.
    let backend = backend_for_bench()?;
    let graph = backend.load(model.into())?;
    let mut ctx = graph.init_execution_context()?;
    let input = &request.inputs[0];
    let dims: Vec<u32> = input.shape.iter().map(|&d| d as u32).collect();
    let view = TensorView { ty: mote_runtime::tensor::ElementType::F32, dims: &dims, data: &input.data };

    let time = |f: &mut dyn FnMut()| {
        for _ in 0..20 {
            f();
        }
        let mut v: Vec<f64> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() * 99 / 100])
    };
    let (native_p50, native_p99) = time(&mut || {
        ctx.compute(&[("x", view)], None).expect("native run");
    });
    let (guest_p50, guest_p99) = time(&mut || {
        d.run(&request).result.expect("guest run");
    });
    println!(
        "{}",
        serde_json::json!({
            "model": "mlp", "runs": runs,
            "native_us": {"p50": native_p50, "p99": native_p99},
            "guest_us": {"p50": guest_p50, "p99": guest_p99},
            "ratio_p50": guest_p50 / native_p50,
        })
    );
    Ok(())
}
