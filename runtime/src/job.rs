//! Running one job: checks on the request, a fresh instance with every
//! limit armed, the handler called once, the outcome classified and the
//! receipt signed.

use crate::deployment::Deployment;
use crate::host::bindings::{exports::mote::edge::handler, mote::edge::types as wit};
use crate::host::{JobState, LogLevel, LogLine};
use crate::limits::{JobAbort, Outcome};
use crate::receipt::Receipt;
use crate::request_digest::RequestDigest;
use mote_protocol::{digest_with, receipt_digest, DigestAlg, IoTensor, Request, Response, MAX_INPUTS};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use wasmtime::Store;

/// Why a job produced no response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{outcome}: {message}")]
pub struct JobError {
    /// How the job ended.
    pub outcome: Outcome,
    /// What happened.
    pub message: String,
}

/// A job's store, armed and not yet begun, with the instance created in it
/// ahead of the job if there is one: [`Deployment::prepare_instance`]
/// keeps one per deployment so that the next job skips instantiation.
pub(crate) struct Prepared {
    store: Store<JobState>,
    /// Whether fuel is metered.
    armed: bool,
    job: Option<crate::host::handler::HandlerInstance>,
}

/// Where a deployment keeps its prepared instance.
#[derive(Default)]
pub(crate) struct PreparedSlot {
    instance: std::sync::Mutex<Option<Prepared>>,
    /// Instantiation failed once: no more instances are prepared ahead
    /// (each job instantiates, and its receipt accounts for what that
    /// costs; a guest whose instantiation spins to its deadline must not
    /// burn unbilled time after every reply).
    failed: std::sync::atomic::AtomicBool,
}

impl PreparedSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Prepared>> {
        self.instance.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A finished job's instance, store and guest memory, kept past its report
/// ([`Deployment::run_reply_first`]). Dropping it frees the instance and
/// resets its pool slot.
pub struct FinishedInstance {
    _store: Store<JobState>,
}

impl std::fmt::Debug for FinishedInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FinishedInstance")
    }
}

/// How a run ended: the receipt's fields that are not the meter's.
pub(crate) struct Ending {
    pub(crate) job_id: String,
    pub(crate) started_at: SystemTime,
    /// Digests of the request's and the response's canonical forms (a
    /// command's: of its invocation and its output), each in its hash.
    pub(crate) input_digest: (DigestAlg, String),
    pub(crate) output_digest: (DigestAlg, String),
    pub(crate) stream_sha256: Option<String>,
    pub(crate) exit_code: Option<i32>,
    pub(crate) outcome: Outcome,
}

/// Everything a job produced.
#[derive(Debug)]
pub struct JobReport {
    /// The response, or why there is none.
    pub result: Result<Response, JobError>,
    /// The signed receipt.
    pub receipt: Receipt,
    /// Captured log lines (guest log, stdout, stderr).
    pub log: Vec<LogLine>,
}

impl JobReport {
    /// Whether `receipt` (another run of the same job, e.g. another
    /// node's) names this run's response: its output digest, in its own
    /// hash, is that of this response (of an empty one if this run failed).
    pub fn same_output_as(&self, receipt: &Receipt) -> bool {
        receipt.output_digest().is_some_and(|(alg, hex)| self.output_digest(alg) == hex)
    }

    /// This run's response digest in hash `alg` (of an empty response if
    /// the run failed), as a receipt carries it.
    pub fn output_digest(&self, alg: DigestAlg) -> String {
        response_digest(alg, &self.result)
    }
}

/// A fresh job id: 16 random bytes in hex, as receipts carry it.
pub fn new_job_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// The digest of a job's response in hash `alg`: of an empty response when
/// the job produced none.
fn response_digest(alg: DigestAlg, result: &Result<Response, JobError>) -> String {
    match result {
        Ok(r) => digest_with(alg, &r.outputs, &r.parameters),
        Err(_) => digest_with(alg, &[], &[]),
    }
}

/// The response digest the receipt carries, in the hash picked for its
/// length ([`DigestAlg::for_len`]).
fn response_receipt_digest(result: &Result<Response, JobError>) -> (DigestAlg, String) {
    match result {
        Ok(r) => receipt_digest(&r.outputs, &r.parameters),
        Err(_) => receipt_digest::<IoTensor>(&[], &[]),
    }
}

