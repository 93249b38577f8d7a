//! Signed usage receipts **(contract: see docs/receipts.md)**.
//!
//! A receipt is JSON; its signature is ed25519 by the node key over the
//! canonical form of the receipt without its `signature` field: keys sorted
//! at every level, no whitespace. All numbers are integers, so the canonical
//! form survives any JSON round trip.

use crate::limits::Outcome;
use ed25519_dalek::{SigningKey, VerifyingKey};
use mote_protocol::{digest_with, DigestAlg, IoTensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Resources one job consumed **(contract)**.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Wasm fuel consumed by guest code.
    pub fuel: u64,
    /// Wall time of the whole job, in nanoseconds.
    pub wall_ns: u64,
    /// Time inside backend compute (and graph loads), in nanoseconds.
    pub backend_ns: u64,
    /// Tensor bytes passed into the backend.
    pub bytes_in: u64,
    /// Tensor bytes returned by the backend.
    pub bytes_out: u64,
    /// Peak guest linear memory, in bytes.
    pub peak_memory_bytes: u64,
    /// Graphs loaded by the job.
    pub graphs_loaded: u32,
    /// Prompt tokens counted by the host (contexts with bound state; absent
    /// when zero, so receipts of other jobs are unchanged).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub prompt_tokens: u64,
    /// Completion tokens counted by the host (absent when zero).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub completion_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A signed record of one job **(contract)**.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// Random id of the job (32 hex digits).
    pub job_id: String,
    /// The node's ed25519 public key, hex.
    pub node_id: String,
    /// sha256 of the guest component bytes, hex.
    pub guest_sha256: String,
    /// sha256 of every model the job loaded (ONNX bytes; lowered ONNX for
    /// builder graphs), hex, in load order without repeats.
    pub model_sha256: Vec<String>,
    /// BLAKE3 of the request in canonical binary form (docs/receipts.md),
    /// hex; or, in its place, `input_sha256`: a receipt has exactly one
    /// of the two ([`Receipt::input_digest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_blake3: Option<String>,
    /// sha256 of the request: what a node writes for a short request on a
    /// CPU with sha256 instructions ([`mote_protocol::DigestAlg::for_len`]),
    /// and what receipts written before BLAKE3 carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_sha256: Option<String>,
    /// BLAKE3 of the response in canonical binary form (of an empty
    /// response when the job produced none), hex; or `output_sha256`, as
    /// for the request ([`Receipt::output_digest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_blake3: Option<String>,
    /// sha256 of the response, as `input_sha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_sha256: Option<String>,
    /// Start time, RFC 3339 UTC.
    pub started_at: String,
    /// What was consumed.
    #[serde(flatten)]
    pub usage: Usage,
    /// How the job ended.
    pub outcome: Outcome,
    /// Backend that ran the job's graphs (`none` if it loaded none).
    pub backend: String,
    /// Device that ran them.
    pub device: String,
    /// sha256 of everything the guest streamed (`mote:edge/output`),
    /// concatenated, hex; absent when it streamed nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_sha256: Option<String>,
    /// A command program's exit status; absent for job guests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Price of the job in the node's price units.
    pub price_units: u64,
    /// ed25519 signature, hex, over the canonical JSON without this field.
    #[serde(default)]
    pub signature: String,
}

/// Why a receipt did not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Not a receipt.
    #[error("not a receipt: {0}")]
    Malformed(String),
    /// `node_id` is not an ed25519 public key, or a weak (small-order) one.
    #[error("node_id is not a valid ed25519 public key (or a weak, small-order one)")]
    BadNodeId,
    /// The signature does not match the content.
    #[error("signature does not match: the receipt was altered or not signed by node {0}")]
    BadSignature(String),
}

/// Serialises a JSON value canonically: object keys sorted, no spaces.
pub fn canonical_json(value: &serde_json::Value) -> Vec<u8> {
    fn write(v: &serde_json::Value, out: &mut Vec<u8>) {
        match v {
            serde_json::Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push(b'{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend(serde_json::to_vec(k).expect("string serialises"));
                    out.push(b':');
                    write(&map[k], out);
                }
                out.push(b'}');
            }
            serde_json::Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(item, out);
                }
                out.push(b']');
            }
            scalar => out.extend(serde_json::to_vec(scalar).expect("scalar serialises")),
        }
    }
    let mut out = Vec::new();
    write(value, &mut out);
    out
}

