//! Graphs declared node by node (`mote:edge/graph-builder`), lowered to ONNX.
//!
//! A draft records inputs, constants and nodes with ONNX operator names and
//! attributes; `lower` turns it into a `ModelProto` (opset 17, IR 8). The
//! lowered bytes are what gets hashed and cached, so two guests that declare
//! the same graph share one loaded model.

use crate::onnx_proto::{self as pb, attribute_type};
use crate::tensor::ElementType;
use prost::Message;

/// ONNX opset the builder emits.
pub const OPSET: i64 = 17;
/// Most nodes a single draft may hold.
pub const MAX_NODES: usize = 100_000;

/// An attribute value, mirroring `attribute-value` in the WIT.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    /// `INT`.
    Int(i64),
    /// `FLOAT`.
    Float(f32),
    /// `STRING`.
    Str(String),
    /// `INTS`.
    Ints(Vec<i64>),
    /// `FLOATS`.
    Floats(Vec<f32>),
    /// `STRINGS`.
    Strs(Vec<String>),
}

/// Why a draft refused an operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DraftError {
    /// An operand id that this draft never returned.
    #[error("operand {0} does not exist in this builder")]
    UnknownOperand(u32),
    /// Two inputs or outputs share a name.
    #[error("name '{0}' is already used")]
    DuplicateName(String),
    /// A bad name or operator.
    #[error("{0}")]
    Invalid(String),
    /// The operator is not one this host can run.
    #[error("operator '{0}' is not supported (see graph-builder.supports)")]
    UnsupportedOp(String),
    /// Too many nodes.
    #[error("graph has more than {MAX_NODES} nodes")]
    TooManyNodes,
}

struct Node {
    op: String,
    inputs: Vec<u32>,
    attrs: Vec<(String, AttrValue)>,
    outputs: Vec<u32>,
}

/// A graph under construction.
#[derive(Default)]
pub struct GraphDraft {
    /// Name of each operand, by id.
    names: Vec<String>,
    inputs: Vec<(String, ElementType, Vec<i64>)>,
    constants: Vec<pb::TensorProto>,
    nodes: Vec<Node>,
    constant_bytes: u64,
}

impl GraphDraft {
    /// Total bytes of constant data embedded so far.
    pub fn constant_bytes(&self) -> u64 {
        self.constant_bytes
    }

    fn new_operand(&mut self, name: String) -> u32 {
        self.names.push(name);
        (self.names.len() - 1) as u32
    }

    fn check(&self, op: u32) -> Result<(), DraftError> {
        if (op as usize) < self.names.len() {
            Ok(())
        } else {
            Err(DraftError::UnknownOperand(op))
        }
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, ty: ElementType, shape: &[i64]) -> Result<u32, DraftError> {
        valid_name(name)?;
        if self.inputs.iter().any(|(n, ..)| n == name) {
            return Err(DraftError::DuplicateName(name.to_string()));
        }
        if let Some(d) = shape.iter().find(|&&d| d < -1) {
            return Err(DraftError::Invalid(format!("input '{name}': dimension {d} is invalid (use -1 for dynamic)")));
        }
        self.inputs.push((name.to_string(), ty, shape.to_vec()));
        Ok(self.new_operand(name.to_string()))
    }

    /// Embeds a constant tensor.
    pub fn constant(&mut self, ty: ElementType, dims: &[u32], data: Vec<u8>) -> Result<u32, DraftError> {
        let id = self.names.len();
        let name = format!("const_{id}");
        self.constant_bytes += data.len() as u64;
        self.constants.push(pb::TensorProto {
            dims: dims.iter().map(|&d| i64::from(d)).collect(),
            data_type: ty.onnx_data_type(),
            name: name.clone(),
            raw_data: data,
            ..Default::default()
        });
        Ok(self.new_operand(name))
    }

    /// Adds a node with `outputs` results.
    pub fn node(
        &mut self,
        op: &str,
        inputs: &[u32],
        attrs: Vec<(String, AttrValue)>,
        outputs: u32,
    ) -> Result<Vec<u32>, DraftError> {
        if !is_supported_op(op) {
            return Err(DraftError::UnsupportedOp(op.to_string()));
        }
        if self.nodes.len() >= MAX_NODES {
            return Err(DraftError::TooManyNodes);
        }
        if outputs == 0 || outputs > 64 {
            return Err(DraftError::Invalid(format!("node '{op}': {outputs} outputs requested (1..=64)")));
        }
        for &i in inputs {
            self.check(i)?;
        }
        let ids: Vec<u32> = (0..outputs)
            .map(|_| {
                let id = self.names.len();
                self.new_operand(format!("v{id}"))
            })
            .collect();
        self.nodes.push(Node { op: op.to_string(), inputs: inputs.to_vec(), attrs, outputs: ids.clone() });
        Ok(ids)
    }

