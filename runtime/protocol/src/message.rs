//! Requests and responses (the KServe v2 data model), and their canonical
//! digest.

use crate::tensor::IoTensor;
use sha2::{Digest, Sha256};

/// One inference request (KServe v2 data model).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Request {
    /// Input tensors.
    pub inputs: Vec<IoTensor>,
    /// String parameters.
    pub parameters: Vec<(String, String)>,
}

/// One inference response.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Response {
    /// Output tensors.
    pub outputs: Vec<IoTensor>,
    /// String parameters.
    pub parameters: Vec<(String, String)>,
}

/// Most input tensors in one request (each becomes a resource in the
/// guest's store, whose table is bounded).
pub const MAX_INPUTS: usize = 1024;

/// Which hash a receipt's request and response digests use. The field a
/// receipt carries names it (`input_blake3` or `input_sha256`, …), so a
/// verifier needs no rule: it reads what the node wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestAlg {
    /// BLAKE3-256 (`input_blake3`, `output_blake3`).
    Blake3,
    /// sha256 (`input_sha256`, `output_sha256`): what nodes write for a
    /// short canonical form on a CPU with sha256 instructions
    /// ([`DigestAlg::for_len`]), and what receipts carried before BLAKE3.
    Sha256,
}

/// Canonical forms shorter than this are hashed with sha256 where the CPU
/// has sha256 instructions. BLAKE3 compresses one 64-byte block at a time
/// within a 1 KiB chunk and hashes whole chunks side by side in SIMD lanes
/// only once it has several; a canonical form's data starts some bytes
/// into its first chunk (the header before it: counts, name, datatype,
/// shape), so that chunk and the tail are serial. Measured on an AMD EPYC
/// (SHA-NI, AVX-512) over canonical forms of one FP32 tensor, p50 of 2000
/// (`bench/examples/digest_sizes.rs`), sha256 against BLAKE3: 1 KiB 641 and
/// 1613 ns, 4 KiB 2133 and 4427, 8 KiB 4156 and 6009, 12 KiB 6109 and
/// 7482, 16 KiB 8142 and 7742, 32 KiB 16094 and 9694. (The 2 KiB used
/// before came from a measurement that had BLAKE3 at 1455 ns for 4 KiB,
/// not reproduced over canonical forms.)
pub const SHORT_FORM_BYTES: u64 = 16 << 10;

impl DigestAlg {
    /// The hash a node writes for a canonical form of `len` bytes: sha256
    /// for a form shorter than [`SHORT_FORM_BYTES`] on a CPU with sha256
    /// instructions (x86 SHA extensions, Armv8 SHA2), BLAKE3 otherwise.
    pub fn for_len(len: u64) -> Self {
        if len < SHORT_FORM_BYTES && sha256_in_hardware() {
            Self::Sha256
        } else {
            Self::Blake3
        }
    }

    /// Hex digest of `bytes`.
    pub fn hex(self, bytes: &[u8]) -> String {
        match self {
            Self::Blake3 => blake3::hash(bytes).to_hex().to_string(),
            Self::Sha256 => hex::encode(Sha256::digest(bytes)),
        }
    }
}

/// Whether this CPU computes sha256 with instructions of its own (what
/// the `sha2` crate then uses).
fn sha256_in_hardware() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        std::arch::is_x86_feature_detected!("sha")
            && std::arch::is_x86_feature_detected!("sse2")
            && std::arch::is_x86_feature_detected!("ssse3")
            && std::arch::is_x86_feature_detected!("sse4.1")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("sha2")
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// BLAKE3 of the canonical binary form of tensors and parameters
/// (docs/receipts.md).
pub fn digest(tensors: &[IoTensor], parameters: &[(String, String)]) -> String {
    digest_with(DigestAlg::Blake3, tensors, parameters)
}

/// The digest a node writes into a receipt: of the canonical form, in the
/// hash [`DigestAlg::for_len`] picks for its length.
pub fn receipt_digest<T: CanonicalTensor>(tensors: &[T], parameters: &[(String, String)]) -> (DigestAlg, String) {
    let alg = DigestAlg::for_len(canonical_len(tensors, parameters));
    (alg, digest_of(alg, tensors, parameters))
}

/// The length of the canonical form of tensors and parameters, in bytes
/// (counted over the form itself: nothing is hashed or copied).
pub fn canonical_len<T: CanonicalTensor>(tensors: &[T], parameters: &[(String, String)]) -> u64 {
    let mut len = 0u64;
    canonical_form(tensors, parameters, |b| len += b.len() as u64);
    len
}

/// [`digest`] with the hash `alg` (sha256 for receipts written before
/// BLAKE3).
pub fn digest_with(alg: DigestAlg, tensors: &[IoTensor], parameters: &[(String, String)]) -> String {
    digest_of(alg, tensors, parameters)
}

/// What the canonical form reads of a tensor: lets tensors held in another
/// type (a runtime's copy of the WIT record) be digested where they are.
pub trait CanonicalTensor {
    /// The tensor's name.
    fn name(&self) -> &str;
    /// Its KServe datatype name (`FP32`, …).
    fn datatype(&self) -> &str;
    /// Its shape.
    fn shape(&self) -> &[u64];
    /// Its element bytes.
    fn data(&self) -> &[u8];
}

impl CanonicalTensor for IoTensor {
    fn name(&self) -> &str {
        &self.name
    }
    fn datatype(&self) -> &str {
        self.datatype.as_str()
    }
    fn shape(&self) -> &[u64] {
        &self.shape
    }
    fn data(&self) -> &[u8] {
        &self.data
    }
}

