//! `mote:edge/output`: chunks a guest emits while it runs, forwarded to the
//! job's client as they come and hashed for the receipt.

use super::bindings::mote::edge::output;
use super::nn::abort;
use crate::limits::Outcome;
use sha2::{Digest, Sha256};
use wasmtime::component::{HasData, Linker};

/// Where a job's chunks go. Returns `false` when the client has gone: the
/// job then ends with outcome `cancelled`. Called on the job's thread; it
/// may block (that is the stream's backpressure).
pub type StreamSink = Box<dyn FnMut(&[u8]) -> bool + Send>;

/// One job's output stream.
pub(crate) struct JobStream {
    sink: Option<StreamSink>,
    hasher: Sha256,
    pub(crate) bytes: u64,
    pub(crate) chunks: u64,
    max_bytes: u64,
}

impl JobStream {
    pub(crate) fn new(sink: Option<StreamSink>, max_bytes: u64) -> Self {
        Self { sink, hasher: Sha256::new(), bytes: 0, chunks: 0, max_bytes }
    }

    /// Where the job's chunks go from now on.
    pub(crate) fn set_sink(&mut self, sink: Option<StreamSink>) {
        self.sink = sink;
    }

    /// Ends the stream: the sink is dropped (its client sees the end) and
    /// later chunks only count and hash.
    pub(crate) fn close(&mut self) {
        self.sink = None;
    }

    /// The hash the receipt carries: of every chunk, concatenated; `None`
    /// when the guest streamed nothing.
    pub(crate) fn sha256(&self) -> Option<String> {
        (self.chunks > 0).then(|| hex::encode(self.hasher.clone().finalize()))
    }

    fn emit(&mut self, chunk: &[u8]) -> wasmtime::Result<()> {
        let len = chunk.len() as u64;
        if self.bytes.saturating_add(len) > self.max_bytes {
            return Err(abort(
                Outcome::InvalidInput,
                format!(
                    "the job streamed more than its tensor limit of {} bytes (limits.max_tensor_bytes)",
                    self.max_bytes
                ),
            ));
        }
        self.bytes += len;
        self.chunks += 1;
        self.hasher.update(chunk);
        if let Some(sink) = &mut self.sink {
            if !sink(chunk) {
                return Err(abort(Outcome::Cancelled, "the client disconnected while the job streamed to it"));
            }
        }
        Ok(())
    }
}

/// Links `mote:edge/output`, reaching the job's stream through `view`.
pub(crate) fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> &mut JobStream,
) -> wasmtime::Result<()> {
    output::add_to_linker::<T, Stream>(linker, view)
}

struct Stream;

impl HasData for Stream {
    type Data<'a> = &'a mut JobStream;
}

impl output::Host for JobStream {
    fn emit(&mut self, chunk: Vec<u8>) -> wasmtime::Result<()> {
        JobStream::emit(self, &chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::JobAbort;
    use std::sync::{Arc, Mutex};

    #[test]
    fn chunks_reach_the_sink_and_the_hash() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let mut s = JobStream::new(Some(Box::new(move |c| { g.lock().unwrap().extend_from_slice(c); true })), 100);
        assert_eq!(s.sha256(), None, "no chunk, no hash");
        s.emit(b"Hello, ").unwrap();
        s.emit(b"world").unwrap();
        assert_eq!(&*got.lock().unwrap(), b"Hello, world");
        assert_eq!(s.sha256().unwrap(), crate::receipt::sha256_hex(b"Hello, world"));
    }

    #[test]
    fn a_gone_client_cancels_and_the_limit_holds() {
        let mut s = JobStream::new(Some(Box::new(|_| false)), 100);
        let e = s.emit(b"x").unwrap_err();
        assert_eq!(e.downcast_ref::<JobAbort>().unwrap().outcome, Outcome::Cancelled);
        let mut s = JobStream::new(None, 4);
        s.emit(b"1234").unwrap();
        let e = s.emit(b"5").unwrap_err();
        assert_eq!(e.downcast_ref::<JobAbort>().unwrap().outcome, Outcome::InvalidInput);
    }
}
