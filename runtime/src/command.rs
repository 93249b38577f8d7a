//! Command programs: `wasi:cli/command` components (a `main`) that import
//! standard `wasi:nn` (world `wasi:nn/ml`), as wasmtime runs them with
//! `-S nn --dir`. They read models and tensors from preopened directories
//! and print results; mote runs them with the job's limits and meter, the
//! mounted directories **read-only**, nothing else of the host reachable,
//! stdout and stderr streamed to the caller, and a signed receipt that
//! binds the program, the invocation (arguments and every mounted file's
//! hash) and the output (docs/receipts.md).

use crate::deployment::{Deployment, Entry};
use crate::job::{classify, Ending, JobError, JobReport};
use crate::limits::Outcome;
use mote_protocol::DigestAlg;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// A host directory the program sees, read-only, at `guest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The directory on the host.
    pub host: PathBuf,
    /// Its path inside the program (`HOST::GUEST`; the host path by default).
    pub guest: String,
}

impl Mount {
    /// Parses `HOST[::GUEST]` (wasmtime's `--dir` syntax).
    pub fn parse(spec: &str) -> Self {
        match spec.split_once("::") {
            Some((h, g)) => Self { host: h.into(), guest: g.into() },
            None => Self { host: spec.into(), guest: spec.into() },
        }
    }
}

/// One run of a command program.
pub struct CommandRun {
    /// `argv`; the first is the program's name.
    pub args: Vec<String>,
    /// Read-only directories.
    pub mounts: Vec<Mount>,
    /// Where the program's stdout goes, as it writes it.
    pub stdout: Box<dyn Write + Send>,
    /// Where its stderr goes.
    pub stderr: Box<dyn Write + Send>,
}

/// Why a command could not start.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The deployment's component is not a command.
    #[error("the component is not a command program (it exports no wasi:cli/run)")]
    NotACommand,
    /// A mount is not a readable directory, or holds too much to hash.
    #[error("--dir {path}: {message}")]
    Mount {
        /// The host path.
        path: String,
        /// Why.
        message: String,
    },
}

/// Most files the mounts may hold: each is hashed into the receipt.
pub const MAX_MOUNTED_FILES: usize = 100_000;

/// The invocation's canonical form, which `input_blake3` hashes: the
/// arguments, then per mount (in the order given) its guest path and every
/// regular file under it (relative path, sha256), sorted by path. Symlinks
/// are not followed (WASI does not follow them out of a preopen either).
pub fn invocation_manifest(args: &[String], mounts: &[Mount]) -> Result<serde_json::Value, CommandError> {
    let mut out = Vec::new();
    let mut count = 0usize;
    for m in mounts {
        let fail = |message: String| CommandError::Mount { path: m.host.display().to_string(), message };
        if !m.host.is_dir() {
            return Err(fail("not a directory".into()));
        }
        let mut files = Vec::new();
        let mut stack = vec![m.host.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).map_err(|e| fail(e.to_string()))? {
                let entry = entry.map_err(|e| fail(e.to_string()))?;
                let ty = entry.file_type().map_err(|e| fail(e.to_string()))?;
                if ty.is_dir() {
                    stack.push(entry.path());
                } else if ty.is_file() {
                    count += 1;
                    if count > MAX_MOUNTED_FILES {
                        return Err(fail(format!("more than {MAX_MOUNTED_FILES} files to hash")));
                    }
                    let rel = entry.path().strip_prefix(&m.host).map_or_else(|_| entry.path(), Path::to_path_buf);
                    files.push((rel.to_string_lossy().replace('\\', "/"), sha256_file(&entry.path()).map_err(fail)?));
                }
            }
        }
        files.sort();
        out.push(serde_json::json!({"guest": m.guest, "files": files}));
    }
    Ok(serde_json::json!({"args": args, "mounts": out}))
}

fn sha256_file(path: &Path) -> Result<String, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// A program's stdout or stderr: written through to the caller as the
/// program writes, hashed, and bounded (past `max` bytes the stream is
/// closed to the program).
#[derive(Clone)]
struct Tee(Arc<Mutex<TeeInner>>);

struct TeeInner {
    out: Box<dyn Write + Send>,
    hasher: blake3::Hasher,
    bytes: u64,
    max: u64,
}

