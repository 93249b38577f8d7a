//! KServe v2 over gRPC **(contract: docs/serve.md)**: the
//! `inference.GRPCInferenceService` that Triton and KServe serve
//! (`proto/kserve_v2.proto`), with tonic over the node's TLS identity.
//!
//! Same tenants, tokens (`authorization: Bearer …` metadata), admission,
//! limits and receipts as REST. A request's tensors (typed `contents` or
//! `raw_input_contents`) become the binary form of Triton's REST extension
//! and go through the same KServe parser on a job thread; outputs come back
//! as `raw_output_contents`. `ModelStreamInfer` answers each request with
//! one response per chunk the guest streams (a `BYTES` output `chunk`,
//! parameter `mote_chunk`), then the final response
//! (`triton_final_response: true`), as Triton's decoupled models do.

use crate::http::usage_parameters;
use crate::node::{Node, NodeError};
use mote_runtime::{kserve, JobReport, Outcome};
use serde_json::{json, Value};
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The generated protocol types and service.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("inference");
}

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use pb::infer_parameter::ParameterChoice;
use pb::model_infer_request::InferInputTensor;
use pb::model_infer_response::InferOutputTensor;
use pb::{InferParameter, ModelInferRequest, ModelInferResponse, ModelStreamInferResponse};

/// The service, ready to be routed: messages bounded by `max_body`.
pub(crate) fn service(node: Arc<Node>, max_body: usize) -> GrpcInferenceServiceServer<Service> {
    GrpcInferenceServiceServer::new(Service { node })
        .max_decoding_message_size(max_body)
        .max_encoding_message_size(usize::MAX)
}

/// The service behind the node's intake, as an axum router: a unary
/// `ModelInfer` call is authenticated from its metadata, then its body is
/// read like a REST body — at most `max_body` (plus gRPC's 5-byte message
/// prefix), covered by the node's body budget, within `body_timeout` — and
/// its share of the budget is held until the call is answered (its job has
/// ended). A stranger without a valid token is refused before a byte of
/// body is read. Other calls go to tonic as they are (their messages are
/// small, or streamed: `ModelStreamInfer`'s requests are bounded one by
/// one by `max_body`).
pub(crate) fn router(node: Arc<Node>, max_body: usize, body_timeout: std::time::Duration) -> axum::Router {
    let intake = Intake { node: node.clone(), max_body, body_timeout };
    tonic::service::Routes::new(service(node, max_body))
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(intake, unary_intake))
}

#[derive(Clone)]
struct Intake {
    node: Arc<Node>,
    max_body: usize,
    body_timeout: std::time::Duration,
}

const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
/// gRPC's length prefix before each message (compressed flag + u32 length).
const MESSAGE_PREFIX: usize = 5;

async fn unary_intake(
    axum::extract::State(intake): axum::extract::State<Intake>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if req.uri().path() != MODEL_INFER {
        return next.run(req).await;
    }
    let token = req.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if let Err(e) = intake.node.authorize(token) {
        return Status::from(e).into_http();
    }
    let (parts, mut body) = req.into_parts();
    let node = &intake.node;
    let mut share = node.body_budget.share();
    let max = intake.max_body + MESSAGE_PREFIX;
    let bytes = match crate::intake::read_body(&mut body, Vec::new(), max, &node.body_budget, &mut share, intake.body_timeout)
        .await
    {
        Ok(b) => b,
        Err(e) => {
            let msg = e.to_string();
            return match e {
                crate::intake::IntakeError::TooLarge(_) => Status::resource_exhausted(msg),
                crate::intake::IntakeError::Busy => Status::unavailable(msg),
                crate::intake::IntakeError::Timeout(_) => Status::deadline_exceeded(msg),
                crate::intake::IntakeError::Broken(_) => Status::cancelled(msg),
            }
            .into_http();
        }
    };
    let response = next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await;
    drop(share);
    response
}