    /// Lowers the draft with the given named outputs to ONNX model bytes.
    pub fn lower(&self, outputs: &[(String, u32)]) -> Result<Vec<u8>, DraftError> {
        if outputs.is_empty() {
            return Err(DraftError::Invalid("a graph needs at least one output".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for (name, op) in outputs {
            valid_name(name)?;
            self.check(*op)?;
            if !seen.insert(name.as_str()) || self.names.contains(name) {
                return Err(DraftError::DuplicateName(name.clone()));
            }
        }
        let mut nodes: Vec<pb::NodeProto> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| pb::NodeProto {
                input: n.inputs.iter().map(|&o| self.names[o as usize].clone()).collect(),
                output: n.outputs.iter().map(|&o| self.names[o as usize].clone()).collect(),
                name: format!("n{i}_{}", n.op),
                op_type: n.op.clone(),
                domain: String::new(),
                attribute: n.attrs.iter().map(|(k, v)| attribute(k, v)).collect(),
            })
            .collect();
        // Graph outputs get the guest's names through Identity nodes, so any
        // operand (an input, a constant, a node result) can be an output, even
        // under several names.
        for (name, op) in outputs {
            nodes.push(pb::NodeProto {
                input: vec![self.names[*op as usize].clone()],
                output: vec![name.clone()],
                name: format!("out_{name}"),
                op_type: "Identity".into(),
                ..Default::default()
            });
        }
        let graph = pb::GraphProto {
            node: nodes,
            name: "mote_graph".into(),
            initializer: self.constants.clone(),
            input: self.inputs.iter().map(|(n, t, s)| value_info(n, Some((*t, s)))).collect(),
            output: outputs.iter().map(|(n, _)| value_info(n, None)).collect(),
        };
        let model = pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: OPSET }],
            producer_name: "mote".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(graph),
        };
        Ok(model.encode_to_vec())
    }
}

fn valid_name(name: &str) -> Result<(), DraftError> {
    if name.is_empty() || name.len() > 256 || name.chars().any(|c| c.is_control()) {
        return Err(DraftError::Invalid(format!("invalid name {name:?}: 1..=256 printable characters")));
    }
    Ok(())
}

