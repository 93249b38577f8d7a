//! `mote.toml`: the node's deployments, tenants and listeners
//! (documented in docs/serve.md, example in `mote.toml` at the repo root).

use anyhow::{bail, Context, Result};
use mote_runtime::backend::BackendChoice;
use mote_runtime::batching::BatchConfig;
use mote_runtime::{Limits, PriceTable};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    #[serde(default)]
    pub(crate) server: Server,
    #[serde(default)]
    pub(crate) price: PriceTable,
    #[serde(default, rename = "tenant")]
    pub(crate) tenants: Vec<Tenant>,
    #[serde(default, rename = "deployment")]
    pub(crate) deployments: Vec<DeploymentConfig>,
}

/// Listeners and node settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Server {
    /// HTTPS (or, with `--insecure-http`, HTTP) listener.
    pub(crate) listen: SocketAddr,
    /// QUIC listener (`mote/1`); none if absent.
    pub(crate) quic: Option<SocketAddr>,
    /// KServe v2 gRPC listener (TLS as HTTPS; plaintext with
    /// `--insecure-http`, loopback only). None: no gRPC.
    #[serde(default)]
    pub(crate) grpc: Option<SocketAddr>,
    /// PEM certificate chain; a self-signed one is generated if absent.
    pub(crate) cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub(crate) key: Option<PathBuf>,
    /// Node data directory (node key, generated certificate).
    pub(crate) data_dir: Option<PathBuf>,
    /// How long in-flight requests may run after SIGTERM.
    pub(crate) grace_period_ms: u64,
    /// Threads of ONNX Runtime's one intra-op pool, shared by all
    /// sessions (0: all cores).
    pub(crate) ort_threads: usize,
    /// ONNX Runtime's threads spin between a run's parallel parts instead
    /// of sleeping: faster runs of many small operators (an LLM's decode
    /// step), while runs go on the spinning threads take cores from other
    /// jobs. Off by default.
    pub(crate) ort_spinning: bool,
    /// After a job is handed in or finishes, the node's threads poll for
    /// their next work this long before they sleep, while fewer jobs and
    /// requests than cores are in flight (0: off). See `busy_poll`.
    pub(crate) busy_poll_us: u64,
    /// Largest request body accepted, in bytes.
    pub(crate) max_body_bytes: usize,
    /// Request bytes the node holds at once, all connections together
    /// (bodies being received or waiting for their job).
    pub(crate) max_inflight_body_bytes: u64,
    /// Connections served at once, per transport; more are closed at once.
    pub(crate) max_connections: usize,
    /// Concurrent requests on one connection (HTTP/2 and QUIC streams).
    pub(crate) max_streams_per_connection: u32,
    /// A connection that moves no byte for this long is closed (raised to
    /// the longest deployment deadline plus 5 s, so a running job's
    /// connection is never idle).
    pub(crate) idle_timeout_ms: u64,
    /// Time a client has to send a request's headers.
    pub(crate) header_timeout_ms: u64,
    /// Time a client has to send a request's body once admitted.
    pub(crate) body_timeout_ms: u64,
    /// Bearer token for `GET /metrics`. Without one, metrics are served
    /// only by a node without tenants (an open node).
    pub(crate) metrics_token: Option<String>,
    /// Most bytes ONNX Runtime may hold on the CPU for the whole node
    /// (default: half the machine's memory).
    pub(crate) backend_memory_bytes: Option<u64>,
}

/// The longest busy-polling window: past this, polling keeps cores busy
/// for nothing (a wake-up costs tens of µs).
const MAX_BUSY_POLL_US: u64 = 10_000;

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8443".parse().expect("valid address"),
            quic: None,
            grpc: None,
            cert: None,
            key: None,
            data_dir: None,
            grace_period_ms: 10_000,
            ort_threads: 0,
            ort_spinning: false,
            busy_poll_us: crate::busy_poll::DEFAULT_WINDOW.as_micros() as u64,
            max_body_bytes: 64 << 20,
            max_inflight_body_bytes: 256 << 20,
            max_connections: 512,
            max_streams_per_connection: 64,
            idle_timeout_ms: 60_000,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            metrics_token: None,
            backend_memory_bytes: None,
        }
    }
}

