//! `mote serve`: start the node's listeners and run until SIGTERM/SIGINT.

use crate::config::Config;
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
    let data_dir = cfg.server.data_dir.clone().unwrap_or_else(mote_runtime::receipt::default_data_dir);
    let grace = Duration::from_millis(cfg.server.grace_period_ms);
    let max_body = cfg.server.max_body_bytes;
    let listen = cfg.server.listen;
    let quic_addr = cfg.server.quic;
    let tls = (cfg.server.cert.clone(), cfg.server.key.clone());

    let node = Arc::new(tokio::task::spawn_blocking(move || Node::new(&cfg)).await.context("starting the node")??);
    for (name, err) in &node.failed {
        say(format!("deployment {name}: FAILED: {err}"));
    }
    let identity = Identity::load_or_generate(tls.0.as_deref(), tls.1.as_deref(), &data_dir)?;

    let handle = axum_server::Handle::new();
    let app = http::router(node.clone(), max_body).into_make_service();
    let http_task = if insecure_http {
        let server = axum_server::bind(listen).handle(handle.clone());
        tokio::spawn(async move { server.serve(app).await })
    } else {
        let rustls = identity.server_config(&[b"h2", b"http/1.1"])?;
        let config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(rustls));
        let server = axum_server::bind_rustls(listen, config).handle(handle.clone());
        tokio::spawn(async move { server.serve(app).await })
    };
    let Some(bound) = handle.listening().await else {
        let err = http_task.await.context("HTTP listener")?.err();
        bail!("could not listen on {listen}: {}", err.map_or_else(|| "unknown error".into(), |e| e.to_string()));
    };
    let scheme = if insecure_http { "http" } else { "https" };
    say(format!("listening {scheme}://{bound}"));
    let quic = match quic_addr {
        Some(addr) => {
            let endpoint = quic::endpoint(addr, &identity)?;
            say(format!("listening quic://{} (ALPN mote/1)", endpoint.local_addr()?));
            tokio::spawn(quic::serve(endpoint.clone(), node.clone(), max_body));
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
    let drained = node.wait_idle(grace).await;
    if let Some(endpoint) = quic {
        // Give finished streams a moment to flush their last bytes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        endpoint.close(0u32.into(), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    }
    let _ = tokio::time::timeout(grace + Duration::from_secs(1), http_task).await;
    say(if drained { "stopped: all in-flight requests completed".into() } else { "stopped: grace period over".into() });
    Ok(())
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