/// The bytes a signature covers: the canonical JSON of `value` without its
/// `signature` key (removed in place).
fn signed_bytes(mut value: serde_json::Value) -> Vec<u8> {
    if let serde_json::Value::Object(map) = &mut value {
        map.remove("signature");
    }
    canonical_json(&value)
}

/// The signed fields of a receipt in canonical (bytewise sorted) key order:
/// serialised with `serde_json`, it gives the same bytes as
/// `canonical_json` of the receipt without `signature`, without building
/// and sorting a JSON tree for every job.
#[derive(Serialize)]
struct CanonicalFields<'a> {
    backend: &'a str,
    backend_ns: u64,
    bytes_in: u64,
    bytes_out: u64,
    #[serde(skip_serializing_if = "is_zero")]
    completion_tokens: u64,
    device: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    fuel: u64,
    graphs_loaded: u32,
    guest_sha256: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    input_blake3: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    input_sha256: Option<&'a str>,
    job_id: &'a str,
    model_sha256: &'a [String],
    node_id: &'a str,
    outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_blake3: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_sha256: Option<&'a str>,
    peak_memory_bytes: u64,
    price_units: u64,
    #[serde(skip_serializing_if = "is_zero")]
    prompt_tokens: u64,
    started_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_sha256: Option<&'a str>,
    wall_ns: u64,
}

impl Receipt {
    /// The bytes the signature covers (see docs/receipts.md).
    fn canonical_bytes(&self) -> Vec<u8> {
        let u = &self.usage;
        let fields = CanonicalFields {
            backend: &self.backend,
            backend_ns: u.backend_ns,
            bytes_in: u.bytes_in,
            bytes_out: u.bytes_out,
            completion_tokens: u.completion_tokens,
            device: &self.device,
            exit_code: self.exit_code,
            fuel: u.fuel,
            graphs_loaded: u.graphs_loaded,
            guest_sha256: &self.guest_sha256,
            input_blake3: self.input_blake3.as_deref(),
            input_sha256: self.input_sha256.as_deref(),
            job_id: &self.job_id,
            model_sha256: &self.model_sha256,
            node_id: &self.node_id,
            outcome: self.outcome,
            output_blake3: self.output_blake3.as_deref(),
            output_sha256: self.output_sha256.as_deref(),
            peak_memory_bytes: u.peak_memory_bytes,
            price_units: self.price_units,
            prompt_tokens: u.prompt_tokens,
            started_at: &self.started_at,
            stream_sha256: self.stream_sha256.as_deref(),
            wall_ns: u.wall_ns,
        };
        let mut out = Vec::with_capacity(768);
        serde_json::to_writer(&mut out, &fields).expect("receipt serialises");
        out
    }

    /// Signs the receipt in place with `key` (also sets `node_id`), with a
    /// precomputed random nonce where one is ready (see `presign.rs`).
    pub fn sign(&mut self, key: &NodeKey) {
        self.node_id.clone_from(&key.node_id);
        self.signature = hex::encode(key.signing.sign(&self.canonical_bytes()).to_bytes());
    }

    /// Signs as [`Receipt::sign`] does, always with RFC 8032's
    /// deterministic nonce (what `sign` falls back to when no nonce is
    /// ready): for side-by-side measurements.
    pub fn sign_rfc8032(&mut self, key: &NodeKey) {
        use ed25519_dalek::Signer;
        self.node_id.clone_from(&key.node_id);
        self.signature = hex::encode(key.signing.signing_key().sign(&self.canonical_bytes()).to_bytes());
    }

    /// Sets the request digest: the field of its hash, the other one
    /// cleared.
    pub fn set_input_digest(&mut self, digest: (DigestAlg, String)) {
        (self.input_blake3, self.input_sha256) = digest_fields(digest);
    }

    /// Sets the response digest, as [`Receipt::set_input_digest`].
    pub fn set_output_digest(&mut self, digest: (DigestAlg, String)) {
        (self.output_blake3, self.output_sha256) = digest_fields(digest);
    }

    /// The request digest and its hash: `input_blake3` or `input_sha256`
    /// (a node writes one, [`mote_protocol::DigestAlg::for_len`]); `None`
    /// if the receipt has neither or both (no signed receipt does:
    /// [`Receipt::verify_json`] refuses them).
    pub fn input_digest(&self) -> Option<(DigestAlg, &str)> {
        one_digest(self.input_blake3.as_deref(), self.input_sha256.as_deref())
    }

    /// The response digest and its hash, as [`Receipt::input_digest`].
    pub fn output_digest(&self) -> Option<(DigestAlg, &str)> {
        one_digest(self.output_blake3.as_deref(), self.output_sha256.as_deref())
    }

