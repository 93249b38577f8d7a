//! The `mote/1` QUIC protocol (docs/protocol.md): one bidirectional stream
//! per request, a compact binary frame around the same request/response
//! model as the REST API, tensors as raw bytes.

use crate::http::{outcome_status, usage_parameters};
use crate::intake::{read_body, ConnectionCap, IntakeError};
use crate::node::{Node, NodeError};
use anyhow::{bail, Context, Result};
use mote_runtime::{kserve, Request, Response};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;

/// ALPN protocol id.
pub(crate) const ALPN: &[u8] = b"mote/1";
const MAGIC: &[u8; 4] = b"MOTE";
const VERSION: u8 = 1;

/// Response status byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Status {
    Ok = 0,
    BadRequest = 1,
    Busy = 2,
    Unauthorized = 3,
    NotFound = 4,
    JobFailed = 5,
    Internal = 6,
}

impl Status {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Ok,
            1 => Self::BadRequest,
            2 => Self::Busy,
            3 => Self::Unauthorized,
            4 => Self::NotFound,
            5 => Self::JobFailed,
            6 => Self::Internal,
            _ => return None,
        })
    }
}

/// A decoded request frame.
#[derive(Debug, PartialEq)]
pub struct RequestFrame {
    /// The deployment asked for.
    pub deployment: String,
    /// The bearer token ("" for none).
    pub token: String,
    /// The request.
    pub request: Request,
}

fn put_str16(out: &mut Vec<u8>, s: &str) -> Result<()> {
    let len = u16::try_from(s.len()).context("string longer than 65535 bytes")?;
    out.extend(len.to_le_bytes());
    out.extend(s.as_bytes());
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            bail!("frame truncated: wanted {n} more bytes, {} left", self.0.len());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<usize> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]) as usize)
    }
    fn u32(&mut self) -> Result<usize> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    fn str16(&mut self) -> Result<String> {
        let n = self.u16()?;
        String::from_utf8(self.take(n)?.to_vec()).context("string is not UTF-8")
    }
}

/// Encodes a request: every input as binary data.
pub(crate) fn encode_request(deployment: &str, token: &str, req: &Request) -> Result<Vec<u8>> {
    let inputs: Vec<Value> = req
        .inputs
        .iter()
        .map(|t| {
            json!({"name": t.name, "datatype": t.datatype.as_str(), "shape": t.shape,
                   "parameters": {"binary_data_size": t.data.len()}})
        })
        .collect();
    let params: serde_json::Map<String, Value> =
        req.parameters.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    let header = serde_json::to_vec(&json!({"inputs": inputs, "parameters": params, "binary_data_output": true}))?;
    let mut out = Vec::with_capacity(header.len() + req.inputs.iter().map(|t| t.data.len()).sum::<usize>() + 64);
    out.extend(MAGIC);
    out.push(VERSION);
    put_str16(&mut out, deployment)?;
    put_str16(&mut out, token)?;
    out.extend(u32::try_from(header.len()).context("header too large")?.to_le_bytes());
    out.extend(header);
    for t in &req.inputs {
        out.extend(&t.data);
    }
    Ok(out)
}

/// Decodes a request frame (sans-IO: the server reads the bytes, this
/// only looks at them).
pub fn decode_request(frame: &[u8]) -> Result<RequestFrame> {
    let mut r = Reader(frame);
    if r.take(4)? != MAGIC {
        bail!("not a mote/1 frame (bad magic)");
    }
    let v = r.u8()?;
    if v != VERSION {
        bail!("unsupported frame version {v}");
    }
    let deployment = r.str16()?;
    let token = r.str16()?;
    let n = r.u32()?;
    let header: Value = serde_json::from_slice(r.take(n)?).context("request header is not valid JSON")?;
    let request = kserve::parse_request_with_binary(&header, r.0).map_err(anyhow::Error::msg)?;
    Ok(RequestFrame { deployment, token, request })
}

/// Encodes a response frame.
pub(crate) fn encode_response(status: Status, header: &Value, tail: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).expect("header serialises");
    let mut out = Vec::with_capacity(5 + h.len() + tail.len());
    out.push(status as u8);
    out.extend((h.len() as u32).to_le_bytes());
    out.extend(h);
    out.extend(tail);
    out
}

/// A decoded response frame.
#[derive(Debug)]
pub struct ResponseFrame {
    status: Status,
    /// The JSON header: outputs' metadata, parameters, or the error.
    pub header: Value,
    /// The outputs, when the job succeeded.
    pub response: Option<Response>,
}

