//! Times inference from inside the sandbox: loads the deployment's model
//! named `model` once, runs it on the request's tensors `runs` times
//! (request parameter, default 1, at most 100000) exactly as `passthrough`
//! does (tensors into the host, compute, outputs back into the guest), and
//! times each run with the job's own clock (`mote:edge/usage`). Parameter
//! `abi` picks the host interface: `values` (default: one
//! `mote:edge/inference-io` call per run) or `wasi-nn` (a tensor resource
//! per input, `compute`, then type, dimensions, data and drop per output).
//!
//! Returns the last run's outputs plus `latency_ns` (UINT64, `[runs]`): the
//! per-inference cost of a running sandbox, without the per-job costs
//! (instantiation, model lookup, receipt) that a whole job adds. The
//! benchmark compares it with native ONNX Runtime.

use mote_sdk::{Graph, Handler, HandlerError, IoTensor, Request, RequestExt, Response};

struct InferenceLoop;

impl Handler for InferenceLoop {
    fn handle(request: Request) -> Result<Response, HandlerError> {
        let runs: u32 = match request.param("runs") {
            None => 1,
            Some(v) => v
                .parse()
                .ok()
                .filter(|n| (1..=100_000).contains(n))
                .ok_or_else(|| HandlerError::InvalidInput(format!("parameter runs='{v}': want 1 to 100000")))?,
        };
        let by_value = match request.param("abi") {
            None | Some("values") => true,
            Some("wasi-nn") => false,
            Some(other) => {
                return Err(HandlerError::InvalidInput(format!("parameter abi='{other}': want values or wasi-nn")))
            }
        };
        let model = Graph::by_name("model")?;
        let mut latencies = Vec::with_capacity(runs as usize);
        let mut outputs = Vec::new();
        for _ in 0..runs {
            let start = mote_sdk::usage().wall_ns;
            outputs = if by_value { model.run_io(&request.inputs)? } else { model.run_io_wasi_nn(&request.inputs)? };
            latencies.push(mote_sdk::usage().wall_ns - start);
        }
        let data = latencies.iter().flat_map(|ns| ns.to_le_bytes()).collect();
        outputs.push(IoTensor {
            name: "latency_ns".into(),
            datatype: mote_sdk::Datatype::Uint64,
            shape: vec![u64::from(runs)],
            data,
        });
        Ok(Response { outputs, parameters: vec![] })
    }
}

mote_sdk::export_handler!(InferenceLoop);
