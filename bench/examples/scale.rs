//! Jobs per second on 1 and 2 threads (profiling aid for the scaling figure).
use mote_runtime::{kserve, DeploymentSpec, Limits, Runtime, RuntimeConfig};
use std::time::Instant;

fn main() {
    let build = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../build");
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
    let req = kserve::parse_request(&v).unwrap();
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
