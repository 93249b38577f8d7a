//! What the profiling examples share: the tiny MLP behind the passthrough
//! guest, and its KServe request, from `build/` (run from the repository
//! root after `make guests`).

use mote_runtime::{kserve, Deployment, DeploymentSpec, Limits, Request, Runtime, RuntimeConfig};
use std::sync::Arc;

/// The runtime (kept alive by the caller), the MLP deployment and its
/// request.
pub(crate) fn mlp_passthrough() -> (Runtime, Arc<Deployment>, Arc<Request>) {
    let build = std::path::Path::new("build");
    let rt = Runtime::new(RuntimeConfig { data_dir: None, ..RuntimeConfig::default() }).unwrap();
    let d = Arc::new(
        rt.deploy(DeploymentSpec {
            name: "p".into(),
            guest: std::fs::read(build.join("guests/passthrough.wasm")).unwrap(),
            models: vec![("model".into(), std::fs::read(build.join("models/mlp.onnx")).unwrap())],
            limits: Limits::default(),
            ..DeploymentSpec::default()
        })
        .unwrap(),
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(build.join("models/mlp.request.json")).unwrap()).unwrap();
    let req = Arc::new(kserve::parse_request(&v).unwrap());
    (rt, d, req)
}
