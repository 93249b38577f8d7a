//! `mote node`: a market node. Pulls jobs it can serve from the market's
//! shared durable consumers, fetches their artifacts (hash-checked, cached
//! on disk), runs them in the sandbox, publishes response + signed receipt
//! to `MOTE_RESULTS` (message id = job id) and acks only once the result is
//! stored. Publishes a signed snapshot with every heartbeat. SIGTERM: stop
//! pulling, finish what runs, exit.

use super::cache::ArtifactCache;
use super::spec::{self, BackendReq, JobFailure, JobPhase, JobResult, JobSpec, JobState, NodeSnapshot};
use super::{Market, NatsOptions};
use anyhow::{Context, Result};
use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::{AckKind, Message};
use futures_util::StreamExt;
use mote_runtime::backend::{BackendChoice, BackendKind};
use mote_runtime::{kserve, Deployment, DeploymentSpec, Limits, NodeKey, PriceTable, Runtime, RuntimeConfig};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A node's settings (`node.toml`; flags override).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// NATS connection.
    pub nats: NatsOptions,
    /// The market to join.
    pub market: String,
    /// Node key and artifact cache.
    pub data_dir: PathBuf,
    /// Jobs run at once.
    pub concurrency: usize,
    /// Seconds between heartbeats.
    pub heartbeat_s: u64,
    /// Bytes of artifacts kept on disk.
    pub cache_bytes: u64,
    /// Largest artifact fetched.
    pub max_artifact_bytes: u64,
    /// Replicas of streams and buckets this node creates.
    pub replicas: usize,
    /// Seconds a job may go without an ack or progress before NATS
    /// redelivers it (the market's consumers are created with it).
    pub ack_wait_s: u64,
    /// Deliveries of a job before it is dead-lettered.
    pub max_deliver: i64,
    /// The node's prices.
    pub price: PriceTable,
    /// Most fuel a job may ask for.
    pub max_fuel: u64,
    /// Most memory a job may ask for.
    pub max_memory_bytes: u64,
    /// Artifacts (sha256) to fetch at start, before the first job.
    pub prepull: Vec<String>,
    /// Serve only these backend requirements (default: what the node has).
    pub serve: Option<Vec<BackendReq>>,
    /// ONNX Runtime's threads spin between a run's parallel parts instead
    /// of sleeping (as `mote serve`'s `[server] ort_spinning`): for a node
    /// given over to text generation. Off by default.
    pub ort_spinning: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            nats: NatsOptions::default(),
            market: String::new(),
            data_dir: mote_runtime::receipt::default_data_dir(),
            concurrency: std::thread::available_parallelism().map_or(1, |n| n.get()),
            heartbeat_s: 5,
            cache_bytes: 2 << 30,
            max_artifact_bytes: 512 << 20,
            replicas: 1,
            ack_wait_s: 30,
            max_deliver: 5,
            price: PriceTable::default(),
            max_fuel: limits.fuel.saturating_mul(10),
            max_memory_bytes: 4 << 30,
            prepull: Vec::new(),
            serve: None,
            ort_spinning: false,
        }
    }
}

impl NodeConfig {
    /// Reads `node.toml`.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{} is not a valid node config", path.display()))
    }
}

/// Deployments compiled for jobs, by guest, models and limits.
type Deployments = Mutex<HashMap<String, Deployment>>;

/// Most compiled deployments kept (each holds a compiled guest).
const MAX_DEPLOYMENTS: usize = 64;

struct Node {
    cfg: NodeConfig,
    market: Market,
    runtime: Runtime,
    key: NodeKey,
    cache: ArtifactCache,
    deployments: Deployments,
    node_id: String,
    /// Jobs in the sandbox at once (`concurrency`); more are in flight
    /// (fetching, storing results, acking), bounded by [`IN_FLIGHT_PER_SLOT`].
    run_slots: tokio::sync::Semaphore,
}

