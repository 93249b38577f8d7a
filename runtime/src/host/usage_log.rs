//! `mote:edge/usage` and `mote:edge/log` host implementations, and the
//! bounded per-job log.

use super::bindings::mote::edge::{log, usage};
use super::JobState;
use serde::Serialize;
use wasmtime::component::{HasData, Linker};
use wasmtime::StoreContextMut;

/// Severity of a job log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Very detailed.
    Trace,
    /// Debugging detail.
    Debug,
    /// Progress.
    Info,
    /// Unexpected but handled.
    Warn,
    /// Failure.
    Error,
    /// A line the guest wrote to stdout.
    Stdout,
    /// A line the guest wrote to stderr.
    Stderr,
}

/// One line of a job log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// Severity.
    pub level: LogLevel,
    /// Text.
    pub message: String,
}

/// A job log that keeps at most `max_bytes` of text; later lines are
/// counted, not kept.
#[derive(Debug)]
pub(crate) struct JobLog {
    pub(crate) lines: Vec<LogLine>,
    bytes: u64,
    max_bytes: u64,
    pub(crate) dropped: u64,
}

impl JobLog {
    pub(crate) fn new(max_bytes: u64) -> Self {
        Self { lines: Vec::new(), bytes: 0, max_bytes, dropped: 0 }
    }

    /// Appends a line; returns false if it was dropped for the limit.
    pub(crate) fn push(&mut self, level: LogLevel, message: String) -> bool {
        let len = message.len() as u64;
        if self.bytes + len > self.max_bytes {
            self.dropped += 1;
            return false;
        }
        self.bytes += len;
        self.lines.push(LogLine { level, message });
        true
    }
}

/// Links `mote:edge/log`, reaching the job log through `view`.
pub(crate) fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> &mut JobLog,
) -> wasmtime::Result<()> {
    log::add_to_linker::<T, Log>(linker, view)
}

/// [`HasData`] for the job log.
struct Log;

impl HasData for Log {
    type Data<'a> = &'a mut JobLog;
}

impl log::Host for JobLog {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        self.push(level, message);
        Ok(())
    }
}

/// Links `mote:edge/usage` by hand: `current` reads the store's fuel, and
/// bindgen's store-aware imports (`Access`) need wasmtime's
/// `component-model-async`, whose bookkeeping every guest call would pay.
pub(crate) fn add_usage_to_linker(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    let mut usage_api = linker.instance("mote:edge/usage@0.1.0")?;
    usage_api.func_wrap("current", |cx: StoreContextMut<'_, JobState>, (): ()| {
        // `Err` when fuel metering is off: then no fuel was counted.
        let fuel_left = cx.get_fuel().ok();
        let s = cx.data();
        let u = s.usage(fuel_left, s.started.elapsed().as_nanos() as u64);
        Ok((usage::Usage {
            fuel: u.fuel,
            wall_ns: u.wall_ns,
            backend_ns: u.backend_ns,
            bytes_in: u.bytes_in,
            bytes_out: u.bytes_out,
            peak_memory_bytes: u.peak_memory_bytes,
            graphs_loaded: u.graphs_loaded,
        },))
    })?;
    usage_api.func_wrap("tokens", |cx: StoreContextMut<'_, JobState>, (): ()| {
        let m = &cx.data().nn.meter;
        Ok((usage::TokenUsage { prompt: m.prompt_tokens, completion: m.completion_tokens },))
    })?;
    Ok(())
}

impl super::bindings::mote::edge::types::Host for JobState {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keeps_within_its_byte_limit() {
        let mut log = JobLog::new(10);
        assert!(log.push(LogLevel::Info, "12345".into()));
        assert!(log.push(LogLevel::Info, "12345".into()));
        assert!(!log.push(LogLevel::Info, "x".into()));
        assert_eq!(log.lines.len(), 2);
        assert_eq!(log.dropped, 1);
    }
}
