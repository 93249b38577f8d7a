//! KServe v2 / Open Inference Protocol over HTTP(S) **(contract)**, with
//! Triton's binary tensor extension. See docs/serve.md.

use crate::node::{Node, NodeError};
use crate::intake::{read_body, IntakeError};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mote_runtime::{kserve, kserve_json, JobReport, Outcome};
use serde_json::{json, Value};
use base64::Engine as _;
use std::sync::Arc;

/// Header of Triton's binary extension: length of the JSON part.
pub(crate) const HEADER_LEN: &str = "inference-header-content-length";

/// Limits the REST transport applies before a job exists.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HttpLimits {
    /// Largest body.
    pub(crate) max_body: usize,
    /// Time to send the body once admitted.
    pub(crate) body_timeout: std::time::Duration,
}

#[derive(Clone)]
pub(crate) struct App {
    pub(crate) node: Arc<Node>,
    pub(crate) limits: HttpLimits,
}

pub(crate) fn router(node: Arc<Node>, limits: HttpLimits) -> Router {
    let app = App { node: node.clone(), limits };
    let infer_route = Router::new()
        .route("/v2/models/{name}/infer", post(infer))
        .merge(crate::openai::routes())
        .with_state(app);
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(|| async { Json(json!({"live": true})) }))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/metrics", get(metrics))
        .with_state(node)
        .merge(infer_route)
        .fallback(|uri: axum::http::Uri| async move { error(StatusCode::NOT_FOUND, format!("no route {uri}")) })
        .method_not_allowed_fallback(|method: axum::http::Method, uri: axum::http::Uri| async move {
            error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {}", uri.path()))
        })
}

pub(crate) fn error(status: StatusCode, msg: impl Into<String>) -> Response {
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

/// The bearer token, exactly as sent (no trimming: QUIC and HTTP compare
/// tokens the same way, byte for byte).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")
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

async fn metrics(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    if !node.may_read_metrics(bearer(&headers)) {
        // Indistinguishable from a node without metrics: tenants learn
        // nothing of other tenants' deployments.
        return error(StatusCode::NOT_FOUND, "no route /metrics");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], node.metrics_text()).into_response()
}