/// A tenant and its bearer tokens.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Tenant {
    pub(crate) name: String,
    pub(crate) tokens: Vec<String>,
}

/// One deployment: a guest, its models, limits and admission bounds.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeploymentConfig {
    pub(crate) name: String,
    pub(crate) guest: PathBuf,
    #[serde(default)]
    pub(crate) models: BTreeMap<String, PathBuf>,
    #[serde(default = "default_backend")]
    pub(crate) backend: String,
    /// Owning tenant; a deployment without one is visible to every caller.
    pub(crate) tenant: Option<String>,
    #[serde(default)]
    pub(crate) limits: Limits,
    /// Jobs of this deployment running at once.
    #[serde(default = "default_concurrency")]
    pub(crate) max_concurrency: usize,
    /// Requests waiting beyond those; more get 503 at once.
    #[serde(default = "default_queue")]
    pub(crate) max_queue: usize,
    /// Dynamic batching: most rows of concurrent jobs merged into one
    /// backend run (absent: no batching).
    pub(crate) max_batch: Option<u32>,
    /// How long the first job of a batch waits for others, in µs.
    #[serde(default = "default_batch_window_us")]
    pub(crate) batch_window_us: u64,
}

fn default_backend() -> String {
    "auto".into()
}
fn default_concurrency() -> usize {
    2
}
fn default_queue() -> usize {
    16
}
fn default_batch_window_us() -> u64 {
    1000
}

impl DeploymentConfig {
    pub(crate) fn batching(&self) -> Option<BatchConfig> {
        self.max_batch.map(|max_batch| BatchConfig { max_batch, window_us: self.batch_window_us })
    }

    pub(crate) fn backend_choice(&self) -> Result<BackendChoice> {
        BackendChoice::parse(&self.backend).map_err(|e| anyhow::anyhow!("deployment '{}': {e}", self.name))
    }
}

impl Server {
    /// The idle timeout in force: the configured one, raised to the longest
    /// deployment deadline plus 5 s.
    pub(crate) fn idle_timeout(&self, deployments: &[DeploymentConfig]) -> std::time::Duration {
        let longest = deployments.iter().map(|d| d.limits.deadline_ms).max().unwrap_or(0);
        std::time::Duration::from_millis(self.idle_timeout_ms.max(longest + 5_000))
    }
}