    /// Whether the receipt's request digest is that of `tensors` and
    /// `parameters` (in the receipt's own hash).
    pub fn binds_input(&self, tensors: &[IoTensor], parameters: &[(String, String)]) -> bool {
        self.input_digest().is_some_and(|(alg, hex)| digest_with(alg, tensors, parameters) == hex)
    }

    /// Whether the receipt's response digest is that of `tensors` and
    /// `parameters` (in the receipt's own hash).
    pub fn binds_output(&self, tensors: &[IoTensor], parameters: &[(String, String)]) -> bool {
        self.output_digest().is_some_and(|(alg, hex)| digest_with(alg, tensors, parameters) == hex)
    }

    /// Pretty JSON for files and responses.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("receipt serialises")
    }

    /// Parses receipt JSON and checks its signature against its `node_id`.
    pub fn verify_json(text: &str) -> Result<Receipt, VerifyError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| VerifyError::Malformed(e.to_string()))?;
        let receipt = Receipt::deserialize(&value).map_err(|e| VerifyError::Malformed(e.to_string()))?;
        // One digest of each side, in one hash: a receipt with both (or
        // neither) would let a checker pick the one that suits it.
        for (side, digest) in [("input", receipt.input_digest()), ("output", receipt.output_digest())] {
            if digest.is_none() {
                return Err(VerifyError::Malformed(format!(
                    "a receipt carries exactly one {side} digest: {side}_blake3 or (older receipts) {side}_sha256"
                )));
            }
        }
        verify_signature(&receipt.node_id, &receipt.signature, &signed_bytes(value))?;
        Ok(receipt)
    }
}

/// Checks an ed25519 `signature` (hex) by `node_id` (hex public key) over
/// `content`, strictly: weak keys, non-canonical signatures and small-order
/// points are refused. Hex must be lowercase, as signing writes it: a
/// receipt has one spelling (an upper-case copy would be a second receipt
/// that verifies).
fn verify_signature(node_id: &str, signature: &str, content: &[u8]) -> Result<(), VerifyError> {
    let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !lower_hex(node_id) {
        return Err(VerifyError::BadNodeId);
    }
    if !lower_hex(signature) {
        return Err(VerifyError::BadSignature(node_id.to_string()));
    }
    let key_bytes: [u8; 32] =
        hex::decode(node_id).ok().and_then(|b| b.try_into().ok()).ok_or(VerifyError::BadNodeId)?;
    let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| VerifyError::BadNodeId)?;
    // A small-order key (e.g. the identity point) "verifies" signatures
    // over any content; no honest node has one.
    if key.is_weak() {
        return Err(VerifyError::BadNodeId);
    }
    let sig_bytes: [u8; 64] = hex::decode(signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| VerifyError::BadSignature(node_id.to_string()))?;
    let sig = ed25519_dalek::Signature::from_bytes(&sig_bytes);
    key.verify_strict(content, &sig).map_err(|_| VerifyError::BadSignature(node_id.to_string()))
}

/// Checks a JSON object signed with [`NodeKey::sign_object`] against its
/// own `node_id`; returns that node id.
pub fn verify_object(value: &serde_json::Value) -> Result<String, VerifyError> {
    let field = |k: &str| value.get(k).and_then(serde_json::Value::as_str);
    let node_id = field("node_id").ok_or_else(|| VerifyError::Malformed("no node_id".into()))?;
    let signature = field("signature").ok_or_else(|| VerifyError::BadSignature(node_id.to_string()))?;
    verify_signature(node_id, signature, &signed_bytes(value.clone()))?;
    Ok(node_id.to_string())
}

