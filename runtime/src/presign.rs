//! Ed25519 signing with nonces computed ahead of time.
//!
//! An ed25519 signature is `(R, s)` with `R = r·B` and
//! `s = r + H(R ‖ A ‖ M)·a`. RFC 8032 derives the nonce `r` from the key
//! and the message, so the fixed-base multiplication `r·B` — about two
//! thirds of a signature's cost — sits on every job's path. A verifier
//! cannot tell how `r` was chosen, only that the equation holds; Schnorr's
//! original scheme takes `r` at random. So the node draws `r` from the OS's
//! CSPRNG (mixed with the key's secret hash prefix, so a broken RNG alone
//! does not reveal `r`), computes `R` on a background thread while the node
//! is idle, and a job's signature costs one SHA-512 and a scalar
//! multiply-add. Each precomputed nonce is moved out of the pool exactly
//! once: a nonce signs one message, never two (two signatures with one `r`
//! would reveal the key).
//!
//! The signatures are ordinary ed25519 signatures: `verify_strict` accepts
//! them, receipts keep their format, and `mote verify` is unchanged. When
//! the pool is empty (jobs finish faster than the thread refills it: a node
//! saturated on every core), a job signs the RFC 8032 way inline: the work
//! then is what it was, never more.

use curve25519_dalek::constants::ED25519_BASEPOINT_TABLE;
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::hazmat::ExpandedSecretKey;
use ed25519_dalek::{Signature, Signer, SigningKey};
use rand::RngCore;
use sha2::{Digest, Sha512};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// Nonces the pool keeps ready: a burst of this many jobs signs without a
/// fixed-base multiplication each (≈ 1 ms of one core to refill).
const POOL_SIZE: usize = 64;

/// Below this many ready nonces the signer wakes the refill thread.
const LOW_WATER: usize = POOL_SIZE / 2;

/// One nonce: the secret `r` and its commitment `R = r·B`, compressed.
struct Nonce {
    r: Scalar,
    big_r: [u8; 32],
}

impl Drop for Nonce {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.r.zeroize();
    }
}

/// What the signer and its refill thread share.
struct Pool {
    nonces: Mutex<PoolState>,
    /// Signalled when a nonce is taken or the signer goes away.
    changed: Condvar,
}

struct PoolState {
    ready: Vec<Nonce>,
    closed: bool,
    /// The refill thread waits on `changed`: only then does a signer wake
    /// it (a futex syscall). Awake, or starved of CPU on a saturated node,
    /// it needs no wake-up, and a signature then makes no syscall.
    refill_asleep: bool,
    /// Wake-ups sent to the refill thread (tests).
    wakes: u64,
}

/// An ed25519 signer with a pool of precomputed nonces (see the module
/// docs). The refill thread starts on the first signature and stops when
/// the signer is dropped.
pub(crate) struct Presigner {
    signing: SigningKey,
    expanded: Arc<ExpandedSecretKey>,
    public: [u8; 32],
    pool: Arc<Pool>,
    thread: OnceLock<()>,
}

impl Presigner {
    pub(crate) fn new(signing: SigningKey) -> Self {
        let expanded = Arc::new(ExpandedSecretKey::from(&signing.to_bytes()));
        let public = signing.verifying_key().to_bytes();
        let pool = Arc::new(Pool {
            nonces: Mutex::new(PoolState {
                ready: Vec::with_capacity(POOL_SIZE),
                closed: false,
                refill_asleep: false,
                wakes: 0,
            }),
            changed: Condvar::new(),
        });
        Self { signing, expanded, public, pool, thread: OnceLock::new() }
    }

    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// Signs `message`: with a precomputed nonce when one is ready, else
    /// the RFC 8032 way.
    pub(crate) fn sign(&self, message: &[u8]) -> Signature {
        let nonce = self.lock_pool().and_then(|mut state| {
            let n = state.ready.pop();
            // Wake the thread (a futex syscall) only at the low-water mark,
            // and only if it sleeps: it then refills the pool to the top.
            if state.ready.len() < LOW_WATER && state.refill_asleep {
                state.refill_asleep = false;
                state.wakes += 1;
                self.pool.changed.notify_one();
            }
            n
        });
        self.thread.get_or_init(|| self.start_refill());
        match nonce {
            Some(n) => sign_with(&self.expanded.scalar, &self.public, &n, message),
            None => self.signing.sign(message),
        }
    }