/// Decodes a response frame; outputs come back as a [`Response`].
pub fn decode_response(frame: &[u8]) -> Result<ResponseFrame> {
    let mut r = Reader(frame);
    let status = Status::from_u8(r.u8()?).context("unknown status byte")?;
    let n = r.u32()?;
    let header: Value = serde_json::from_slice(r.take(n)?).context("response header is not valid JSON")?;
    let response = if status == Status::Ok {
        // Outputs carry binary_data_size exactly like request inputs do.
        let as_req = json!({"inputs": header["outputs"], "parameters": {}});
        let parsed = kserve::parse_request_with_binary(&as_req, r.0).map_err(anyhow::Error::msg)?;
        let parameters = kserve::parse_parameters(header.get("parameters")).map_err(anyhow::Error::msg)?;
        Some(Response { outputs: parsed.inputs, parameters })
    } else {
        None
    };
    Ok(ResponseFrame { status, header, response })
}

fn error_frame(e: &NodeError) -> Vec<u8> {
    let status = match e {
        NodeError::Unauthorized => Status::Unauthorized,
        NodeError::NotFound(_) => Status::NotFound,
        NodeError::Busy(..) | NodeError::ShuttingDown => Status::Busy,
        NodeError::BadRequest(_) => Status::BadRequest,
        NodeError::Internal(_) => Status::Internal,
    };
    encode_response(status, &json!({"error": e.to_string()}), &[])
}

/// The first fields of a request frame: enough to authenticate and admit
/// before the rest is read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FramePrefix {
    pub(crate) deployment: String,
    pub(crate) token: String,
}

/// Reads magic, version, deployment and token from the stream: at most
/// 5 + 2 × (2 + 65535) bytes, whatever the client sends after.
async fn read_prefix(recv: &mut quinn::RecvStream) -> Result<(FramePrefix, Vec<u8>)> {
    let mut raw = Vec::with_capacity(64);
    read_more(recv, &mut raw, 7).await?;
    if &raw[..4] != MAGIC {
        bail!("not a mote/1 frame (bad magic)");
    }
    if raw[4] != VERSION {
        bail!("unsupported frame version {}", raw[4]);
    }
    let deployment = read_str16(recv, &mut raw, 5).await?;
    let at = raw.len();
    read_more(recv, &mut raw, 2).await?;
    let token = read_str16(recv, &mut raw, at).await?;
    Ok((FramePrefix { deployment, token }, raw))
}

/// Appends exactly `n` bytes of the stream to `raw`.
async fn read_more(recv: &mut quinn::RecvStream, raw: &mut Vec<u8>, n: usize) -> Result<()> {
    let at = raw.len();
    raw.resize(at + n, 0);
    recv.read_exact(&mut raw[at..]).await.context("reading the frame header")
}

/// Reads the string whose u16 length is at `raw[len_at..len_at + 2]`.
async fn read_str16(recv: &mut quinn::RecvStream, raw: &mut Vec<u8>, len_at: usize) -> Result<String> {
    let n = u16::from_le_bytes([raw[len_at], raw[len_at + 1]]) as usize;
    let at = raw.len();
    read_more(recv, raw, n).await?;
    String::from_utf8(raw[at..].to_vec()).context("string is not UTF-8")
}

/// Limits the QUIC transport applies before a job exists.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QuicLimits {
    /// Largest frame.
    pub(crate) max_body: usize,
    /// Time to send a frame's first fields (deployment and token).
    pub(crate) header_timeout: std::time::Duration,
    /// Time to send the rest of the frame once admitted.
    pub(crate) body_timeout: std::time::Duration,
}

/// Serves one request stream: authenticates and admits from the frame's
/// first fields, and only then reads the rest (bounded, timed, counted in
/// the node's body budget); the rest is decoded on a job thread.
async fn serve_stream(node: Arc<Node>, mut send: quinn::SendStream, mut recv: quinn::RecvStream, limits: QuicLimits) {
    let out = handle_stream(&node, &mut recv, limits).await;
    // Whatever was not read is not wanted.
    let _ = recv.stop(0u32.into());
    if send.write_all(&out).await.is_ok() {
        let _ = send.finish();
        let _ = send.stopped().await;
    }
}

