//! Typed views of request and response tensors.

use crate::{Datatype, HandlerError, IoTensor, Request};

/// Access to a request's string parameters and inputs by name.
pub trait RequestExt {
    /// The value of parameter `key`, if given.
    fn param(&self, key: &str) -> Option<&str>;
    /// The input tensor named `name`, or an `invalid-input` error saying so.
    fn input(&self, name: &str) -> Result<&IoTensor, HandlerError>;
}

impl RequestExt for Request {
    fn param(&self, key: &str) -> Option<&str> {
        self.parameters.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn input(&self, name: &str) -> Result<&IoTensor, HandlerError> {
        self.inputs
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| HandlerError::InvalidInput(format!("missing input '{name}'")))
    }
}

/// Little-endian f32 bytes as floats (a trailing partial element is
/// dropped). On little-endian targets (wasm32) the bytes already are the
/// floats: one copy (`memory.copy` in wasm) instead of a load, shift and
/// store per element, which is what a decoder pays per token on its
/// 49,152 logits.
pub fn f32s_from_le_bytes(bytes: &[u8]) -> Vec<f32> {
    let n = bytes.len() / 4;
    let mut out = vec![0f32; n];
    if cfg!(target_endian = "little") {
        // SAFETY: `out` holds `n` f32s = `4 n` bytes, `bytes` at least as
        // many; any bit pattern is a valid f32; the buffers do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr().cast::<u8>(), 4 * n) };
    } else {
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
    }
    out
}

/// Typed access to [`IoTensor`] data.
pub trait TensorData {
    /// An f32 tensor.
    fn from_f32(name: &str, shape: &[u64], values: &[f32]) -> Self;
    /// An i64 tensor.
    fn from_i64(name: &str, shape: &[u64], values: &[i64]) -> Self;
    /// A `BYTES` tensor of strings.
    fn from_strings(name: &str, shape: &[u64], values: &[&str]) -> Self;
    /// The elements as f32 (FP32 only).
    fn f32s(&self) -> Result<Vec<f32>, HandlerError>;
    /// The `BYTES` elements.
    fn byte_elements(&self) -> Result<Vec<Vec<u8>>, HandlerError>;
}

impl TensorData for IoTensor {
    fn from_f32(name: &str, shape: &[u64], values: &[f32]) -> Self {
        IoTensor {
            name: name.into(),
            datatype: Datatype::Fp32,
            shape: shape.to_vec(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    fn from_i64(name: &str, shape: &[u64], values: &[i64]) -> Self {
        IoTensor {
            name: name.into(),
            datatype: Datatype::Int64,
            shape: shape.to_vec(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    fn from_strings(name: &str, shape: &[u64], values: &[&str]) -> Self {
        let mut data = Vec::new();
        for v in values {
            data.extend((v.len() as u32).to_le_bytes());
            data.extend(v.as_bytes());
        }
        IoTensor { name: name.into(), datatype: Datatype::Bytes, shape: shape.to_vec(), data }
    }

    fn f32s(&self) -> Result<Vec<f32>, HandlerError> {
        if self.datatype != Datatype::Fp32 {
            return Err(HandlerError::InvalidInput(format!("'{}' must be FP32", self.name)));
        }
        Ok(f32s_from_le_bytes(&self.data))
    }

    fn byte_elements(&self) -> Result<Vec<Vec<u8>>, HandlerError> {
        if self.datatype != Datatype::Bytes {
            return Err(HandlerError::InvalidInput(format!("'{}' must be BYTES", self.name)));
        }
        let mut out = Vec::new();
        let mut rest = self.data.as_slice();
        while rest.len() >= 4 {
            let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            rest = &rest[4..];
            if rest.len() < n {
                break;
            }
            out.push(rest[..n].to_vec());
            rest = &rest[n..];
        }
        if !rest.is_empty() {
            return Err(HandlerError::InvalidInput(format!("'{}': malformed BYTES data", self.name)));
        }
        Ok(out)
    }
}