pub(crate) struct Service {
    node: Arc<Node>,
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        let msg = e.to_string();
        match e {
            NodeError::Unauthorized => Status::unauthenticated(msg),
            NodeError::NotFound(_) => Status::not_found(msg),
            NodeError::Busy(..) | NodeError::ShuttingDown => Status::unavailable(msg),
            NodeError::BadRequest(_) => Status::invalid_argument(msg),
            NodeError::Internal(_) => Status::internal(msg),
        }
    }
}

/// The bearer token from the call's metadata, exactly as sent.
fn bearer<T>(req: &Request<T>) -> Option<&str> {
    req.metadata().get("authorization")?.to_str().ok()?.strip_prefix("Bearer ")
}

fn param_json(p: &InferParameter) -> Value {
    match &p.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => json!(b),
        Some(ParameterChoice::Int64Param(i)) => json!(i),
        Some(ParameterChoice::StringParam(s)) => json!(s),
        Some(ParameterChoice::DoubleParam(d)) => json!(d),
        Some(ParameterChoice::Uint64Param(u)) => json!(u),
        None => Value::Null,
    }
}

fn param_of(v: &Value) -> InferParameter {
    let choice = match v {
        Value::Bool(b) => ParameterChoice::BoolParam(*b),
        Value::Number(n) if n.is_i64() => ParameterChoice::Int64Param(n.as_i64().unwrap_or_default()),
        Value::Number(n) if n.is_u64() => ParameterChoice::Uint64Param(n.as_u64().unwrap_or_default()),
        Value::Number(n) => ParameterChoice::DoubleParam(n.as_f64().unwrap_or_default()),
        Value::String(s) => ParameterChoice::StringParam(s.clone()),
        other => ParameterChoice::StringParam(other.to_string()),
    };
    InferParameter { parameter_choice: Some(choice) }
}

/// A typed `contents` field as the tensor's little-endian bytes (`BYTES`
/// elements as u32 length + bytes), the layout of `raw_input_contents`.
fn contents_bytes(t: &InferInputTensor) -> Result<Vec<u8>, String> {
    let c = t.contents.clone().unwrap_or_default();
    let le = |v: Vec<u8>| Ok(v);
    match t.datatype.as_str() {
        "BOOL" => le(c.bool_contents.iter().map(|&b| u8::from(b)).collect()),
        "INT8" => le(c.int_contents.iter().map(|&x| x as i8 as u8).collect()),
        "INT16" => le(c.int_contents.iter().flat_map(|&x| (x as i16).to_le_bytes()).collect()),
        "INT32" => le(c.int_contents.iter().flat_map(|x| x.to_le_bytes()).collect()),
        "INT64" => le(c.int64_contents.iter().flat_map(|x| x.to_le_bytes()).collect()),
        "UINT8" => le(c.uint_contents.iter().map(|&x| x as u8).collect()),
        "UINT16" => le(c.uint_contents.iter().flat_map(|&x| (x as u16).to_le_bytes()).collect()),
        "UINT32" => le(c.uint_contents.iter().flat_map(|x| x.to_le_bytes()).collect()),
        "UINT64" => le(c.uint64_contents.iter().flat_map(|x| x.to_le_bytes()).collect()),
        "FP32" => le(c.fp32_contents.iter().flat_map(|x| x.to_le_bytes()).collect()),
        "FP64" => le(c.fp64_contents.iter().flat_map(|x| x.to_le_bytes()).collect()),
        "BYTES" => le(mote_runtime::tensor::join_bytes_elements(c.bytes_contents.iter().map(Vec::as_slice))),
        other => Err(format!("input '{}': {other} tensors must be sent in raw_input_contents", t.name)),
    }
}

