//! Serves any ONNX model **(contract)**: loads the deployment's model named
//! `model`, feeds the request's tensors by name, returns every output by
//! name.

use mote_sdk::{Graph, Handler, HandlerError, Request, Response};

struct Passthrough;

impl Handler for Passthrough {
    fn handle(request: Request) -> Result<Response, HandlerError> {
        let model = Graph::by_name("model")?;
        let outputs = model.run_io(&request.inputs)?;
        Ok(Response { outputs, parameters: vec![] })
    }
}

mote_sdk::export_handler!(Passthrough);