/// Splits a body into its JSON header and binary tail (Triton's
/// `Inference-Header-Content-Length`; without it the whole body is JSON).
fn split_body<'a>(body: &'a [u8], header_len: Option<&str>) -> Result<(&'a [u8], &'a [u8]), String> {
    let n = match header_len {
        Some(v) => v.parse::<usize>().map_err(|_| format!("{HEADER_LEN} '{v}' is not a number"))?,
        None => body.len(),
    };
    if n > body.len() {
        return Err(format!("{HEADER_LEN} {n} is larger than the body ({} bytes)", body.len()));
    }
    Ok(body.split_at(n))
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

impl IntakeError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            IntakeError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            IntakeError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            IntakeError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            IntakeError::Broken(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// `POST /v2/models/{name}/infer`. In this order, so that each step costs
/// a stranger only what the previous one allowed: the token (headers
/// only), the deployment, the declared length, a place in the queue, then
/// the body (bounded, under a deadline, counted in the node's body
/// budget), and the parse on a job thread.
async fn infer(State(app): State<App>, Path(name): Path<String>, headers: HeaderMap, body: Body) -> Response {
    let node = &app.node;
    let served = match node.authorize(bearer(&headers)).and_then(|c| node.lookup(&c, &name)) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let max = app.limits.max_body;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return error(StatusCode::PAYLOAD_TOO_LARGE, IntakeError::TooLarge(max).to_string());
    }
    let header_len = match headers.get(HEADER_LEN).map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => Some(v.to_string()),
        Some(Err(_)) => {
            return NodeError::BadRequest(format!("{HEADER_LEN} is not an ASCII number")).into_response();
        }
    };
    let admitted = match node.admit(&served) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let mut share = node.body_budget.share();
    let mut body = body;
    // Room for the declared length (at most max_body, checked above) up
    // front: a large body is then copied once, not regrown a dozen times
    // into fresh, zeroed pages. Address space only: pages are touched, and
    // the body budget charged, as bytes arrive. Asked for, not demanded: a
    // host that refuses the reservation (strict overcommit) must not abort
    // the node over a client's declared length; the body then grows as it
    // arrives.
    let mut room = Vec::new();
    let _ = room.try_reserve_exact(declared.map_or(0, |n| n as usize));
    let bytes = match read_body(&mut body, room, max, &node.body_budget, &mut share, app.limits.body_timeout).await {
        Ok(b) => b,
        Err(e) => return error(e.status(), e.to_string()),
    };
    let decode = move || {
        let (json, binary) = split_body(&bytes, header_len.as_deref())?;
        let body = kserve_json::parse_infer_body(json, binary).map_err(|e| e.to_string())?;
        let (want_binary, only) = kserve::output_preferences(&body.header);
        Ok((body.request, (want_binary, only, body.header.get("id").cloned())))
    };
    if accepts_event_stream(&headers) {
        return infer_events(node, admitted, decode, name, share);
    }
    let report = node.run_admitted(admitted, decode).await;
    drop(share);
    let (report, (want_binary, only, id)) = match report {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let (json_bytes, tail) = match response_body(&report, &name, &*want_binary, only.as_deref(), id) {
        Ok(x) => x,
        Err((status, body)) => return (status, Json(body)).into_response(),
    };
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

/// Whether the client asked for server-sent events (`Accept:
/// text/event-stream`).
fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().any(|v| v.to_str().is_ok_and(|v| v.contains("text/event-stream")))
}

/// A finished job's KServe response (JSON header and binary tail), or the
/// status and body of its failure, with usage and receipt as parameters.
/// The JSON is written straight from the tensors (no value per element).
fn response_body(
    report: &JobReport,
    name: &str,
    want_binary: &dyn Fn(&str) -> bool,
    only: Option<&[String]>,
    id: Option<Value>,
) -> Result<(Vec<u8>, Vec<u8>), (StatusCode, Value)> {
    let params = usage_parameters(report);
    let response = match &report.result {
        Ok(r) => r,
        Err(e) => {
            let body = json!({"error": e.message, "outcome": e.outcome.as_str(), "parameters": params});
            return Err((outcome_status(e.outcome), body));
        }
    };
    let mut json = Vec::with_capacity(1024);
    let tail = kserve::write_response_json(
        &mut json,
        response,
        Some(name),
        want_binary,
        only,
        id.as_ref(),
        params.as_object(),
    )
    .map_err(|e| (StatusCode::BAD_REQUEST, json!({"error": e.to_string()})))?;
    Ok((json, tail))
}

type Preferences = (kserve::BinaryChoice, Option<Vec<String>>, Option<Value>);

/// `infer` answered as server-sent events (docs/serve.md): one `chunk`
/// event per chunk the guest streams, as it streams it, then one
/// `response` event (the KServe response, outputs as JSON) or one `error`
/// event. A client that goes away ends the job `cancelled`.
fn infer_events(
    node: &Arc<Node>,
    admitted: crate::node::Admitted,
    decode: impl FnOnce() -> Result<(mote_runtime::Request, Preferences), String> + Send + 'static,
    name: String,
    share: crate::intake::BodyShare,
) -> Response {
    let (rx, job) = node.spawn_streaming(admitted, decode);
    let events = futures_util::stream::unfold((Some(rx), Some(job), Some(share)), move |(rx, job, share)| {
        let name = name.clone();
        async move {
            if let Some(mut r) = rx {
                if let Some(c) = r.recv().await {
                    let data = match std::str::from_utf8(&c) {
                        Ok(text) => json!({"text": text}),
                        Err(_) => json!({"base64": base64::engine::general_purpose::STANDARD.encode(&c)}),
                    };
                    return Some((Ok::<_, std::convert::Infallible>(format!("event: chunk\ndata: {data}\n\n")), (Some(r), job, share)));
                }
            }
            let finished = job?.await;
            drop(share);
            let event = match finished {
                Ok(Ok((report, (_, only, id)))) => match response_body(&report, &name, &|_| false, only.as_deref(), id) {
                    Ok((json, _)) => format!("event: response\ndata: {}\n\n", String::from_utf8_lossy(&json)),
                    Err((_, body)) => format!("event: error\ndata: {body}\n\n"),
                },
                Ok(Err(e)) => format!("event: error\ndata: {}\n\n", json!({"error": e.to_string()})),
                Err(e) => format!("event: error\ndata: {}\n\n", json!({"error": e.to_string()})),
            };
            Some((Ok(event), (None, None, None)))
        }
    });
    ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], Body::from_stream(events))
        .into_response()
}
