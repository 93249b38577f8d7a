//! KServe v2 / Open Inference Protocol over HTTP(S) **(contract)**, with
//! Triton's binary tensor extension. See docs/serve.md.

use crate::node::{Node, NodeError};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mote_runtime::{kserve, JobReport, Outcome};
use serde_json::{json, Value};
use std::sync::Arc;

/// Header of Triton's binary extension: length of the JSON part.
pub(crate) const HEADER_LEN: &str = "inference-header-content-length";

pub(crate) fn router(node: Arc<Node>, max_body: usize) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(|| async { Json(json!({"live": true})) }))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/metrics", get(metrics))
        .fallback(|uri: axum::http::Uri| async move { error(StatusCode::NOT_FOUND, format!("no route {uri}")) })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(node)
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({"error": msg.into()}))).into_response()
}

impl IntoResponse for NodeError {
    fn into_response(self) -> Response {
        let status = match &self {
            NodeError::Unauthorized => StatusCode::UNAUTHORIZED,
            NodeError::NotFound(_) => StatusCode::NOT_FOUND,
            NodeError::Busy(..) | NodeError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            NodeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            NodeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut r = error(status, self.to_string());
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

async fn server_metadata(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    match node.authorize(bearer(&headers)) {
        Ok(caller) => Json(json!({
            "name": "mote",
            "version": env!("CARGO_PKG_VERSION"),
            "extensions": ["binary_tensor_data"],
            "models": node.visible(&caller),
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn ready(State(node): State<Arc<Node>>) -> Response {
    if node.ready() {
        Json(json!({"ready": true})).into_response()
    } else {
        let failed: Vec<Value> = node.failed.iter().map(|(n, e)| json!({"deployment": n, "error": e})).collect();
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"ready": false, "failed": failed}))).into_response()
    }
}

async fn model_ready(State(node): State<Arc<Node>>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    match node.authorize(bearer(&headers)).and_then(|c| node.lookup(&c, &name)) {
        Ok(_) => Json(json!({"name": name, "ready": true})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn model_metadata(State(node): State<Arc<Node>>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    let served = match node.authorize(bearer(&headers)).and_then(|c| node.lookup(&c, &name)) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    // The model named `model` (the passthrough contract), else the only one.
    let model = served.models.iter().find(|m| m.name == "model").or(match served.models.as_slice() {
        [one] => Some(one),
        _ => None,
    });
    let io = |list: &[mote_runtime::backend::TensorInfo]| -> Vec<Value> {
        list.iter()
            .map(|t| json!({"name": t.name, "datatype": t.datatype.map(|d| d.as_str()), "shape": t.shape}))
            .collect()
    };
    Json(json!({
        "name": name,
        "versions": ["1"],
        "platform": "mote-wasm",
        "inputs": model.map(|m| io(&m.inputs)).unwrap_or_default(),
        "outputs": model.map(|m| io(&m.outputs)).unwrap_or_default(),
        "parameters": {"guest_sha256": served.deployment.guest_sha256()},
    }))
    .into_response()
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], node.metrics_text()).into_response()
}

/// Splits a body into its JSON header and binary tail.
pub(crate) fn split_body<'a>(body: &'a [u8], header_len: Option<&str>) -> Result<(Value, &'a [u8]), String> {
    let n = match header_len {
        Some(v) => v.trim().parse::<usize>().map_err(|_| format!("{HEADER_LEN} '{v}' is not a number"))?,
        None => body.len(),
    };
    if n > body.len() {
        return Err(format!("{HEADER_LEN} {n} is larger than the body ({} bytes)", body.len()));
    }
    let v = serde_json::from_slice(&body[..n]).map_err(|e| format!("request is not valid JSON: {e}"))?;
    Ok((v, &body[n..]))
}

/// A job's usage as response parameters, plus the signed receipt.
pub(crate) fn usage_parameters(report: &JobReport) -> Value {
    let r = &report.receipt;
    json!({
        "mote_outcome": r.outcome.as_str(),
        "mote_fuel": r.usage.fuel,
        "mote_wall_ns": r.usage.wall_ns,
        "mote_backend_ns": r.usage.backend_ns,
        "mote_backend": r.backend,
        "mote_device": r.device,
        "mote_price_units": r.price_units,
        "mote_receipt": serde_json::to_string(r).expect("receipt serialises"),
    })
}

/// HTTP status for a failed job.
pub(crate) fn outcome_status(o: Outcome) -> StatusCode {
    match o {
        Outcome::InvalidInput => StatusCode::BAD_REQUEST,
        Outcome::Deadline => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn infer(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let served = match node.authorize(bearer(&headers)).and_then(|c| node.lookup(&c, &name)) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let body = match body {
        Ok(b) => b,
        // Too large, or the connection broke: the same JSON error shape.
        Err(e) => return error(e.status(), format!("reading the request body: {}", e.body_text())),
    };
    let header_len = headers.get(HEADER_LEN).and_then(|v| v.to_str().ok());
    let (json_header, binary) = match split_body(&body, header_len) {
        Ok(x) => x,
        Err(e) => return NodeError::BadRequest(e).into_response(),
    };
    let request = match kserve::parse_request_with_binary(&json_header, binary) {
        Ok(r) => r,
        Err(e) => return NodeError::BadRequest(e).into_response(),
    };
    let (want_binary, only) = kserve::output_preferences(&json_header);
    let report = match node.infer(served, request).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let params = usage_parameters(&report);
    let response = match &report.result {
        Ok(r) => r,
        Err(e) => {
            let status = outcome_status(e.outcome);
            let body = json!({"error": e.message, "outcome": e.outcome.as_str(), "parameters": params});
            return (status, Json(body)).into_response();
        }
    };
    let (mut v, tail) = match kserve::response_json_binary(response, Some(&name), &*want_binary, only.as_deref()) {
        Ok(x) => x,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if let Some(id) = json_header.get("id") {
        v["id"] = id.clone();
    }
    let obj = v.as_object_mut().expect("response is an object");
    let p = obj.entry("parameters").or_insert_with(|| json!({}));
    if let (Some(p), Some(extra)) = (p.as_object_mut(), params.as_object()) {
        p.extend(extra.clone());
    }
    let json_bytes = serde_json::to_vec(&v).expect("response serialises");
    if tail.is_empty() {
        return ([(header::CONTENT_TYPE, "application/json")], json_bytes).into_response();
    }
    let len = json_bytes.len();
    let mut body = json_bytes;
    body.extend_from_slice(&tail);
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (HEADER_LEN.parse().unwrap(), len.to_string()),
        ],
        body,
    )
        .into_response()
}
