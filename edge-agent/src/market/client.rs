//! The market's client side: post jobs, wait for results, check receipts,
//! list nodes, settle, re-execute.

use super::spec::{self, BackendReq, JobLimits, JobPhase, JobResult, JobSpec, JobState, NodeSnapshot, RequestRef};
use super::Market;
use anyhow::{bail, Context, Result};
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures_util::StreamExt;
use mote_runtime::{kserve, Receipt};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// How long a listing of a stream or bucket may wait for the next entry
/// it expects.
const READ_IDLE: Duration = Duration::from_secs(10);

/// The next entry of a listing (an ordered consumer underneath), or an
/// error after [`READ_IDLE`]. An ordered consumer that loses its stream's
/// leader (a server of the cluster died) recreates itself and may wait for
/// entries that never come: bounded, so the caller sees an error and can
/// read again instead of hanging.
async fn next_within<S: futures_util::Stream + Unpin>(listing: &mut S, what: &str) -> Result<Option<S::Item>> {
    match tokio::time::timeout(READ_IDLE, listing.next()).await {
        Ok(next) => Ok(next),
        Err(_) => bail!("reading {what}: nothing for {READ_IDLE:?}"),
    }
}

/// What a client posts, before artifacts are uploaded.
#[derive(Clone, Debug)]
pub struct Submission {
    /// The market.
    pub market: String,
    /// Display name (the guest's file stem).
    pub name: String,
    /// Guest component bytes.
    pub guest: Vec<u8>,
    /// Named models.
    pub models: Vec<(String, Vec<u8>)>,
    /// The KServe v2 request JSON.
    pub request: serde_json::Value,
    /// Backend requirement.
    pub backend: BackendReq,
    /// Most price units per second.
    pub max_price: u64,
    /// Seconds of work paid at most (and the job's deadline).
    pub timeout_s: u64,
    /// Limits.
    pub limits: JobLimits,
    /// Share of jobs re-executed by other nodes.
    pub verify: f64,
}

impl Market {
    /// Uploads what the object store lacks and posts the job; returns it.
    pub async fn submit(&self, s: Submission) -> Result<JobSpec> {
        let guest = self.upload(&s.guest).await?;
        let mut models = BTreeMap::new();
        for (name, bytes) in &s.models {
            models.insert(name.clone(), self.upload(bytes).await?);
        }
        let inline = serde_json::to_vec(&s.request)?;
        let request = if inline.len() > spec::MAX_INLINE_REQUEST_BYTES {
            RequestRef::Object(self.upload(&inline).await?)
        } else {
            RequestRef::Inline(s.request)
        };
        let job = JobSpec {
            version: spec::JOB_VERSION,
            id: spec::new_job_id(),
            market: s.market,
            name: s.name,
            guest,
            models,
            request,
            backend: s.backend,
            limits: s.limits,
            max_price: s.max_price,
            timeout_s: s.timeout_s,
            verify: s.verify,
        };
        job.validate().map_err(anyhow::Error::msg)?;
        self.post(&job).await?;
        Ok(job)
    }

    /// Posts a job definition as it is (artifacts already stored).
    pub async fn post(&self, job: &JobSpec) -> Result<()> {
        // The state record (the posted job's hash, which settlement checks)
        // and the job itself are written concurrently.
        let record = JobState::of(JobPhase::Queued, job, &job.sha256(), None, 0, None);
        let state = self.set_job_state(&job.id, &record);
        let payload: bytes::Bytes = serde_json::to_vec(job)?.into();
        let publish = super::retry_transient(|| {
            self.store_once(super::job_subject(&job.market, job.backend), &job.id, payload.clone())
        });
        let (state, published) = tokio::join!(state, publish);
        state?;
        published.context("posting the job")
    }