async fn handle_stream(node: &Arc<Node>, recv: &mut quinn::RecvStream, limits: QuicLimits) -> Vec<u8> {
    let (prefix, raw) = match tokio::time::timeout(limits.header_timeout, read_prefix(recv)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return error_frame(&NodeError::BadRequest(format!("{e:#}"))),
        Err(_) => {
            return error_frame(&NodeError::BadRequest(format!(
                "the frame's first fields did not arrive within {:?}",
                limits.header_timeout
            )))
        }
    };
    let token = (!prefix.token.is_empty()).then_some(prefix.token.as_str());
    let served = match node.authorize(token).and_then(|c| node.lookup(&c, &prefix.deployment)) {
        Ok(s) => s,
        Err(e) => return error_frame(&e),
    };
    let admitted = match node.admit(&served) {
        Ok(a) => a,
        Err(e) => return error_frame(&e),
    };
    let mut share = node.body_budget.share();
    let frame = match read_body(recv, raw, limits.max_body, &node.body_budget, &mut share, limits.body_timeout).await {
        Ok(f) => f,
        Err(e @ IntakeError::Busy) => return encode_response(Status::Busy, &json!({"error": e.to_string()}), &[]),
        Err(e) => return error_frame(&NodeError::BadRequest(e.to_string())),
    };
    let report = node.run_admitted(admitted, move || decode_request(&frame).map(|f| (f.request, ())).map_err(|e| format!("{e:#}"))).await;
    drop(share);
    let report = match report {
        Ok((r, ())) => r,
        Err(e) => return error_frame(&e),
    };
    let params = usage_parameters(&report);
    match &report.result {
        Ok(resp) => match kserve::response_json_binary(resp, Some(&prefix.deployment), &|_| true, None) {
            Ok((mut v, tail)) => {
                v["parameters"] = params;
                encode_response(Status::Ok, &v, &tail)
            }
            Err(e) => error_frame(&NodeError::Internal(e)),
        },
        Err(e) => encode_response(
            Status::JobFailed,
            &json!({"error": e.message, "outcome": e.outcome.as_str(), "http_status": outcome_status(e.outcome).as_u16(), "parameters": params}),
            &[],
        ),
    }
}

/// Accepts connections until the endpoint is closed: at most `cap`
/// connections at once (more are refused during the handshake).
pub(crate) async fn serve(endpoint: quinn::Endpoint, node: Arc<Node>, limits: QuicLimits, cap: ConnectionCap) {
    while let Some(incoming) = endpoint.accept().await {
        let Some(slot) = cap.try_take() else {
            tracing::debug!("QUIC connection refused: server.max_connections reached");
            incoming.refuse();
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!("QUIC handshake failed: {e}");
                    return;
                }
            };
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(serve_stream(node.clone(), send, recv, limits));
            }
        });
    }
}

/// Transport settings for both ends: windows sized for tensors (a
/// megabyte-sized request should not wait on flow control), `streams`
/// concurrent requests per connection, and an idle timeout: a connection
/// that sends nothing (not even keep-alives) for `idle` is closed. What one
/// connection can make the node buffer is bounded by its receive window.
fn transport(streams: u32, idle: std::time::Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(streams.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((16u32 << 20).into())
        .receive_window((64u32 << 20).into())
        .send_window(64 << 20)
        .max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    Arc::new(t)
}

/// Builds the server endpoint.
pub(crate) fn endpoint(
    addr: SocketAddr,
    identity: &crate::tls::Identity,
    streams: u32,
    idle: std::time::Duration,
) -> Result<quinn::Endpoint> {
    let tls = identity.server_config(&[ALPN])?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).context("TLS config for QUIC")?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport(streams, idle));
    quinn::Endpoint::server(cfg, addr).with_context(|| format!("binding QUIC on {addr}"))
}

/// A `mote/1` client that keeps one connection: after the first request no
/// request pays a handshake.
pub struct QuicClient {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

/// A reply from the node.
#[derive(Debug)]
pub struct Reply {
    /// The response, when the job succeeded.
    pub response: Option<Response>,
    /// The JSON header: outputs' metadata, parameters (usage, receipt) or
    /// the error.
    pub header: Value,
    status: Status,
}

impl Reply {
    /// Whether the job succeeded.
    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }
    /// Whether the node refused for load (the HTTP 503 of QUIC).
    pub fn is_busy(&self) -> bool {
        self.status == Status::Busy
    }
    /// The error message, if any.
    pub fn error(&self) -> Option<&str> {
        self.header.get("error").and_then(Value::as_str)
    }
}

