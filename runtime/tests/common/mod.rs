//! Shared helpers for the runtime's integration tests: where the built
//! guests and generated models live, and a runtime to run them on.

#![allow(dead_code, unreachable_pub)]

use mote_runtime::backend::BackendChoice;
use mote_runtime::{kserve, Deployment, DeploymentSpec, Limits, Request, Runtime, RuntimeConfig};
use std::path::PathBuf;

/// `build/` at the repository root (`make guests` fills it).
pub fn build_dir() -> PathBuf {
    std::env::var_os("MOTE_BUILD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../build")))
}

/// Says that `test` skipped its checks and why: on stderr, and as a line of
/// `build/test-skips.log`, which `scripts/test.sh` empties before the run
/// and prints after its summary, so a skip is never a silent pass (cargo
/// shows a passing test's stderr to no one).
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let line = format!("SKIPPED {test}: {why}");
    eprintln!("{line}");
    let log = build_dir().join("test-skips.log");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&log) {
        let _ = writeln!(f, "{}", line.replace('\n', " "));
    }
}

/// Reads a built artifact; a missing one is a setup problem, said plainly.
pub fn artifact(rel: &str) -> Vec<u8> {
    let path = build_dir().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!("{}: {e}. Run `make guests` (or `make test`) first to build guests and models.", path.display())
    })
}

pub fn guest(name: &str) -> Vec<u8> {
    artifact(&format!("guests/{name}.wasm"))
}

pub fn model(name: &str) -> Vec<u8> {
    artifact(&format!("models/{name}.onnx"))
}

pub fn request_json(name: &str) -> serde_json::Value {
    serde_json::from_slice(&artifact(&format!("models/{name}.request.json"))).expect("request JSON")
}

pub fn expected_json(name: &str) -> serde_json::Value {
    serde_json::from_slice(&artifact(&format!("models/{name}.expected.json"))).expect("expected JSON")
}

pub fn request(name: &str) -> Request {
    kserve::parse_request(&request_json(name)).expect("valid request")
}

pub fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig { data_dir: None, pool_instances: 16, ..RuntimeConfig::default() }).expect("runtime")
}

/// A deployment of `guest_name` with `models`, pinned to `backend`.
pub fn deploy_on(
    rt: &Runtime,
    guest_name: &str,
    models: &[(&str, &str)],
    backend: BackendChoice,
    batching: Option<mote_runtime::batching::BatchConfig>,
) -> Deployment {
    rt.deploy(DeploymentSpec {
        name: guest_name.into(),
        guest: guest(guest_name),
        models: models.iter().map(|(n, m)| (n.to_string(), model(m))).collect(),
        limits: Limits::default(),
        backend,
        batching,
    })
    .expect("deploy")
}

/// `r` with every float32 element of its first input shifted by `by`
/// (distinct jobs' inputs, for telling their rows apart).
pub fn shifted(r: &Request, by: f32) -> Request {
    let mut r = r.clone();
    let t = &mut r.inputs[0];
    t.data = t.data.chunks_exact(4).flat_map(|b| (f32::from_le_bytes(b.try_into().unwrap()) + by).to_le_bytes()).collect();
    r
}

/// Runs `requests` as concurrent jobs of `d`, started together (one
/// thread each, behind a barrier); the reports in request order.
pub fn run_together(d: &Deployment, requests: Vec<Request>) -> Vec<mote_runtime::JobReport> {
    let barrier = std::sync::Barrier::new(requests.len());
    std::thread::scope(|s| {
        let hs: Vec<_> = requests
            .into_iter()
            .map(|req| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    d.run_owned(req)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Runs a model's reference request directly on a backend (no guest),
/// `runs` times on one context; the last run's outputs as KServe JSON.
pub fn run_direct(kind: mote_runtime::backend::BackendKind, model_name: &str, runs: usize) -> serde_json::Value {
    use mote_runtime::backend::{standalone, DirectInputs};
    let backend = standalone(kind).unwrap_or_else(|e| panic!("{kind} backend: {e}"));
    let graph = backend.load(model(model_name).into()).unwrap_or_else(|e| panic!("{kind} load {model_name}: {e}"));
    let mut ctx = graph.init_execution_context().unwrap();
    let req = request(model_name);
    let direct = DirectInputs::new(&req).unwrap();
    let mut outs = Vec::new();
    for _ in 0..runs.max(1) {
        outs = ctx.compute(&direct.views(), None).unwrap_or_else(|e| panic!("{kind} compute {model_name}: {e}"));
    }
    let response = mote_runtime::Response {
        outputs: outs
            .into_iter()
            .map(|(name, t)| mote_runtime::tensor::IoTensor {
                name,
                datatype: t.ty.into(),
                shape: t.dims.iter().map(|&d| u64::from(d)).collect(),
                data: t.data,
            })
            .collect(),
        ..mote_runtime::Response::default()
    };
    kserve::response_json(&response, None).unwrap()
}

pub fn deploy(rt: &Runtime, guest_name: &str, models: &[(&str, &str)], limits: Limits) -> Deployment {
    rt.deploy(DeploymentSpec {
        name: guest_name.into(),
        guest: guest(guest_name),
        models: models.iter().map(|(n, m)| (n.to_string(), model(m))).collect(),
        limits,
        backend: BackendChoice::Auto,
        batching: None,
    })
    .expect("deploy")
}

pub fn with_params(mut r: Request, params: &[(&str, &str)]) -> Request {
    r.parameters.extend(params.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    r
}

/// Compares KServe outputs: same names, types and shapes; integers and
/// strings exact, floats within `rtol`/`atol`.
pub fn assert_outputs_match(got: &serde_json::Value, want: &serde_json::Value, rtol: f64, atol: f64) {
    let got_outs = got["outputs"].as_array().expect("outputs array");
    let want_outs = want["outputs"].as_array().expect("expected outputs array");
    assert_eq!(got_outs.len(), want_outs.len(), "number of outputs: got {got_outs:?}");
    for w in want_outs {
        let name = w["name"].as_str().unwrap();
        let g = got_outs.iter().find(|g| g["name"] == w["name"]).unwrap_or_else(|| panic!("missing output {name}"));
        assert_eq!(g["datatype"], w["datatype"], "datatype of {name}");
        assert_eq!(g["shape"], w["shape"], "shape of {name}");
        let (gd, wd) = (g["data"].as_array().unwrap(), w["data"].as_array().unwrap());
        assert_eq!(gd.len(), wd.len(), "element count of {name}");
        let mut worst = 0f64;
        for (i, (a, b)) in gd.iter().zip(wd).enumerate() {
            if let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) {
                let err = (x - y).abs();
                assert!(
                    err <= atol + rtol * y.abs(),
                    "{name}[{i}]: got {x}, ONNX Runtime gave {y} (|diff| {err:e} > {atol:e} + {rtol:e}*|ref|)"
                );
                worst = worst.max(err);
            } else {
                assert_eq!(a, b, "{name}[{i}]");
            }
        }
    }
}