fn attribute(name: &str, v: &AttrValue) -> pb::AttributeProto {
    let mut a = pb::AttributeProto { name: name.to_string(), ..Default::default() };
    match v {
        AttrValue::Int(i) => (a.r#type, a.i) = (attribute_type::INT, *i),
        AttrValue::Float(f) => (a.r#type, a.f) = (attribute_type::FLOAT, *f),
        AttrValue::Str(s) => (a.r#type, a.s) = (attribute_type::STRING, s.as_bytes().to_vec()),
        AttrValue::Ints(v) => (a.r#type, a.ints) = (attribute_type::INTS, v.clone()),
        AttrValue::Floats(v) => (a.r#type, a.floats) = (attribute_type::FLOATS, v.clone()),
        AttrValue::Strs(v) => {
            (a.r#type, a.strings) = (attribute_type::STRINGS, v.iter().map(|s| s.as_bytes().to_vec()).collect())
        }
    }
    a
}

fn value_info(name: &str, ty: Option<(ElementType, &[i64])>) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: ty.map(|(t, shape)| pb::TypeProto {
            tensor_type: Some(pb::TypeProtoTensor {
                elem_type: t.onnx_data_type(),
                shape: Some(pb::TensorShapeProto {
                    dim: shape
                        .iter()
                        .enumerate()
                        .map(|(i, &d)| pb::Dimension {
                            value: Some(if d < 0 {
                                pb::DimensionValue::DimParam(format!("{name}_d{i}"))
                            } else {
                                pb::DimensionValue::DimValue(d)
                            }),
                        })
                        .collect(),
                }),
            }),
        }),
    }
}

/// Operators of the default ONNX domain (opset 17) that ONNX Runtime
/// implements and that need no subgraph attribute. `Gelu` (opset 20) is not
/// among them: the SDK's `gelu` is built from `Erf`.
pub const SUPPORTED_OPS: &[&str] = &[
    "Abs",
    "Acos",
    "Acosh",
    "Add",
    "And",
    "ArgMax",
    "ArgMin",
    "Asin",
    "Asinh",
    "Atan",
    "Atanh",
    "AveragePool",
    "BatchNormalization",
    "Bernoulli",
    "BitShift",
    "BlackmanWindow",
    "Cast",
    "CastLike",
    "Ceil",
    "Celu",
    "Clip",
    "Compress",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "ConvInteger",
    "ConvTranspose",
    "Cos",
    "Cosh",
    "CumSum",
    "DFT",
    "DepthToSpace",
    "DequantizeLinear",
    "Det",
    "Div",
    "Dropout",
    "DynamicQuantizeLinear",
    "Einsum",
    "Elu",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "EyeLike",
    "Flatten",
    "Floor",
    "GRU",
    "Gather",
    "GatherElements",
    "GatherND",
    "Gemm",
    "GlobalAveragePool",
    "GlobalLpPool",
    "GlobalMaxPool",
    "Greater",
    "GreaterOrEqual",
    "GridSample",
    "HammingWindow",
    "HannWindow",
    "HardSigmoid",
    "HardSwish",
    "Hardmax",
    "Identity",
    "InstanceNormalization",
    "IsInf",
    "IsNaN",
    "LRN",
    "LSTM",
    "LayerNormalization",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "LogSoftmax",
    "LpNormalization",
    "LpPool",
    "MatMul",
    "MatMulInteger",
    "Max",
    "MaxPool",
    "MaxRoiPool",
    "MaxUnpool",
    "Mean",
    "MeanVarianceNormalization",
    "MelWeightMatrix",
    "Min",
    "Mod",
    "Mul",
    "Multinomial",
    "Neg",
    "NonMaxSuppression",
    "NonZero",
    "Not",
    "OneHot",
    "Or",
    "PRelu",
    "Pad",
    "Pow",
    "QLinearConv",
    "QLinearMatMul",
    "QuantizeLinear",
    "RNN",
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Range",
    "Reciprocal",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
    "Relu",
    "Reshape",
    "Resize",
    "ReverseSequence",
    "RoiAlign",
    "Round",
    "STFT",
    "ScatterElements",
    "ScatterND",
    "Selu",
    "Shape",
    "Shrink",
    "Sigmoid",
    "Sign",
    "Sin",
    "Sinh",
    "Size",
    "Slice",
    "Softmax",
    "Softplus",
    "Softsign",
    "SpaceToDepth",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Tan",
    "Tanh",
    "ThresholdedRelu",
    "Tile",
    "TopK",
    "Transpose",
    "Trilu",
    "Unique",
    "Unsqueeze",
    "Where",
    "Xor",
];

/// Whether `op` is an operator the builder accepts.
pub fn is_supported_op(op: &str) -> bool {
    SUPPORTED_OPS.binary_search(&op).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_ops_are_sorted_for_binary_search() {
        let mut sorted = SUPPORTED_OPS.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, SUPPORTED_OPS, "SUPPORTED_OPS must stay sorted");
        assert!(is_supported_op("MatMul"));
        assert!(!is_supported_op("matmul"));
        assert!(!is_supported_op("Loop"), "subgraph operators need GRAPH attributes the builder lacks");
    }

    #[test]
    fn lowering_is_deterministic_and_decodes() {
        let build = || {
            let mut d = GraphDraft::default();
            let x = d.input("x", ElementType::F32, &[-1, 4]).unwrap();
            let w = d.constant(ElementType::F32, &[4, 2], vec![0; 32]).unwrap();
            let y = d.node("MatMul", &[x, w], vec![], 1).unwrap()[0];
            let z = d.node("Softmax", &[y], vec![("axis".into(), AttrValue::Int(-1))], 1).unwrap()[0];
            d.lower(&[("probs".into(), z)]).unwrap()
        };
        let a = build();
        assert_eq!(a, build());
        let m = pb::ModelProto::decode(a.as_slice()).unwrap();
        let g = m.graph.unwrap();
        assert_eq!(g.node.len(), 3);
        assert_eq!(g.node[1].attribute[0].i, -1);
        assert_eq!(g.output[0].name, "probs");
        assert_eq!(g.initializer[0].raw_data.len(), 32);
    }

    #[test]
    fn bad_operands_and_ops_are_refused() {
        let mut d = GraphDraft::default();
        let x = d.input("x", ElementType::F32, &[1]).unwrap();
        assert_eq!(d.node("Relu", &[x + 7], vec![], 1), Err(DraftError::UnknownOperand(x + 7)));
        assert!(matches!(d.node("NotAnOp", &[x], vec![], 1), Err(DraftError::UnsupportedOp(_))));
        assert!(matches!(d.input("x", ElementType::F32, &[1]), Err(DraftError::DuplicateName(_))));
        assert!(d.lower(&[]).is_err());
    }
}
