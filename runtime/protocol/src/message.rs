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

/// sha256 of tensors and parameters in the canonical binary form of
/// docs/receipts.md: every length is little-endian, tensors in order,
/// parameters sorted.
pub fn digest(tensors: &[IoTensor], parameters: &[(String, String)]) -> String {
    let mut h = Sha256::new();
    let put = |h: &mut Sha256, b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    h.update((tensors.len() as u64).to_le_bytes());
    for t in tensors {
        put(&mut h, t.name.as_bytes());
        put(&mut h, t.datatype.as_str().as_bytes());
        h.update((t.shape.len() as u64).to_le_bytes());
        for d in &t.shape {
            h.update(d.to_le_bytes());
        }
        put(&mut h, &t.data);
    }
    let mut params: Vec<&(String, String)> = parameters.iter().collect();
    params.sort();
    h.update((params.len() as u64).to_le_bytes());
    for (k, v) in params {
        put(&mut h, k.as_bytes());
        put(&mut h, v.as_bytes());
    }
    hex::encode(h.finalize())
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
        assert_ne!(d, digest(&[t], &[]));
    }
}
