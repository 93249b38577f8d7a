//! OpenAI-compatible endpoints **(contract: docs/serve.md)**:
//! `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions`,
//! streamed (server-sent events) or not.
//!
//! A model name is a deployment name; tenants, tokens, admission and limits
//! are the KServe endpoint's. The request body goes to the guest unchanged,
//! as the `BYTES` tensor `request` (the `chat` guest's contract); the guest
//! streams text through `mote:edge/output` and answers with `text`,
//! `finish_reason`. `usage` is the host's token meter, the same numbers the
//! signed receipt carries (returned as `mote_receipt`).

use crate::http::{bearer, outcome_status, App};
use crate::intake::read_body;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mote_runtime::tensor::{join_bytes_elements, split_bytes_elements, Datatype, IoTensor};
use mote_runtime::{JobReport, Request};
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// The routes, for the HTTPS router.
pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(|s, h, b| complete(s, h, b, Kind::Chat)))
        .route("/v1/completions", post(|s, h, b| complete(s, h, b, Kind::Text)))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

/// An error in OpenAI's shape.
fn oai_error(status: StatusCode, message: impl Into<String>, kind: &str) -> Response {
    (status, Json(json!({"error": {"message": message.into(), "type": kind, "param": null, "code": null}})))
        .into_response()
}

