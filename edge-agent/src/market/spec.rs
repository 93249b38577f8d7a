//! What travels through the market (docs/market.md): job definitions,
//! results, job states and node snapshots, as versioned JSON, with their
//! validation and the payment rule. No IO.

use mote_runtime::{Outcome, PriceTable, Receipt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The job-definition format this build reads and writes.
pub const JOB_VERSION: u32 = 1;
/// Most models one job may name.
pub const MAX_MODELS: usize = 16;
/// Longest timeout a job may ask for.
pub const MAX_TIMEOUT_S: u64 = 3600;
/// Largest inline request (larger ones go to the object store).
pub const MAX_INLINE_REQUEST_BYTES: usize = 256 << 10;

/// A job as a client posts it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Format version ([`JOB_VERSION`]).
    pub version: u32,
    /// Job id: 32 lowercase hex digits, chosen by the client.
    pub id: String,
    /// The market it is posted to.
    pub market: String,
    /// A display name (the guest's file stem): the `model_name` of the
    /// response, as `mote run` prints it.
    #[serde(default)]
    pub name: String,
    /// sha256 of the guest component (in `MOTE_ARTIFACTS`).
    pub guest: String,
    /// Named models: name → sha256 (in `MOTE_ARTIFACTS`).
    #[serde(default)]
    pub models: BTreeMap<String, String>,
    /// The KServe v2 request, inline or by reference.
    pub request: RequestRef,
    /// Which backend the job needs.
    #[serde(default)]
    pub backend: BackendReq,
    /// Limits (each falls back to the node's default when absent).
    #[serde(default)]
    pub limits: JobLimits,
    /// Most price units per second of work the client pays.
    pub max_price: u64,
    /// Seconds of work paid at most; also the job's deadline.
    pub timeout_s: u64,
    /// Share of jobs other nodes re-execute to check (0 to 1).
    #[serde(default)]
    pub verify: f64,
}

/// Where a job's request is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum RequestRef {
    /// The KServe v2 JSON request itself.
    Inline(Value),
    /// sha256 of the request JSON in `MOTE_ARTIFACTS`.
    Object(String),
}

/// The backend a job needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendReq {
    /// ONNX Runtime on the CPU.
    OrtCpu,
    /// The wgpu backend.
    Wgpu,
    /// A GPU: CUDA or wgpu on a hardware adapter.
    Gpu,
    /// Whatever the node has.
    #[default]
    Any,
}

impl BackendReq {
    /// Every requirement, in subject order.
    pub const ALL: [BackendReq; 4] = [Self::OrtCpu, Self::Wgpu, Self::Gpu, Self::Any];

    /// The spelling in subjects, consumers and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrtCpu => "ort-cpu",
            Self::Wgpu => "wgpu",
            Self::Gpu => "gpu",
            Self::Any => "any",
        }
    }

    /// Parses the spelling.
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| format!("unknown backend '{s}' (expected ort-cpu, wgpu, gpu or any)"))
    }
}

/// A job's limits; `None` takes the node's default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobLimits {
    /// Fuel (guest instructions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Linear memory plus backend memory, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A name usable in subjects and keys: 1–64 of `[A-Za-z0-9_-]`.
pub fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `s` is a sha256 in lowercase hex.
pub fn is_sha256(s: &str) -> bool {
    is_hex(s, 64)
}

/// A fresh job id (the runtime's: receipts carry it).
pub use mote_runtime::new_job_id;