/// Jobs held per run slot: the network round trips of one job (result
/// store, state, ack) overlap the runs of others.
const IN_FLIGHT_PER_SLOT: usize = 4;

/// Runs a node until SIGTERM or SIGINT.
pub async fn run(cfg: NodeConfig) -> Result<()> {
    anyhow::ensure!(spec::valid_name(&cfg.market), "--market must be 1-64 characters of A-Z a-z 0-9 _ -");
    let concurrency = cfg.concurrency.max(1);
    let runtime = Runtime::new(RuntimeConfig {
        data_dir: Some(cfg.data_dir.clone()),
        price: cfg.price.clone(),
        pool_instances: (concurrency as u32 * 2).max(8),
        max_memory_bytes: cfg.max_memory_bytes,
        ort_spinning: cfg.ort_spinning,
        ..RuntimeConfig::default()
    })?;
    let key = NodeKey::load_or_create(&cfg.data_dir).context("node key")?;
    let cache = ArtifactCache::open(cfg.data_dir.join("artifacts"), cfg.cache_bytes).context("artifact cache")?;
    let mut nats = cfg.nats.clone();
    nats.name.get_or_insert_with(|| format!("mote-node-{}", &key.node_id()[..12]));
    // Servers that are not up yet, or a cluster still electing its
    // JetStream leader: keep trying, as after a lost connection.
    let mut tries = 0u32;
    let market = loop {
        let opened = async { Market::open(nats.connect().await?, cfg.replicas).await }.await;
        match opened {
            Ok(m) => break m,
            Err(e) => {
                tries += 1;
                if tries == 1 || tries % 10 == 0 {
                    eprintln!("node: market not reachable yet ({e:#}); retrying");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let serves = match &cfg.serve {
        Some(s) => s.clone(),
        None => serves(&runtime),
    };
    let node = Arc::new(Node {
        node_id: key.node_id(),
        cfg: NodeConfig { concurrency, ..cfg },
        market,
        runtime,
        key,
        cache,
        deployments: Mutex::new(HashMap::new()),
        run_slots: tokio::sync::Semaphore::new(concurrency),
    });
    let started_at = spec::now_rfc3339();
    let score = tokio::task::spawn_blocking(micro_benchmark).await.unwrap_or(0.0);
    let specs = crate::cli::specs_json(&node.runtime).unwrap_or_default();
    for sha in node.cfg.prepull.clone() {
        if let Err(e) = node.artifact(&sha).await {
            tracing::warn!("prepull {sha}: {e:#}");
        }
    }
    // Heartbeat: the signed snapshot, refreshed.
    let heartbeat = {
        let node = node.clone();
        let serves = serves.clone();
        tokio::spawn(async move {
            loop {
                let snap = NodeSnapshot {
                    version: spec::JOB_VERSION,
                    node_id: node.node_id.clone(),
                    market: node.cfg.market.clone(),
                    specs: specs.clone(),
                    score,
                    price: node.cfg.price.clone(),
                    serves: serves.clone(),
                    concurrency: node.cfg.concurrency,
                    started_at: started_at.clone(),
                    heartbeat_at: spec::now_rfc3339(),
                    heartbeat_s: node.cfg.heartbeat_s,
                    signature: String::new(),
                };
                let mut v = serde_json::to_value(&snap).expect("snapshot serialises");
                node.key.sign_object(&mut v);
                let k = format!("{}.{}", node.cfg.market, node.node_id);
                if let Err(e) = node.market.nodes.put(&k, serde_json::to_vec(&v).expect("json").into()).await {
                    tracing::warn!("heartbeat: {e}");
                }
                tokio::time::sleep(Duration::from_secs(node.cfg.heartbeat_s.max(1))).await;
            }
        })
    };
    let dead_letters = tokio::spawn(dead_letter_advisories(node.clone()));
    let verifier = tokio::spawn(verify_others(node.clone()));

    // One shared durable consumer per backend requirement served.
    let mut pulls = Vec::new();
    for req in &serves {
        let name = super::consumer_name(&node.cfg.market, *req);
        let consumer = node
            .market
            .jobs
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: super::job_subject(&node.cfg.market, *req),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(node.cfg.ack_wait_s.max(1)),
                    max_deliver: node.cfg.max_deliver.max(1),
                    max_ack_pending: 10_000,
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("consumer {name}"))?;
        pulls.push(consumer);
    }
    eprintln!(
        "node {} joined market '{}' (serves {}; {} jobs at once)",
        node.node_id,
        node.cfg.market,
        serves.iter().map(|b| b.as_str()).collect::<Vec<_>>().join(", "),
        node.cfg.concurrency
    );

    let in_flight = node.cfg.concurrency * IN_FLIGHT_PER_SLOT;
    let slots = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let mut stop = Box::pin(shutdown_signal());
    'outer: loop {
        // (Re)open the pull streams; after a lost connection they end or
        // fail, and are reopened here.
        let mut streams = Vec::new();
        for c in &pulls {
            match c.stream().max_messages_per_batch(in_flight).messages().await {
                Ok(s) => streams.push(s),
                Err(e) => tracing::warn!("pulling jobs: {e}"),
            }
        }
        let mut merged = futures_util::stream::select_all(streams);
        loop {
            let permit = tokio::select! {
                _ = &mut stop => break 'outer,
                p = slots.clone().acquire_owned() => p.expect("semaphore open"),
            };
            let next = tokio::select! {
                _ = &mut stop => break 'outer,
                m = merged.next() => m,
            };
            match next {
                Some(Ok(msg)) => {
                    let node = node.clone();
                    tokio::spawn(async move {
                        node.handle(msg).await;
                        drop(permit);
                    });
                }
                Some(Err(e)) => {
                    tracing::warn!("pulling jobs: {e}; reopening");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
                None => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
            }
        }
    }
    eprintln!("node {}: stopping; finishing running jobs", node.node_id);
    let _ = slots.acquire_many(in_flight as u32).await;
    heartbeat.abort();
    dead_letters.abort();
    verifier.abort();
    // (Bounded: with the server gone, a flush would wait for it forever.)
    let _ = tokio::time::timeout(Duration::from_secs(2), node.market.client.flush()).await;
    eprintln!("node {}: stopped", node.node_id);
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The backend requirements this node can serve.
fn serves(runtime: &Runtime) -> Vec<BackendReq> {
    let mut s = Vec::new();
    if runtime.backend_device(BackendChoice::Fixed(BackendKind::OrtCpu)).is_ok() {
        s.push(BackendReq::OrtCpu);
    }
    if runtime.backend_device(BackendChoice::Fixed(BackendKind::Wgpu)).is_ok() {
        s.push(BackendReq::Wgpu);
    }
    if runtime.backend_device(BackendChoice::Auto).is_ok_and(|(k, _)| k != BackendKind::OrtCpu) {
        s.push(BackendReq::Gpu);
    }
    s.push(BackendReq::Any);
    s
}

/// A short score for the snapshot: tiny-MLP (64×64 MatMul + Relu)
/// inferences per second on ONNX Runtime CPU, over 0.2 s.
fn micro_benchmark() -> f64 {
    use mote_runtime::backend::TensorView;
    use mote_runtime::tensor::ElementType;
    let run = || -> Option<f64> {
        let mut d = mote_runtime::graph_builder::GraphDraft::default();
        let x = d.input("x", ElementType::F32, &[1, 64]).ok()?;
        let w = d.constant(ElementType::F32, &[64, 64], vec![0; 64 * 64 * 4]).ok()?;
        let y = d.node("MatMul", &[x, w], vec![], 1).ok()?[0];
        let y = d.node("Relu", &[y], vec![], 1).ok()?[0];
        let model = d.lower(&[("y".into(), y)]).ok()?;
        let backend = mote_runtime::backend::standalone(BackendKind::OrtCpu).ok()?;
        let graph = backend.load(model.into()).ok()?;
        let mut ctx = graph.init_execution_context().ok()?;
        let data = vec![0u8; 64 * 4];
        let dims = [1u32, 64];
        let view = TensorView { ty: ElementType::F32, dims: &dims, data: &data };
        let start = std::time::Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_millis(200) {
            ctx.compute(&[("x", TensorView { ..view })], None).ok()?;
            n += 1;
        }
        Some(n as f64 / start.elapsed().as_secs_f64())
    };
    run().unwrap_or(0.0)
}

/// Why a job cannot run here.
enum Refusal {
    /// Another node may take it: hand it back.
    NotHere(String),
    /// The market's store could not be read or written (e.g. while a
    /// cluster elects a new leader after a server died): hand it back
    /// later, each time later than the last ([`unavailable_delay`]).
    Unavailable(String),
    /// No node can: dead-letter it.
    Never(String),
}

/// What a job's artifact or request that could not be had makes of the
/// job: `Unavailable` when the store did not answer (another try may get
/// it), else `Never` (missing, too large, or not its hash).
fn fetch_refusal(what: &str, e: anyhow::Error) -> Refusal {
    let message = format!("{what}{e:#}");
    match e.downcast_ref::<super::DownloadError>() {
        Some(super::DownloadError::Unavailable(_)) => Refusal::Unavailable(message),
        _ => Refusal::Never(message),
    }
}

/// How long a job handed back on its `attempt`-th delivery for
/// [`Refusal::Unavailable`] waits before its next: 1, 2, 4, 8 s …, at most
/// 30. Every delivery counts towards the consumer's `max_deliver`; with
/// the old fixed 1 s, five deliveries spanned about 5 s, and a JetStream
/// cluster still electing a leader after a server died ran jobs out of
/// deliveries (a CI run of the three-server test lost 8 of 200 that way).
fn unavailable_delay(attempt: u64) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

impl Node {
    /// An artifact's bytes: from the disk cache, else the object store
    /// (hash-checked, then cached).
    async fn artifact(&self, sha256: &str) -> Result<Vec<u8>> {
        if let Some(b) = self.cache.get(sha256) {
            return Ok(b);
        }
        let bytes = self.market.download(sha256, self.cfg.max_artifact_bytes as usize).await?;
        if let Err(e) = self.cache.put(sha256, &bytes) {
            tracing::warn!("caching artifact {sha256}: {e}");
        }
        Ok(bytes)
    }

    async fn handle(self: Arc<Self>, msg: Message) {
        let attempt = msg.info().map(|i| i.delivered.max(1) as u64).unwrap_or(1);
        let job = match JobSpec::parse(&msg.payload) {
            Ok(j) => j,
            Err(reason) => {
                let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
                self.dead_letter_raw(&msg.subject, seq, &msg.payload, &format!("invalid job definition: {reason}"), attempt)
                    .await;
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
        };
        let job_sha = job.sha256();
        // On a redelivery, a result may already be stored (a node died
        // between storing it and acking): then the job is done.
        if attempt > 1 {
            match self.market.result(&job.market, &job.id).await {
                Ok(Some(_)) => {
                    let _ = msg.double_ack().await;
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(job = %job.id, "checking for a result: {e:#}");
                    let _ = msg.ack_with(AckKind::Nak(Some(unavailable_delay(attempt)))).await;
                    return;
                }
            }
        }
        if let Err(refusal) = self.accepts(&job) {
            self.hand_back(&msg, &job, refusal, attempt).await;
            return;
        }
        // `running` is informational: written beside the run, not before it.
        let running = {
            let node = self.clone();
            let id = job.id.clone();
            let state = JobState::of(JobPhase::Running, &job, &job_sha, Some(&self.node_id), attempt, None);
            tokio::spawn(async move { node.market.set_job_state(&id, &state).await })
        };
        // In-progress acks while the job runs, so a long job is not
        // redelivered; a killed node sends none and the job comes back.
        let progress = {
            let msg = msg.clone();
            let every = Duration::from_secs(self.cfg.ack_wait_s.max(1)).mul_f64(0.3);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let _ = msg.ack_with(AckKind::Progress).await;
                }
            })
        };
        let outcome = self.clone().execute(&job, &job_sha, attempt).await;
        progress.abort();
        // The final state must not be overwritten by `running`.
        let _ = running.await;
        match outcome {
            Ok(final_state) => {
                // Acked only now: the result is stored. The final state is
                // written beside the ack.
                let state = self.market.set_job_state(&job.id, &final_state);
                let (_, acked) = tokio::join!(state, msg.double_ack());
                if let Err(e) = acked {
                    tracing::warn!(job = %job.id, "ack: {e}");
                }
            }
            Err(refusal) => self.hand_back(&msg, &job, refusal, attempt).await,
        }
    }

    /// Gives back a job this node does not run to the end: to another
    /// node (`NotHere`, redelivered after 1 s), to a later try
    /// (`Unavailable`, later on each attempt), or to the dead letters
    /// (`Never`).
    async fn hand_back(&self, msg: &Message, job: &JobSpec, refusal: Refusal, attempt: u64) {
        match refusal {
            Refusal::NotHere(why) => {
                tracing::info!(job = %job.id, "job handed back for another node: {why}");
                let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
            Refusal::Unavailable(why) => {
                let delay = unavailable_delay(attempt);
                tracing::warn!(job = %job.id, ?delay, "job handed back for a later try: {why}");
                let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
            }
            Refusal::Never(why) => {
                self.dead_letter(job, &why, attempt).await;
                let _ = msg.ack_with(AckKind::Term).await;
            }
        }
    }

    /// Whether this node takes `job` (price, limits).
    fn accepts(&self, job: &JobSpec) -> Result<(), Refusal> {
        // The subject it came on names the market; the job must agree.
        if job.market != self.cfg.market {
            return Err(Refusal::Never(format!(
                "the job names market '{}' but was posted in market '{}'",
                job.market, self.cfg.market
            )));
        }
        if self.cfg.price.per_backend_second > job.max_price {
            return Err(Refusal::NotHere(format!(
                "price {} per second is above the job's max_price {}",
                self.cfg.price.per_backend_second, job.max_price
            )));
        }
        if job.limits.fuel.is_some_and(|f| f > self.cfg.max_fuel) {
            return Err(Refusal::NotHere(format!("fuel above this node's {}", self.cfg.max_fuel)));
        }
        if job.limits.memory_bytes.is_some_and(|m| m > self.cfg.max_memory_bytes) {
            return Err(Refusal::NotHere(format!("memory above this node's {}", self.cfg.max_memory_bytes)));
        }
        Ok(())
    }

    /// Fetches, deploys, runs, publishes the result. `Ok` (with the job's
    /// final state, to record) once the result is stored.
    async fn execute(self: Arc<Self>, job: &JobSpec, job_sha: &str, attempt: u64) -> Result<JobState, Refusal> {
        let node = &self;
        let request =
            super::request_of(job, |sha| async move { node.artifact(&sha).await }).await.map_err(|e| fetch_refusal("", e))?;
        let deployment = self.deployment(job).await?;
        let job_id = job.id.clone();
        let report = {
            let _slot = self.run_slots.acquire().await.map_err(|e| Refusal::NotHere(e.to_string()))?;
            tokio::task::spawn_blocking(move || deployment.run_as(job_id, request))
                .await
                .map_err(|e| Refusal::NotHere(format!("job thread: {e}")))?
        };
        let (response, error) = match &report.result {
            Ok(r) => {
                let name = (!job.name.is_empty()).then_some(job.name.as_str());
                (Some(kserve::response_json(r, name).map_err(|e| Refusal::Never(e.to_string()))?), None)
            }
            Err(e) => (None, Some(JobFailure { outcome: e.outcome, message: e.message.clone() })),
        };
        let phase = if error.is_none() { JobPhase::Done } else { JobPhase::Failed };
        let reason = error.as_ref().map(|e| format!("{}: {}", e.outcome, e.message));
        let result = JobResult {
            version: spec::JOB_VERSION,
            job_id: job.id.clone(),
            market: job.market.clone(),
            job_sha256: job_sha.to_string(),
            node_id: self.node_id.clone(),
            response,
            error,
            receipt: report.receipt,
            attempt,
            job: job.clone(),
        };
        let payload = serde_json::to_vec(&result).expect("result serialises");
        let max = self.market.client.server_info().max_payload;
        if max > 0 && payload.len() > max {
            // Never storable: a retry would only run the job again.
            return Err(Refusal::Never(format!(
                "the result is {} bytes, over the NATS server's max_payload of {max} (large outputs are not \
                 supported by the market yet)",
                payload.len()
            )));
        }
        if let Err(e) = self.market.store_once(super::result_subject(&job.market, &job.id), &job.id, payload.into()).await
        {
            return Err(Refusal::Unavailable(format!("storing the result: {e:#}")));
        }
        Ok(JobState::of(phase, job, job_sha, Some(&self.node_id), attempt, reason))
    }

    /// A deployment for the job's guest, models and limits: compiled once,
    /// its artifacts fetched (hash-checked) only then.
    async fn deployment(&self, job: &JobSpec) -> Result<Deployment, Refusal> {
        let limits = job.limits();
        let backend = match job.backend {
            BackendReq::OrtCpu => BackendChoice::Fixed(BackendKind::OrtCpu),
            BackendReq::Wgpu => BackendChoice::Fixed(BackendKind::Wgpu),
            BackendReq::Gpu => match self.runtime.backend_device(BackendChoice::Auto) {
                Ok((k, _)) if k != BackendKind::OrtCpu => BackendChoice::Fixed(k),
                _ => return Err(Refusal::NotHere("no GPU backend here".into())),
            },
            BackendReq::Any => BackendChoice::Auto,
        };
        let key = format!(
            "{}|{:?}|{:?}|{}|{}|{}",
            job.guest, job.models, job.backend, limits.fuel, limits.memory_bytes, limits.deadline_ms
        );
        if let Some(d) = self.deployments.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(d.clone());
        }
        let guest = self.artifact(&job.guest).await.map_err(|e| fetch_refusal("guest: ", e))?;
        let mut models = Vec::with_capacity(job.models.len());
        for (name, sha) in &job.models {
            let bytes = self.artifact(sha).await.map_err(|e| fetch_refusal(&format!("model '{name}': "), e))?;
            models.push((name.clone(), bytes));
        }
        let runtime = self.runtime.clone();
        let name = format!("job-{}", &job.guest[..12]);
        let d = tokio::task::spawn_blocking(move || {
            runtime.deploy(DeploymentSpec { name, guest, models, limits, backend, batching: None })
        })
        .await
        .map_err(|e| Refusal::NotHere(format!("deploy thread: {e}")))?
        .map_err(|e| Refusal::Never(e.to_string()))?;
        let mut cache = self.deployments.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_DEPLOYMENTS {
            cache.clear();
        }
        cache.insert(key, d.clone());
        Ok(d)
    }

    /// Publishes a job to the dead-letter subject with the reason, and
    /// marks it dead.
    async fn dead_letter(&self, job: &JobSpec, reason: &str, deliveries: u64) {
        let body = serde_json::json!({
            "job_id": job.id, "market": job.market, "reason": reason, "deliveries": deliveries,
            "node_id": self.node_id, "job": job,
        });
        self.publish_dead(&job.market, &job.id, &body).await;
        let state = JobState::of(JobPhase::Dead, job, &job.sha256(), Some(&self.node_id), deliveries, Some(reason.into()));
        let _ = self.market.set_job_state(&job.id, &state).await;
        tracing::warn!(job = %job.id, "dead-lettered: {reason}");
    }

    /// Dead-letters bytes that are not a valid job.
    async fn dead_letter_raw(&self, subject: &str, seq: u64, payload: &[u8], reason: &str, deliveries: u64) {
        // mote.jobs.MARKET.BACKEND
        let market = subject.split('.').nth(2).unwrap_or("unknown").to_string();
        let id = format!("seq-{seq}");
        let body = serde_json::json!({
            "job_id": id, "market": market, "reason": reason, "deliveries": deliveries,
            "node_id": self.node_id, "raw": String::from_utf8_lossy(&payload[..payload.len().min(4096)]),
        });
        self.publish_dead(&market, &id, &body).await;
    }

    async fn publish_dead(&self, market: &str, id: &str, body: &serde_json::Value) {
        let subject = super::dead_subject(if spec::valid_name(market) { market } else { "unknown" }, id);
        if let Err(e) = self.market.store_once(subject, id, serde_json::to_vec(body).expect("json").into()).await {
            tracing::warn!("dead-lettering {id}: {e:#}");
        }
    }
}

/// The server's advisory for a job that reached its delivery limit.
#[derive(Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    deliveries: u64,
}

/// Moves jobs that ran out of deliveries (nodes died running them, or
/// none would take them) to the dead-letter subject, with the reason.
/// Nodes share the work through a queue group.
async fn dead_letter_advisories(node: Arc<Node>) {
    let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.*", super::JOBS);
    let mut sub = match node.market.client.queue_subscribe(subject, "mote-dead-letters".into()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("dead-letter advisories: {e}");
            return;
        }
    };
    while let Some(m) = sub.next().await {
        let Ok(a) = serde_json::from_slice::<MaxDeliveries>(&m.payload) else { continue };
        let Ok(raw) = node.market.jobs.get_raw_message(a.stream_seq).await else { continue };
        let reason = format!("not completed after {} deliveries (nodes failed or refused it)", a.deliveries);
        match JobSpec::parse(&raw.payload) {
            Ok(job) => node.dead_letter(&job, &reason, a.deliveries).await,
            Err(_) => node.dead_letter_raw(&raw.subject, a.stream_seq, &raw.payload, &reason, a.deliveries).await,
        }
        let _ = node.market.jobs.delete_message(a.stream_seq).await;
    }
}

