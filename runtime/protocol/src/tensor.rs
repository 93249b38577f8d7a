//! Element types and tensors as the host sees them.
//!
//! Two type systems meet here: wasi-nn's `tensor-type` (seven numeric types,
//! what a guest hands to a backend) and KServe v2 datatypes (what clients put
//! in requests, including `BYTES`). Both are plain little-endian row-major
//! bytes, so conversions never touch the data.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A wasi-nn element type (the seven types of `wasi:nn/tensor.tensor-type`,
/// in that enum's order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
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

/// A KServe v2 / Open Inference Protocol datatype (in the order of
/// `mote:edge/types.datatype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[repr(u8)]
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

/// ONNX `TensorProto.DataType` codes (also ONNX Runtime's
/// `ONNXTensorElementDataType` values).
pub mod onnx_code {
    #![allow(missing_docs)]
    pub const FLOAT: i32 = 1;
    pub const UINT8: i32 = 2;
    pub const INT8: i32 = 3;
    pub const UINT16: i32 = 4;
    pub const INT16: i32 = 5;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const STRING: i32 = 8;
    pub const BOOL: i32 = 9;
    pub const FLOAT16: i32 = 10;
    pub const DOUBLE: i32 = 11;
    pub const UINT32: i32 = 12;
    pub const UINT64: i32 = 13;
    pub const BFLOAT16: i32 = 16;
}

/// One element type in every type system mote meets.
struct Row {
    datatype: Datatype,
    /// KServe spelling.
    name: &'static str,
    /// Bytes per element (`None`: variable, `BYTES`).
    size: Option<usize>,
    /// ONNX `TensorProto.DataType`.
    onnx: i32,
    /// The wasi-nn element type with the same bytes.
    element: Option<ElementType>,
}

/// The one element-type table, indexed by `Datatype as usize`. Every other
/// mapping (wasi-nn, WIT, ONNX, ONNX Runtime, the wgpu interpreter) is
/// derived from it.
const TABLE: [Row; 14] = {
    use onnx_code as o;
    use Datatype as D;
    use ElementType as E;
    const fn row(datatype: Datatype, name: &'static str, size: usize, onnx: i32, element: Option<ElementType>) -> Row {
        Row { datatype, name, size: if size == 0 { None } else { Some(size) }, onnx, element }
    }
    [
        // Booleans are one byte 0/1: the same bytes as U8.
        row(D::Bool, "BOOL", 1, o::BOOL, Some(E::U8)),
        row(D::Uint8, "UINT8", 1, o::UINT8, Some(E::U8)),
        row(D::Uint16, "UINT16", 2, o::UINT16, None),
        row(D::Uint32, "UINT32", 4, o::UINT32, None),
        row(D::Uint64, "UINT64", 8, o::UINT64, None),
        row(D::Int8, "INT8", 1, o::INT8, None),
        row(D::Int16, "INT16", 2, o::INT16, None),
        row(D::Int32, "INT32", 4, o::INT32, Some(E::I32)),
        row(D::Int64, "INT64", 8, o::INT64, Some(E::I64)),
        row(D::Fp16, "FP16", 2, o::FLOAT16, Some(E::F16)),
        row(D::Fp32, "FP32", 4, o::FLOAT, Some(E::F32)),
        row(D::Fp64, "FP64", 8, o::DOUBLE, Some(E::F64)),
        row(D::Bf16, "BF16", 2, o::BFLOAT16, Some(E::Bf16)),
        row(D::Bytes, "BYTES", 0, o::STRING, None),
    ]
};

impl ElementType {
    /// Every element type, in `wasi:nn/tensor.tensor-type` order.
    pub const ALL: [ElementType; 7] = [Self::F16, Self::F32, Self::F64, Self::Bf16, Self::U8, Self::I32, Self::I64];

    /// The KServe datatype with the same bytes (`U8` is `UINT8`).
    pub fn datatype(self) -> Datatype {
        match self {
            Self::U8 => Datatype::Uint8,
            _ => *Datatype::ALL
                .iter()
                .find(|d| d.element_type() == Some(self))
                .expect("every element type has a row in the table"),
        }
    }

    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        self.datatype().size().expect("element types have a fixed size")
    }

    /// The ONNX `TensorProto.DataType` code.
    pub fn onnx_data_type(self) -> i32 {
        self.datatype().onnx_data_type()
    }

    /// The element type of an ONNX data type, if wasi-nn has one (`BOOL`
    /// maps to `U8`, its bytes).
    pub fn from_onnx_data_type(code: i32) -> Option<Self> {
        Datatype::from_onnx_data_type(code).and_then(Datatype::element_type)
    }

    /// The element type at `index` in `wasi:nn/tensor.tensor-type` order.
    pub fn from_index(index: usize) -> Option<Self> {
        Self::ALL.get(index).copied()
    }
}

impl Datatype {
    /// Every datatype, in `mote:edge/types.datatype` order.
    pub const ALL: [Datatype; 14] = {
        let mut all = [Datatype::Bool; 14];
        let mut i = 0;
        while i < 14 {
            all[i] = TABLE[i].datatype;
            i += 1;
        }
        all
    };