impl JobSpec {
    /// Parses and validates a posted job; the error names the field.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let job: JobSpec = serde_json::from_slice(bytes).map_err(|e| format!("not a job definition: {e}"))?;
        job.validate()?;
        Ok(job)
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != JOB_VERSION {
            return Err(format!("version {} is not supported (this node reads version {JOB_VERSION})", self.version));
        }
        if !is_hex(&self.id, 32) {
            return Err("id must be 32 lowercase hex digits".into());
        }
        if !valid_name(&self.market) {
            return Err("market must be 1-64 characters of A-Z a-z 0-9 _ -".into());
        }
        if self.name.len() > 128 {
            return Err("name must be at most 128 bytes".into());
        }
        if !is_sha256(&self.guest) {
            return Err("guest must be a sha256 (64 lowercase hex digits)".into());
        }
        if self.models.len() > MAX_MODELS {
            return Err(format!("{} models; a job may name at most {MAX_MODELS}", self.models.len()));
        }
        for (name, sha) in &self.models {
            if name.is_empty() || name.len() > 128 {
                return Err("model names must be 1-128 bytes".into());
            }
            if !is_sha256(sha) {
                return Err(format!("model '{name}': not a sha256"));
            }
        }
        match &self.request {
            RequestRef::Inline(v) => {
                mote_runtime::kserve::parse_request(v).map_err(|e| format!("request: {e}"))?;
            }
            RequestRef::Object(sha) if !is_sha256(sha) => return Err("request.object must be a sha256".into()),
            RequestRef::Object(_) => {}
        }
        if self.timeout_s == 0 || self.timeout_s > MAX_TIMEOUT_S {
            return Err(format!("timeout_s must be 1..={MAX_TIMEOUT_S}"));
        }
        if !(0.0..=1.0).contains(&self.verify) {
            return Err("verify must be a fraction between 0 and 1".into());
        }
        Ok(())
    }

    /// The canonical bytes of the job (what its sha256 is over).
    pub fn canonical(&self) -> Vec<u8> {
        mote_runtime::receipt::canonical_json(&serde_json::to_value(self).expect("a job serialises"))
    }

    /// sha256 of [`JobSpec::canonical`].
    pub fn sha256(&self) -> String {
        mote_runtime::receipt::sha256_hex(&self.canonical())
    }

    /// The sandbox limits the job runs under: its `timeout_s` as the
    /// deadline, its fuel and memory where given, else the defaults.
    pub fn limits(&self) -> mote_runtime::Limits {
        let d = mote_runtime::Limits::default();
        mote_runtime::Limits {
            deadline_ms: self.timeout_s * 1000,
            fuel: self.limits.fuel.unwrap_or(d.fuel),
            memory_bytes: self.limits.memory_bytes.unwrap_or(d.memory_bytes),
            ..d
        }
    }

    /// Whether this job is one of the `verify` share that other nodes
    /// re-execute (decided by the job id, so every node agrees).
    pub fn selected_for_verification(&self) -> bool {
        let x = u32::from_str_radix(&self.id[..8], 16).unwrap_or(u32::MAX);
        (f64::from(x) / f64::from(u32::MAX)) < self.verify
    }
}

/// A job's result, as a node publishes it to `MOTE_RESULTS`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// Format version ([`JOB_VERSION`]).
    pub version: u32,
    /// The job.
    pub job_id: String,
    /// Its market.
    pub market: String,
    /// sha256 of the job definition the node ran.
    pub job_sha256: String,
    /// The node that ran it.
    pub node_id: String,
    /// The KServe v2 response, when the job succeeded.
    pub response: Option<Value>,
    /// Why it failed, otherwise.
    pub error: Option<JobFailure>,
    /// The signed receipt (its `job_id` is the job's).
    pub receipt: Receipt,
    /// Which delivery of the job this was (1 = first).
    pub attempt: u64,
    /// The job definition, so that anyone can check the receipt's hashes.
    pub job: JobSpec,
}

/// How a job failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFailure {
    /// The receipt's outcome.
    pub outcome: Outcome,
    /// What happened.
    pub message: String,
}

/// Where a job is (KV `MOTE_JOB_STATE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobPhase {
    /// Posted, not yet taken.
    Queued,
    /// A node runs it.
    Running,
    /// Done, outcome ok.
    Done,
    /// Done, another outcome (the result has the receipt).
    Failed,
    /// Given up after its deliveries (see the dead-letter subject).
    Dead,
}

/// A job's state record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    /// The phase.
    pub state: JobPhase,
    /// The job's market.
    pub market: String,
    /// sha256 of the job definition as the client posted it.
    pub job_sha256: String,
    /// The node, once one took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Delivery count when last updated.
    #[serde(default)]
    pub attempt: u64,
    /// Why, for `failed` and `dead`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// RFC 3339.
    pub updated_at: String,
}

impl JobState {
    /// A state record of `job` (whose canonical sha256 is `job_sha256`),
    /// stamped now.
    pub fn of(
        state: JobPhase,
        job: &JobSpec,
        job_sha256: &str,
        node_id: Option<&str>,
        attempt: u64,
        reason: Option<String>,
    ) -> Self {
        Self {
            state,
            market: job.market.clone(),
            job_sha256: job_sha256.to_string(),
            node_id: node_id.map(String::from),
            attempt,
            reason,
            updated_at: now_rfc3339(),
        }
    }
}

/// Now, RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// A node's signed snapshot in KV `MOTE_NODES` (key `MARKET.NODE_ID`):
/// its specs, a micro-benchmark score and its prices, refreshed every
/// heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeSnapshot {
    /// Format version ([`JOB_VERSION`]).
    pub version: u32,
    /// The node's public key (hex): receipts must verify against it.
    pub node_id: String,
    /// The market.
    pub market: String,
    /// `mote specs` output.
    pub specs: Value,
    /// Micro-benchmark: tiny-MLP inferences per second on ORT CPU.
    pub score: f64,
    /// The node's prices.
    pub price: PriceTable,
    /// Backend requirements it serves.
    pub serves: Vec<BackendReq>,
    /// Jobs it runs at once.
    pub concurrency: usize,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339, the last heartbeat.
    pub heartbeat_at: String,
    /// Heartbeat interval, seconds.
    pub heartbeat_s: u64,
    /// ed25519 over the canonical JSON without this field.
    #[serde(default)]
    pub signature: String,
}

