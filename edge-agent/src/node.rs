//! The serving node, independent of transport: deployments, tenants,
//! admission control and metrics. HTTP and QUIC both call [`Node::infer`].

use crate::busy_poll::BusyPoll;
use crate::config::Config;
use crate::jobs::{JobThreads, JobThreadsError, Slots};
use crate::metrics::{Dep, Metrics};
use anyhow::{Context, Result};
use mote_runtime::{Deployment, DeploymentSpec, JobReport, ModelInfo, Request, Runtime, RuntimeConfig};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why the node did not run a job.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NodeError {
    /// Missing or unknown bearer token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// No such deployment for this caller.
    #[error("no deployment named '{0}'")]
    NotFound(String),
    /// Concurrency and queue are full, or the queue wait passed the deadline.
    #[error("deployment '{0}' is busy: {1}")]
    Busy(String, &'static str),
    /// The request could not be decoded.
    #[error("{0}")]
    BadRequest(String),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// A bug or an unexpected failure.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Bounded concurrency plus a bounded queue for one deployment.
pub(crate) struct Admission {
    slots: Arc<Slots>,
    admitted: AtomicUsize,
    capacity: usize,
}

/// A deployment as served.
pub(crate) struct Served {
    pub(crate) deployment: Deployment,
    pub(crate) tenant: Option<String>,
    pub(crate) models: Vec<ModelInfo>,
    pub(crate) admission: Admission,
}

/// Who is calling.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    tenant: Option<String>,
}

/// The node.
pub(crate) struct Node {
    pub(crate) runtime: Runtime,
    deployments: HashMap<String, Arc<Served>>,
    tokens: HashMap<String, String>,
    pub(crate) failed: Vec<(String, String)>,
    pub(crate) metrics: Metrics,
    draining: AtomicBool,
    /// Threads that run jobs: one per job slot of every deployment, so a
    /// deployment never waits for another's jobs.
    jobs: Arc<JobThreads>,
    /// Request bytes held at once, all transports together.
    pub(crate) body_budget: crate::intake::BodyBudget,
    /// Token for `/metrics`, if the operator set one.
    metrics_token: Option<String>,
}

/// One admitted request: counted in the deployment's admission and the
/// node's in-flight total until dropped.
pub(crate) struct Admitted {
    node: Arc<Node>,
    served: Arc<Served>,
    /// The node's count of requests in flight, which its busy polling
    /// keeps (it polls only while they are fewer than the cores).
    _in_flight: crate::busy_poll::RequestInFlight,
}

impl Admitted {
    fn new(node: Arc<Node>, served: Arc<Served>) -> Self {
        let _in_flight = node.busy_poll().request();
        node.metrics.in_flight.inc();
        Self { node, served, _in_flight }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.served.admission.admitted.fetch_sub(1, Ordering::SeqCst);
        self.node.metrics.in_flight.dec();
    }
}

impl Node {
    /// Builds the runtime and compiles and warms every deployment. A broken
    /// deployment is reported in `failed`; the others still serve.
    pub(crate) fn new(cfg: &Config) -> Result<Self> {
        let runtime = Runtime::new(RuntimeConfig {
            ort_threads: cfg.server.ort_threads,
            ort_spinning: cfg.server.ort_spinning,
            backend_memory_bytes: cfg
                .server
                .backend_memory_bytes
                .unwrap_or_else(mote_runtime::backend::ort::default_memory_budget),
            data_dir: Some(cfg.server.data_dir.clone().unwrap_or_else(mote_runtime::receipt::default_data_dir)),
            price: cfg.price.clone(),
            pool_instances: cfg.deployments.iter().map(|d| (d.max_concurrency + 1) as u32).sum::<u32>().max(8),
            ..RuntimeConfig::default()
        })
        .map_err(anyhow::Error::msg)?;
        let mut deployments = HashMap::new();
        let mut failed = Vec::new();
        for d in &cfg.deployments {
            let started = Instant::now();
            match Self::prepare(&runtime, d) {
                Ok(served) => {
                    tracing::info!(deployment = %d.name, elapsed = ?started.elapsed(), "deployment ready");
                    deployments.insert(d.name.clone(), Arc::new(served));
                }
                Err(e) => {
                    tracing::error!(deployment = %d.name, "deployment failed: {e:#}");
                    failed.push((d.name.clone(), format!("{e:#}")));
                }
            }
        }
        let slots: usize = deployments.values().map(|s: &Arc<Served>| s.admission.slots.count()).sum();
        let poll = BusyPoll::new(Duration::from_micros(cfg.server.busy_poll_us));
        let jobs = JobThreads::polling(slots, poll).context("starting the job threads")?;
        let tokens =
            cfg.tenants.iter().flat_map(|t| t.tokens.iter().map(move |tok| (tok.clone(), t.name.clone()))).collect();
        Ok(Self {
            runtime,
            deployments,
            tokens,
            failed,
            metrics: Metrics::new(),
            draining: AtomicBool::new(false),
            jobs,
            body_budget: crate::intake::BodyBudget::new(cfg.server.max_inflight_body_bytes),
            metrics_token: cfg.server.metrics_token.clone(),
        })
    }

    fn prepare(runtime: &Runtime, d: &crate::config::DeploymentConfig) -> Result<Served> {
        let guest = std::fs::read(&d.guest).with_context(|| format!("reading guest {}", d.guest.display()))?;
        let mut models = Vec::new();
        for (name, path) in &d.models {
            models.push((
                name.clone(),
                std::fs::read(path).with_context(|| format!("reading model {}", path.display()))?,
            ));
        }
        let deployment = runtime.deploy(DeploymentSpec {
            name: d.name.clone(),
            guest,
            models,
            limits: d.limits.clone(),
            backend: d.backend_choice()?,
            batching: d.batching(),
        })?;
        let models = deployment.warm().map_err(anyhow::Error::msg)?;
        Ok(Served {
            deployment,
            tenant: d.tenant.clone(),
            models,
            admission: Admission {
                slots: Slots::new(d.max_concurrency),
                admitted: AtomicUsize::new(0),
                capacity: d.max_concurrency + d.max_queue,
            },
        })
    }

    /// Whether `token` may read `/metrics`: the metrics token, or anyone on
    /// an open node without one. Tenants' tokens never do (metrics name
    /// every tenant's deployments).
    pub(crate) fn may_read_metrics(&self, token: Option<&str>) -> bool {
        match &self.metrics_token {
            Some(want) => token.is_some_and(|t| constant_time_eq(t.as_bytes(), want.as_bytes())),
            None => self.tokens.is_empty(),
        }
    }

    /// Resolves a bearer token (exact match, on every transport). Without
    /// tenants in the config the node is open; with tenants, every call
    /// needs a valid token.
    pub(crate) fn authorize(&self, token: Option<&str>) -> Result<Caller, NodeError> {
        if self.tokens.is_empty() {
            return Ok(Caller { tenant: None });
        }
        let tenant = token.and_then(|t| self.tokens.get(t)).ok_or(NodeError::Unauthorized)?;
        Ok(Caller { tenant: Some(tenant.clone()) })
    }

    /// A deployment the caller may see: its own, or one without a tenant.
    /// Others' deployments are indistinguishable from missing ones.
    pub(crate) fn lookup(&self, caller: &Caller, name: &str) -> Result<Arc<Served>, NodeError> {
        match self.deployments.get(name) {
            Some(s) if s.tenant.is_none() || s.tenant == caller.tenant => Ok(s.clone()),
            _ => Err(NodeError::NotFound(name.to_string())),
        }
    }

    /// Names of the deployments the caller may see.
    pub(crate) fn visible(&self, caller: &Caller) -> Vec<String> {
        let mut v: Vec<String> = self
            .deployments
            .iter()
            .filter(|(_, s)| s.tenant.is_none() || s.tenant == caller.tenant)
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    /// How many deployments are serving.
    pub(crate) fn visible_all(&self) -> usize {
        self.deployments.len()
    }

    /// Whether every configured deployment is serving.
    pub(crate) fn ready(&self) -> bool {
        self.failed.is_empty() && !self.draining.load(Ordering::SeqCst)
    }

    /// Requests admitted and not yet answered.
    pub(crate) fn in_flight(&self) -> usize {
        self.busy_poll().requests()
    }

    /// The job threads' busy polling (the async side starts its pollers).
    pub(crate) fn busy_poll(&self) -> &Arc<BusyPoll> {
        self.jobs.busy_poll()
    }

    /// Stops admitting new requests (graceful shutdown).
    pub(crate) fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Waits until no request is in flight or `grace` has passed.
    pub(crate) async fn wait_idle(&self, grace: Duration) -> bool {
        let until = Instant::now() + grace;
        while self.in_flight() > 0 {
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Takes a place in the deployment's queue, or refuses at once (503)
    /// when slots and queue are full: before the request's body is read or
    /// parsed, so a flood costs no memory.
    pub(crate) fn admit(self: &Arc<Self>, served: &Arc<Served>) -> Result<Admitted, NodeError> {
        let name = served.deployment.name();
        if self.draining.load(Ordering::SeqCst) {
            return Err(NodeError::ShuttingDown);
        }
        let adm = &served.admission;
        if adm.admitted.fetch_add(1, Ordering::SeqCst) >= adm.capacity {
            adm.admitted.fetch_sub(1, Ordering::SeqCst);
            self.metrics.count(name, "busy");
            return Err(NodeError::Busy(name.to_string(), "all job slots and queue places are taken"));
        }
        Ok(Admitted::new(self.clone(), served.clone()))
    }

    /// Runs an admitted request: waits for a job slot, then on a job
    /// thread (off the I/O workers) decodes the request with `decode` and
    /// runs the job. A request that does not decode is a 400 and no job.
    /// The job, its slot, the in-flight count and its metrics belong to the
    /// job thread from then on: a caller that goes away does not free the
    /// slot of a job still running, and a drain still waits for it. A
    /// caller that goes away while its request waits in line takes it out
    /// of line (it never runs).
    /// `decode` may return something besides the request (response
    /// options read from the same bytes); it comes back with the report.
    pub(crate) async fn run_admitted<T: Send + 'static>(
        self: &Arc<Self>,
        admitted: Admitted,
        decode: impl FnOnce() -> Result<(Request, T), String> + Send + 'static,
    ) -> Result<(JobReport, T), NodeError> {
        self.run_streaming(admitted, decode, None).await
    }

    /// Like [`Node::run_admitted`], forwarding what the guest streams to
    /// `sink` (a sink reporting the client gone ends the job, `cancelled`).
    pub(crate) async fn run_streaming<T: Send + 'static>(
        self: &Arc<Self>,
        admitted: Admitted,
        decode: impl FnOnce() -> Result<(Request, T), String> + Send + 'static,
        sink: Option<mote_runtime::StreamSink>,
    ) -> Result<(JobReport, T), NodeError> {
        let served = admitted.served.clone();
        let name = served.deployment.name().to_string();
        let adm = &served.admission;
        let queued = Instant::now();
        let deadline = served.deployment.limits().deadline();
        let dep = Dep { deployment: name.clone() };
        let node = self.clone();
        // A job waits in line for at most its deadline; the thread that
        // frees a slot runs the next job in line itself.
        let ran = adm.slots.run_then(&self.jobs, deadline, move || {
            node.metrics.queue_seconds.get_or_create(&dep).observe(queued.elapsed().as_secs_f64());
            let (request, extra) = match decode() {
                Ok(r) => r,
                Err(e) => {
                    node.metrics.count(&dep.deployment, "bad_request");
                    return (Err(NodeError::BadRequest(e)), Box::new(|| ()) as Box<dyn FnOnce()>);
                }
            };
            let job_id = mote_runtime::new_job_id();
            let served = admitted.served.clone();
            let (report, finished) = served.deployment.run_reply_first(job_id, request, sink);
            node.record(&dep, queued, &report);
            drop(admitted);
            // After the reply: the finished instance's slot is reset and
            // the next job's instance prepared before the job slot takes
            // its next job or is given back (an admitted job always finds
            // a free instance slot).
            let later = move || served.deployment.after_reply(finished);
            (Ok((report, extra)), Box::new(later) as Box<dyn FnOnce()>)
        });
        match ran.await {
            Ok(r) => r,
            Err(JobThreadsError::Waited(_)) => {
                self.metrics.count(&name, "busy");
                Err(NodeError::Busy(name, "waited for a job slot past the deadline"))
            }
            Err(e) => Err(NodeError::Internal(e.to_string())),
        }
    }

    /// Starts an admitted request whose guest streams: what it emits
    /// comes out of the returned channel as it is emitted, the report out
    /// of the handle at the end. The channel is bounded; a client that
    /// reads slowly holds the guest at its next chunk (backpressure), for
    /// at most the deployment's deadline, after which the job ends
    /// `cancelled`; a client that goes away (the receiver dropped) ends it
    /// `cancelled` at its next chunk.
    pub(crate) fn spawn_streaming<T: Send + 'static>(
        self: &Arc<Self>,
        admitted: Admitted,
        decode: impl FnOnce() -> Result<(Request, T), String> + Send + 'static,
    ) -> (tokio::sync::mpsc::Receiver<Vec<u8>>, tokio::task::JoinHandle<Result<(JobReport, T), NodeError>>) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
        let until = tokio::time::Instant::now() + admitted.served.deployment.limits().deadline();
        let rt = tokio::runtime::Handle::current();
        // Called on the job thread, outside the runtime: block on the send
        // through the runtime's handle, bounded in time.
        let sink: mote_runtime::StreamSink = Box::new(move |chunk: &[u8]| {
            let send = tx.send(chunk.to_vec());
            rt.block_on(async { matches!(tokio::time::timeout_at(until, send).await, Ok(Ok(()))) })
        });
        let node = self.clone();
        let job = tokio::spawn(async move { node.run_streaming(admitted, decode, Some(sink)).await });
        (rx, job)
    }

    /// Logs a finished job and adds it to the metrics.
    fn record(&self, dep: &Dep, queued: Instant, report: &JobReport) {
        let u = &report.receipt.usage;
        tracing::info!(
            deployment = %dep.deployment,
            outcome = %report.receipt.outcome,
            queue_us = (queued.elapsed().as_micros() as u64).saturating_sub(u.wall_ns / 1000),
            wall_us = u.wall_ns / 1000,
            backend_us = u.backend_ns / 1000,
            fuel = u.fuel,
            job = %report.receipt.job_id,
            "job done"
        );
        self.metrics.count(&dep.deployment, report.receipt.outcome.as_str());
        self.metrics.job_seconds.get_or_create(dep).observe(u.wall_ns as f64 / 1e9);
        self.metrics.backend_seconds.get_or_create(dep).observe(u.backend_ns as f64 / 1e9);
        self.metrics.fuel.get_or_create(dep).inc_by(u.fuel);
        self.metrics.backend_compute_seconds.get_or_create(dep).inc_by(u.backend_ns as f64 / 1e9);
    }

    /// Metrics text, with cache gauges read now.
    pub(crate) fn metrics_text(&self) -> String {
        let c = self.runtime.cache_stats();
        self.metrics.cache_hits.set(c.hits as i64);
        self.metrics.cache_misses.set(c.misses as i64);
        self.metrics.cache_entries.set(c.entries as i64);
        self.metrics.cache_bytes.set(c.bytes as i64);
        self.metrics.cache_evictions.set(c.evictions as i64);
        for (name, served) in &self.deployments {
            if let Some(b) = served.deployment.batch_stats() {
                let dep = crate::metrics::Dep { deployment: name.clone() };
                self.metrics.batched_runs.get_or_create(&dep).set(b.batched_runs as i64);
                self.metrics.batched_computes.get_or_create(&dep).set(b.batched_computes as i64);
                self.metrics.batch_fallbacks.get_or_create(&dep).set(b.fallbacks as i64);
            }
        }
        self.metrics.encode()
    }
}

/// Compares secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