/// [`digest_with`] over any [`CanonicalTensor`]s: the same digest for the
/// same tensors and parameters.
pub fn digest_of<T: CanonicalTensor>(alg: DigestAlg, tensors: &[T], parameters: &[(String, String)]) -> String {
    match alg {
        DigestAlg::Blake3 => {
            let mut h = blake3::Hasher::new();
            canonical_form(tensors, parameters, |b| {
                h.update(b);
            });
            h.finalize().to_hex().to_string()
        }
        DigestAlg::Sha256 => {
            let mut h = Sha256::new();
            canonical_form(tensors, parameters, |b| h.update(b));
            hex::encode(h.finalize())
        }
    }
}

/// Feeds the canonical binary form of docs/receipts.md to `put`: every
/// length little-endian u64, tensors in order, parameters sorted.
fn canonical_form<T: CanonicalTensor>(tensors: &[T], parameters: &[(String, String)], mut put: impl FnMut(&[u8])) {
    let sized = |put: &mut dyn FnMut(&[u8]), b: &[u8]| {
        put(&(b.len() as u64).to_le_bytes());
        put(b);
    };
    put(&(tensors.len() as u64).to_le_bytes());
    for t in tensors {
        sized(&mut put, t.name().as_bytes());
        sized(&mut put, t.datatype().as_bytes());
        put(&(t.shape().len() as u64).to_le_bytes());
        for d in t.shape() {
            put(&d.to_le_bytes());
        }
        sized(&mut put, t.data());
    }
    let mut params: Vec<&(String, String)> = parameters.iter().collect();
    params.sort();
    put(&(params.len() as u64).to_le_bytes());
    for (k, v) in params {
        sized(&mut put, k.as_bytes());
        sized(&mut put, v.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Datatype;

    #[test]
    fn digest_sorts_parameters_and_binds_every_field() {
        let t = IoTensor { name: "x".into(), datatype: Datatype::Fp32, shape: vec![1], data: vec![0; 4] };
        let p = |a: &str, b: &str| vec![(a.to_string(), "1".to_string()), (b.to_string(), "2".to_string())];
        let d = digest(std::slice::from_ref(&t), &p("a", "b"));
        let reversed: Vec<_> = p("a", "b").into_iter().rev().collect();
        assert_eq!(d, digest(std::slice::from_ref(&t), &reversed));
        let mut u = t.clone();
        u.shape = vec![1, 1];
        assert_ne!(d, digest(&[u], &p("a", "b")));
        let mut u = t.clone();
        u.datatype = Datatype::Int32;
        assert_ne!(d, digest(&[u], &p("a", "b")));
        assert_ne!(d, digest(&[t.clone()], &[]));
        // The same request in the other hash is another digest: a digest
        // is read in the hash its field names.
        assert_ne!(
            digest_with(DigestAlg::Sha256, std::slice::from_ref(&t), &[]),
            digest(std::slice::from_ref(&t), &[])
        );
    }

    #[test]
    fn both_hashes_cover_the_same_canonical_bytes() {
        let t =
            IoTensor { name: "x".into(), datatype: Datatype::Fp32, shape: vec![2], data: vec![1, 2, 3, 4, 5, 6, 7, 8] };
        let params = vec![("k".to_string(), "v".to_string())];
        // The canonical form written out by hand (docs/receipts.md).
        let mut bytes = Vec::new();
        let sized = |b: &[u8], out: &mut Vec<u8>| {
            out.extend((b.len() as u64).to_le_bytes());
            out.extend(b);
        };
        bytes.extend(1u64.to_le_bytes());
        sized(b"x", &mut bytes);
        sized(b"FP32", &mut bytes);
        bytes.extend(1u64.to_le_bytes());
        bytes.extend(2u64.to_le_bytes());
        sized(&t.data, &mut bytes);
        bytes.extend(1u64.to_le_bytes());
        sized(b"k", &mut bytes);
        sized(b"v", &mut bytes);
        for alg in [DigestAlg::Blake3, DigestAlg::Sha256] {
            assert_eq!(digest_with(alg, std::slice::from_ref(&t), &params), alg.hex(&bytes), "{alg:?}");
        }
        assert_eq!(canonical_len(std::slice::from_ref(&t), &params), bytes.len() as u64);
        let (alg, d) = receipt_digest(std::slice::from_ref(&t), &params);
        assert_eq!(d, alg.hex(&bytes));
        // Known answers: BLAKE3 and sha256 of the empty request.
        let empty = 0u64.to_le_bytes().repeat(2);
        assert_eq!(digest(&[], &[]), blake3::hash(&empty).to_hex().to_string());
        assert_eq!(DigestAlg::Sha256.hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(DigestAlg::Blake3.hex(b"abc"), "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85");
    }

    #[test]
    fn a_node_hashes_short_forms_in_sha256_only_with_sha256_instructions() {
        let t = |bytes: usize| IoTensor { name: "x".into(), datatype: Datatype::Uint8, shape: vec![bytes as u64], data: vec![7; bytes] };
        let short = t(100);
        let (alg, d) = receipt_digest(std::slice::from_ref(&short), &[]);
        assert_eq!(alg == DigestAlg::Sha256, sha256_in_hardware());
        assert_eq!(d, digest_with(alg, std::slice::from_ref(&short), &[]));
        // At the line and above: BLAKE3, whatever the CPU.
        let long = t(SHORT_FORM_BYTES as usize);
        assert!(canonical_len(std::slice::from_ref(&long), &[]) >= SHORT_FORM_BYTES);
        assert_eq!(receipt_digest(std::slice::from_ref(&long), &[]).0, DigestAlg::Blake3);
        assert_eq!(DigestAlg::for_len(SHORT_FORM_BYTES), DigestAlg::Blake3);
        // For the record: which hash this machine picks for short forms.
        eprintln!("sha256 instructions: {}", sha256_in_hardware());
    }
}
