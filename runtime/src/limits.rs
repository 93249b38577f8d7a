//! Per-deployment limits and how hitting one ends a job.
//!
//! Each limit ends only the job that hit it, with the outcome named in the
//! receipt. Memory is enforced by a `ResourceLimiter` on the store, fuel and
//! deadline by wasmtime itself (fuel metering, epoch interruption), and
//! tensor/graph/log limits by the host functions.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Limits for one job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Wasm fuel the guest may burn (about one unit per instruction).
    pub fuel: u64,
    /// Wall-clock deadline for the whole job, in milliseconds.
    pub deadline_ms: u64,
    /// Largest guest linear memory, in bytes.
    pub memory_bytes: u64,
    /// Largest single tensor (input, output or constant), in bytes.
    pub max_tensor_bytes: u64,
    /// Most graphs one job may load.
    pub max_graphs: u32,
    /// Most bytes of log (log lines plus stdout/stderr) kept per job.
    pub max_log_bytes: u64,
    /// Most nodes (subgraphs included) in a graph a job loads or builds:
    /// ONNX Runtime's optimisation time grows with the square of a graph's
    /// size for some graphs.
    pub max_graph_nodes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 20_000_000_000,
            deadline_ms: 30_000,
            memory_bytes: 512 << 20,
            max_tensor_bytes: 256 << 20,
            max_graphs: 16,
            max_log_bytes: 64 << 10,
            max_graph_nodes: 10_000,
        }
    }
}

impl Limits {
    /// The deadline as a duration.
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }
}

/// How a job ended **(contract: receipts carry these strings)**.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The handler returned a response.
    Ok,
    /// The guest trapped (panic, unreachable, bad memory access, …).
    Trap,
    /// The guest ran out of fuel.
    FuelExhausted,
    /// The job ran past its deadline.
    Deadline,
    /// The guest asked for more linear memory than allowed.
    MemoryLimit,
    /// The request or a guest-declared tensor was invalid or too large.
    InvalidInput,
    /// The backend failed.
    BackendError,
    /// The client went away while the job streamed to it (or the caller
    /// cancelled the job).
    Cancelled,
    /// A command program exited with a non-zero status (the receipt's
    /// `exit_code`).
    Exit,
}

impl Outcome {
    /// The receipt spelling, e.g. `fuel_exhausted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Trap => "trap",
            Self::FuelExhausted => "fuel_exhausted",
            Self::Deadline => "deadline",
            Self::MemoryLimit => "memory_limit",
            Self::InvalidInput => "invalid_input",
            Self::BackendError => "backend_error",
            Self::Cancelled => "cancelled",
            Self::Exit => "exit",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A host-side reason to end a job now, raised as a trap from a host
/// function and recognised after the call returns.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct JobAbort {
    /// The outcome to record.
    pub outcome: Outcome,
    /// What happened.
    pub message: String,
}

impl JobAbort {
    /// Creates an abort with `outcome`.
    pub fn new(outcome: Outcome, message: impl Into<String>) -> Self {
        Self { outcome, message: message.into() }
    }
}

/// Enforces the memory limit and records the peak.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    pub(crate) max_bytes: u64,
    pub(crate) peak_bytes: u64,
    pub(crate) hit: bool,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired as u64 > self.max_bytes {
            self.hit = true;
            tracing::debug!(current, desired, max = self.max_bytes, "memory limit hit");
            return Err(wasmtime::Error::new(JobAbort::new(
                Outcome::MemoryLimit,
                format!(
                    "guest tried to grow linear memory from {current} to {desired} bytes; the limit is {}",
                    self.max_bytes
                ),
            )));
        }
        self.peak_bytes = self.peak_bytes.max(desired as u64);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}
