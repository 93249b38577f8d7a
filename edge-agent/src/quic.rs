//! The `mote/1` QUIC protocol (docs/protocol.md): one bidirectional stream
//! per request, a compact binary frame around the same request/response
//! model as the REST API, tensors as raw bytes.

use crate::http::{outcome_status, usage_parameters};
use crate::intake::{read_body, ConnectionCap, IntakeError};
use crate::node::{Node, NodeError};
use anyhow::{Context, Result};
use mote_runtime::mote1::{
    self, decode_request, decode_response, encode_request, encode_response, FramePrefix, ResponsePart, Status, ALPN,
};
use mote_runtime::{kserve, Request, Response};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;

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

/// Reads a frame's first fields (magic, version, deployment, token) from
/// the stream: at most [`mote1::MAX_PREFIX_BYTES`], whatever the client
/// sends after. Returns them with the bytes read so far.
async fn read_prefix(recv: &mut quinn::RecvStream) -> Result<(FramePrefix, Vec<u8>)> {
    let mut raw = Vec::with_capacity(64);
    loop {
        match mote1::decode_prefix(&raw)? {
            Ok(prefix) => return Ok((prefix, raw)),
            Err(need) => {
                let at = raw.len();
                raw.resize(at + need, 0);
                recv.read_exact(&mut raw[at..]).await.context("reading the frame header")?;
            }
        }
    }
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
    let out = handle_stream(&node, &mut send, &mut recv, limits).await;
    // Whatever was not read is not wanted.
    let _ = recv.stop(0u32.into());
    if send.write_all(&out).await.is_ok() {
        let _ = send.finish();
        let _ = send.stopped().await;
    }
}

async fn handle_stream(
    node: &Arc<Node>,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    limits: QuicLimits,
) -> Vec<u8> {
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
    // What the guest streams goes out as chunk frames while it runs; a
    // client that resets the stream drops the receiver, and the job ends
    // `cancelled` at its next chunk.
    let (mut chunks, job) =
        node.spawn_streaming(admitted, move || decode_request(&frame).map(|f| (f.request, ())).map_err(|e| e.to_string()));
    while let Some(c) = chunks.recv().await {
        if send.write_all(&mote1::encode_chunk(&c)).await.is_err() {
            break;
        }
    }
    drop(chunks);
    let report = job.await;
    drop(share);
    let report = match report {
        Ok(Ok((r, ()))) => r,
        Ok(Err(e)) => return error_frame(&e),
        Err(e) => return error_frame(&NodeError::Internal(e.to_string())),
    };
    let params = usage_parameters(&report);
    match &report.result {
        Ok(resp) => match kserve::response_json_binary(resp, Some(&prefix.deployment), &|_| true, None) {
            Ok((mut v, tail)) => {
                // The guest's own parameters, then the job's usage.
                let p = v.as_object_mut().expect("an object").entry("parameters").or_insert_with(|| json!({}));
                if let (Some(p), Value::Object(extra)) = (p.as_object_mut(), params) {
                    p.extend(extra);
                }
                encode_response(Status::Ok, &v, &tail)
            }
            Err(e) => error_frame(&NodeError::Internal(e.to_string())),
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
///
/// quinn drives the connection in tasks of the runtime it was connected
/// on. Await its requests in a task of that runtime or on a current-thread
/// runtime: awaited in a multi-threaded runtime's `block_on`, outside its
/// workers, each reply is handed from a worker to the waiting thread (≈ 60
/// µs a request on a 2-core VM; docs/benchmarks.md, "The client's
/// runtime").
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

    /// The connection's statistics (datagrams, frames by type, path MTU
    /// and round-trip time), as quinn counts them.
    pub fn stats(&self) -> quinn::ConnectionStats {
        self.conn.stats()
    }

    /// Opens a bare stream on the connection, for tools and tests that
    /// write `mote/1` frames by hand (e.g. to send a frame's first fields
    /// and hold the rest).
    pub async fn open_stream(&self) -> Result<(quinn::SendStream, quinn::RecvStream)> {
        self.conn.open_bi().await.context("opening a QUIC stream")
    }

    /// Sends one request on a new stream of the open connection; what the
    /// guest streams is dropped (the response still carries its results).
    pub async fn infer(&self, deployment: &str, token: &str, req: &Request) -> Result<Reply> {
        self.infer_streaming(deployment, token, req, |_| {}).await
    }

    /// Sends one request and hands each chunk the guest streams to
    /// `on_chunk` as it arrives, then returns the reply.
    pub async fn infer_streaming(
        &self,
        deployment: &str,
        token: &str,
        req: &Request,
        mut on_chunk: impl FnMut(&[u8]),
    ) -> Result<Reply> {
        let frame = encode_request(deployment, token, req)?;
        let (mut send, mut recv) = self.conn.open_bi().await.context("opening a QUIC stream")?;
        send.write_all(&frame).await?;
        send.finish()?;
        const MAX: usize = 1 << 30;
        let mut buf = Vec::new();
        loop {
            match mote1::peek_response(&buf, MAX)? {
                ResponsePart::NeedMore(n) => {
                    let at = buf.len();
                    buf.resize(at + n, 0);
                    recv.read_exact(&mut buf[at..]).await.context("reading the reply")?;
                }
                ResponsePart::Chunk { len } => {
                    on_chunk(&buf[5..5 + len]);
                    buf.drain(..5 + len);
                }
                ResponsePart::Final => break,
            }
        }
        let rest = recv.read_to_end(MAX).await.context("reading the reply")?;
        buf.extend(rest);
        let r = decode_response(&buf)?;
        Ok(Reply { response: r.response, header: r.header, status: r.status })
    }
}