/// A gRPC request as the KServe JSON header (inputs with
/// `binary_data_size`) and the binary tail Triton's REST extension uses.
fn to_kserve(mut req: ModelInferRequest) -> Result<(Value, Vec<u8>), String> {
    if !req.raw_input_contents.is_empty() && req.raw_input_contents.len() != req.inputs.len() {
        return Err(format!(
            "raw_input_contents has {} entries for {} inputs",
            req.raw_input_contents.len(),
            req.inputs.len()
        ));
    }
    let mut raw = std::mem::take(&mut req.raw_input_contents);
    let mut tail = Vec::new();
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for (i, t) in req.inputs.iter().enumerate() {
        let bytes = if raw.is_empty() { contents_bytes(t)? } else { std::mem::take(&mut raw[i]) };
        inputs.push(json!({"name": t.name, "datatype": t.datatype, "shape": t.shape,
                           "parameters": {"binary_data_size": bytes.len()}}));
        tail.extend(bytes);
    }
    let params: serde_json::Map<String, Value> = req.parameters.iter().map(|(k, v)| (k.clone(), param_json(v))).collect();
    let mut header = json!({"id": req.id, "inputs": inputs, "parameters": params});
    if !req.outputs.is_empty() {
        header["outputs"] = req.outputs.iter().map(|o| json!({"name": o.name})).collect();
    }
    Ok((header, tail))
}

/// A finished job as a gRPC response (outputs raw), or its failure.
fn from_report(report: &JobReport, name: &str, id: &str, only: Option<&[String]>) -> Result<ModelInferResponse, Status> {
    let usage = usage_parameters(report);
    let resp = match &report.result {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("{}: {}", e.outcome, e.message);
            let mut status = match e.outcome {
                Outcome::InvalidInput => Status::invalid_argument(msg),
                Outcome::Deadline => Status::deadline_exceeded(msg),
                _ => Status::internal(msg),
            };
            // The failed job's receipt travels in the trailers.
            if let Ok(v) = usage["mote_receipt"].as_str().unwrap_or_default().parse() {
                status.metadata_mut().insert("mote-receipt", v);
            }
            return Err(status);
        }
    };
    let (header, tail) =
        kserve::response_json_binary(resp, Some(name), &|_| true, only).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let mut outputs = Vec::new();
    let mut raw = Vec::new();
    let mut at = 0usize;
    for o in header["outputs"].as_array().into_iter().flatten() {
        let n = o["parameters"]["binary_data_size"].as_u64().unwrap_or(0) as usize;
        raw.push(tail[at..at + n].to_vec());
        at += n;
        outputs.push(InferOutputTensor {
            name: o["name"].as_str().unwrap_or_default().into(),
            datatype: o["datatype"].as_str().unwrap_or_default().into(),
            shape: o["shape"].as_array().into_iter().flatten().filter_map(Value::as_i64).collect(),
            ..Default::default()
        });
    }
    let mut parameters: std::collections::HashMap<String, InferParameter> =
        resp.parameters.iter().map(|(k, v)| (k.clone(), param_of(&json!(v)))).collect();
    for (k, v) in usage.as_object().into_iter().flatten() {
        parameters.insert(k.clone(), param_of(v));
    }
    Ok(ModelInferResponse {
        model_name: name.into(),
        model_version: "1".into(),
        id: id.into(),
        parameters,
        outputs,
        raw_output_contents: raw,
    })
}

type Decoded = (mote_runtime::Request, (String, Option<Vec<String>>));

/// Authorizes and admits a request, and the closure that decodes it on a
/// job thread.
fn admit(
    node: &Arc<Node>,
    token: Option<&str>,
    req: ModelInferRequest,
) -> Result<(crate::node::Admitted, String, impl FnOnce() -> Result<Decoded, String> + Send + 'static), Status> {
    let served = node.authorize(token).and_then(|c| node.lookup(&c, &req.model_name))?;
    let admitted = node.admit(&served)?;
    let name = req.model_name.clone();
    let decode = move || {
        let id = req.id.clone();
        let (header, tail) = to_kserve(req)?;
        let request = kserve::parse_request_with_binary(&header, &tail).map_err(|e| e.to_string())?;
        let (_, only) = kserve::output_preferences(&header);
        Ok((request, (id, only)))
    };
    Ok((admitted, name, decode))
}

