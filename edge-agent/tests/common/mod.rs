//! What the end-to-end tests share: a real `mote serve` on loopback.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `mote serve`, killed on drop.
pub struct Server {
    pub child: Child,
    pub https: SocketAddr,
    pub quic: SocketAddr,
    /// The gRPC listener, when the config has `[server] grpc`.
    pub grpc: Option<SocketAddr>,
    pub cert: PathBuf,
    /// Its stdout lines after the ready line.
    pub lines: mpsc::Receiver<String>,
    pub dir: tempfile::TempDir,
}

impl Server {
    /// An HTTPS client that trusts exactly this server's certificate.
    pub fn https_client(&self) -> reqwest::Client {
        let pem = std::fs::read(&self.cert).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .tls_built_in_root_certs(false)
            .build()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `mote serve` with `config_text` (written to a fresh directory,
/// which is also its `MOTE_HOME`) and `flags`; returns once it announced
/// its listeners and readiness, with every deployment ready.
pub fn start_serve(config_text: &str, flags: &[&str], ready_within: Duration) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("mote.toml");
    std::fs::write(&cfg_path, config_text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mote"))
        .arg("serve")
        .arg("--config")
        .arg(&cfg_path)
        .args(flags)
        .env("MOTE_HOME", dir.path().join("home"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start mote serve");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = mote_agent::serve::Announced::default();
    let until = Instant::now() + ready_within;
    while !seen
        .feed(&rx.recv_timeout(until.saturating_duration_since(Instant::now())).expect("server did not get ready"))
    {
    }
    let ready = seen.ready.unwrap();
    assert!(ready.contains(", 0 failed"), "{ready}");
    Server {
        child,
        https: seen.http.unwrap(),
        quic: seen.quic.unwrap(),
        grpc: seen.grpc,
        cert: seen.cert.unwrap(),
        lines: rx,
        dir,
    }
}