    fn row(self) -> &'static Row {
        &TABLE[self as usize]
    }

    /// Size of one element in bytes; `None` for `BYTES`, whose elements vary.
    pub fn size(self) -> Option<usize> {
        self.row().size
    }

    /// The KServe spelling, e.g. `"FP32"`.
    pub fn as_str(self) -> &'static str {
        self.row().name
    }

    /// Parses the KServe spelling (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str().eq_ignore_ascii_case(s))
    }

    /// The wasi-nn element type with the same bytes, if there is one.
    pub fn element_type(self) -> Option<ElementType> {
        self.row().element
    }

    /// The ONNX `TensorProto.DataType` code.
    pub fn onnx_data_type(self) -> i32 {
        self.row().onnx
    }

    /// The datatype of an ONNX data type code, if KServe has one.
    pub fn from_onnx_data_type(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.onnx_data_type() == code)
    }

    /// The datatype at `index` in `mote:edge/types.datatype` order.
    pub fn from_index(index: usize) -> Option<Self> {
        Self::ALL.get(index).copied()
    }
}

impl From<ElementType> for Datatype {
    fn from(t: ElementType) -> Self {
        t.datatype()
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
    pub fn validate(&self) -> Result<(), TensorError> {
        let name = || self.name.clone();
        let count =
            self.element_count().ok_or_else(|| TensorError::ShapeOverflow { name: name(), shape: self.shape.clone() })?;
        match self.datatype.size() {
            Some(size) => {
                let want = count.checked_mul(size as u64);
                if want != Some(self.data.len() as u64) {
                    return Err(TensorError::SizeMismatch {
                        name: name(),
                        shape: self.shape.clone(),
                        datatype: self.datatype,
                        want: want.map_or_else(|| "too many".to_string(), |w| w.to_string()),
                        got: self.data.len(),
                    });
                }
            }
            None => {
                let n = split_bytes_elements(&self.data)
                    .map_err(|source| TensorError::Bytes { name: name(), source })?
                    .len();
                if n as u64 != count {
                    return Err(TensorError::BytesCount { name: name(), shape: self.shape.clone(), want: count, got: n });
                }
            }
        }
        Ok(())
    }
}

/// Why a tensor's bytes do not match its shape and datatype.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    /// The shape's element count overflows u64.
    #[error("tensor '{name}': shape {shape:?} overflows")]
    ShapeOverflow {
        /// Tensor name.
        name: String,
        /// Its shape.
        shape: Vec<u64>,
    },
    /// A fixed-size datatype with the wrong number of bytes.
    #[error("tensor '{name}': shape {shape:?} of {datatype} needs {want} bytes, got {got}")]
    SizeMismatch {
        /// Tensor name.
        name: String,
        /// Its shape.
        shape: Vec<u64>,
        /// Its datatype.
        datatype: Datatype,
        /// Bytes the shape needs ("too many" on overflow).
        want: String,
        /// Bytes given.
        got: usize,
    },
    /// `BYTES` data that is not a sequence of length-prefixed elements.
    #[error("tensor '{name}': {source}")]
    Bytes {
        /// Tensor name.
        name: String,
        /// What is wrong with the data.
        source: BytesError,
    },
    /// `BYTES` data with another element count than the shape's.
    #[error("tensor '{name}': shape {shape:?} needs {want} BYTES elements, got {got}")]
    BytesCount {
        /// Tensor name.
        name: String,
        /// Its shape.
        shape: Vec<u64>,
        /// Elements the shape needs.
        want: u64,
        /// Elements in the data.
        got: usize,
    },
}

/// Malformed length-prefixed `BYTES` data.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BytesError {
    /// Fewer than 4 bytes where a length prefix starts.
    #[error("BYTES data ends inside a length prefix")]
    TruncatedPrefix,
    /// An element longer than the data left.
    #[error("BYTES element of {0} bytes runs past the end of the data")]
    TruncatedElement(usize),
}

/// Splits length-prefixed `BYTES` data into its elements.
pub fn split_bytes_elements(data: &[u8]) -> Result<Vec<&[u8]>, BytesError> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(BytesError::TruncatedPrefix);
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        rest = &rest[4..];
        if rest.len() < len {
            return Err(BytesError::TruncatedElement(len));
        }
        out.push(&rest[..len]);
        rest = &rest[len..];
    }
    Ok(out)
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
    fn the_table_is_indexed_by_datatype() {
        for (i, d) in Datatype::ALL.into_iter().enumerate() {
            assert_eq!(d as usize, i);
            assert_eq!(Datatype::from_index(i), Some(d));
            assert_eq!(Datatype::from_onnx_data_type(d.onnx_data_type()), Some(d));
        }
        for (i, e) in ElementType::ALL.into_iter().enumerate() {
            assert_eq!(e as usize, i);
            assert_eq!(e.datatype().element_type(), Some(e));
            assert_eq!(ElementType::from_onnx_data_type(e.onnx_data_type()), Some(e));
        }
        assert_eq!(ElementType::F16.size(), 2);
        assert_eq!(ElementType::I64.size(), 8);
        assert_eq!(ElementType::from_onnx_data_type(onnx_code::BOOL), Some(ElementType::U8));
        assert_eq!(Datatype::from_onnx_data_type(99), None);
    }

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
        let err = t.validate().unwrap_err().to_string();
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