/// Re-executes the `verify` share of other nodes' results (a durable
/// consumer on `MOTE_RESULTS` shared by the market's nodes; a node hands
/// its own results back so another node checks them) and records each
/// check in `MOTE_VERIFY` under the checked node.
async fn verify_others(node: Arc<Node>) {
    let name = format!("{}_verify", node.cfg.market);
    let consumer = match node
        .market
        .results
        .get_or_create_consumer(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: format!("mote.results.{}.*", node.cfg.market),
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(node.cfg.ack_wait_s.max(1)),
                max_deliver: 20,
                ..Default::default()
            },
        )
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("verification consumer: {e}");
            return;
        }
    };
    loop {
        let mut msgs = match consumer.stream().max_messages_per_batch(1).messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("verification: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(Ok(msg)) = msgs.next().await {
            let Ok(r) = serde_json::from_slice::<JobResult>(&msg.payload) else {
                let _ = msg.ack().await;
                continue;
            };
            if !r.job.selected_for_verification() || r.error.is_some() {
                let _ = msg.ack().await;
                continue;
            }
            if r.node_id == node.node_id {
                let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_millis(500)))).await;
                continue;
            }
            match node.clone().reexecute(&r).await {
                Ok(Some(matches)) => {
                    node.record_check(&r, matches).await;
                    let _ = msg.ack().await;
                }
                Ok(None) => {
                    let _ = msg.ack().await;
                }
                Err(e) => {
                    tracing::warn!(job = %r.job_id, "re-execution: {e:#}");
                    let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Node {
    /// Reruns another node's job here: `Some(outputs equal)`, or `None`
    /// where the comparison would not be bit-exact (another backend).
    async fn reexecute(self: Arc<Self>, r: &JobResult) -> Result<Option<bool>> {
        let job = &r.job;
        let node = self.clone();
        let request = super::request_of(job, |sha| async move { node.artifact(&sha).await }).await?;
        let deployment = match self.deployment(job).await {
            Ok(d) => d,
            Err(Refusal::Never(why) | Refusal::NotHere(why) | Refusal::Unavailable(why)) => anyhow::bail!("{why}"),
        };
        let id = job.id.clone();
        let _slot = self.run_slots.acquire().await?;
        let report = tokio::task::spawn_blocking(move || deployment.run_as(id, request)).await?;
        if report.receipt.backend != r.receipt.backend {
            return Ok(None);
        }
        Ok(Some(report.same_output_as(&r.receipt)))
    }

    /// Adds one check (and a mismatch) to the checked node's record.
    async fn record_check(&self, r: &JobResult, matches: bool) {
        let key = format!("{}.{}", r.market, r.node_id);
        for _ in 0..20 {
            let entry = self.market.verify.entry(key.as_str()).await.ok().flatten();
            let mut rec: serde_json::Value = entry
                .as_ref()
                .and_then(|e| serde_json::from_slice(&e.value).ok())
                .unwrap_or_else(|| serde_json::json!({"checked": 0, "mismatches": 0}));
            rec["checked"] = (rec["checked"].as_u64().unwrap_or(0) + 1).into();
            if !matches {
                rec["mismatches"] = (rec["mismatches"].as_u64().unwrap_or(0) + 1).into();
                rec["last_mismatch"] = serde_json::json!({"job_id": r.job_id, "by": self.node_id});
                tracing::warn!(job = %r.job_id, node = %r.node_id, "re-execution mismatch");
            }
            let bytes: bytes::Bytes = serde_json::to_vec(&rec).expect("json").into();
            let done = match entry {
                Some(e) => self.market.verify.update(key.as_str(), bytes, e.revision).await.is_ok(),
                None => self.market.verify.create(key.as_str(), bytes).await.is_ok(),
            };
            if done {
                return;
            }
        }
        tracing::warn!("could not record the check of {}", r.job_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_toml_sets_ort_spinning_which_is_off_by_default() {
        let cfg: NodeConfig = toml::from_str("market = \"m\"").unwrap();
        assert!(!cfg.ort_spinning);
        let cfg: NodeConfig = toml::from_str("market = \"m\"\nort_spinning = true").unwrap();
        assert!(cfg.ort_spinning);
        assert!(toml::from_str::<NodeConfig>("ort_spin = true").is_err(), "unknown keys are refused");
    }

    #[test]
    fn an_artifact_the_store_did_not_serve_is_tried_again_and_a_bad_one_never() {
        let unavailable = anyhow::Error::new(super::super::DownloadError::Unavailable("timed out".into()));
        let r = fetch_refusal("guest: ", unavailable.context("request object"));
        assert!(matches!(r, Refusal::Unavailable(ref m) if m == "guest: request object: timed out"));
        let refused = anyhow::Error::new(super::super::DownloadError::Refused("hash mismatch".into()));
        assert!(matches!(fetch_refusal("", refused), Refusal::Never(_)));
        // Anything else (a request that does not parse) is the job's fault.
        assert!(matches!(fetch_refusal("", anyhow::anyhow!("request: bad json")), Refusal::Never(_)));
    }

    #[test]
    fn a_job_the_store_cannot_take_comes_back_later_each_time() {
        let delays: Vec<u64> = (1..=8).map(|a| unavailable_delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        // The default five deliveries span 15 s of an unavailable store,
        // not 4.
        assert_eq!((1..5).map(|a| unavailable_delay(a).as_secs()).sum::<u64>(), 15);
    }
}