type ResponseStream = Pin<Box<dyn futures_util::Stream<Item = Result<ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<pb::ServerReadyRequest>) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse { ready: self.node.ready() }))
    }

    async fn model_ready(&self, req: Request<pb::ModelReadyRequest>) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let node = &self.node;
        node.authorize(bearer(&req)).and_then(|c| node.lookup(&c, &req.get_ref().name))?;
        Ok(Response::new(pb::ModelReadyResponse { ready: true }))
    }

    async fn server_metadata(
        &self,
        req: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        self.node.authorize(bearer(&req))?;
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "mote".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec!["binary_tensor_data".into()],
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let node = &self.node;
        let name = req.get_ref().name.clone();
        let served = node.authorize(bearer(&req)).and_then(|c| node.lookup(&c, &name))?;
        let model = served.models.iter().find(|m| m.name == "model").or(match served.models.as_slice() {
            [one] => Some(one),
            _ => None,
        });
        let io = |list: &[mote_runtime::backend::TensorInfo]| -> Vec<pb::model_metadata_response::TensorMetadata> {
            list.iter()
                .map(|t| pb::model_metadata_response::TensorMetadata {
                    name: t.name.clone(),
                    datatype: t.datatype.map(|d| d.as_str().to_string()).unwrap_or_default(),
                    shape: t.shape.clone(),
                })
                .collect()
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name,
            versions: vec!["1".into()],
            platform: "mote-wasm".into(),
            inputs: model.map(|m| io(&m.inputs)).unwrap_or_default(),
            outputs: model.map(|m| io(&m.outputs)).unwrap_or_default(),
        }))
    }

    async fn model_infer(&self, req: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let token = bearer(&req).map(str::to_string);
        let (admitted, name, decode) = admit(&self.node, token.as_deref(), req.into_inner())?;
        let (report, (id, only)) = self.node.run_admitted(admitted, decode).await?;
        from_report(&report, &name, &id, only.as_deref()).map(Response::new)
    }

    type ModelStreamInferStream = ResponseStream;

    async fn model_stream_infer(
        &self,
        req: Request<tonic::Streaming<ModelInferRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let token = bearer(&req).map(str::to_string);
        let mut inbound = req.into_inner();
        let node = self.node.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<ModelStreamInferResponse, Status>>(16);
        tokio::spawn(async move {
            // Requests of one stream run one after another, each answered
            // by its chunks and then its final response.
            while let Ok(Some(request)) = inbound.message().await {
                let id = request.id.clone();
                let fail = |msg: String| ModelStreamInferResponse { error_message: msg, infer_response: None };
                let (admitted, name, decode) = match admit(&node, token.as_deref(), request) {
                    Ok(x) => x,
                    Err(s) => {
                        if tx.send(Ok(fail(s.message().to_string()))).await.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                let (mut chunks, job) = node.spawn_streaming(admitted, decode);
                while let Some(c) = chunks.recv().await {
                    let mut parameters = std::collections::HashMap::new();
                    parameters.insert("mote_chunk".to_string(), param_of(&json!(true)));
                    parameters.insert("triton_final_response".to_string(), param_of(&json!(false)));
                    let chunk = ModelInferResponse {
                        model_name: name.clone(),
                        model_version: "1".into(),
                        id: id.clone(),
                        parameters,
                        outputs: vec![InferOutputTensor {
                            name: "chunk".into(),
                            datatype: "BYTES".into(),
                            shape: vec![1],
                            ..Default::default()
                        }],
                        raw_output_contents: vec![mote_runtime::tensor::join_bytes_elements([c.as_slice()])],
                    };
                    // A client that went away drops the receiver: the job
                    // ends `cancelled` at its next chunk.
                    if tx.send(Ok(ModelStreamInferResponse { error_message: String::new(), infer_response: Some(chunk) })).await.is_err() {
                        break;
                    }
                }
                drop(chunks);
                let last = match job.await {
                    Ok(Ok((report, (id, only)))) => match from_report(&report, &name, &id, only.as_deref()) {
                        Ok(mut r) => {
                            r.parameters.insert("triton_final_response".into(), param_of(&json!(true)));
                            ModelStreamInferResponse { error_message: String::new(), infer_response: Some(r) }
                        }
                        Err(s) => fail(s.message().to_string()),
                    },
                    Ok(Err(e)) => fail(e.to_string()),
                    Err(e) => fail(e.to_string()),
                };
                if tx.send(Ok(last)).await.is_err() {
                    return;
                }
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        Ok(Response::new(Box::pin(stream)))
    }
}