/// The node's signing identity.
pub struct NodeKey {
    signing: crate::presign::Presigner,
    /// The public key, hex (computed once: every receipt carries it).
    node_id: String,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

impl NodeKey {
    /// A fresh random key (tests, ephemeral nodes).
    pub fn generate() -> Self {
        Self::from_signing(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    fn from_signing(signing: SigningKey) -> Self {
        let node_id = hex::encode(signing.verifying_key().to_bytes());
        Self { signing: crate::presign::Presigner::new(signing), node_id }
    }

    /// Loads `dir/node.key`, creating it (mode 0600) on first use. A key
    /// file that others may read or write is refused, as ssh refuses such a
    /// private key: whoever read it can sign receipts as this node.
    pub fn load_or_create(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join("node.key");
        #[cfg(unix)]
        if let Ok(meta) = std::fs::metadata(&path) {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "{} has mode {mode:03o}: other users may read the node's signing key; \
                         run `chmod 600 {}` (and replace the key if it may have leaked)",
                        path.display(),
                        path.display()
                    ),
                ));
            }
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let bytes: [u8; 32] =
                    hex::decode(text.trim()).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("{} is not a node key (64 hex digits)", path.display()),
                        )
                    })?;
                Ok(Self::from_signing(SigningKey::from_bytes(&bytes)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)?;
                let key = Self::generate();
                write_private(&path, hex::encode(key.signing.signing_key().to_bytes()).as_bytes())?;
                Ok(key)
            }
            Err(e) => Err(e),
        }
    }

    /// The public key, hex: the node's id in receipts.
    pub fn node_id(&self) -> String {
        self.node_id.clone()
    }

    /// Signs a JSON object in place: sets its `node_id` and its
    /// `signature` over the canonical JSON of everything else (checked by
    /// [`verify_object`]). Used for what a node publishes besides receipts
    /// (its market snapshot).
    pub fn sign_object(&self, value: &mut serde_json::Value) {
        if let serde_json::Value::Object(map) = value {
            map.insert("node_id".into(), self.node_id.clone().into());
        }
        let sig = hex::encode(self.signing.sign(&signed_bytes(value.clone())).to_bytes());
        if let serde_json::Value::Object(map) = value {
            map.insert("signature".into(), sig.into());
        }
    }
}

/// Creates `path` readable by its owner only (0600) and writes `data`;
/// fails if the file exists, so two processes never race to different keys.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// The node's data directory: `MOTE_HOME`, else `$XDG_DATA_HOME/mote`, else
/// `~/.local/share/mote`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MOTE_HOME") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("mote");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/mote")
}

/// Largest receipt file `read_receipt_file` takes: a receipt is under a
/// kilobyte; this leaves room for long device strings and many models.
pub const MAX_RECEIPT_BYTES: u64 = 1 << 20;

/// Reads a receipt file: a regular file of at most [`MAX_RECEIPT_BYTES`]
/// (not a device such as `/dev/zero`, nor a FIFO that never ends).
pub fn read_receipt_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut text = String::new();
    std::fs::File::open(path)?.take(MAX_RECEIPT_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_RECEIPT_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_RECEIPT_BYTES} bytes; not a receipt"),
        ));
    }
    Ok(text)
}

/// A digest as a receipt side's two fields, `(blake3, sha256)`: the one of
/// its hash set, the other empty.
fn digest_fields((alg, hex): (DigestAlg, String)) -> (Option<String>, Option<String>) {
    match alg {
        DigestAlg::Blake3 => (Some(hex), None),
        DigestAlg::Sha256 => (None, Some(hex)),
    }
}