impl NodeSnapshot {
    /// Checks the signature; returns the snapshot if it is the node's own.
    pub fn verify(value: &Value) -> Result<NodeSnapshot, String> {
        let id = mote_runtime::receipt::verify_object(value).map_err(|e| e.to_string())?;
        let snap: NodeSnapshot = serde_json::from_value(value.clone()).map_err(|e| format!("snapshot: {e}"))?;
        if snap.node_id != id {
            return Err("snapshot node_id mismatch".into());
        }
        Ok(snap)
    }

    /// Whether the last heartbeat is recent: within three intervals.
    pub fn is_live(&self) -> bool {
        let Ok(at) = humantime::parse_rfc3339(&self.heartbeat_at) else { return false };
        at.elapsed().map_or(true, |age| age.as_secs() <= self.heartbeat_s.max(1) * 3)
    }
}

/// The payment for one job, Nosana's rule: the node's price per second ×
/// min(seconds used, the job's timeout), rounded up to whole units. Used
/// is the job's wall time on the node (the receipt's `wall_ns`).
pub fn payment(price: &PriceTable, receipt: &Receipt, timeout_s: u64) -> u64 {
    let used_ns = receipt.usage.wall_ns.min(timeout_s.saturating_mul(1_000_000_000));
    (u128::from(used_ns) * u128::from(price.per_backend_second)).div_ceil(1_000_000_000).min(u128::from(u64::MAX))
        as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job() -> JobSpec {
        JobSpec {
            version: 1,
            id: new_job_id(),
            market: "demo".into(),
            name: "mlp".into(),
            guest: "a".repeat(64),
            models: [("mlp".to_string(), "b".repeat(64))].into(),
            request: RequestRef::Inline(json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]})),
            backend: BackendReq::Any,
            limits: JobLimits::default(),
            max_price: 1000,
            timeout_s: 30,
            verify: 0.0,
        }
    }

    #[test]
    fn jobs_round_trip_and_bad_fields_are_named() {
        let j = job();
        let bytes = serde_json::to_vec(&j).unwrap();
        assert_eq!(JobSpec::parse(&bytes).unwrap(), j);
        let bad = |f: &dyn Fn(&mut JobSpec), want: &str| {
            let mut b = job();
            f(&mut b);
            let err = JobSpec::parse(&serde_json::to_vec(&b).unwrap()).unwrap_err();
            assert!(err.contains(want), "{err} should mention {want}");
        };
        bad(&|j| j.version = 2, "version 2");
        bad(&|j| j.id = "xyz".into(), "id");
        bad(&|j| j.market = "a b".into(), "market");
        bad(&|j| j.guest = "A".repeat(64), "guest");
        bad(&|j| j.timeout_s = 0, "timeout_s");
        bad(&|j| j.verify = 1.5, "verify");
        bad(&|j| j.request = RequestRef::Inline(json!({"inputs": 3})), "request");
        let unknown = serde_json::to_string(&j).unwrap().replacen('{', "{\"surprise\":1,", 1);
        assert!(JobSpec::parse(unknown.as_bytes()).unwrap_err().contains("surprise"));
    }

    #[test]
    fn payment_is_price_times_used_capped_at_timeout() {
        let price = PriceTable { per_backend_second: 1000, ..PriceTable::default() };
        let mut r: Receipt = serde_json::from_value(json!({
            "job_id": "", "node_id": "", "guest_sha256": "", "model_sha256": [], "input_sha256": "",
            "output_sha256": "", "started_at": "", "price_units": 0, "outcome": "ok", "backend": "none",
            "device": "none", "signature": "",
            "fuel": 0, "wall_ns": 1_500_000_000u64, "backend_ns": 0, "bytes_in": 0, "bytes_out": 0,
            "peak_memory_bytes": 0, "graphs_loaded": 0
        }))
        .unwrap();
        assert_eq!(payment(&price, &r, 30), 1500);
        assert_eq!(payment(&price, &r, 1), 1000, "capped at the timeout");
        r.usage.wall_ns = 1;
        assert_eq!(payment(&price, &r, 1), 1, "rounded up");
    }

    #[test]
    fn verification_share_follows_the_fraction() {
        let mut picked = 0;
        for _ in 0..2000 {
            let mut j = job();
            j.verify = 0.25;
            picked += usize::from(j.selected_for_verification());
        }
        assert!((350..650).contains(&picked), "{picked} of 2000 at 0.25");
        let mut j = job();
        j.verify = 0.0;
        assert!(!j.selected_for_verification());
    }
}