    /// The pool, if its lock comes free within a few hundred tries. The
    /// refill thread runs at idle priority and takes the lock too: were it
    /// preempted while holding it (any job thread outranks it), a job
    /// waiting on the lock would wait until that core falls idle. So a job
    /// never waits: another job holds the lock for a few instructions, and
    /// past that the job signs inline.
    fn lock_pool(&self) -> Option<std::sync::MutexGuard<'_, PoolState>> {
        for _ in 0..256 {
            match self.pool.nonces.try_lock() {
                Ok(state) => return Some(state),
                Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => std::hint::spin_loop(),
            }
        }
        None
    }

    /// Nonces ready now (tests, metrics).
    #[cfg(test)]
    fn ready(&self) -> usize {
        self.pool.nonces.lock().unwrap_or_else(|p| p.into_inner()).ready.len()
    }

    fn start_refill(&self) {
        let pool = self.pool.clone();
        let expanded = self.expanded.clone();
        // Without the thread, every signature takes the inline path.
        let started = std::thread::Builder::new().name("mote-presign".into()).spawn(move || {
            run_at_idle_priority();
            loop {
                {
                    let mut state = pool.nonces.lock().unwrap_or_else(|p| p.into_inner());
                    if state.ready.len() >= POOL_SIZE {
                        // Full: sleep until the signer reaches the low-water mark.
                        while state.ready.len() >= LOW_WATER && !state.closed {
                            state.refill_asleep = true;
                            state = pool.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                            state.refill_asleep = false;
                        }
                    }
                    if state.closed {
                        return;
                    }
                }
                let nonce = fresh_nonce(&expanded.hash_prefix);
                pool.nonces.lock().unwrap_or_else(|p| p.into_inner()).ready.push(nonce);
            }
        });
        if let Err(e) = started {
            tracing::warn!("receipt nonce thread did not start ({e}); signing inline");
        }
    }
}

/// Puts the calling thread in Linux's `SCHED_IDLE` class: it runs only
/// when nothing else wants its core. The refill is work moved off the jobs'
/// path into idle time; at normal priority a refill burst (32 nonces,
/// ≈ 0.4 ms) competes with the very requests it is meant to speed up. A
/// saturated node then never refills and signs inline, as designed.
fn run_at_idle_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: plain syscall on the calling thread (pid 0) with a valid
        // parameter struct.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
            tracing::debug!("receipt nonce thread stays at normal priority: {}", std::io::Error::last_os_error());
        }
    }
}

impl Drop for Presigner {
    fn drop(&mut self) {
        self.pool.nonces.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.pool.changed.notify_all();
    }
}

/// A nonce from 32 bytes of the OS's CSPRNG, hashed with the key's secret
/// prefix: `r = SHA-512(prefix ‖ random) mod ℓ`, `R = r·B`.
fn fresh_nonce(hash_prefix: &[u8; 32]) -> Nonce {
    let mut random = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut random);
    let mut h = Sha512::new();
    h.update(hash_prefix);
    h.update(random);
    let r = Scalar::from_hash(h);
    let big_r = (&r * ED25519_BASEPOINT_TABLE).compress().to_bytes();
    Nonce { r, big_r }
}