/// The one digest of a pair, with its hash.
fn one_digest<'a>(blake3: Option<&'a str>, sha256: Option<&'a str>) -> Option<(DigestAlg, &'a str)> {
    match (blake3, sha256) {
        (Some(d), None) => Some((DigestAlg::Blake3, d)),
        (None, Some(d)) => Some((DigestAlg::Sha256, d)),
        _ => None,
    }
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    DigestAlg::Sha256.hex(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Receipt {
        Receipt {
            job_id: "00".repeat(16),
            node_id: String::new(),
            guest_sha256: sha256_hex(b"guest"),
            model_sha256: vec![sha256_hex(b"model")],
            input_blake3: Some(DigestAlg::Blake3.hex(b"in")),
            input_sha256: None,
            output_blake3: Some(DigestAlg::Blake3.hex(b"out")),
            output_sha256: None,
            started_at: "2026-11-25T00:00:00Z".into(),
            usage: Usage { fuel: 12345, wall_ns: 99, backend_ns: 50, ..Usage::default() },
            outcome: Outcome::Ok,
            backend: "ort-cpu".into(),
            device: "cpu".into(),
            price_units: 7,
            stream_sha256: None,
            exit_code: None,
            signature: String::new(),
        }
    }

    #[test]
    fn signed_receipt_verifies_and_tampering_fails() {
        let key = NodeKey::generate();
        let mut r = sample();
        r.sign(&key);
        let text = r.to_json_pretty();
        let back = Receipt::verify_json(&text).expect("fresh receipt verifies");
        assert_eq!(back, r);

        // Any changed field breaks the signature.
        let tampered = text.replace("\"fuel\": 12345", "\"fuel\": 12344");
        assert_ne!(tampered, text);
        assert!(matches!(Receipt::verify_json(&tampered), Err(VerifyError::BadSignature(_))));
        let tampered = text.replace("\"outcome\": \"ok\"", "\"outcome\": \"trap\"");
        assert!(matches!(Receipt::verify_json(&tampered), Err(VerifyError::BadSignature(_))));

        // Re-signing under another key is detected by the node id.
        let other = NodeKey::generate();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["node_id"] = other.node_id().into();
        assert!(matches!(Receipt::verify_json(&v.to_string()), Err(VerifyError::BadSignature(_))));

        // Key order and whitespace do not matter.
        let compact = serde_json::to_string(&r).unwrap();
        Receipt::verify_json(&compact).unwrap();
    }

    #[test]
    fn node_key_persists_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let a = NodeKey::load_or_create(dir.path()).unwrap();
        let b = NodeKey::load_or_create(dir.path()).unwrap();
        assert_eq!(a.node_id(), b.node_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("node.key")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.path().join("node.key"), "nope").unwrap();
        assert!(NodeKey::load_or_create(dir.path()).is_err());
    }

    #[test]
    fn signed_bytes_are_the_canonical_json_without_signature() {
        // The direct serialisation must match the generic canonical form
        // that `verify_json` checks, for every field (a key added to
        // `Receipt` but not to `CanonicalFields` fails here).
        let key = NodeKey::generate();
        let mut r = sample();
        r.model_sha256.push(sha256_hex(b"second"));
        r.device = "gpu \"quoted\" \u{e9}".into();
        r.usage = Usage {
            fuel: u64::MAX,
            wall_ns: 1,
            backend_ns: 2,
            bytes_in: 3,
            bytes_out: 4,
            peak_memory_bytes: 5,
            graphs_loaded: 6,
            prompt_tokens: 7,
            completion_tokens: 8,
        };
        r.stream_sha256 = Some(sha256_hex(b"streamed"));
        r.exit_code = Some(-3);
        r.sign(&key);
        let value = serde_json::to_value(&r).unwrap();
        assert_eq!(
            String::from_utf8(r.canonical_bytes()).unwrap(),
            String::from_utf8(signed_bytes(value)).unwrap()
        );
        Receipt::verify_json(&r.to_json_pretty()).expect("signed with the direct form, verified with the generic one");
    }

    #[test]
    fn weak_keys_and_forged_signatures_are_refused() {
        // The identity point as key with signature (R = identity, s = 0)
        // passes a non-strict check for any content.
        let mut r = sample();
        r.node_id = format!("01{}", "00".repeat(31));
        r.signature = format!("01{}", "00".repeat(63));
        let err = Receipt::verify_json(&r.to_json_pretty()).unwrap_err();
        assert!(matches!(err, VerifyError::BadNodeId), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_node_key_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let id = NodeKey::load_or_create(dir.path()).unwrap().node_id();
        assert_eq!(NodeKey::load_or_create(dir.path()).unwrap().node_id(), id, "reloaded");
        let path = dir.path().join("node.key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = NodeKey::load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn receipt_files_are_bounded() {
        let err = read_receipt_file(Path::new("/dev/zero")).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.json");
        std::fs::write(&big, vec![b' '; (MAX_RECEIPT_BYTES + 10) as usize]).unwrap();
        assert!(read_receipt_file(&big).unwrap_err().to_string().contains("larger than"));
    }

    #[test]
    fn canonical_json_sorts_keys_recursively() {
        let v: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":{"d":[1,{"z":0,"y":1}],"c":"x"}}"#).unwrap();
        assert_eq!(canonical_json(&v), br#"{"a":{"c":"x","d":[1,{"y":1,"z":0}]},"b":1}"#);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            /// Any text: an error or a receipt, never a panic.
            #[test]
            fn verifying_any_text_never_panics(text in ".{0,400}") {
                let _ = Receipt::verify_json(&text);
            }

            /// Changing any one byte of a signed receipt either leaves it
            /// unparseable, or makes verification fail, or changes nothing
            /// the signature covers (whitespace, key order).
            #[test]
            fn a_changed_receipt_does_not_verify(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
                let key = NodeKey::generate();
                let mut r = sample();
                r.sign(&key);
                let text = serde_json::to_string(&r).unwrap();
                let mut bytes = text.clone().into_bytes();
                let i = at.index(bytes.len());
                prop_assume!(bytes[i] != byte);
                bytes[i] = byte;
                if let Ok(changed) = String::from_utf8(bytes) {
                    if let Ok(back) = Receipt::verify_json(&changed) {
                        prop_assert_eq!(back, r, "a different receipt verified: {}", changed);
                    }
                }
            }
        }
    }
}
