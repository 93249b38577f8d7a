//! Element types and tensors as the host sees them.
//!
//! Two type systems meet here: wasi-nn's `tensor-type` (seven numeric types,
//! what a guest hands to a backend) and KServe v2 datatypes (what clients put
//! in requests, including `BYTES`). Both are plain little-endian row-major
//! bytes, so conversions never touch the data.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A wasi-nn element type (the seven types of `wasi:nn/tensor.tensor-type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElementType {
    /// IEEE 754 half precision.
    F16,
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 double precision.
    F64,
    /// bfloat16.
    Bf16,
    /// Unsigned byte.
    U8,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
}

impl ElementType {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            Self::U8 => 1,
            Self::F16 | Self::Bf16 => 2,
            Self::F32 | Self::I32 => 4,
            Self::F64 | Self::I64 => 8,
        }
    }
}

/// A KServe v2 / Open Inference Protocol datatype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Datatype {
    /// Booleans, one byte each.
    Bool,
    /// `UINT8`.
    Uint8,
    /// `UINT16`.
    Uint16,
    /// `UINT32`.
    Uint32,
    /// `UINT64`.
    Uint64,
    /// `INT8`.
    Int8,
    /// `INT16`.
    Int16,
    /// `INT32`.
    Int32,
    /// `INT64`.
    Int64,
    /// `FP16`.
    Fp16,
    /// `FP32`.
    Fp32,
    /// `FP64`.
    Fp64,
    /// `BF16`.
    Bf16,
    /// Variable-length byte strings.
    Bytes,
}

impl Datatype {
    /// Every datatype, for parsing and tests.
    pub const ALL: [Datatype; 14] = [
        Self::Bool,
        Self::Uint8,
        Self::Uint16,
        Self::Uint32,
        Self::Uint64,
        Self::Int8,
        Self::Int16,
        Self::Int32,
        Self::Int64,
        Self::Fp16,
        Self::Fp32,
        Self::Fp64,
        Self::Bf16,
        Self::Bytes,
    ];

    /// Size of one element in bytes; `None` for `BYTES`, whose elements vary.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            Self::Bool | Self::Uint8 | Self::Int8 => 1,
            Self::Uint16 | Self::Int16 | Self::Fp16 | Self::Bf16 => 2,
            Self::Uint32 | Self::Int32 | Self::Fp32 => 4,
            Self::Uint64 | Self::Int64 | Self::Fp64 => 8,
            Self::Bytes => return None,
        })
    }

    /// The KServe spelling, e.g. `"FP32"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bool => "BOOL",
            Self::Uint8 => "UINT8",
            Self::Uint16 => "UINT16",
            Self::Uint32 => "UINT32",
            Self::Uint64 => "UINT64",
            Self::Int8 => "INT8",
            Self::Int16 => "INT16",
            Self::Int32 => "INT32",
            Self::Int64 => "INT64",
            Self::Fp16 => "FP16",
            Self::Fp32 => "FP32",
            Self::Fp64 => "FP64",
            Self::Bf16 => "BF16",
            Self::Bytes => "BYTES",
        }
    }

    /// Parses the KServe spelling (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str().eq_ignore_ascii_case(s))
    }

    /// The wasi-nn element type with the same bytes, if there is one.
    pub fn element_type(self) -> Option<ElementType> {
        Some(match self {
            Self::Fp16 => ElementType::F16,
            Self::Fp32 => ElementType::F32,
            Self::Fp64 => ElementType::F64,
            Self::Bf16 => ElementType::Bf16,
            Self::Uint8 | Self::Bool => ElementType::U8,
            Self::Int32 => ElementType::I32,
            Self::Int64 => ElementType::I64,
            _ => return None,
        })
    }
}

impl From<ElementType> for Datatype {
    fn from(t: ElementType) -> Self {
        match t {
            ElementType::F16 => Self::Fp16,
            ElementType::F32 => Self::Fp32,
            ElementType::F64 => Self::Fp64,
            ElementType::Bf16 => Self::Bf16,
            ElementType::U8 => Self::Uint8,
            ElementType::I32 => Self::Int32,
            ElementType::I64 => Self::Int64,
        }
    }
}

impl fmt::Display for Datatype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named request or response tensor: the host side of
/// `mote:edge/types.io-tensor`.
#[derive(Clone, Debug, PartialEq)]
pub struct IoTensor {
    /// Input or output name.
    pub name: String,
    /// Element type.
    pub datatype: Datatype,
    /// Extent of each axis.
    pub shape: Vec<u64>,
    /// Raw little-endian bytes (length-prefixed elements for `BYTES`).
    pub data: Vec<u8>,
}

impl IoTensor {
    /// Number of elements the shape describes, or `None` on overflow.
    pub fn element_count(&self) -> Option<u64> {
        self.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
    }

    /// Checks that `data` holds exactly the elements that `shape` describes.
    pub fn validate(&self) -> Result<(), String> {
        let count =
            self.element_count().ok_or_else(|| format!("tensor '{}': shape {:?} overflows", self.name, self.shape))?;
        match self.datatype.size() {
            Some(size) => {
                let want = count.checked_mul(size as u64);
                if want != Some(self.data.len() as u64) {
                    return Err(format!(
                        "tensor '{}': shape {:?} of {} needs {} bytes, got {}",
                        self.name,
                        self.shape,
                        self.datatype,
                        want.map_or_else(|| "too many".to_string(), |w| w.to_string()),
                        self.data.len()
                    ));
                }
            }
            None => {
                let n = bytes_elements(&self.data).map_err(|e| format!("tensor '{}': {e}", self.name))?;
                if n as u64 != count {
                    return Err(format!(
                        "tensor '{}': shape {:?} needs {count} BYTES elements, got {n}",
                        self.name, self.shape
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Splits length-prefixed `BYTES` data into its elements.
pub fn split_bytes_elements(data: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err("BYTES data ends inside a length prefix".into());
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        rest = &rest[4..];
        if rest.len() < len {
            return Err(format!("BYTES element of {len} bytes runs past the end of the data"));
        }
        out.push(&rest[..len]);
        rest = &rest[len..];
    }
    Ok(out)
}

fn bytes_elements(data: &[u8]) -> Result<usize, String> {
    split_bytes_elements(data).map(|v| v.len())
}

/// Encodes elements as length-prefixed `BYTES` data.
pub fn join_bytes_elements<'a>(elements: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for e in elements {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datatype_round_trips_its_spelling() {
        for d in Datatype::ALL {
            assert_eq!(Datatype::parse(d.as_str()), Some(d));
            assert_eq!(Datatype::parse(&d.as_str().to_lowercase()), Some(d));
        }
        assert_eq!(Datatype::parse("FLOAT"), None);
    }

    #[test]
    fn validate_catches_size_mismatch() {
        let t = IoTensor { name: "x".into(), datatype: Datatype::Fp32, shape: vec![2, 3], data: vec![0; 23] };
        let err = t.validate().unwrap_err();
        assert!(err.contains("needs 24 bytes, got 23"), "{err}");
        let ok = IoTensor { data: vec![0; 24], ..t };
        ok.validate().unwrap();
    }

    #[test]
    fn bytes_elements_round_trip() {
        let data = join_bytes_elements([&b"cat"[..], b"", b"dog!"]);
        let parts = split_bytes_elements(&data).unwrap();
        assert_eq!(parts, vec![&b"cat"[..], b"", b"dog!"]);
        assert!(split_bytes_elements(&data[..data.len() - 1]).is_err());
        let t = IoTensor { name: "s".into(), datatype: Datatype::Bytes, shape: vec![3], data };
        t.validate().unwrap();
    }
}