impl Deployment {
    /// Runs one job: a fresh instance, limits armed, `handle` called once.
    /// Never panics on guest behaviour; every failure is in the report.
    /// Copies the request once; [`Deployment::run_owned`] does not.
    pub fn run(&self, request: &Request) -> JobReport {
        self.run_owned(request.clone())
    }

    /// Like [`Deployment::run`], taking the request: its tensors move into
    /// the call, so the only copy of their bytes is into guest memory.
    pub fn run_owned(&self, request: Request) -> JobReport {
        self.run_as(new_job_id(), request)
    }

    /// Like [`Deployment::run_owned`], with the job id the receipt carries
    /// chosen by the caller (a market job keeps its id in its receipt).
    pub fn run_as(&self, job_id: String, request: Request) -> JobReport {
        self.run_streaming(job_id, request, None)
    }

    /// Like [`Deployment::run_as`], forwarding what the guest streams
    /// (`mote:edge/output`) to `sink` as it comes. The sink returning
    /// `false` (the client went away) ends the job with outcome
    /// `cancelled`. Without a sink the chunks are only hashed.
    pub fn run_streaming(&self, job_id: String, request: Request, sink: Option<crate::host::StreamSink>) -> JobReport {
        self.run_reply_first(job_id, request, sink).0
    }

