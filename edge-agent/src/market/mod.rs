//! The job market on NATS JetStream (docs/market.md): clients post jobs to
//! a work-queue stream, nodes pull them with durable consumers shared by all
//! nodes, fetch artifacts from the object store, run them and publish the
//! response with a signed receipt; settlement reads the receipts.
//!
//! | JetStream | name | holds |
//! |---|---|---|
//! | stream (work queue) | `MOTE_JOBS` | `mote.jobs.MARKET.BACKEND`: job definitions |
//! | stream | `MOTE_RESULTS` | `mote.results.MARKET.JOB`: results, message id = job id |
//! | stream | `MOTE_DEAD` | `mote.dead.MARKET.JOB`: jobs given up, with the reason |
//! | KV | `MOTE_NODES` | `MARKET.NODE`: signed node snapshots (heartbeat) |
//! | KV | `MOTE_JOB_STATE` | `JOB`: queued/running/done/failed/dead |
//! | KV | `MOTE_VERIFY` | `MARKET.NODE`: re-execution checks and mismatches |
//! | object store | `MOTE_ARTIFACTS` | guests, models, large requests by sha256 |

pub mod cache;
pub mod client;
pub mod commands;
pub mod node;
pub mod spec;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, kv, object_store, stream};
use std::path::PathBuf;
use std::time::Duration;

/// Work-queue stream of job definitions.
pub const JOBS: &str = "MOTE_JOBS";
/// Stream of results.
pub const RESULTS: &str = "MOTE_RESULTS";
/// Stream of dead-lettered jobs.
pub const DEAD: &str = "MOTE_DEAD";
/// KV of node snapshots.
pub const NODES: &str = "MOTE_NODES";
/// KV of job states.
pub const JOB_STATE: &str = "MOTE_JOB_STATE";
/// KV of re-execution records.
pub const VERIFY: &str = "MOTE_VERIFY";
/// Object store of artifacts.
pub const ARTIFACTS: &str = "MOTE_ARTIFACTS";
/// Longest an artifact may take to arrive from the object store.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// Why an artifact could not be had.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// Not in the store, too large, or its bytes are not its hash: another
    /// try would get the same.
    #[error("{0}")]
    Refused(String),
    /// The store did not answer, or not in time (a cluster electing a
    /// leader): another try may succeed.
    #[error("{0}")]
    Unavailable(String),
}
/// Most bytes of jobs waiting in `MOTE_JOBS` (all markets).
pub const MAX_QUEUED_BYTES: i64 = 1 << 30;
/// Results and jobs are deduplicated by id within this window.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(600);

/// Subject a job is posted on.
pub fn job_subject(market: &str, backend: spec::BackendReq) -> String {
    format!("mote.jobs.{market}.{}", backend.as_str())
}

/// Subject a job's result is published on.
pub fn result_subject(market: &str, job_id: &str) -> String {
    format!("mote.results.{market}.{job_id}")
}

/// Subject a dead-lettered job is published on.
pub fn dead_subject(market: &str, job_id: &str) -> String {
    format!("mote.dead.{market}.{job_id}")
}

/// Durable consumer shared by every node serving `backend` in `market`.
pub fn consumer_name(market: &str, backend: spec::BackendReq) -> String {
    format!("{market}_{}", backend.as_str())
}

/// How to reach and authenticate to NATS.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsOptions {
    /// Server URLs (any of a cluster).
    pub urls: Vec<String>,
    /// A `.creds` file (JWT + nkey seed).
    pub creds: Option<PathBuf>,
    /// A file holding an nkey seed.
    pub nkey: Option<PathBuf>,
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Require TLS, trusting this CA (PEM).
    pub tls_ca: Option<PathBuf>,
    /// Connection name, shown by the server.
    pub name: Option<String>,
}

impl NatsOptions {
    /// Options from a `--nats` value: comma-separated URLs.
    pub fn from_urls(urls: &str) -> Self {
        Self { urls: urls.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(), ..Self::default() }
    }

    /// Connects; the client reconnects by itself after a lost connection
    /// (forever, resubscribing), so a node resumes without an operator.
    pub async fn connect(&self) -> Result<async_nats::Client> {
        anyhow::ensure!(!self.urls.is_empty(), "no NATS server URL (--nats)");
        let mut opts = match &self.creds {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path.clone())
                .await
                .with_context(|| format!("reading NATS credentials {}", path.display()))?,
            None => async_nats::ConnectOptions::new(),
        };
        if let Some(path) = &self.nkey {
            let seed = std::fs::read_to_string(path).with_context(|| format!("reading nkey seed {}", path.display()))?;
            opts = opts.nkey(seed.trim().to_string());
        }
        if let (Some(u), Some(p)) = (&self.user, &self.password) {
            opts = opts.user_and_password(u.clone(), p.clone());
        }
        if let Some(ca) = &self.tls_ca {
            opts = opts.require_tls(true).add_root_certificates(ca.clone());
        }
        if let Some(n) = &self.name {
            opts = opts.name(n);
        }
        opts = opts
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| Duration::from_millis((100 * attempts as u64).min(2000)))
            .event_callback(|ev| async move {
                match ev {
                    async_nats::Event::Connected => tracing::info!("NATS connected"),
                    async_nats::Event::Disconnected => tracing::warn!("NATS connection lost; reconnecting"),
                    other => tracing::debug!("NATS: {other}"),
                }
            });
        opts.connect(&self.urls).await.with_context(|| format!("connecting to NATS at {}", self.urls.join(",")))
    }
}