    /// Waits for a job's result (or its dead-lettering) until `timeout`.
    pub async fn wait(&self, market: &str, job_id: &str, timeout: Duration) -> Result<JobResult> {
        // Subscribe first, then look: a result published in between is
        // seen by one or the other.
        let mut sub = self.client.subscribe(super::result_subject(market, job_id)).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(r) = self.result(market, job_id).await? {
                return Ok(r);
            }
            if let Some(st) = self.job_state(job_id).await? {
                if st.state == JobPhase::Dead {
                    bail!("job {job_id} was dead-lettered: {}", st.reason.unwrap_or_default());
                }
            }
            match tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + Duration::from_secs(1)), sub.next())
                .await
            {
                Ok(Some(m)) => return serde_json::from_slice(&m.payload).context("result record"),
                Ok(None) => bail!("subscription closed"),
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    bail!("no result for job {job_id} within {timeout:?}")
                }
                Err(_) => {}
            }
        }
    }

    /// A node's verified snapshot.
    pub async fn node(&self, market: &str, node_id: &str) -> Result<Option<NodeSnapshot>> {
        let Some(b) = self.nodes.get(format!("{market}.{node_id}")).await? else { return Ok(None) };
        let v: serde_json::Value = serde_json::from_slice(&b)?;
        Ok(NodeSnapshot::verify(&v).ok())
    }

    /// Every node of `market` with a valid signed snapshot, and which of
    /// them are live.
    pub async fn list_nodes(&self, market: &str) -> Result<Vec<(NodeSnapshot, bool)>> {
        let mut out = Vec::new();
        let mut keys = self.nodes.keys().await?;
        let prefix = format!("{market}.");
        let mut names = Vec::new();
        while let Some(k) = next_within(&mut keys, "MOTE_NODES").await? {
            let k = k?;
            if k.starts_with(&prefix) {
                names.push(k);
            }
        }
        for k in names {
            let Some(b) = self.nodes.get(&k).await? else { continue };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) else { continue };
            match NodeSnapshot::verify(&v) {
                Ok(s) if format!("{prefix}{}", s.node_id) == k => {
                    let live = s.is_live();
                    out.push((s, live));
                }
                _ => tracing::warn!("{k}: snapshot not signed by its node; ignored"),
            }
        }
        out.sort_by(|a, b| a.0.node_id.cmp(&b.0.node_id));
        Ok(out)
    }

    /// Re-execution records of a node: (checked, mismatches).
    pub async fn verify_record(&self, market: &str, node_id: &str) -> Result<(u64, u64)> {
        let Some(b) = self.verify.get(format!("{market}.{node_id}")).await? else { return Ok((0, 0)) };
        let v: serde_json::Value = serde_json::from_slice(&b)?;
        Ok((v["checked"].as_u64().unwrap_or(0), v["mismatches"].as_u64().unwrap_or(0)))
    }

    /// Every result of `market` (read with an ordered consumer from the
    /// start of the stream).
    pub async fn all_results(&self, market: &str) -> Result<Vec<JobResult>> {
        let consumer = self
            .results
            .create_consumer(pull::OrderedConfig {
                filter_subject: format!("mote.results.{market}.*"),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .context("reading MOTE_RESULTS")?;
        let pending = consumer.cached_info().num_pending;
        // Room reserved up to a bound: the count is the server's word, not ours.
        let mut out = Vec::with_capacity(pending.min(4096) as usize);
        if pending == 0 {
            return Ok(out);
        }
        let mut msgs = consumer.messages().await?;
        while let Some(m) = next_within(&mut msgs, "MOTE_RESULTS")
            .await
            .with_context(|| format!("{} of {pending} results read", out.len()))?
        {
            let m = m?;
            match serde_json::from_slice::<JobResult>(&m.payload) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!("{}: not a result record: {e}", m.subject),
            }
            if m.info().map_err(|e| anyhow::anyhow!(e))?.pending == 0 {
                break;
            }
        }
        Ok(out)
    }
}