    /// Like [`Deployment::run_streaming`], handing back the finished
    /// instance with the report instead of resetting it first: resetting
    /// its pool slot (the guest memory the job dirtied) takes µs for a
    /// small job and tens of µs for one that took a large request, time the
    /// client need not wait for. Reply with the report, then hand the
    /// [`FinishedInstance`] to [`Deployment::after_reply`] (or drop it) on
    /// the same thread before its next job (the slot is that thread's warm
    /// one; held on, it is one slot fewer in the pool). The job's log, stream, usage and its count among the
    /// batcher's running jobs end before this returns; only the instance
    /// and its memory are left.
    pub fn run_reply_first(
        &self,
        job_id: String,
        request: Request,
        sink: Option<crate::host::StreamSink>,
    ) -> (JobReport, FinishedInstance) {
        let started_at = SystemTime::now();
        let start = Instant::now();
        // The instance prepared ahead of this job, or a store to create one.
        let prepared = self.prepared.lock().take();
        let Prepared { mut store, armed, job } = prepared.unwrap_or_else(|| self.idle_job_store());
        self.begin_job(&mut store, start, sink);
        let (result, input_digest) = self.call(&mut store, job, request);
        // Fuel left, where metering is on.
        let fuel_left = if armed { store.get_fuel().ok() } else { None };
        let wall_ns = start.elapsed().as_nanos() as u64;

        let state = store.data_mut();
        // The client's stream and the batcher's count of running jobs end
        // with the job, not with its instance.
        state.stream.close();
        state.nn.end_job();
        let usage = state.usage(fuel_left, wall_ns);
        // Captured stdout/stderr go through the job log, so the kept log is
        // bounded by max_log_bytes for the whole job, not per pipe.
        let [stdout, stderr] = state.wasi.captured_output();
        for (text, level) in [(stdout, LogLevel::Stdout), (stderr, LogLevel::Stderr)] {
            for line in String::from_utf8_lossy(&text).lines() {
                state.log.push(level, line.to_string());
            }
        }
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(e) => e.outcome,
        };
        let output_digest = response_receipt_digest(&result);
        let stream_sha256 = state.stream.sha256();
        let ends = Ending { job_id, started_at, input_digest, output_digest, stream_sha256, exit_code: None, outcome };
        let (receipt, log) = self.seal(state, usage, ends);
        if let Err(e) = &result {
            tracing::info!(deployment = %self.name, outcome = %e.outcome, "job failed: {}", e.message);
        }
        (JobReport { result, receipt, log }, FinishedInstance { _store: store })
    }

    /// A store for a job, its WASI context (built on the guest's first
    /// WASI call) capturing stdout and stderr; no instance yet, the job
    /// not begun.
    fn idle_job_store(&self) -> Prepared {
        let (store, armed) = self.idle_store(crate::host::JobWasi::captured(self.limits.max_log_bytes as usize));
        Prepared { store, armed, job: None }
    }

    /// Creates the next job's instance ahead of it, if none is waiting: a
    /// pristine instance in its own store (no job has run in it; guest
    /// memory as instantiation leaves it), so the next job skips
    /// instantiation (≈ 2 µs for a small guest, more for a large one).
    /// One per deployment; it holds one of the runtime's pooled instance
    /// slots while it waits. Call it off the request path: the node does
    /// after each reply (with [`Deployment::run_reply_first`]). A job's
    /// clock, deadlines, stream and batching seat start when the job
    /// does, not here; what instantiation costs (fuel, memory) counts
    /// toward the job that takes the instance, as it does when the job
    /// instantiates. Does nothing for command programs, nor after an
    /// instantiation has failed once.
    pub fn prepare_instance(&self) {
        let crate::deployment::Entry::Job(pre) = &self.entry else { return };
        if self.prepared.failed.load(std::sync::atomic::Ordering::Relaxed) || self.prepared.lock().is_some() {
            return;
        }
        let mut prepared = self.idle_job_store();
        match pre.instantiate(&mut prepared.store) {
            Ok(job) => {
                prepared.job = Some(job);
                let mut slot = self.prepared.lock();
                if slot.is_none() {
                    *slot = Some(prepared);
                }
            }
            // Jobs instantiate their own from now on: each fails the same
            // way and says so in its report.
            Err(e) => {
                self.prepared.failed.store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(deployment = %self.name, "no instances prepared ahead: instantiation failed: {}", one_line(&e));
            }
        }
    }

    /// The work after a reply, as the node does it: resets the finished
    /// instance's pool slot (dropping it), then prepares the next job's
    /// instance ([`Deployment::prepare_instance`]).
    pub fn after_reply(&self, finished: FinishedInstance) {
        drop(finished);
        self.prepare_instance();
    }

    /// The signed receipt and the kept log of a finished run (a job or a
    /// command program): the meter's usage and backend, and `ends`.
    pub(crate) fn seal(&self, state: &mut JobState, usage: crate::receipt::Usage, ends: Ending) -> (Receipt, Vec<LogLine>) {
        let mut log = std::mem::take(&mut state.log.lines);
        if state.log.dropped > 0 {
            log.push(LogLine {
                level: LogLevel::Warn,
                message: format!("{} log lines dropped (max_log_bytes)", state.log.dropped),
            });
        }
        let m = &state.nn.meter;
        let (backend, device) = m
            .backend_used
            .clone()
            .map_or_else(|| ("none".to_string(), "none".to_string()), |(k, d)| (k.to_string(), d));
        let rt = &self.runtime;
        let mut receipt = Receipt {
            job_id: ends.job_id,
            node_id: String::new(),
            guest_sha256: self.guest_sha256.clone(),
            model_sha256: m.models.clone(),
            input_blake3: None,
            input_sha256: None,
            output_blake3: None,
            output_sha256: None,
            started_at: humantime::format_rfc3339_millis(ends.started_at).to_string(),
            price_units: rt.signer.price.price_usage(&usage),
            stream_sha256: ends.stream_sha256,
            exit_code: ends.exit_code,
            usage,
            outcome: ends.outcome,
            backend,
            device,
            signature: String::new(),
        };
        receipt.set_input_digest(ends.input_digest);
        receipt.set_output_digest(ends.output_digest);
        receipt.sign(&rt.signer.key);
        (receipt, log)
    }

    /// Runs the handler on `request`; returns its result and the request's
    /// digest (computed beside the guest for a large request, see
    /// `request_digest`).
    fn call(
        &self,
        store: &mut Store<JobState>,
        job: Option<crate::host::handler::HandlerInstance>,
        request: Request,
    ) -> (Result<Response, JobError>, (DigestAlg, String)) {
        let pre = match self.admit(&request) {
            Ok(pre) => pre,
            Err(e) => return (Err(e), receipt_digest(&request.inputs, &request.parameters)),
        };
        // Shared with the digest thread, not copied: lowering only reads it.
        let wit_request = Arc::new(wit::Request {
            inputs: request.inputs.into_iter().map(to_wit).collect(),
            parameters: request.parameters,
        });
        let input_digest = RequestDigest::start(&wit_request);
        let result = Self::call_handler(store, pre, job, &wit_request);
        (result, input_digest.wait())
    }

    /// The request's checks before a guest sees it, and the deployment's
    /// pre-instantiated handler.
    fn admit(&self, request: &Request) -> Result<&crate::host::handler::HandlerPre, JobError> {
        // Checked before the guest runs: each input becomes a resource in
        // the store's bounded table, and names are how guests find them.
        let invalid = |message: String| JobError { outcome: Outcome::InvalidInput, message };
        if request.inputs.len() > MAX_INPUTS {
            return Err(invalid(format!(
                "{} inputs; a request may carry at most {}",
                request.inputs.len(),
                MAX_INPUTS
            )));
        }
        let mut names = std::collections::HashSet::with_capacity(request.inputs.len());
        if let Some(dup) = request.inputs.iter().find(|t| !names.insert(t.name.as_str())) {
            return Err(invalid(format!("two inputs are named '{}'; input names must be unique", dup.name)));
        }
        for t in &request.inputs {
            t.validate().map_err(|e| JobError { outcome: Outcome::InvalidInput, message: e.to_string() })?;
            if t.data.len() as u64 > self.limits.max_tensor_bytes {
                return Err(JobError {
                    outcome: Outcome::InvalidInput,
                    message: format!(
                        "input '{}' is {} bytes; the deployment's tensor limit is {}",
                        t.name,
                        t.data.len(),
                        self.limits.max_tensor_bytes
                    ),
                });
            }
        }
        match &self.entry {
            crate::deployment::Entry::Job(pre) => Ok(pre),
            crate::deployment::Entry::Command(_) => Err(JobError {
                outcome: Outcome::InvalidInput,
                message: "this deployment is a command program (wasi:cli/command): it takes no requests; \
                          run it with `mote run PROGRAM.wasm --dir HOST::GUEST`"
                    .into(),
            }),
        }
    }

    /// Instantiates the guest (unless `job` was created ahead) and calls
    /// its handler once.
    fn call_handler(
        store: &mut Store<JobState>,
        pre: &crate::host::handler::HandlerPre,
        job: Option<crate::host::handler::HandlerInstance>,
        request: &wit::Request,
    ) -> Result<Response, JobError> {
        let job = match job {
            Some(job) => job,
            None => pre.instantiate(&mut *store).map_err(|e| classify(&e))?,
        };
        match job.call_handle(&mut *store, request) {
            Ok(Ok(resp)) => {
                let outputs: Vec<IoTensor> = resp.outputs.into_iter().map(from_wit).collect();
                for t in &outputs {
                    t.validate().map_err(|m| JobError {
                        outcome: Outcome::Trap,
                        message: format!("guest returned a malformed output: {m}"),
                    })?;
                }
                Ok(Response { outputs, parameters: resp.parameters })
            }
            Ok(Err(handler::HandlerError::InvalidInput(m))) => {
                Err(JobError { outcome: Outcome::InvalidInput, message: m })
            }
            Ok(Err(handler::HandlerError::BackendError(m))) => {
                Err(JobError { outcome: Outcome::BackendError, message: m })
            }
            Err(e) => Err(classify(&e)),
        }
    }
}