/// A job's KServe request: inline in its definition, or the object it
/// names, fetched with `fetch` (which checks the bytes against the sha256).
pub async fn request_of<F, Fut>(job: &spec::JobSpec, fetch: F) -> Result<mote_runtime::Request>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<u8>>>,
{
    let json = match &job.request {
        spec::RequestRef::Inline(v) => std::borrow::Cow::Borrowed(v),
        spec::RequestRef::Object(sha) => {
            std::borrow::Cow::Owned(serde_json::from_slice(&fetch(sha.clone()).await?).context("request object")?)
        }
    };
    mote_runtime::kserve::parse_request(&json).context("request")
}

/// Runs `f` until it succeeds, for up to 10 s: a stream of a cluster that is
/// electing a leader (just created, or a server died) refuses writes for a
/// moment.
pub async fn retry_transient<T, F, Fut>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let start = std::time::Instant::now();
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() > Duration::from_secs(10) => return Err(e),
            Err(e) => {
                tracing::debug!("retrying: {e:#}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Handles on every stream, bucket and store of the market engine.
#[derive(Clone)]
pub struct Market {
    /// The JetStream context.
    pub js: jetstream::Context,
    /// The core client.
    pub client: async_nats::Client,
    /// `MOTE_JOBS`.
    pub jobs: stream::Stream,
    /// `MOTE_RESULTS`.
    pub results: stream::Stream,
    /// `MOTE_DEAD`.
    pub dead: stream::Stream,
    /// `MOTE_NODES`.
    pub nodes: kv::Store,
    /// `MOTE_JOB_STATE`.
    pub state: kv::Store,
    /// `MOTE_VERIFY`.
    pub verify: kv::Store,
    /// `MOTE_ARTIFACTS`.
    pub artifacts: object_store::ObjectStore,
}

impl Market {
    /// Opens the market's streams and buckets, creating the missing ones
    /// with `replicas` copies each (1 for a single server, 3 for an R3
    /// cluster).
    pub async fn open(client: async_nats::Client, replicas: usize) -> Result<Self> {
        let js = jetstream::new(client.clone());
        let r = replicas.max(1);
        let stream_cfg = |name: &str, subjects: &str, retention| stream::Config {
            name: name.into(),
            subjects: vec![subjects.into()],
            retention,
            num_replicas: r,
            duplicate_window: DEDUP_WINDOW,
            allow_direct: true,
            ..Default::default()
        };
        let get_stream = |cfg: stream::Config| {
            let js = js.clone();
            async move {
                let name = cfg.name.clone();
                let reserved = cfg.max_bytes;
                js.get_or_create_stream(cfg).await.map_err(|e| {
                    let short_of_storage = matches!(
                        e.kind(),
                        jetstream::context::CreateStreamErrorKind::JetStream(j)
                            if j.error_code() == jetstream::ErrorCode::STORAGE_RESOURCES_EXCEEDED
                    );
                    let e = anyhow::Error::new(e).context(format!("opening stream {name}"));
                    if short_of_storage && reserved > 0 {
                        // JetStream reserves a bounded stream's max_bytes up
                        // front, against the server's max_file_store (by
                        // default 75 % of the free disk when it started).
                        e.context(format!(
                            "the NATS server cannot reserve {reserved} bytes for stream {name}: \
                             give its `jetstream {{ max_file_store }}` at least that much, or free disk space"
                        ))
                    } else {
                        e
                    }
                })
            }
        };
        // The queue is bounded: when it holds MAX_QUEUED_BYTES, new posts
        // are refused (clients see the error) rather than growing it.
        let jobs = get_stream(stream::Config {
            max_bytes: MAX_QUEUED_BYTES,
            discard: stream::DiscardPolicy::New,
            ..stream_cfg(JOBS, "mote.jobs.>", stream::RetentionPolicy::WorkQueue)
        })
        .await?;
        let results = get_stream(stream_cfg(RESULTS, "mote.results.>", stream::RetentionPolicy::Limits)).await?;
        let dead = get_stream(stream_cfg(DEAD, "mote.dead.>", stream::RetentionPolicy::Limits)).await?;
        let bucket = |name: &'static str| {
            let js = js.clone();
            async move {
                match js.get_key_value(name).await {
                    Ok(kv) => Ok(kv),
                    Err(_) => js
                        .create_key_value(kv::Config { bucket: name.into(), history: 1, num_replicas: r, ..Default::default() })
                        .await
                        .with_context(|| format!("creating KV bucket {name}")),
                }
            }
        };
        let nodes = bucket(NODES).await?;
        let state = bucket(JOB_STATE).await?;
        let verify = bucket(VERIFY).await?;
        let artifacts = match js.get_object_store(ARTIFACTS).await {
            Ok(os) => os,
            Err(_) => js
                .create_object_store(object_store::Config { bucket: ARTIFACTS.into(), num_replicas: r, ..Default::default() })
                .await
                .context("creating object store MOTE_ARTIFACTS")?,
        };
        Ok(Self { js, client, jobs, results, dead, nodes, state, verify, artifacts })
    }

    /// A job's state record, if any.
    pub async fn job_state(&self, job_id: &str) -> Result<Option<spec::JobState>> {
        match self.state.get(job_id).await.context("reading MOTE_JOB_STATE")? {
            Some(b) => Ok(Some(serde_json::from_slice(&b).context("job state record")?)),
            None => Ok(None),
        }
    }

    /// Writes a job's state record.
    pub async fn set_job_state(&self, job_id: &str, state: &spec::JobState) -> Result<()> {
        let value: bytes::Bytes = serde_json::to_vec(state)?.into();
        retry_transient(|| async {
            self.state.put(job_id, value.clone()).await?;
            Ok(())
        })
        .await
        .context("writing MOTE_JOB_STATE")
    }

    /// A job's stored result, if one was published.
    pub async fn result(&self, market: &str, job_id: &str) -> Result<Option<spec::JobResult>> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind as K;
        match self.results.get_last_raw_message_by_subject(&result_subject(market, job_id)).await {
            Ok(m) => Ok(Some(serde_json::from_slice(&m.payload).context("result record")?)),
            Err(e) if e.kind() == K::NoMessageFound => Ok(None),
            Err(e) => Err(e).context("reading MOTE_RESULTS"),
        }
    }

    /// Publishes `payload` on a stream subject with message id `id` (so a
    /// second copy within the dedup window is dropped) and waits until
    /// JetStream has stored it.
    pub async fn store_once(&self, subject: String, id: &str, payload: bytes::Bytes) -> Result<()> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        self.js.publish_with_headers(subject, headers, payload).await?.await?;
        Ok(())
    }

    /// Stores `bytes` under their sha256 unless already there; returns the
    /// sha256.
    pub async fn upload(&self, bytes: &[u8]) -> Result<String> {
        let sha = mote_runtime::receipt::sha256_hex(bytes);
        retry_transient(|| async {
            match self.artifacts.info(&sha).await {
                Ok(info) if !info.deleted && info.size == bytes.len() => return Ok(()),
                _ => {}
            }
            self.artifacts.put(sha.as_str(), &mut &bytes[..]).await?;
            Ok(())
        })
        .await
        .with_context(|| format!("uploading artifact {sha}"))?;
        Ok(sha)
    }

    /// Fetches an artifact and checks its bytes against `sha256`.
    pub async fn download(&self, sha256: &str, max_bytes: usize) -> Result<Vec<u8>, DownloadError> {
        use object_store::GetErrorKind as K;
        use tokio::io::AsyncReadExt;
        let fetch = async {
            let obj = self.artifacts.get(sha256).await.map_err(|e| {
                let message = format!("artifact {sha256} is not in {ARTIFACTS}: {e}");
                match e.kind() {
                    K::NotFound | K::InvalidName | K::BucketLink => DownloadError::Refused(message),
                    K::ConsumerCreate | K::Other | K::TimedOut => DownloadError::Unavailable(message),
                }
            })?;
            let mut bytes = Vec::new();
            obj.take(max_bytes as u64 + 1)
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| DownloadError::Unavailable(format!("reading artifact {sha256}: {e}")))?;
            Ok(bytes)
        };
        let bytes = tokio::time::timeout(DOWNLOAD_TIMEOUT, fetch).await.map_err(|_| {
            DownloadError::Unavailable(format!("artifact {sha256} did not arrive within {DOWNLOAD_TIMEOUT:?}"))
        })??;
        if bytes.len() > max_bytes {
            return Err(DownloadError::Refused(format!("artifact {sha256} is larger than {max_bytes} bytes")));
        }
        let got = mote_runtime::receipt::sha256_hex(&bytes);
        if got != sha256 {
            return Err(DownloadError::Refused(format!(
                "artifact {sha256}: its bytes hash to {got} (tampered or corrupted); rejected"
            )));
        }
        Ok(bytes)
    }
}
