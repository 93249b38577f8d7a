//! `mote serve`: start the node's listeners and run until SIGTERM/SIGINT.

use crate::config::Config;
use crate::intake::{ConnectionCap, GuardAcceptor};
use crate::node::Node;
use crate::tls::Identity;
use crate::{http, quic};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

/// What `mote serve` announces on stdout before it serves, parsed back:
/// for programs that start a node and need its addresses (tests, the
/// benchmark). The lines are the ones `serve` prints below.
#[derive(Clone, Debug, Default)]
pub struct Announced {
    /// The REST listener (`listening https://…` or `listening http://…`).
    pub http: Option<std::net::SocketAddr>,
    /// The QUIC listener.
    pub quic: Option<std::net::SocketAddr>,
    /// The gRPC listener (`listening grpc://…`).
    pub grpc: Option<std::net::SocketAddr>,
    /// The certificate's PEM file.
    pub cert: Option<std::path::PathBuf>,
    /// The `ready: …` line, once seen.
    pub ready: Option<String>,
}

impl Announced {
    /// Takes one stdout line; true once the node is ready.
    pub fn feed(&mut self, line: &str) -> bool {
        let line = line.trim();
        if let Some(a) = line.strip_prefix("listening https://").or(line.strip_prefix("listening http://")) {
            self.http = a.parse().ok();
        } else if let Some(a) = line.strip_prefix("listening grpc://") {
            self.grpc = a.split_whitespace().next().and_then(|a| a.parse().ok());
        } else if let Some(a) = line.strip_prefix("listening quic://") {
            self.quic = a.split_whitespace().next().and_then(|a| a.parse().ok());
        } else if let Some(rest) = line.strip_prefix("certificate ") {
            self.cert = rest.split(" sha256 ").next().map(std::path::PathBuf::from);
        } else if line.starts_with("ready:") {
            self.ready = Some(line.to_string());
        }
        self.ready.is_some()
    }
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs the node until a termination signal, then drains gracefully.
pub(crate) async fn serve(cfg: Config, insecure_http: bool) -> Result<()> {
    if insecure_http && !cfg.server.listen.ip().is_loopback() {
        bail!("--insecure-http serves plain HTTP on loopback addresses only, not {}", cfg.server.listen);
    }
    if let Some(g) = cfg.server.grpc.filter(|g| insecure_http && !g.ip().is_loopback()) {
        bail!("--insecure-http serves plaintext gRPC on loopback addresses only, not {g}");
    }
    let data_dir = cfg.server.data_dir.clone().unwrap_or_else(mote_runtime::receipt::default_data_dir);
    let grace = Duration::from_millis(cfg.server.grace_period_ms);
    let max_body = cfg.server.max_body_bytes;
    let idle = cfg.server.idle_timeout(&cfg.deployments);
    let header_timeout = Duration::from_millis(cfg.server.header_timeout_ms);
    let body_timeout = Duration::from_millis(cfg.server.body_timeout_ms);
    let streams = cfg.server.max_streams_per_connection.max(1);
    let max_connections = cfg.server.max_connections;
    let listen = cfg.server.listen;
    let quic_addr = cfg.server.quic;
    let grpc_addr = cfg.server.grpc;
    let tls = (cfg.server.cert.clone(), cfg.server.key.clone());

    let node = Arc::new(tokio::task::spawn_blocking(move || Node::new(&cfg)).await.context("starting the node")??);
    for (name, err) in &node.failed {
        say(format!("deployment {name}: FAILED: {err}"));
    }
    let identity = Identity::load_or_generate(tls.0.as_deref(), tls.1.as_deref(), &data_dir)?;
    // One poller per async worker (the runtime has one per core).
    node.busy_poll().start_async(std::thread::available_parallelism().map_or(1, |n| n.get()));

    let app = http::router(node.clone(), http::HttpLimits { max_body, body_timeout });
    let tuning = Tuning { cap: ConnectionCap::new(max_connections), idle, header_timeout, streams };
    let tls = (!insecure_http).then_some(&identity);
    let (handle, http_task, bound) = listen_on(listen, app, tls, &[b"h2", b"http/1.1"], &tuning).await?;
    let scheme = if insecure_http { "http" } else { "https" };
    say(format!("listening {scheme}://{bound}"));
    let grpc = match grpc_addr {
        Some(addr) => {
            let routes = crate::grpc::router(node.clone(), max_body, body_timeout);
            let (h, task, bound) = listen_on(addr, routes, tls, &[b"h2"], &tuning).await?;
            say(format!("listening grpc://{bound}{}", if insecure_http { " (plaintext)" } else { "" }));
            Some((h, task))
        }
        None => None,
    };
    let quic = match quic_addr {
        Some(addr) => {
            let endpoint = quic::endpoint(addr, &identity, streams, idle)?;
            say(format!("listening quic://{} (ALPN mote/1)", endpoint.local_addr()?));
            let limits = quic::QuicLimits { max_body, header_timeout, body_timeout };
            tokio::spawn(quic::serve(endpoint.clone(), node.clone(), limits, ConnectionCap::new(max_connections)));
            Some(endpoint)
        }
        None => None,
    };
    say(format!("certificate {} sha256 {}", identity.cert_path.display(), identity.fingerprint()));
    say(format!("node {}", node.runtime.node_id()));
    say(format!("ready: {} deployment(s), {} failed", node.visible_all(), node.failed.len()));

    wait_for_signal().await?;
    say(format!("shutting down: {} request(s) in flight, grace {grace:?}", node.in_flight()));
    node.drain();
    handle.graceful_shutdown(Some(grace));
    if let Some((h, _)) = &grpc {
        h.graceful_shutdown(Some(grace));
    }
    let drained = node.wait_idle(grace).await;
    if let Some(endpoint) = quic {
        // Give finished streams a moment to flush their last bytes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        endpoint.close(0u32.into(), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    }
    let _ = tokio::time::timeout(grace + Duration::from_secs(1), http_task).await;
    if let Some((_, task)) = grpc {
        let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
    }
    say(if drained { "stopped: all in-flight requests completed".into() } else { "stopped: grace period over".into() });
    Ok(())
}

/// Limits every HTTP listener applies to its connections.
struct Tuning {
    cap: ConnectionCap,
    idle: Duration,
    header_timeout: Duration,
    streams: u32,
}

type Listener = (axum_server::Handle, tokio::task::JoinHandle<std::io::Result<()>>, std::net::SocketAddr);

/// Serves `app` on `addr`, over TLS with `alpn` when `tls` is given: the
/// connection cap and idle timeout under TLS (a handshake that stalls is
/// cut by the TLS acceptor's own 10 s timeout), header timeout and stream
/// cap in hyper. Returns once it listens.
async fn listen_on(
    addr: std::net::SocketAddr,
    app: axum::Router,
    tls: Option<&Identity>,
    alpn: &[&[u8]],
    t: &Tuning,
) -> Result<Listener> {
    let handle = axum_server::Handle::new();
    let guard = GuardAcceptor { cap: t.cap.clone(), idle: t.idle };
    let app = app.into_make_service();
    let task = match tls {
        None => {
            let mut server = axum_server::bind(addr).handle(handle.clone()).acceptor(guard);
            tune(server.http_builder(), t.header_timeout, t.streams);
            tokio::spawn(async move { server.serve(app).await })
        }
        Some(identity) => {
            let rustls = identity.server_config(alpn)?;
            let config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(rustls));
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(config).acceptor(guard);
            let mut server = axum_server::bind(addr).handle(handle.clone()).acceptor(acceptor);
            tune(server.http_builder(), t.header_timeout, t.streams);
            tokio::spawn(async move { server.serve(app).await })
        }
    };
    let Some(bound) = handle.listening().await else {
        let err = task.await.context("listener")?.err();
        bail!("could not listen on {addr}: {}", err.map_or_else(|| "unknown error".into(), |e| e.to_string()));
    };
    Ok((handle, task, bound))
}

/// hyper's own limits: time to send request headers (HTTP/1), concurrent
/// streams and header size per connection (HTTP/2).
fn tune(
    b: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    header_timeout: Duration,
    streams: u32,
) {
    b.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_timeout);
    b.http2().timer(hyper_util::rt::TokioTimer::new()).max_concurrent_streams(streams).max_header_list_size(64 << 10);
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