impl Config {
    /// Reads and checks a config file; relative paths are resolved against
    /// the file's directory.
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut cfg: Config =
            toml::from_str(&text).with_context(|| format!("{} is not a valid mote config", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for d in &mut cfg.deployments {
            fix(&mut d.guest);
            d.models.values_mut().for_each(fix);
        }
        for p in [&mut cfg.server.cert, &mut cfg.server.key, &mut cfg.server.data_dir].into_iter().flatten() {
            fix(p);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let mut names = HashSet::new();
        for d in &self.deployments {
            if d.name.is_empty() || !d.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                bail!("deployment name {:?}: use letters, digits, '-', '_' and '.'", d.name);
            }
            if !names.insert(&d.name) {
                bail!("deployment '{}' is declared twice", d.name);
            }
            if d.max_concurrency == 0 {
                bail!("deployment '{}': max_concurrency must be at least 1", d.name);
            }
            if let Some(b) = d.batching() {
                if let Err(e) = b.validate() {
                    bail!("deployment '{}': {e}", d.name);
                }
                if d.max_concurrency < 2 {
                    bail!(
                        "deployment '{}': max_batch needs max_concurrency of at least 2 (jobs that run at once \
                         are what a batch merges)",
                        d.name
                    );
                }
            }
            if let Some(t) = &d.tenant {
                if !self.tenants.iter().any(|x| &x.name == t) {
                    bail!("deployment '{}' names tenant '{t}', which has no [[tenant]] entry", d.name);
                }
            }
        }
        let mut tokens = HashSet::new();
        for t in &self.tenants {
            for tok in &t.tokens {
                if tok.len() < 8 {
                    bail!("tenant '{}': tokens must be at least 8 characters", t.name);
                }
                if !tokens.insert(tok) {
                    bail!("a token is shared by two tenants; each token must name one tenant");
                }
            }
        }
        if let Some(t) = &self.server.metrics_token {
            if t.len() < 8 {
                bail!("[server] metrics_token must be at least 8 characters");
            }
            if tokens.contains(t) {
                bail!("[server] metrics_token is also a tenant's token; use a token of its own");
            }
        }
        if (self.server.max_inflight_body_bytes as usize) < self.server.max_body_bytes {
            bail!("[server] max_inflight_body_bytes must be at least max_body_bytes");
        }
        if self.server.cert.is_some() != self.server.key.is_some() {
            bail!("[server] cert and key go together");
        }
        if self.server.busy_poll_us > MAX_BUSY_POLL_US {
            bail!("[server] busy_poll_us {} is above {MAX_BUSY_POLL_US}", self.server.busy_poll_us);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        let cfg: Config = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    #[test]
    fn a_full_config_parses() {
        let cfg = parse(
            r#"
            [server]
            listen = "127.0.0.1:9000"
            quic = "127.0.0.1:9001"
            [price]
            per_backend_second = 5
            [[tenant]]
            name = "acme"
            tokens = ["acme-secret-1"]
            [[deployment]]
            name = "mlp"
            guest = "passthrough.wasm"
            models = { model = "mlp.onnx" }
            tenant = "acme"
            max_concurrency = 3
            [deployment.limits]
            deadline_ms = 100
            "#,
        )
        .unwrap();
        assert_eq!(cfg.deployments[0].limits.deadline_ms, 100);
        assert_eq!(cfg.deployments[0].limits.fuel, Limits::default().fuel);
        assert_eq!(cfg.price.per_backend_second, 5);
        assert_eq!(cfg.server.quic.unwrap().port(), 9001);
        assert_eq!(cfg.deployments[0].batching(), None, "batching is off by default");
        assert_eq!(cfg.server.busy_poll_us, 300, "busy polling is on by default");
        assert_eq!(parse("[server]\nbusy_poll_us = 0").unwrap().server.busy_poll_us, 0);
        assert!(!cfg.server.ort_spinning, "ORT's threads sleep by default");
        assert!(parse("[server]\nort_spinning = true").unwrap().server.ort_spinning);
    }

    #[test]
    fn batching_settings_parse_and_are_bounded() {
        let cfg = parse("[[deployment]]\nname='a'\nguest='g'\nmax_concurrency=8\nmax_batch=8\nbatch_window_us=500")
            .unwrap();
        assert_eq!(cfg.deployments[0].batching(), Some(BatchConfig { max_batch: 8, window_us: 500 }));
        let cfg = parse("[[deployment]]\nname='a'\nguest='g'\nmax_batch=4").unwrap();
        assert_eq!(cfg.deployments[0].batching(), Some(BatchConfig { max_batch: 4, window_us: 1000 }));
    }

    #[test]
    fn mistakes_are_named() {
        for (text, want) in [
            ("[[deployment]]\nname='a'\nguest='g'\ntenant='nobody'", "has no [[tenant]]"),
            ("[[deployment]]\nname='a b'\nguest='g'", "use letters"),
            ("[[deployment]]\nname='a'\nguest='g'\n[[deployment]]\nname='a'\nguest='g'", "declared twice"),
            ("[[tenant]]\nname='t'\ntokens=['short']", "at least 8"),
            ("[server]\nlisten='nope'", "invalid socket address"),
            ("[[deployment]]\nname='a'\nguest='g'\nlimts={}", "unknown field"),
            ("[[deployment]]\nname='a'\nguest='g'\nmax_batch=1", "outside 2..=1024"),
            ("[[deployment]]\nname='a'\nguest='g'\nmax_batch=4\nbatch_window_us=200000", "above 100000"),
            ("[[deployment]]\nname='a'\nguest='g'\nmax_batch=4\nmax_concurrency=1", "max_concurrency of at least 2"),
            ("[server]\nbusy_poll_us = 20000", "above 10000"),
        ] {
            let err = format!("{:#}", parse(text).unwrap_err());
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