async fn models(State(app): State<App>, headers: HeaderMap) -> Response {
    match app.node.authorize(bearer(&headers)) {
        Ok(caller) => {
            let data: Vec<Value> = app
                .node
                .visible(&caller)
                .into_iter()
                .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "mote"}))
                .collect();
            Json(json!({"object": "list", "data": data})).into_response()
        }
        Err(e) => oai_error(StatusCode::UNAUTHORIZED, e.to_string(), "invalid_request_error"),
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn complete(State(app): State<App>, headers: HeaderMap, body: Body, kind: Kind) -> Response {
    let node = &app.node;
    let caller = match node.authorize(bearer(&headers)) {
        Ok(c) => c,
        Err(e) => return oai_error(StatusCode::UNAUTHORIZED, e.to_string(), "invalid_request_error"),
    };
    let max = app.limits.max_body;
    let mut share = node.body_budget.share();
    let mut body = body;
    let bytes = match read_body(&mut body, Vec::new(), max, &node.body_budget, &mut share, app.limits.body_timeout).await {
        Ok(b) => b,
        Err(e) => return oai_error(e.status(), e.to_string(), "invalid_request_error"),
    };
    drop(share);
    let req: Value = match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => v,
        _ => return oai_error(StatusCode::BAD_REQUEST, "the body is not a JSON object", "invalid_request_error"),
    };
    let Some(model) = req.get("model").and_then(Value::as_str).map(str::to_string) else {
        return oai_error(StatusCode::BAD_REQUEST, "'model' is required", "invalid_request_error");
    };
    let field_ok = match kind {
        Kind::Chat => req.get("messages").is_some_and(Value::is_array),
        Kind::Text => req.get("prompt").is_some_and(Value::is_string),
    };
    if !field_ok {
        let want = if kind == Kind::Chat { "'messages' (an array)" } else { "'prompt' (a string)" };
        return oai_error(StatusCode::BAD_REQUEST, format!("{want} is required"), "invalid_request_error");
    }
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = req.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
    let served = match node.lookup(&caller, &model) {
        Ok(s) => s,
        Err(e) => return oai_error(StatusCode::NOT_FOUND, e.to_string(), "invalid_request_error"),
    };
    let admitted = match node.admit(&served) {
        Ok(a) => a,
        Err(e) => return oai_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), "server_error"),
    };
    let request = Request {
        inputs: vec![IoTensor {
            name: "request".into(),
            datatype: Datatype::Bytes,
            shape: vec![1],
            data: join_bytes_elements([bytes.as_slice()]),
        }],
        parameters: vec![],
    };
    let id = format!("{}-{}", if kind == Kind::Chat { "chatcmpl" } else { "cmpl" }, hex::encode(rand::random::<[u8; 12]>()));
    let created = now();
    if !stream {
        let ran = node.run_admitted(admitted, move || Ok((request, ()))).await;
        let report = match ran {
            Ok((r, ())) => r,
            Err(e) => return oai_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), "server_error"),
        };
        return match answer(&report) {
            Ok((text, finish)) => {
                let choice = match kind {
                    Kind::Chat => json!({"index": 0, "message": {"role": "assistant", "content": text},
                                         "finish_reason": finish, "logprobs": null}),
                    Kind::Text => json!({"index": 0, "text": text, "finish_reason": finish, "logprobs": null}),
                };
                let object = if kind == Kind::Chat { "chat.completion" } else { "text_completion" };
                Json(json!({"id": id, "object": object, "created": created, "model": model,
                            "choices": [choice], "usage": usage(&report),
                            "mote_receipt": report.receipt}))
                .into_response()
            }
            Err((status, msg)) => oai_error(status, msg, "server_error"),
        };
    }

    // Streaming: chunks from the job thread through a bounded channel (its
    // backpressure holds the guest); a client that goes away drops the
    // receiver and the job ends `cancelled` at its next chunk.
    let (rx, job) = node.spawn_streaming(admitted, move || Ok((request, ())));
    let object = if kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
    let chunk = {
        let (id, model) = (id.clone(), model.clone());
        move |delta: Value, finish: Value| -> String {
            let choice = match kind {
                Kind::Chat => json!({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}),
                Kind::Text => json!({"index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")),
                                     "finish_reason": finish, "logprobs": null}),
            };
            sse(&json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]}))
        }
    };
    let first = if kind == Kind::Chat { Some(chunk(json!({"role": "assistant", "content": ""}), Value::Null)) } else { None };
    let (id2, model2) = (id.clone(), model.clone());
    let events = futures_util::stream::unfold(
        (Some(rx), Some(job), first),
        move |(rx, job, first)| {
            let chunk = chunk.clone();
            let (id, model) = (id2.clone(), model2.clone());
            async move {
                if let Some(f) = first {
                    return Some((Ok::<_, std::convert::Infallible>(f), (rx, job, None)));
                }
                if let Some(mut r) = rx {
                    if let Some(c) = r.recv().await {
                        let text = String::from_utf8_lossy(&c).into_owned();
                        return Some((Ok(chunk(json!({"content": text}), Value::Null)), (Some(r), job, None)));
                    }
                }
                let job = job?;
                let mut out = String::new();
                match job.await {
                    Ok(Ok((report, ()))) => match answer(&report) {
                        Ok((_, finish)) => {
                            out.push_str(&chunk(json!({}), json!(finish)));
                            if include_usage {
                                out.push_str(&sse(&json!({"id": id, "object": object, "created": created,
                                    "model": model, "choices": [], "usage": usage(&report),
                                    "mote_receipt": report.receipt})));
                            }
                        }
                        Err((_, msg)) => out.push_str(&sse(&json!({"error": {"message": msg, "type": "server_error"},
                                                                  "mote_receipt": report.receipt}))),
                    },
                    Ok(Err(e)) => out.push_str(&sse(&json!({"error": {"message": e.to_string(), "type": "server_error"}}))),
                    Err(e) => out.push_str(&sse(&json!({"error": {"message": e.to_string(), "type": "server_error"}}))),
                }
                out.push_str("data: [DONE]\n\n");
                Some((Ok(out), (None, None, None)))
            }
        },
    );
    (
        [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")],
        Body::from_stream(events),
    )
        .into_response()
}

fn sse(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// OpenAI's `usage` from the receipt (the host's token meter).
fn usage(report: &JobReport) -> Value {
    let u = &report.receipt.usage;
    json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
           "total_tokens": u.prompt_tokens + u.completion_tokens})
}

/// The generated text and finish reason of a finished job, or the status
/// and message of its failure.
fn answer(report: &JobReport) -> Result<(String, String), (StatusCode, String)> {
    let r = report.result.as_ref().map_err(|e| (outcome_status(e.outcome), format!("{}: {}", e.outcome, e.message)))?;
    let text = r
        .outputs
        .iter()
        .find(|t| t.name == "text" && t.datatype == Datatype::Bytes)
        .and_then(|t| split_bytes_elements(&t.data).ok()?.first().map(|e| e.to_vec()))
        .ok_or_else(|| (StatusCode::INTERNAL_SERVER_ERROR, "the guest returned no 'text' output".to_string()))?;
    let finish = r.parameters.iter().find(|(k, _)| k == "finish_reason").map_or("stop", |(_, v)| v.as_str());
    Ok((String::from_utf8_lossy(&text).into_owned(), finish.to_string()))
}