/// `(R, s = r + SHA-512(R ‖ A ‖ M)·a)`: the second half of RFC 8032's
/// signing, with `r` given.
fn sign_with(a: &Scalar, public: &[u8; 32], nonce: &Nonce, message: &[u8]) -> Signature {
    let mut h = Sha512::new();
    h.update(nonce.big_r);
    h.update(public);
    h.update(message);
    let k = Scalar::from_hash(h);
    let s = k * a + nonce.r;
    let mut bytes = [0u8; 64];
    bytes[..32].copy_from_slice(&nonce.big_r);
    bytes[32..].copy_from_slice(s.as_bytes());
    Signature::from_bytes(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A presigner for `key` whose refill thread has filled the pool.
    fn full(key: &SigningKey) -> Presigner {
        let p = Presigner::new(key.clone());
        p.sign(b"start the thread");
        wait_full(&p);
        p
    }

    fn wait_full(p: &Presigner) {
        let end = Instant::now() + Duration::from_secs(20);
        while p.ready() < POOL_SIZE {
            assert!(Instant::now() < end, "the refill thread filled {} of {POOL_SIZE}", p.ready());
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn presigned_signatures_verify_strictly_and_never_reuse_a_nonce() {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let p = full(&key);
        let vk = key.verifying_key();
        let mut seen = std::collections::HashSet::new();
        // More than the pool: the rest are signed inline (deterministic).
        for i in 0..(POOL_SIZE + 8) {
            let msg = format!("receipt {i}");
            let sig = p.sign(msg.as_bytes());
            vk.verify_strict(msg.as_bytes(), &sig).expect("verifies");
            assert!(vk.verify_strict(b"another message", &sig).is_err());
            assert!(seen.insert(sig.r_bytes().to_vec()), "nonce R reused at {i}");
        }
    }

    #[test]
    fn a_presigned_signature_differs_from_rfc8032s_and_both_verify() {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let p = full(&key);
        let msg = b"same message";
        let (a, b) = (p.sign(msg), p.sign(msg));
        let rfc = key.sign(msg);
        assert_ne!(a, b, "two nonces, two signatures");
        assert_ne!(a, rfc);
        for s in [a, b, rfc] {
            key.verifying_key().verify_strict(msg, &s).expect("verifies");
        }
    }

    /// Signatures below the low-water mark wake the sleeping refill
    /// thread once, not once each.
    #[test]
    fn a_drained_pool_wakes_the_refill_thread_once() {
        let p = full(&SigningKey::generate(&mut rand::rngs::OsRng));
        let end = Instant::now() + Duration::from_secs(20);
        while !p.pool.nonces.lock().unwrap().refill_asleep {
            assert!(Instant::now() < end, "the refill thread never slept on a full pool");
            std::thread::sleep(Duration::from_millis(2));
        }
        let wakes = {
            let mut state = p.pool.nonces.lock().unwrap();
            state.ready.truncate(2);
            state.wakes
        };
        // Both below the low-water mark; the thread, woken by the first,
        // is awake (or has refilled) at the second.
        p.sign(b"first");
        p.sign(b"second");
        wait_full(&p);
        assert_eq!(p.pool.nonces.lock().unwrap().wakes, wakes + 1);
    }

    #[test]
    fn the_pool_refills_after_the_low_water_mark() {
        let p = full(&SigningKey::generate(&mut rand::rngs::OsRng));
        for _ in 0..(POOL_SIZE - LOW_WATER + 1) {
            p.sign(b"drain");
        }
        wait_full(&p);
    }

    /// The refill thread runs in `SCHED_IDLE` (and still fills the pool:
    /// the test above runs while this machine has idle time).
    #[cfg(target_os = "linux")]
    #[test]
    fn the_refill_thread_runs_at_idle_priority() {
        let _pool = full(&SigningKey::generate(&mut rand::rngs::OsRng));
        let mut seen = 0;
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let task = task.unwrap().path();
            if std::fs::read_to_string(task.join("comm")).unwrap_or_default().trim() != "mote-presign" {
                continue;
            }
            let tid: libc::pid_t = task.file_name().unwrap().to_str().unwrap().parse().unwrap();
            // SAFETY: a query of another thread's policy by id.
            assert_eq!(unsafe { libc::sched_getscheduler(tid) }, libc::SCHED_IDLE, "thread {tid}");
            seen += 1;
        }
        assert!(seen >= 1, "no mote-presign thread found");
    }

    /// A job never waits for the refill thread's lock (which an idle-class
    /// thread may hold while preempted): with the lock held elsewhere,
    /// `sign` signs inline at once, and the signature is valid.
    #[test]
    fn a_held_pool_lock_does_not_stall_a_signature() {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let p = full(&key);
        let held = p.pool.nonces.lock().unwrap();
        std::thread::scope(|s| {
            let signer = s.spawn(|| {
                let t = Instant::now();
                (p.sign(b"while held"), t.elapsed())
            });
            // Held for 2 s: a signer waiting on the lock would take that long.
            let end = Instant::now() + Duration::from_secs(2);
            while !signer.is_finished() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(held);
            let (sig, took) = signer.join().unwrap();
            assert!(took < Duration::from_secs(1), "sign waited {took:?} for the pool lock");
            key.verifying_key().verify_strict(b"while held", &sig).expect("inline signature verifies");
            assert_eq!(sig, key.sign(b"while held"), "signed the RFC 8032 way");
        });
    }

    #[test]
    fn an_empty_pool_signs_the_rfc8032_way() {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let p = Presigner::new(key.clone());
        // The first signature starts the refill thread after taking from
        // the (empty) pool.
        assert_eq!(p.sign(b"first"), key.sign(b"first"));
    }
}