impl Tee {
    fn new(out: Box<dyn Write + Send>, max: u64) -> Self {
        Self(Arc::new(Mutex::new(TeeInner { out, hasher: blake3::Hasher::new(), bytes: 0, max })))
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, TeeInner> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The BLAKE3 of everything written, and its length.
    fn finish(&self) -> (String, u64) {
        let mut t = self.inner();
        let _ = t.out.flush();
        (t.hasher.finalize().to_hex().to_string(), t.bytes)
    }

    fn put(&self, buf: &[u8]) -> Result<(), String> {
        let mut t = self.inner();
        if t.bytes.saturating_add(buf.len() as u64) > t.max {
            return Err(format!("output past its limit of {} bytes (limits.max_tensor_bytes)", t.max));
        }
        t.bytes += buf.len() as u64;
        t.hasher.update(buf);
        // A caller that stopped reading (a closed pipe) does not stop the
        // program: its output is still hashed and bounded.
        let _ = t.out.write_all(buf);
        Ok(())
    }
}

impl IsTerminal for Tee {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Tee {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Tee {
    async fn ready(&mut self) {}
}

impl OutputStream for Tee {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.put(&bytes).map_err(|m| StreamError::LastOperationFailed(wasmtime::format_err!(m)))
    }
    fn flush(&mut self) -> StreamResult<()> {
        let _ = self.inner().out.flush();
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        let t = self.inner();
        match t.max.saturating_sub(t.bytes) {
            0 => Err(StreamError::Closed),
            left => Ok(left.min(1 << 16) as usize),
        }
    }
}

impl tokio::io::AsyncWrite for Tee {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.put(buf).map(|()| buf.len()).map_err(std::io::Error::other))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let _ = self.inner().out.flush();
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Deployment {
    /// Whether the deployment's component is a command program (it exports
    /// `wasi:cli/run`) rather than a `mote:edge/job` guest.
    pub fn is_command(&self) -> bool {
        matches!(self.entry, Entry::Command(_))
    }

    /// Runs a command program once: its `main` with `run.args`, the mounts
    /// read-only, no network, no environment; the deployment's models are
    /// the graphs it may `load-by-name` (`--nn-graph NAME=PATH`). The exit
    /// code is in the receipt (`exit_code`); a non-zero one is outcome
    /// `exit`. Never panics on guest behaviour.
    pub fn run_command(&self, job_id: String, run: CommandRun) -> Result<JobReport, CommandError> {
        let Entry::Command(pre) = &self.entry else { return Err(CommandError::NotACommand) };
        let started_at = SystemTime::now();
        let start = Instant::now();
        let manifest = invocation_manifest(&run.args, &run.mounts)?;
        let input_digest =
            (DigestAlg::Blake3, DigestAlg::Blake3.hex(&serde_json::to_vec(&manifest).expect("JSON serialises")));
        let max = self.limits.max_tensor_bytes;
        let (stdout, stderr) = (Tee::new(run.stdout, max), Tee::new(run.stderr, max));
        let mut wasi = WasiCtxBuilder::new();
        wasi.args(&run.args)
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for m in &run.mounts {
            wasi.preopened_dir(&m.host, &m.guest, FsPerms::ReadOnly).map_err(|e| CommandError::Mount {
                path: m.host.display().to_string(),
                message: e.to_string(),
            })?;
        }
        let (mut store, armed) = self.new_store(crate::host::JobWasi::given(wasi.build()), None);
        let result: Result<i32, JobError> = match pre.instantiate(&mut store) {
            Err(e) => Err(classify(&e)),
            Ok(cmd) => match cmd.wasi_cli_run().call_run(&mut store) {
                Ok(Ok(())) => Ok(0),
                Ok(Err(())) => Ok(1),
                Err(e) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                    Some(exit) => Ok(exit.0),
                    None => Err(classify(&e)),
                },
            },
        };
        let fuel_left = if armed { store.get_fuel().ok() } else { None };
        let wall_ns = start.elapsed().as_nanos() as u64;
        let mut state = store.into_data();
        let usage = state.usage(fuel_left, wall_ns);
        let output_digest = (DigestAlg::Blake3, stdout.finish().0);
        let _ = stderr.finish();
        let (outcome, exit_code, result) = match result {
            Ok(0) => (Outcome::Ok, Some(0), Ok(mote_protocol::Response::default())),
            Ok(code) => (
                Outcome::Exit,
                Some(code),
                Err(JobError { outcome: Outcome::Exit, message: format!("the program exited with status {code}") }),
            ),
            Err(e) => (e.outcome, None, Err(e)),
        };
        let ends = Ending { job_id, started_at, input_digest, output_digest, stream_sha256: None, exit_code, outcome };
        let (receipt, log) = self.seal(&mut state, usage, ends);
        Ok(JobReport { result, receipt, log })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_parse_like_wasmtime_and_the_manifest_hashes_every_file() {
        assert_eq!(Mount::parse("a/b::fixture"), Mount { host: "a/b".into(), guest: "fixture".into() });
        assert_eq!(Mount::parse("models"), Mount { host: "models".into(), guest: "models".into() });
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("b.bin"), b"bee").unwrap();
        std::fs::write(d.path().join("sub/a.txt"), b"a").unwrap();
        let mounts = [Mount { host: d.path().into(), guest: "fixture".into() }];
        let m = invocation_manifest(&["prog".into(), "--x".into()], &mounts).unwrap();
        assert_eq!(m["args"], serde_json::json!(["prog", "--x"]));
        let files = m["mounts"][0]["files"].as_array().unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0][0], "b.bin");
        assert_eq!(files[0][1], hex::encode(Sha256::digest(b"bee")));
        assert_eq!(files[1][0], "sub/a.txt");
        // A changed file changes the manifest.
        std::fs::write(d.path().join("sub/a.txt"), b"A").unwrap();
        assert_ne!(invocation_manifest(&["prog".into(), "--x".into()], &mounts).unwrap(), m);
        let missing = [Mount { host: d.path().join("nope"), guest: "x".into() }];
        assert!(matches!(invocation_manifest(&[], &missing), Err(CommandError::Mount { .. })));
    }
}