/// Checks one result: the receipt's signature, that its signer is the
/// claimed node and that node is registered (signed snapshot in
/// `MOTE_NODES`), that the job is the one the client posted (hash in
/// `MOTE_JOB_STATE`), and the receipt's hashes against the job and the
/// response. Returns every problem found.
pub async fn check_result(market: &Market, r: &JobResult, known_nodes: &HashMap<String, NodeSnapshot>) -> Vec<String> {
    let mut problems = Vec::new();
    let receipt_json = serde_json::to_string(&r.receipt).expect("receipt serialises");
    if let Err(e) = Receipt::verify_json(&receipt_json) {
        problems.push(format!("receipt: {e}"));
    }
    if r.receipt.node_id != r.node_id {
        problems.push(format!("receipt signed by {}, result claims node {}", r.receipt.node_id, r.node_id));
    }
    if !known_nodes.contains_key(&r.node_id) {
        match market.node(&r.job.market, &r.node_id).await {
            Ok(Some(_)) => {}
            _ => problems.push(format!("node {} has no signed snapshot in MOTE_NODES", r.node_id)),
        }
    }
    if r.receipt.job_id != r.job_id || r.job.id != r.job_id {
        problems.push("job id differs between result, job and receipt".into());
    }
    if r.job.sha256() != r.job_sha256 {
        problems.push("job_sha256 does not match the job definition".into());
    }
    match market.job_state(&r.job_id).await {
        Ok(Some(st)) if st.job_sha256 != r.job_sha256 => {
            problems.push("the job definition differs from the one the client posted".into())
        }
        Ok(None) => problems.push("no job of this id was posted (MOTE_JOB_STATE)".into()),
        _ => {}
    }
    if r.receipt.guest_sha256 != r.job.guest {
        problems.push("receipt names another guest".into());
    }
    if let Some(m) = r.receipt.model_sha256.iter().find(|m| !r.job.models.values().any(|s| s == *m)) {
        problems.push(format!("receipt names model {m}, which the job does not"));
    }
    if let RequestRef::Inline(v) = &r.job.request {
        match kserve::parse_request(v) {
            Ok(req) if !r.receipt.binds_input(&req.inputs, &req.parameters) => {
                problems.push("receipt's input digest is not the job's request".into())
            }
            Err(e) => problems.push(format!("job request: {e}")),
            _ => {}
        }
    }
    let bound = match &r.response {
        Some(v) => match response_of(v) {
            Ok(resp) => r.receipt.binds_output(&resp.outputs, &resp.parameters),
            Err(e) => {
                problems.push(format!("response: {e}"));
                false
            }
        },
        None => r.receipt.binds_output(&[], &[]),
    };
    if !bound {
        problems.push("receipt's output digest is not the response's (output altered?)".into());
    }
    problems
}

/// Parses a KServe response JSON back into a response.
pub fn response_of(v: &serde_json::Value) -> Result<mote_runtime::Response> {
    let as_req = serde_json::json!({"inputs": v["outputs"], "parameters": v.get("parameters").cloned().unwrap_or_else(|| serde_json::json!({}))});
    let req = kserve::parse_request(&as_req)?;
    Ok(mote_runtime::Response { outputs: req.inputs, parameters: req.parameters })
}

/// One node's line of the settlement.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// Jobs with a verified receipt.
    pub jobs: u64,
    /// Of which failed (trap, limit).
    pub failed: u64,
    /// Backend nanoseconds.
    pub backend_ns: u64,
    /// Wall nanoseconds.
    pub wall_ns: u64,
    /// Payment due, price units.
    pub price_units: u64,
    /// Results rejected (bad signature or hashes).
    pub rejected: u64,
}

/// Settles a market: per node, the verified jobs and the payment due.
pub async fn settle(market: &Market, name: &str) -> Result<(BTreeMap<String, Settlement>, Vec<String>)> {
    let nodes: HashMap<String, NodeSnapshot> =
        market.list_nodes(name).await?.into_iter().map(|(s, _)| (s.node_id.clone(), s)).collect();
    let mut table: BTreeMap<String, Settlement> = BTreeMap::new();
    let mut rejections = Vec::new();
    for r in market.all_results(name).await? {
        let problems = check_result(market, &r, &nodes).await;
        let line = table.entry(r.node_id.clone()).or_default();
        if !problems.is_empty() {
            line.rejected += 1;
            rejections.push(format!("job {} (node {}): {}", r.job_id, r.node_id, problems.join("; ")));
            continue;
        }
        let price = match nodes.get(&r.node_id) {
            Some(s) => s.price.clone(),
            None => match market.node(name, &r.node_id).await? {
                Some(s) => s.price,
                None => mote_runtime::PriceTable::default(),
            },
        };
        line.jobs += 1;
        line.failed += u64::from(r.error.is_some());
        line.backend_ns += r.receipt.usage.backend_ns;
        line.wall_ns += r.receipt.usage.wall_ns;
        line.price_units += spec::payment(&price, &r.receipt, r.job.timeout_s);
    }
    Ok((table, rejections))
}
