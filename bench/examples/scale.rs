//! Jobs per second on 1 and 2 threads (profiling aid for the scaling figure;
//! with `GUEST=inference-loop PARAMS=runs=N`, for the in-guest inference loop).
use mote_runtime::{kserve, DeploymentSpec, Limits, Runtime, RuntimeConfig};
use std::time::Instant;

/// The allocator the `mote` binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let build = std::path::Path::new("build"); // run from the repository root
    let guest = std::env::var("GUEST").unwrap_or("passthrough".into());
    let model = std::env::var("MODEL").unwrap_or("mlp".into());
    let request = std::env::var("REQUEST").unwrap_or(model.clone());
    let rt = Runtime::new(RuntimeConfig { data_dir: None, ..RuntimeConfig::default() }).unwrap();
    let d = rt
        .deploy(DeploymentSpec {
            name: "p".into(),
            guest: std::fs::read(build.join(format!("guests/{guest}.wasm"))).unwrap(),
            models: match model.as_str() {
                "" => vec![],
                m => vec![("model".into(), std::fs::read(build.join(format!("models/{m}.onnx"))).unwrap())],
            },
            limits: Limits::default(),
            ..DeploymentSpec::default()
        })
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(build.join(format!("models/{request}.request.json"))).unwrap()).unwrap();
    let mut req = kserve::parse_request(&v).unwrap();
    // Request parameters as `k=v,k=v` (e.g. GUEST=inference-loop PARAMS=runs=1000).
    for kv in std::env::var("PARAMS").unwrap_or_default().split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').expect("PARAMS entries are k=v");
        req.parameters.push((k.into(), v.into()));
    }
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20000);
    let threads: Vec<usize> =
        std::env::args().nth(2).map(|s| s.split(',').map(|x| x.parse().unwrap()).collect()).unwrap_or(vec![1, 2]);
    for _ in 0..200 {
        d.run(&req).result.unwrap();
    }
    for t in threads {
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..t {
                s.spawn(|| {
                    for _ in 0..n / t {
                        d.run(&req).result.unwrap();
                    }
                });
            }
        });
        let rate = n as f64 / start.elapsed().as_secs_f64();
        println!("{t} thread(s): {rate:.0} jobs/s");
    }
}