/// An error chain on one line (wasmtime's messages span several).
pub(crate) fn one_line(e: &wasmtime::Error) -> String {
    format!("{e:#}").split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Maps a trap to the outcome the receipt records.
pub(crate) fn classify(e: &wasmtime::Error) -> JobError {
    if let Some(a) = e.downcast_ref::<JobAbort>() {
        return JobError { outcome: a.outcome, message: a.message.clone() };
    }
    let outcome = match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => Outcome::FuelExhausted,
        Some(wasmtime::Trap::Interrupt) => Outcome::Deadline,
        _ => Outcome::Trap,
    };
    let message = match outcome {
        Outcome::FuelExhausted => "guest ran out of fuel (limits.fuel)".to_string(),
        Outcome::Deadline => "job ran past its deadline (limits.deadline_ms)".to_string(),
        _ => format!("guest trapped: {}", one_line(e)),
    };
    JobError { outcome, message }
}

pub(crate) fn to_wit(t: IoTensor) -> wit::IoTensor {
    wit::IoTensor { name: t.name, datatype: t.datatype.into(), shape: t.shape, data: t.data }
}

fn from_wit(t: wit::IoTensor) -> IoTensor {
    IoTensor { name: t.name, datatype: t.datatype.into(), shape: t.shape, data: t.data }
}
