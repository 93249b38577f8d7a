//! The receipt's request digest, computed beside the guest.
//!
//! A request's digest (over its canonical form, docs/receipts.md; BLAKE3
//! for any request large enough to matter here) is node work on every job's path: ≈ 70 µs for the CNN's 588 KiB
//! request on this project's VM, a fifth of the inference itself. The
//! guest does not need it, so for a request of at least [`BESIDE_BYTES`]
//! the node's digest thread computes it while the guest runs, and the job
//! picks it up when it seals the receipt. The request is shared with the
//! thread through an `Arc`, not copied: the guest reads the same bytes
//! (lowering only borrows them). Smaller requests, and any request while
//! the thread is still busy with another job's, are digested inline: the
//! hand-off costs a wake-up (≈ 1 – 2 µs), more than a small digest, and a
//! job never waits in a queue for its digest.

use crate::host::bindings::mote::edge::types as wit;
use mote_protocol::message::{receipt_digest, CanonicalTensor};
use mote_protocol::{Datatype, DigestAlg};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};

/// Requests with at least this many bytes of tensor data are digested on
/// the digest thread.
pub(crate) const BESIDE_BYTES: usize = 64 << 10;

impl CanonicalTensor for wit::IoTensor {
    fn name(&self) -> &str {
        &self.name
    }
    fn datatype(&self) -> &str {
        Datatype::from(self.datatype).as_str()
    }
    fn shape(&self) -> &[u64] {
        &self.shape
    }
    fn data(&self) -> &[u8] {
        &self.data
    }
}

/// A request's digest: ready, or being computed on the digest thread.
pub(crate) enum RequestDigest {
    Ready((DigestAlg, String)),
    Beside(mpsc::Receiver<(DigestAlg, String)>, Arc<wit::Request>),
}

type Task = (Arc<wit::Request>, mpsc::SyncSender<(DigestAlg, String)>);

/// The digest thread: its queue, and whether it is at work.
struct Worker {
    tasks: mpsc::Sender<Task>,
    busy: Arc<AtomicBool>,
}

fn worker() -> Option<&'static Worker> {
    static WORKER: OnceLock<Option<Worker>> = OnceLock::new();
    WORKER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Task>();
            let busy = Arc::new(AtomicBool::new(false));
            let idle = busy.clone();
            let started = std::thread::Builder::new().name("mote-digest".into()).spawn(move || {
                for (request, done) in rx {
                    let _ = done.send(digest(&request));
                    idle.store(false, Ordering::Release);
                }
            });
            match started {
                Ok(_) => Some(Worker { tasks: tx, busy }),
                Err(e) => {
                    tracing::warn!("request digest thread did not start ({e}); digesting inline");
                    None
                }
            }
        })
        .as_ref()
}

/// The receipt's digest of the request, in the hash picked for its length
/// (a request large enough to go beside the guest is always BLAKE3).
fn digest(request: &wit::Request) -> (DigestAlg, String) {
    receipt_digest(&request.inputs, &request.parameters)
}

impl RequestDigest {
    /// Starts the digest of `request`: on the digest thread if it is large
    /// and the thread is free, else here and now.
    pub(crate) fn start(request: &Arc<wit::Request>) -> Self {
        let bytes: usize = request.inputs.iter().map(|t| t.data.len()).sum();
        if bytes >= BESIDE_BYTES {
            if let Some(w) = worker() {
                // Claimed here, released by the thread when done: one
                // request at a time, never a queue.
                if !w.busy.swap(true, Ordering::AcqRel) {
                    let (done, result) = mpsc::sync_channel(1);
                    let sent = w.tasks.send((request.clone(), done));
                    if sent.is_ok() {
                        return Self::Beside(result, request.clone());
                    }
                    w.busy.store(false, Ordering::Release);
                }
            }
        }
        Self::Ready(digest(request))
    }

    /// The digest (waits for the digest thread if it is still at it).
    pub(crate) fn wait(self) -> (DigestAlg, String) {
        match self {
            Self::Ready(d) => d,
            // The thread ends only with the process; should it have
            // panicked, the digest is computed here.
            Self::Beside(result, request) => result.recv().unwrap_or_else(|_| digest(&request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mote_protocol::IoTensor;

    fn request(bytes: usize) -> mote_protocol::Request {
        let t = |name: &str, datatype, shape: Vec<u64>, data: Vec<u8>| IoTensor { name: name.into(), datatype, shape, data };
        mote_protocol::Request {
            inputs: vec![
                t("image", Datatype::Fp32, vec![1, (bytes / 4) as u64], (0..bytes).map(|i| (i * 7) as u8).collect()),
                t("mask", Datatype::Bool, vec![3], vec![1, 0, 1]),
                t("ids", Datatype::Int64, vec![1], 42i64.to_le_bytes().to_vec()),
            ],
            parameters: vec![("top_k".into(), "5".into()), ("a".into(), "b".into())],
        }
    }

    fn to_wit(r: &mote_protocol::Request) -> Arc<wit::Request> {
        let inputs = r.inputs.iter().cloned().map(crate::job::to_wit).collect();
        Arc::new(wit::Request { inputs, parameters: r.parameters.clone() })
    }

    #[test]
    fn digests_beside_and_inline_equal_the_receipts_digest_of_the_request() {
        for bytes in [16, BESIDE_BYTES, 600 << 10] {
            let r = request(bytes);
            let want = mote_protocol::receipt_digest(&r.inputs, &r.parameters);
            assert_eq!(want.1, mote_protocol::digest_with(want.0, &r.inputs, &r.parameters));
            let shared = to_wit(&r);
            // Several at once: some go to the thread, the rest inline.
            let started: Vec<_> = (0..4).map(|_| RequestDigest::start(&shared)).collect();
            assert!(bytes >= BESIDE_BYTES || started.iter().all(|d| matches!(d, RequestDigest::Ready(_))));
            for d in started {
                assert_eq!(d.wait(), want, "{bytes} bytes");
            }
        }
    }

    #[test]
    fn a_large_request_is_digested_on_the_thread_when_it_is_free() {
        let shared = to_wit(&request(600 << 10));
        // The thread may still be finishing another test's digest.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let d = RequestDigest::start(&shared);
            let beside = matches!(d, RequestDigest::Beside(..));
            d.wait();
            if beside {
                break;
            }
            assert!(std::time::Instant::now() < end, "never handed to the digest thread");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