impl QuicClient {
    /// Connects to `addr`, checking the server certificate per `trust`.
    pub async fn connect(addr: SocketAddr, server_name: &str, trust: &crate::tls::Trust) -> Result<Self> {
        let tls = crate::tls::client_config(trust, &[ALPN])?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).context("TLS config for QUIC")?;
        let bind: SocketAddr = if addr.is_ipv6() { "[::]:0".parse()? } else { "0.0.0.0:0".parse()? };
        let mut endpoint = quinn::Endpoint::client(bind)?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        // Keep-alives so a client waiting on a long job is never idle.
        let mut t = quinn::TransportConfig::default();
        t.stream_receive_window((16u32 << 20).into())
            .receive_window((64u32 << 20).into())
            .send_window(64 << 20)
            .keep_alive_interval(Some(std::time::Duration::from_secs(5)));
        client.transport_config(Arc::new(t));
        endpoint.set_default_client_config(client);
        let conn = endpoint.connect(addr, server_name)?.await.with_context(|| format!("QUIC handshake with {addr}"))?;
        Ok(Self { _endpoint: endpoint, conn })
    }

    /// Opens a bare stream on the connection, for tools and tests that
    /// write `mote/1` frames by hand (e.g. to send a frame's first fields
    /// and hold the rest).
    pub async fn open_stream(&self) -> Result<(quinn::SendStream, quinn::RecvStream)> {
        self.conn.open_bi().await.context("opening a QUIC stream")
    }

    /// Sends one request on a new stream of the open connection.
    pub async fn infer(&self, deployment: &str, token: &str, req: &Request) -> Result<Reply> {
        let frame = encode_request(deployment, token, req)?;
        let (mut send, mut recv) = self.conn.open_bi().await.context("opening a QUIC stream")?;
        send.write_all(&frame).await?;
        send.finish()?;
        let bytes = recv.read_to_end(1 << 30).await.context("reading the reply")?;
        let r = decode_response(&bytes)?;
        Ok(Reply { response: r.response, header: r.header, status: r.status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mote_runtime::tensor::{Datatype, IoTensor};

    #[test]
    fn request_frames_round_trip() {
        let req = Request {
            inputs: vec![
                IoTensor {
                    name: "x".into(),
                    datatype: Datatype::Fp32,
                    shape: vec![2],
                    data: vec![0, 0, 128, 63, 0, 0, 0, 64],
                },
                IoTensor {
                    name: "s".into(),
                    datatype: Datatype::Bytes,
                    shape: vec![1],
                    data: vec![2, 0, 0, 0, b'h', b'i'],
                },
            ],
            parameters: vec![("k".into(), "v".into())],
        };
        let frame = encode_request("mlp", "tok", &req).unwrap();
        let back = decode_request(&frame).unwrap();
        assert_eq!(back, RequestFrame { deployment: "mlp".into(), token: "tok".into(), request: req });
        assert!(decode_request(&frame[..frame.len() - 1]).is_err());
        assert!(decode_request(b"HTTP/1.1 200").unwrap_err().to_string().contains("bad magic"));
    }

    #[test]
    fn response_frames_round_trip() {
        let resp = Response {
            outputs: vec![IoTensor {
                name: "y".into(),
                datatype: Datatype::Int64,
                shape: vec![1],
                data: 7i64.to_le_bytes().to_vec(),
            }],
            parameters: vec![],
        };
        let (v, tail) = kserve::response_json_binary(&resp, None, &|_| true, None).unwrap();
        let frame = encode_response(Status::Ok, &v, &tail);
        let back = decode_response(&frame).unwrap();
        assert_eq!(back.status, Status::Ok);
        assert_eq!(back.response.unwrap().outputs, resp.outputs);
        let busy = decode_response(&encode_response(Status::Busy, &json!({"error": "busy"}), &[])).unwrap();
        assert_eq!((busy.status, busy.header["error"].as_str()), (Status::Busy, Some("busy")));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

            /// Any bytes, with or without a valid start: an error or a
            /// request, never a panic (the same runs longer in fuzz/).
            #[test]
            fn decoding_any_frame_never_panics(valid_start in any::<bool>(), body in prop::collection::vec(any::<u8>(), 0..256)) {
                let mut frame = if valid_start { b"MOTE\x01".to_vec() } else { Vec::new() };
                frame.extend(body);
                let _ = decode_request(&frame);
                let _ = decode_response(&frame);
            }

            /// Every prefix of a valid frame is refused (a truncated frame
            /// never decodes as a different request).
            #[test]
            fn truncated_frames_are_refused(data in prop::collection::vec(any::<u8>(), 0..64), cut in any::<prop::sample::Index>()) {
                let n = data.len() as u64;
                let req = Request {
                    inputs: vec![IoTensor { name: "x".into(), datatype: Datatype::Uint8, shape: vec![n], data }],
                    parameters: vec![],
                };
                let frame = encode_request("mlp", "token-1234", &req).unwrap();
                let at = cut.index(frame.len());
                prop_assert!(decode_request(&frame[..at]).is_err());
                prop_assert_eq!(decode_request(&frame).unwrap().request, req);
            }
        }
    }
}
