//! ONNX `ModelProto` → a checked, typed op list the interpreter runs.
//!
//! Everything that can be decided without input data is decided here, at
//! `load`: each op is known and its attributes are supported, element types
//! are inferred through the graph (so a float-only kernel never sees an
//! integer tensor), constants are decoded, BatchNormalization over constant
//! statistics is folded into one scale and one shift, and every
//! intermediate value gets a slot that is freed after its last use.

use super::host::{guard, HostData, HostTensor};
use super::Ty;
use crate::onnx_proto::{self as pb, attribute_type as at, data_type as dt};
use std::collections::HashMap;

/// Elementwise binary arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

/// Elementwise float functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unary {
    Relu,
    Sigmoid,
    Tanh,
    Erf,
    Sqrt,
    Exp,
    Log,
    Neg,
    Abs,
    Reciprocal,
    Cos,
    Sin,
    Floor,
    Ceil,
}

/// ONNX `auto_pad`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AutoPad {
    NotSet,
    SameUpper,
    SameLower,
    Valid,
}

/// ONNX Pad modes the backend runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PadKind {
    Constant,
    Reflect,
    Edge,
}

/// Resize's `coordinate_transformation_mode`s the backend runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Coord {
    HalfPixel,
    HalfPixelSymmetric,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
}

/// Resize's `nearest_mode`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Nearest {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

/// One interpreted operator with its attributes.
#[derive(Clone, Debug)]
pub(super) enum Op {
    Conv {
        strides: Vec<usize>,
        pads: Vec<usize>,
        dilations: Vec<usize>,
        group: usize,
        auto_pad: AutoPad,
    },
    /// Transposed convolution (1-D and 2-D); `output_shape` wins over pads.
    ConvTranspose {
        strides: Vec<usize>,
        pads: Vec<usize>,
        dilations: Vec<usize>,
        group: usize,
        auto_pad: AutoPad,
        output_padding: Vec<usize>,
        output_shape: Option<Vec<usize>>,
    },
    /// Resize (nearest or linear, separable per axis) on the host; scales
    /// from input 1 (opset 10) or 2, sizes from input 3.
    Resize {
        linear: bool,
        coord: Coord,
        nearest: Nearest,
        /// The axes that scales/sizes name (all, in order, when absent).
        axes: Option<Vec<i64>>,
        /// `keep_aspect_ratio_policy` with sizes: `None` stretches,
        /// `Some(true)` not_larger, `Some(false)` not_smaller.
        keep: Option<bool>,
    },
    /// Inputs: x, scale, bias, mean, var — or, folded: x, mul, add.
    BatchNorm {
        eps: f32,
        folded: bool,
    },
    Unary(Unary),
    Gelu {
        tanh: bool,
    },
    LeakyRelu {
        alpha: f32,
    },
    /// `max(0, min(1, alpha·x + beta))`; HardSwish is `x ·` that with 1/6, 1/2.
    HardSigmoid {
        alpha: f32,
        beta: f32,
        swish: bool,
    },
    /// `x < 0 ? slope·x : x`, slope broadcast to x.
    PRelu,
    /// Elementwise Max or Min over any number of inputs.
    MinMax {
        max: bool,
    },
    /// Greater (`greater`) or Less.
    Compare {
        greater: bool,
    },
    InstanceNorm {
        eps: f32,
    },
    /// DepthToSpace (`crd`: column-row-depth order, else DCR).
    DepthToSpace {
        block: usize,
        crd: bool,
    },
    SpaceToDepth {
        block: usize,
        crd: bool,
    },
    /// Repeats from input 1.
    Tile,
    /// Start, limit, delta from inputs 0..3.
    Range,
    /// Axis from input 1.
    CumSum {
        exclusive: bool,
        reverse: bool,
    },
    /// k from optional input 1.
    Trilu {
        upper: bool,
    },
    /// ArgMax: the index of the (first, or last) largest value along `axis`.
    ArgMax {
        axis: i64,
        keepdims: bool,
        last: bool,
    },
    /// K from input 1; outputs values and int64 indices.
    TopK {
        axis: i64,
        largest: bool,
    },
    /// Pads and value from the attributes (opset < 11), else from inputs
    /// 1 (pads), 2 (constant value) and 3 (axes).
    Pad {
        mode: PadKind,
        pads: Option<Vec<i64>>,
        value: f32,
    },
    Not,
    /// And (`and`) or Or.
    Logic {
        and: bool,
    },
    /// Bounds from attributes (opset < 11); otherwise from inputs 1 and 2.
    Clip {
        min: Option<f32>,
        max: Option<f32>,
    },
    /// `legacy`: opset < 13, which flattens the input to 2-D at `axis`.
    Softmax {
        axis: i64,
        log: bool,
        legacy: bool,
    },
    Pool {
        max: bool,
        kernel: Vec<usize>,
        strides: Vec<usize>,
        pads: Vec<usize>,
        dilations: Vec<usize>,
        ceil: bool,
        count_include_pad: bool,
        auto_pad: AutoPad,
    },
    GlobalPool {
        max: bool,
    },
    Gemm {
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    },
    MatMul,
    Binary(BinOp),
    Equal,
    /// Axes from the attribute, else from input 1.
    Reduce {
        mean: bool,
        axes: Option<Vec<i64>>,
        keepdims: bool,
        noop_with_empty_axes: bool,
    },
    Concat {
        axis: i64,
    },
    Reshape {
        allowzero: bool,
    },
    Flatten {
        axis: i64,
    },
    Transpose {
        perm: Option<Vec<usize>>,
    },
    Squeeze {
        axes: Option<Vec<i64>>,
    },
    Unsqueeze {
        axes: Option<Vec<i64>>,
    },
    Gather {
        axis: i64,
    },
    /// Starts, ends, axes from attributes (opset < 10); else from inputs.
    Slice {
        attrs: Option<(Vec<i64>, Vec<i64>, Option<Vec<i64>>)>,
    },
    Shape {
        start: i64,
        end: Option<i64>,
    },
    ConstantOfShape {
        value: HostTensor,
    },
    Cast {
        to: Ty,
    },
    Where,
    Expand,
    LayerNorm {
        axis: i64,
        eps: f32,
    },
    Sum,
    Lrn {
        alpha: f32,
        beta: f32,
        bias: f32,
        size: usize,
    },
    /// Identity, and Dropout in inference mode (its optional mask output is all true).
    Identity,
    /// Sizes from the attribute (opset < 13) or input 1; else equal parts.
    Split {
        axis: i64,
        split: Option<Vec<i64>>,
    },
    /// RMS normalization (`SimplifiedLayerNormalization`):
    /// `x / sqrt(mean(x², axes ≥ axis) + eps) · scale`.
    RmsNorm {
        axis: i64,
        eps: f32,
    },
    /// ORT's `com.microsoft::GroupQueryAttention` (causal, unpadded rows):
    /// packed or separate Q/K/V, past K/V appended, rotary from the cos/sin
    /// caches, K/V heads shared by `num_heads / kv_num_heads` query heads.
    Gqa {
        heads: usize,
        kv_heads: usize,
        scale: Option<f32>,
        rotary: bool,
    },
}

/// A node: op, input slots (`None` for an omitted optional input), output
/// slots (`None` for an output nobody reads).
#[derive(Clone, Debug)]
pub(super) struct Node {
    pub(super) name: String,
    pub(super) op_type: String,
    pub(super) op: Op,
    pub(super) inputs: Vec<Option<usize>>,
    pub(super) outputs: Vec<Option<usize>>,
}

/// A declared graph input.
#[derive(Clone, Debug)]
pub(super) struct Input {
    pub(super) name: String,
    pub(super) slot: usize,
    pub(super) ty: Ty,
    /// `-1` for a dynamic axis.
    pub(super) shape: Vec<i64>,
}

/// A checked model.
#[derive(Debug)]
pub(super) struct Program {
    pub(super) slots: usize,
    pub(super) consts: Vec<(usize, HostTensor)>,
    pub(super) inputs: Vec<Input>,
    pub(super) outputs: Vec<(String, usize, Ty, Vec<i64>)>,
    pub(super) nodes: Vec<Node>,
    /// Slots to free after node `i` (their last reader).
    pub(super) drop_after: Vec<Vec<usize>>,
}

/// Operators the wgpu backend runs (sorted; `supports` and load agree).
pub const WGPU_OPS: &[&str] = &[
    "Abs",
    "Add",
    "And",
    "ArgMax",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Ceil",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "ConvTranspose",
    "Cos",
    "CumSum",
    "DepthToSpace",
    "Div",
    "Dropout",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Floor",
    "Gather",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Greater",
    "GroupQueryAttention",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "InstanceNormalization",
    "LRN",
    "LayerNormalization",
    "LeakyRelu",
    "Less",
    "Log",
    "LogSoftmax",
    "MatMul",
    "MatMulNBits",
    "Max",
    "MaxPool",
    "Min",
    "Mul",
    "Neg",
    "Not",
    "Or",
    "PRelu",
    "Pad",
    "Pow",
    "Range",
    "Reciprocal",
    "ReduceMean",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Resize",
    "Shape",
    "Sigmoid",
    "SimplifiedLayerNormalization",
    "Sin",
    "Slice",
    "Softmax",
    "SpaceToDepth",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Tanh",
    "Tile",
    "TopK",
    "Transpose",
    "Trilu",
    "Unsqueeze",
    "Where",
];

/// Of [`WGPU_OPS`], the ONNX Runtime contrib operators, which models name
/// in the `com.microsoft` domain.
const MICROSOFT_OPS: &[&str] = &["GroupQueryAttention", "MatMulNBits", "SimplifiedLayerNormalization"];

/// Whether the wgpu backend runs `op` (an ONNX op type, default domain).
pub fn supports_op(op: &str) -> bool {
    WGPU_OPS.binary_search(&op).is_ok()
}

/// Whether an operator's domain is one this backend reads it in.
fn known_domain(domain: &str, op: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx" || (domain == "com.microsoft" && MICROSOFT_OPS.contains(&op))
}

/// `com.microsoft::MatMulNBits` weights as the float matrix `Wᵀ` (`[K, N]`,
/// what `A · Wᵀ` multiplies by): `w = (q − zero_point) · scale` per block of
/// `block_size` along K, `q` packed little-end first (4-bit: the low nibble
/// is the even element), zero points packed the same way or given as
/// floats, `2^(bits−1)` when absent. Sizes are checked against the
/// attributes, so the result is bounded by the model's own bytes (8 floats
/// per packed byte at most).
fn dequantize_nbits(
    q: &HostTensor,
    scales: &HostTensor,
    zeros: Option<&HostTensor>,
    (k, n, bits, block): (usize, usize, usize, usize),
) -> Result<HostTensor, String> {
    if !matches!(bits, 4 | 8) {
        return Err(format!("bits {bits} is not supported (4 and 8 are)"));
    }
    if block < 16 || !block.is_power_of_two() {
        return Err(format!("block_size {block} must be a power of two ≥ 16"));
    }
    let blocks = k.div_ceil(block);
    let blob = block * bits / 8;
    let HostData::I64(q) = &q.data else { return Err("B must be uint8".into()) };
    if q.len() != n * blocks * blob {
        return Err(format!("B has {} bytes, K={k} N={n} bits={bits} block_size={block} need {}", q.len(), n * blocks * blob));
    }
    let HostData::F32(sc) = &scales.data else { return Err("scales must be float32".into()) };
    if sc.len() != n * blocks {
        return Err(format!("scales has {} values, {} expected", sc.len(), n * blocks));
    }
    let zrow = (blocks * bits).div_ceil(8);
    let zero = |row: usize, b: usize| -> Result<f32, String> {
        match zeros.map(|z| &z.data) {
            None => Ok((1u32 << (bits - 1)) as f32),
            Some(HostData::F32(z)) if z.len() == n * blocks => Ok(z[row * blocks + b]),
            Some(HostData::I64(z)) if z.len() == n * zrow => Ok(if bits == 8 {
                z[row * zrow + b] as f32
            } else {
                ((z[row * zrow + b / 2] >> (4 * (b % 2))) & 0xF) as f32
            }),
            Some(_) => Err(format!("zero_points must be {n}×{zrow} uint8 or {n}×{blocks} float32")),
        }
    };
    guard(&[k, n])?;
    let mut w = vec![0f32; k * n];
    for row in 0..n {
        for b in 0..blocks {
            let (s, z) = (sc[row * blocks + b], zero(row, b)?);
            let base = (row * blocks + b) * blob;
            for j in 0..block.min(k - b * block) {
                let byte = q[base + j * bits / 8];
                let v = if bits == 8 { byte } else { (byte >> (4 * (j % 2))) & 0xF };
                w[(b * block + j) * n + row] = (v as f32 - z) * s;
            }
        }
    }
    Ok(HostTensor::new(vec![k, n], HostData::F32(w)))
}

struct Attrs<'a>(&'a [pb::AttributeProto]);

impl<'a> Attrs<'a> {
    fn get(&self, name: &str) -> Option<&'a pb::AttributeProto> {
        self.0.iter().find(|a| a.name == name)
    }
    fn int(&self, name: &str, default: i64) -> i64 {
        self.get(name).map_or(default, |a| a.i)
    }
    fn float(&self, name: &str, default: f32) -> f32 {
        self.get(name).map_or(default, |a| a.f)
    }
    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.get(name).map(|a| a.ints.clone())
    }
    fn string(&self, name: &str) -> Option<String> {
        self.get(name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }
}

fn usizes(v: Vec<i64>, what: &str) -> Result<Vec<usize>, String> {
    v.into_iter().map(|x| usize::try_from(x).map_err(|_| format!("{what} must not be negative, got {x}"))).collect()
}

fn auto_pad(a: &Attrs<'_>) -> Result<AutoPad, String> {
    match a.string("auto_pad").as_deref() {
        None | Some("NOTSET") | Some("") => Ok(AutoPad::NotSet),
        Some("SAME_UPPER") => Ok(AutoPad::SameUpper),
        Some("SAME_LOWER") => Ok(AutoPad::SameLower),
        Some("VALID") => Ok(AutoPad::Valid),
        Some(other) => Err(format!("auto_pad '{other}' is not an ONNX value")),
    }
}

/// The ONNX data type number → the interpreter's element type.
pub(super) fn ty_of(data_type: i32) -> Option<Ty> {
    Ty::ALL.into_iter().find(|t| t.onnx_data_type() == data_type)
}

/// An ONNX data type's name, for errors.
fn type_name(data_type: i32) -> &'static str {
    crate::tensor::Datatype::from_onnx_data_type(data_type).map_or("an unsupported type", |d| d.as_str())
}

fn is_int(t: Ty) -> bool {
    matches!(t, Ty::I64 | Ty::I32)
}

/// A declared input or output shape, `-1` for symbolic or unknown axes
/// (empty when the model declares none).
fn declared_shape(vi: &pb::ValueInfoProto) -> Vec<i64> {
    vi.r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .and_then(|t| t.shape.as_ref())
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(pb::DimensionValue::DimValue(v)) => v,
                    _ => -1,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The tensor value of a `Constant` node.
fn constant_value(a: &Attrs<'_>) -> Result<HostTensor, String> {
    if let Some(t) = a.get("value").and_then(|x| x.t.as_ref()) {
        return HostTensor::from_proto(t);
    }
    if let Some(x) = a.get("value_float") {
        return Ok(HostTensor::new(vec![], HostData::F32(vec![x.f])));
    }
    if let Some(x) = a.get("value_floats") {
        return Ok(HostTensor::new(vec![x.floats.len()], HostData::F32(x.floats.clone())));
    }
    if let Some(x) = a.get("value_int") {
        return Ok(HostTensor::i64(vec![], vec![x.i]));
    }
    if let Some(x) = a.get("value_ints") {
        return Ok(HostTensor::i64(vec![x.ints.len()], x.ints.clone()));
    }
    Err("Constant has no value the wgpu backend reads (sparse and string constants are not supported)".into())
}

/// Why a model does not compile.
#[derive(Debug)]
pub(super) enum Refused {
    /// The model uses something this backend does not implement (op,
    /// attribute value, element type): ORT may well run it.
    Unsupported(String),
    /// The model is not valid ONNX.
    Invalid(String),
}

impl From<String> for Refused {
    fn from(m: String) -> Self {
        Refused::Invalid(m)
    }
}

/// Parses and checks a model.
pub(super) fn compile(model: &pb::ModelProto) -> Result<Program, Refused> {
    let graph = model.graph.as_ref().ok_or_else(|| Refused::Invalid("the model has no graph".into()))?;
    let opset = model
        .opset_import
        .iter()
        .filter(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .max()
        .unwrap_or(1);

    let mut slots: HashMap<String, usize> = HashMap::new();
    let mut types: Vec<Ty> = Vec::new();
    let mut consts: Vec<(usize, HostTensor)> = Vec::new();
    let mut const_of: HashMap<usize, usize> = HashMap::new(); // slot → index in consts
    let new_slot = |name: &str, ty: Ty, slots: &mut HashMap<String, usize>, types: &mut Vec<Ty>| -> usize {
        let s = types.len();
        types.push(ty);
        if !name.is_empty() {
            slots.insert(name.to_string(), s);
        }
        s
    };

    for init in &graph.initializer {
        let t = HostTensor::from_proto(init).map_err(Refused::Unsupported)?;
        let ty = match ty_of(init.data_type) {
            Some(t) => t,
            // Float64/int8/uint8 constants are widened or narrowed on decode.
            None if init.data_type == dt::DOUBLE => Ty::F32,
            None if matches!(init.data_type, dt::UINT8 | dt::INT8) => Ty::I64,
            None => {
                return Err(Refused::Unsupported(format!(
                    "initializer '{}' is {}",
                    init.name,
                    type_name(init.data_type)
                )))
            }
        };
        let s = new_slot(&init.name, ty, &mut slots, &mut types);
        const_of.insert(s, consts.len());
        consts.push((s, t));
    }

    let mut inputs = Vec::new();
    for vi in &graph.input {
        if slots.contains_key(&vi.name) {
            continue; // an initializer listed as an input (IR < 4 style): the constant wins
        }
        let tt = vi
            .r#type
            .as_ref()
            .and_then(|t| t.tensor_type.as_ref())
            .ok_or_else(|| format!("input '{}' is not a tensor", vi.name))?;
        let ty = ty_of(tt.elem_type).ok_or_else(|| {
            Refused::Unsupported(format!(
                "input '{}' is {}; the wgpu backend runs float32 models with int32/int64/bool side inputs",
                vi.name,
                type_name(tt.elem_type)
            ))
        })?;
        let shape = declared_shape(vi);
        let slot = new_slot(&vi.name, ty, &mut slots, &mut types);
        inputs.push(Input { name: vi.name.clone(), slot, ty, shape });
    }

    let mut nodes: Vec<Node> = Vec::new();
    for (index, node) in graph.node.iter().enumerate() {
        let label = if node.name.is_empty() { format!("#{index}") } else { format!("'{}'", node.name) };
        let fail = |msg: String| Refused::Invalid(format!("{} node {label}: {msg}", node.op_type));
        let nope = |msg: String| Refused::Unsupported(format!("{} node {label}: {msg}", node.op_type));
        if !known_domain(&node.domain, &node.op_type) {
            return Err(Refused::Unsupported(format!(
                "operator {}::{} (node {label}) is not supported by the wgpu backend",
                node.domain, node.op_type
            )));
        }
        if !supports_op(&node.op_type) {
            return Err(Refused::Unsupported(format!(
                "operator {} (node {label}) is not supported by the wgpu backend; run this model on ort-cpu or ort-cuda",
                node.op_type
            )));
        }
        let a = Attrs(&node.attribute);
        if let Some(g) = node.attribute.iter().find(|x| x.r#type == at::GRAPH || x.g.is_some()) {
            return Err(nope(format!("subgraph attribute '{}' is not supported", g.name)));
        }
        let mut in_slots = Vec::new();
        for name in &node.input {
            if name.is_empty() {
                in_slots.push(None);
            } else {
                let s = *slots.get(name).ok_or_else(|| fail(format!("input '{name}' is not produced before it")))?;
                in_slots.push(Some(s));
            }
        }
        let in_ty = |i: usize| -> Option<Ty> { in_slots.get(i).copied().flatten().map(|s| types[s]) };
        let need = |i: usize| -> Result<Ty, Refused> { in_ty(i).ok_or_else(|| fail(format!("input {i} is required"))) };
        let float_in = |i: usize| -> Result<(), Refused> {
            match need(i)? {
                Ty::F32 => Ok(()),
                t => Err(nope(format!("input {i} is {t:?}; this operator runs on float32 only"))),
            }
        };
        let const_input = |i: usize| -> Option<&HostTensor> {
            in_slots.get(i).copied().flatten().and_then(|s| const_of.get(&s)).map(|&c| &consts[c].1)
        };

        // Op and the element type of each output.
        let (op, out_tys): (Op, Vec<Ty>) = match node.op_type.as_str() {
            "Constant" => {
                let t = constant_value(&a).map_err(nope)?;
                let ty = t.ty();
                let name = node.output.first().ok_or_else(|| fail("has no output".into()))?;
                let s = new_slot(name, ty, &mut slots, &mut types);
                const_of.insert(s, consts.len());
                consts.push((s, t));
                continue;
            }
            "Conv" => {
                float_in(0)?;
                float_in(1)?;
                if let Some(w) = const_input(1) {
                    if !(3..=4).contains(&w.shape.len()) {
                        return Err(nope(format!(
                            "{}-D convolution is not supported (1-D and 2-D are)",
                            w.shape.len().saturating_sub(2)
                        )));
                    }
                }
                let op = Op::Conv {
                    strides: usizes(a.ints("strides").unwrap_or_default(), "strides").map_err(fail)?,
                    pads: usizes(a.ints("pads").unwrap_or_default(), "pads").map_err(fail)?,
                    dilations: usizes(a.ints("dilations").unwrap_or_default(), "dilations").map_err(fail)?,
                    group: usize::try_from(a.int("group", 1))
                        .ok()
                        .filter(|&g| g > 0)
                        .ok_or_else(|| fail("group must be positive".into()))?,
                    auto_pad: auto_pad(&a).map_err(fail)?,
                };
                (op, vec![Ty::F32])
            }
            "ConvTranspose" => {
                float_in(0)?;
                float_in(1)?;
                if in_ty(2).is_some() {
                    float_in(2)?;
                }
                // The weight's rank, where the model tells it (an
                // initializer, or a graph input's declared shape).
                let rank = const_input(1).map(|w| w.shape.len()).or_else(|| {
                    let s = in_slots.get(1).copied().flatten()?;
                    inputs.iter().find(|i| i.slot == s).map(|i| i.shape.len()).filter(|&r| r > 0)
                });
                if let Some(r) = rank.filter(|r| !(3..=4).contains(r)) {
                    return Err(nope(format!(
                        "{}-D ConvTranspose is not supported by the wgpu backend (1-D and 2-D are)",
                        r.saturating_sub(2)
                    )));
                }
                let list = |name: &str| usizes(a.ints(name).unwrap_or_default(), name).map_err(fail);
                let op = Op::ConvTranspose {
                    strides: list("strides")?,
                    pads: list("pads")?,
                    dilations: list("dilations")?,
                    group: usize::try_from(a.int("group", 1))
                        .ok()
                        .filter(|&g| g > 0)
                        .ok_or_else(|| fail("group must be positive".into()))?,
                    auto_pad: auto_pad(&a).map_err(fail)?,
                    output_padding: list("output_padding")?,
                    output_shape: a.ints("output_shape").map(|v| usizes(v, "output_shape")).transpose().map_err(fail)?,
                };
                (op, vec![Ty::F32])
            }
            "Resize" => {
                float_in(0)?;
                let linear = match a.string("mode").as_deref() {
                    None | Some("nearest") => false,
                    Some("linear") => true,
                    Some(m) => return Err(nope(format!("Resize mode {m} is not supported by the wgpu backend"))),
                };
                let coord = match a.string("coordinate_transformation_mode").as_deref() {
                    None | Some("half_pixel") => Coord::HalfPixel,
                    Some("half_pixel_symmetric") => Coord::HalfPixelSymmetric,
                    Some("pytorch_half_pixel") => Coord::PytorchHalfPixel,
                    Some("align_corners") => Coord::AlignCorners,
                    Some("asymmetric") => Coord::Asymmetric,
                    Some(m) => {
                        return Err(nope(format!(
                            "Resize coordinate_transformation_mode {m} is not supported by the wgpu backend"
                        )))
                    }
                };
                let nearest = match a.string("nearest_mode").as_deref() {
                    None | Some("round_prefer_floor") => Nearest::RoundPreferFloor,
                    Some("round_prefer_ceil") => Nearest::RoundPreferCeil,
                    Some("floor") => Nearest::Floor,
                    Some("ceil") => Nearest::Ceil,
                    Some(m) => return Err(fail(format!("nearest_mode '{m}' is not an ONNX value"))),
                };
                if a.int("antialias", 0) != 0 {
                    return Err(nope("Resize with antialias is not supported by the wgpu backend".into()));
                }
                let keep = match a.string("keep_aspect_ratio_policy").as_deref() {
                    None | Some("stretch") => None,
                    Some("not_larger") => Some(true),
                    Some("not_smaller") => Some(false),
                    Some(p) => return Err(fail(format!("keep_aspect_ratio_policy '{p}' is not an ONNX value"))),
                };
                if opset < 10 {
                    return Err(nope("Upsample-style Resize before opset 10 is not supported".into()));
                }
                (Op::Resize { linear, coord, nearest, axes: a.ints("axes"), keep }, vec![Ty::F32])
            }
            "BatchNormalization" => {
                float_in(0)?;
                if a.int("training_mode", 0) != 0 || node.output.iter().skip(1).any(|o| !o.is_empty()) {
                    return Err(nope("training mode (running statistics outputs) is not supported".into()));
                }
                let eps = a.float("epsilon", 1e-5);
                // Fold constant statistics into y = x * mul + add.
                let params: Option<Vec<Vec<f32>>> = (1..5)
                    .map(|i| match const_input(i).map(|t| &t.data) {
                        Some(HostData::F32(v)) => Some(v.clone()),
                        _ => None,
                    })
                    .collect();
                if let Some(p) = params {
                    let (scale, bias, mean, var) = (&p[0], &p[1], &p[2], &p[3]);
                    let c = scale.len();
                    if [bias.len(), mean.len(), var.len()].iter().any(|&n| n != c) {
                        return Err(fail("scale, bias, mean and var must have the same length".into()));
                    }
                    let mul: Vec<f32> = (0..c).map(|i| scale[i] / (var[i] + eps).sqrt()).collect();
                    let add: Vec<f32> = (0..c).map(|i| bias[i] - mean[i] * mul[i]).collect();
                    let mut folded = Vec::new();
                    for v in [mul, add] {
                        let s = new_slot("", Ty::F32, &mut slots, &mut types);
                        const_of.insert(s, consts.len());
                        consts.push((s, HostTensor::new(vec![c], HostData::F32(v))));
                        folded.push(Some(s));
                    }
                    in_slots = vec![in_slots[0], folded[0], folded[1]];
                    (Op::BatchNorm { eps, folded: true }, vec![Ty::F32])
                } else {
                    for i in 1..5 {
                        float_in(i)?;
                    }
                    (Op::BatchNorm { eps, folded: false }, vec![Ty::F32])
                }
            }
            u @ ("Relu" | "Sigmoid" | "Tanh" | "Erf" | "Sqrt" | "Exp" | "Log" | "Neg" | "Abs" | "Reciprocal" | "Cos"
            | "Sin" | "Floor" | "Ceil") => {
                float_in(0)?;
                let un = match u {
                    "Relu" => Unary::Relu,
                    "Sigmoid" => Unary::Sigmoid,
                    "Tanh" => Unary::Tanh,
                    "Erf" => Unary::Erf,
                    "Sqrt" => Unary::Sqrt,
                    "Exp" => Unary::Exp,
                    "Log" => Unary::Log,
                    "Neg" => Unary::Neg,
                    "Abs" => Unary::Abs,
                    "Cos" => Unary::Cos,
                    "Sin" => Unary::Sin,
                    "Floor" => Unary::Floor,
                    "Ceil" => Unary::Ceil,
                    _ => Unary::Reciprocal,
                };
                (Op::Unary(un), vec![Ty::F32])
            }
            "LeakyRelu" => {
                float_in(0)?;
                (Op::LeakyRelu { alpha: a.float("alpha", 0.01) }, vec![Ty::F32])
            }
            "HardSigmoid" => {
                float_in(0)?;
                (Op::HardSigmoid { alpha: a.float("alpha", 0.2), beta: a.float("beta", 0.5), swish: false }, vec![Ty::F32])
            }
            "HardSwish" => {
                float_in(0)?;
                (Op::HardSigmoid { alpha: 1.0 / 6.0, beta: 0.5, swish: true }, vec![Ty::F32])
            }
            "PRelu" => {
                float_in(0)?;
                float_in(1)?;
                (Op::PRelu, vec![Ty::F32])
            }
            m @ ("Max" | "Min") => {
                let x = need(0)?;
                for i in 1..in_slots.len() {
                    let y = need(i)?;
                    if !(x == y || is_int(x) && is_int(y)) {
                        return Err(fail(format!("inputs of types {x:?} and {y:?}")));
                    }
                }
                if x == Ty::Bool {
                    return Err(fail("bool inputs".into()));
                }
                (Op::MinMax { max: m == "Max" }, vec![x])
            }
            c @ ("Greater" | "Less") => {
                let (x, y) = (need(0)?, need(1)?);
                if !(x == y || is_int(x) && is_int(y)) || x == Ty::Bool {
                    return Err(fail(format!("{c} of {x:?} and {y:?}")));
                }
                (Op::Compare { greater: c == "Greater" }, vec![Ty::Bool])
            }
            "InstanceNormalization" => {
                for i in 0..3 {
                    float_in(i)?;
                }
                (Op::InstanceNorm { eps: a.float("epsilon", 1e-5) }, vec![Ty::F32])
            }
            d @ ("DepthToSpace" | "SpaceToDepth") => {
                let x = need(0)?;
                let block = usize::try_from(a.get("blocksize").ok_or_else(|| fail("blocksize is required".into()))?.i)
                    .ok()
                    .filter(|&b| b > 0 && b <= 1 << 16)
                    .ok_or_else(|| fail("blocksize must be positive".into()))?;
                let crd = match a.string("mode").as_deref() {
                    None | Some("DCR") => false,
                    Some("CRD") => true,
                    Some(o) => return Err(fail(format!("mode '{o}' is not an ONNX value"))),
                };
                if d == "SpaceToDepth" {
                    (Op::SpaceToDepth { block, crd }, vec![x])
                } else {
                    (Op::DepthToSpace { block, crd }, vec![x])
                }
            }
            "Tile" => {
                if !is_int(need(1)?) {
                    return Err(fail("repeats must be int64".into()));
                }
                (Op::Tile, vec![need(0)?])
            }
            "Range" => {
                let x = need(0)?;
                if x == Ty::Bool || need(1)? != x || need(2)? != x {
                    return Err(fail("start, limit and delta must be numbers of one type".into()));
                }
                (Op::Range, vec![x])
            }
            "CumSum" => {
                let x = need(0)?;
                if x == Ty::Bool || !is_int(need(1)?) {
                    return Err(fail("x must be a number tensor and axis an integer".into()));
                }
                let op = Op::CumSum { exclusive: a.int("exclusive", 0) != 0, reverse: a.int("reverse", 0) != 0 };
                (op, vec![x])
            }
            "Trilu" => {
                if in_ty(1).is_some_and(|t| !is_int(t)) {
                    return Err(fail("k must be int64".into()));
                }
                (Op::Trilu { upper: a.int("upper", 1) != 0 }, vec![need(0)?])
            }
            "ArgMax" => {
                let x = need(0)?;
                if x == Ty::Bool {
                    return Err(fail("bool input".into()));
                }
                let op = Op::ArgMax {
                    axis: a.int("axis", 0),
                    keepdims: a.int("keepdims", 1) != 0,
                    last: a.int("select_last_index", 0) != 0,
                };
                (op, vec![Ty::I64])
            }
            "TopK" => {
                let x = need(0)?;
                if x == Ty::Bool {
                    return Err(fail("bool input".into()));
                }
                if opset < 10 {
                    return Err(nope("TopK-1 (k as an attribute) is not supported".into()));
                }
                if !is_int(need(1)?) {
                    return Err(fail("K must be int64".into()));
                }
                (Op::TopK { axis: a.int("axis", -1), largest: a.int("largest", 1) != 0 }, vec![x, Ty::I64])
            }
            "Pad" => {
                let x = need(0)?;
                let mode = match a.string("mode").as_deref() {
                    None | Some("constant") => PadKind::Constant,
                    Some("reflect") => PadKind::Reflect,
                    Some("edge") => PadKind::Edge,
                    Some("wrap") => return Err(nope("Pad mode wrap is not supported by the wgpu backend".into())),
                    Some(o) => return Err(fail(format!("mode '{o}' is not an ONNX value"))),
                };
                let (pads, value) = if opset < 11 {
                    let p = a.ints("pads").or_else(|| a.ints("paddings")).ok_or_else(|| fail("pads is required".into()))?;
                    (Some(p), a.float("value", 0.0))
                } else {
                    if !is_int(need(1)?) {
                        return Err(fail("pads must be int64".into()));
                    }
                    (None, 0.0)
                };
                (Op::Pad { mode, pads, value }, vec![x])
            }
            "Not" => {
                if need(0)? != Ty::Bool {
                    return Err(fail("input must be bool".into()));
                }
                (Op::Not, vec![Ty::Bool])
            }
            l @ ("And" | "Or") => {
                if need(0)? != Ty::Bool || need(1)? != Ty::Bool {
                    return Err(fail("inputs must be bool".into()));
                }
                (Op::Logic { and: l == "And" }, vec![Ty::Bool])
            }
            "Gelu" => {
                float_in(0)?;
                let tanh = match a.string("approximate").as_deref() {
                    None | Some("none") => false,
                    Some("tanh") => true,
                    Some(o) => return Err(fail(format!("approximate '{o}' is not an ONNX value"))),
                };
                (Op::Gelu { tanh }, vec![Ty::F32])
            }
            "Clip" => {
                float_in(0)?;
                let (min, max) = if opset < 11 {
                    (Some(a.float("min", f32::MIN)), Some(a.float("max", f32::MAX)))
                } else {
                    (None, None)
                };
                (Op::Clip { min, max }, vec![Ty::F32])
            }
            s @ ("Softmax" | "LogSoftmax") => {
                float_in(0)?;
                let legacy = opset < 13;
                let axis = a.int("axis", if legacy { 1 } else { -1 });
                (Op::Softmax { axis, log: s == "LogSoftmax", legacy }, vec![Ty::F32])
            }
            p @ ("MaxPool" | "AveragePool") => {
                float_in(0)?;
                let max = p == "MaxPool";
                if node.output.len() > 1 && !node.output[1].is_empty() {
                    return Err(nope("the Indices output is not supported".into()));
                }
                if a.int("storage_order", 0) != 0 {
                    return Err(nope("storage_order 1 is not supported".into()));
                }
                let kernel = usizes(
                    a.ints("kernel_shape").ok_or_else(|| fail("kernel_shape is required".into()))?,
                    "kernel_shape",
                )
                .map_err(fail)?;
                if !(1..=2).contains(&kernel.len()) {
                    return Err(nope(format!("{}-D pooling is not supported (1-D and 2-D are)", kernel.len())));
                }
                let dilations = usizes(a.ints("dilations").unwrap_or_default(), "dilations").map_err(fail)?;
                if !max && dilations.iter().any(|&d| d != 1) {
                    return Err(nope("dilated AveragePool is not supported".into()));
                }
                let op = Op::Pool {
                    max,
                    kernel,
                    strides: usizes(a.ints("strides").unwrap_or_default(), "strides").map_err(fail)?,
                    pads: usizes(a.ints("pads").unwrap_or_default(), "pads").map_err(fail)?,
                    dilations,
                    ceil: a.int("ceil_mode", 0) != 0,
                    count_include_pad: a.int("count_include_pad", 0) != 0,
                    auto_pad: auto_pad(&a).map_err(fail)?,
                };
                (op, vec![Ty::F32])
            }
            g @ ("GlobalAveragePool" | "GlobalMaxPool") => {
                float_in(0)?;
                (Op::GlobalPool { max: g == "GlobalMaxPool" }, vec![Ty::F32])
            }
            "Gemm" => {
                float_in(0)?;
                float_in(1)?;
                if in_ty(2).is_some() {
                    float_in(2)?;
                }
                let op = Op::Gemm {
                    alpha: a.float("alpha", 1.0),
                    beta: a.float("beta", 1.0),
                    trans_a: a.int("transA", 0) != 0,
                    trans_b: a.int("transB", 0) != 0,
                };
                (op, vec![Ty::F32])
            }
            "MatMul" => {
                float_in(0)?;
                float_in(1)?;
                (Op::MatMul, vec![Ty::F32])
            }
            b @ ("Add" | "Sub" | "Mul" | "Div" | "Pow") => {
                let (x, y) = (need(0)?, need(1)?);
                let op = match b {
                    "Add" => BinOp::Add,
                    "Sub" => BinOp::Sub,
                    "Mul" => BinOp::Mul,
                    "Div" => BinOp::Div,
                    _ => BinOp::Pow,
                };
                let ok = match op {
                    BinOp::Pow => x == Ty::F32 || (is_int(x) && is_int(y)),
                    _ => x == y || (is_int(x) && is_int(y)),
                };
                if !ok || x == Ty::Bool {
                    return Err(nope(format!("{b} of {x:?} and {y:?} is not supported")));
                }
                (Op::Binary(op), vec![x])
            }
            "Equal" => {
                let (x, y) = (need(0)?, need(1)?);
                if !(x == y || (is_int(x) && is_int(y))) {
                    return Err(fail(format!("Equal of {x:?} and {y:?}")));
                }
                (Op::Equal, vec![Ty::Bool])
            }
            r @ ("ReduceMean" | "ReduceSum") => {
                let x = need(0)?;
                if x == Ty::Bool {
                    return Err(fail("bool input".into()));
                }
                let op = Op::Reduce {
                    mean: r == "ReduceMean",
                    axes: a.ints("axes"),
                    keepdims: a.int("keepdims", 1) != 0,
                    noop_with_empty_axes: a.int("noop_with_empty_axes", 0) != 0,
                };
                (op, vec![x])
            }
            "Concat" => {
                let x = need(0)?;
                for i in 1..in_slots.len() {
                    if need(i)? != x {
                        return Err(fail("inputs of different types".into()));
                    }
                }
                (Op::Concat { axis: a.get("axis").ok_or_else(|| fail("axis is required".into()))?.i }, vec![x])
            }
            "Reshape" => {
                let x = need(0)?;
                if opset < 5 {
                    return Err(nope("Reshape-1 (shape as an attribute) is not supported".into()));
                }
                if !is_int(need(1)?) {
                    return Err(fail("shape must be int64".into()));
                }
                (Op::Reshape { allowzero: a.int("allowzero", 0) != 0 }, vec![x])
            }
            "Flatten" => (Op::Flatten { axis: a.int("axis", 1) }, vec![need(0)?]),
            "Transpose" => {
                let perm = a.ints("perm").map(|p| usizes(p, "perm")).transpose().map_err(fail)?;
                (Op::Transpose { perm }, vec![need(0)?])
            }
            "Squeeze" => (Op::Squeeze { axes: a.ints("axes") }, vec![need(0)?]),
            "Unsqueeze" => (Op::Unsqueeze { axes: a.ints("axes") }, vec![need(0)?]),
            "Gather" => {
                if !is_int(need(1)?) {
                    return Err(fail("indices must be int32 or int64".into()));
                }
                (Op::Gather { axis: a.int("axis", 0) }, vec![need(0)?])
            }
            "Slice" => {
                let attrs = if opset < 10 {
                    Some((
                        a.ints("starts").ok_or_else(|| fail("starts is required".into()))?,
                        a.ints("ends").ok_or_else(|| fail("ends is required".into()))?,
                        a.ints("axes"),
                    ))
                } else {
                    None
                };
                (Op::Slice { attrs }, vec![need(0)?])
            }
            "Shape" => {
                need(0)?;
                (Op::Shape { start: a.int("start", 0), end: a.get("end").map(|x| x.i) }, vec![Ty::I64])
            }
            "ConstantOfShape" => {
                let value = match a.get("value").and_then(|x| x.t.as_ref()) {
                    Some(t) => HostTensor::from_proto(t).map_err(nope)?,
                    None => HostTensor::new(vec![1], HostData::F32(vec![0.0])),
                };
                if value.data.len() != 1 {
                    return Err(fail("value must hold one element".into()));
                }
                let ty = match a.get("value").and_then(|x| x.t.as_ref()) {
                    Some(t) => {
                        ty_of(t.data_type).ok_or_else(|| fail(format!("value is {}", type_name(t.data_type))))?
                    }
                    None => Ty::F32,
                };
                (Op::ConstantOfShape { value: value.cast(ty) }, vec![ty])
            }
            "Cast" => {
                need(0)?;
                let to = a.int("to", 0) as i32;
                let ty = ty_of(to).ok_or_else(|| nope(format!("cast to {} is not supported", type_name(to))))?;
                (Op::Cast { to: ty }, vec![ty])
            }
            "Where" => {
                if need(0)? != Ty::Bool {
                    return Err(fail("condition must be bool".into()));
                }
                let (x, y) = (need(1)?, need(2)?);
                if !(x == y || is_int(x) && is_int(y)) {
                    return Err(fail(format!("branches of types {x:?} and {y:?}")));
                }
                (Op::Where, vec![x])
            }
            "Expand" => {
                if !is_int(need(1)?) {
                    return Err(fail("shape must be int64".into()));
                }
                (Op::Expand, vec![need(0)?])
            }
            "LayerNormalization" => {
                float_in(0)?;
                float_in(1)?;
                if in_ty(2).is_some() {
                    float_in(2)?;
                }
                if a.int("stash_type", 1) != 1 {
                    return Err(nope("stash_type other than float32 is not supported".into()));
                }
                (
                    Op::LayerNorm { axis: a.int("axis", -1), eps: a.float("epsilon", 1e-5) },
                    vec![Ty::F32, Ty::F32, Ty::F32],
                )
            }
            "Sum" => {
                let x = need(0)?;
                for i in 1..in_slots.len() {
                    if need(i)? != x {
                        return Err(fail("inputs of different types".into()));
                    }
                }
                (Op::Sum, vec![x])
            }
            "LRN" => {
                float_in(0)?;
                let size = usize::try_from(a.int("size", 0))
                    .ok()
                    .filter(|&s| s > 0)
                    .ok_or_else(|| fail("size must be positive".into()))?;
                let op = Op::Lrn {
                    alpha: a.float("alpha", 1e-4),
                    beta: a.float("beta", 0.75),
                    bias: a.float("bias", 1.0),
                    size,
                };
                (op, vec![Ty::F32])
            }
            "Identity" => (Op::Identity, vec![need(0)?]),
            "Split" => {
                let x = need(0)?;
                if node.output.is_empty() {
                    return Err(fail("has no outputs".into()));
                }
                let split = if opset < 13 { a.ints("split") } else { None };
                if opset >= 13 && in_ty(1).is_some_and(|t| !is_int(t)) {
                    return Err(fail("split must be int64".into()));
                }
                if let Some(n) = a.get("num_outputs").map(|x| x.i) {
                    if n != node.output.len() as i64 {
                        return Err(fail(format!("num_outputs {n} but {} outputs", node.output.len())));
                    }
                }
                (Op::Split { axis: a.int("axis", 0), split }, vec![x; node.output.len()])
            }
            "SimplifiedLayerNormalization" => {
                float_in(0)?;
                float_in(1)?;
                if node.output.iter().skip(1).any(|o| !o.is_empty()) {
                    return Err(nope("the inv_std_var output is not supported".into()));
                }
                (Op::RmsNorm { axis: a.int("axis", -1), eps: a.float("epsilon", 1e-5) }, vec![Ty::F32])
            }
            "MatMulNBits" => {
                float_in(0)?;
                let dim = |name: &str| -> Result<usize, Refused> {
                    usize::try_from(a.get(name).ok_or_else(|| fail(format!("{name} is required")))?.i)
                        .ok()
                        .filter(|&v| v > 0)
                        .ok_or_else(|| fail(format!("{name} must be positive")))
                };
                let shape = (dim("K")?, dim("N")?, a.int("bits", 4) as usize, a.int("block_size", 0) as usize);
                if in_slots.iter().skip(4).any(Option::is_some) {
                    return Err(nope("g_idx and bias inputs are not supported".into()));
                }
                let (Some(q), Some(sc)) = (const_input(1), const_input(2)) else {
                    return Err(nope("B and scales must be initializers (they are dequantized at load)".into()));
                };
                let zeros = match in_slots.get(3).copied().flatten() {
                    None => None,
                    Some(_) => Some(const_input(3).ok_or_else(|| nope("zero_points must be an initializer".into()))?),
                };
                let w = dequantize_nbits(q, sc, zeros, shape).map_err(fail)?;
                let s = new_slot("", Ty::F32, &mut slots, &mut types);
                const_of.insert(s, consts.len());
                consts.push((s, w));
                in_slots = vec![in_slots[0], Some(s)];
                (Op::MatMul, vec![Ty::F32])
            }
            "GroupQueryAttention" => {
                float_in(0)?;
                for i in [1, 2, 3, 4, 7, 8] {
                    if in_ty(i).is_some() {
                        float_in(i)?;
                    }
                }
                for i in [5, 6] {
                    if !is_int(need(i)?) {
                        return Err(fail(format!("input {i} must be int32")));
                    }
                }
                if in_slots.len() > 9 {
                    return Err(nope("position_ids, attention_bias and head_sink inputs are not supported".into()));
                }
                let heads = usize::try_from(a.int("num_heads", 0)).ok().filter(|&h| h > 0);
                let kv_heads = usize::try_from(a.int("kv_num_heads", 0)).ok().filter(|&h| h > 0);
                let (Some(heads), Some(kv_heads)) = (heads, kv_heads) else {
                    return Err(fail("num_heads and kv_num_heads must be positive".into()));
                };
                if heads % kv_heads != 0 {
                    return Err(fail("num_heads must be a multiple of kv_num_heads".into()));
                }
                if a.int("local_window_size", -1) != -1 || a.float("softcap", 0.0) != 0.0 {
                    return Err(nope("local_window_size and softcap are not supported".into()));
                }
                if a.int("smooth_softmax", 0) != 0 || a.int("qk_output", 0) != 0 {
                    return Err(nope("smooth_softmax and qk_output are not supported".into()));
                }
                let rotary = a.int("do_rotary", 0) != 0;
                if rotary && a.int("rotary_interleaved", 0) != 0 {
                    return Err(nope("interleaved rotary embedding is not supported".into()));
                }
                if rotary && (in_ty(7).is_none() || in_ty(8).is_none()) {
                    return Err(fail("do_rotary needs cos_cache and sin_cache".into()));
                }
                if in_ty(1).is_some() != in_ty(2).is_some() || in_ty(3).is_some() != in_ty(4).is_some() {
                    return Err(fail("key and value (and past_key and past_value) come together".into()));
                }
                let scale = a.get("scale").map(|x| x.f).filter(|&f| f != 0.0);
                (Op::Gqa { heads, kv_heads, scale, rotary }, vec![Ty::F32; 3])
            }
            "Dropout" => {
                let x = need(0)?;
                if a.int("is_test", 1) == 0 && opset < 7 {
                    return Err(nope("training mode is not supported".into()));
                }
                if let Some(s) = in_slots.get(2).copied().flatten() {
                    match const_of.get(&s).map(|&c| &consts[c].1.data) {
                        Some(HostData::Bool(v)) if v.iter().all(|b| !b) => {}
                        _ => return Err(nope("training_mode must be a constant false".into())),
                    }
                }
                (Op::Identity, vec![x, Ty::Bool])
            }
            other => return Err(format!("operator {other} is listed but not implemented (bug)").into()),
        };
        let mut out_slots = Vec::new();
        for (i, name) in node.output.iter().enumerate() {
            if name.is_empty() {
                out_slots.push(None);
                continue;
            }
            let ty = *out_tys
                .get(i)
                .ok_or_else(|| fail(format!("has more outputs ({}) than supported", node.output.len())))?;
            out_slots.push(Some(new_slot(name, ty, &mut slots, &mut types)));
        }
        nodes.push(Node {
            name: node.name.clone(),
            op_type: node.op_type.clone(),
            op,
            inputs: in_slots,
            outputs: out_slots,
        });
    }

    let mut outputs = Vec::new();
    for vo in &graph.output {
        let s = *slots.get(&vo.name).ok_or_else(|| format!("graph output '{}' is never produced", vo.name))?;
        outputs.push((vo.name.clone(), s, types[s], declared_shape(vo)));
    }

    // Constants no node reads (e.g. MatMulNBits' packed weights, replaced
    // by their dequantized form) are dropped.
    let read: std::collections::HashSet<usize> =
        nodes.iter().flat_map(|n| n.inputs.iter().flatten().copied()).chain(outputs.iter().map(|o| o.1)).collect();
    consts.retain(|(s, _)| read.contains(s));

    // Free each intermediate after its last reader; constants, inputs and
    // outputs stay.
    let mut last_use: HashMap<usize, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for s in n.inputs.iter().flatten() {
            last_use.insert(*s, i);
        }
    }
    let keep: std::collections::HashSet<usize> = consts
        .iter()
        .map(|(s, _)| *s)
        .chain(inputs.iter().map(|i| i.slot))
        .chain(outputs.iter().map(|o| o.1))
        .collect();
    let mut drop_after = vec![Vec::new(); nodes.len()];
    for (s, i) in last_use {
        if !keep.contains(&s) {
            drop_after[i].push(s);
        }
    }

    Ok(Program { slots: types.len(), consts, inputs, outputs, nodes, drop_after })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nbits_weights_dequantize_in_ort_layout() {
        // N = 2 rows, K = 20 (two blocks of 16, the second partial).
        let (k, n, block) = (20, 2, 16);
        let q4: Vec<i64> = (0..2 * 2 * 8).map(|i| ((i * 37 + 11) % 256) as i64).collect();
        let scales = HostTensor::new(vec![2, 2], HostData::F32(vec![0.5, 2.0, -1.0, 0.25]));
        let zeros = HostTensor::i64(vec![2, 1], vec![0x3A, 0x05]); // row 0: blocks 10, 3; row 1: 5, 0
        let q = HostTensor::i64(vec![2, 2, 8], q4.clone());
        let w = dequantize_nbits(&q, &scales, Some(&zeros), (k, n, 4, block)).unwrap();
        assert_eq!(w.shape, vec![k, n]);
        let HostData::F32(w) = w.data else { panic!() };
        let zp = [[10.0, 3.0], [5.0, 0.0]];
        let sc = [[0.5, 2.0], [-1.0, 0.25]];
        for row in 0..n {
            for kk in 0..k {
                let (b, j) = (kk / block, kk % block);
                let byte = q4[(row * 2 + b) * 8 + j / 2];
                let v = if j % 2 == 0 { byte & 0xF } else { byte >> 4 } as f32;
                assert_eq!(w[kk * n + row], (v - zp[row][b]) * sc[row][b], "row {row} k {kk}");
            }
        }
        // 8-bit without zero points: 128 is zero.
        let q8 = HostTensor::i64(vec![1, 1, 16], (0..16).map(|i| 120 + i).collect());
        let s8 = HostTensor::new(vec![1, 1], HostData::F32(vec![0.5]));
        let w = dequantize_nbits(&q8, &s8, None, (16, 1, 8, 16)).unwrap();
        assert_eq!(w.data, HostData::F32((0..16).map(|i| (i as f32 - 8.0) * 0.5).collect()));
        // Sizes that do not match the attributes are refused.
        assert!(dequantize_nbits(&q8, &s8, None, (32, 1, 8, 16)).is_err());
        assert!(dequantize_nbits(&q8, &s8, None, (16, 1, 3, 16)).is_err());
    }

    #[test]
    fn op_list_is_sorted_for_binary_search() {
        let mut sorted = WGPU_OPS.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, WGPU_OPS);
        assert!(supports_op("Conv") && supports_op("LRN") && !supports_op("Loop"));
    }
}

/// Properties of the wgpu loader's compiler over models it did not write:
/// graphs declared with the builder by a hostile guest (random ops, wiring
/// and attributes), and arbitrary bytes. The compiler may refuse; it may
/// not panic (a panic is caught in `load`, but it is a bug all the same).
#[cfg(test)]
mod properties {
    use super::*;
    use crate::graph_builder::{AttrValue, GraphDraft, SUPPORTED_OPS};
    use crate::tensor::ElementType;
    use proptest::prelude::*;
    use prost::Message;

    #[derive(Debug, Clone)]
    enum Step {
        Input(u8, Vec<i64>),
        Constant(u8, Vec<u32>),
        Node(prop::sample::Index, Vec<prop::sample::Index>, Vec<(String, i64)>, u32),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..7, prop::collection::vec(-1i64..5, 0..4)).prop_map(|(t, s)| Step::Input(t, s)),
            (0u8..7, prop::collection::vec(0u32..4, 0..3)).prop_map(|(t, d)| Step::Constant(t, d)),
            (
                any::<prop::sample::Index>(),
                prop::collection::vec(any::<prop::sample::Index>(), 0..4),
                prop::collection::vec((prop_oneof![Just("axis"), Just("axes"), Just("perm"), Just("to"), Just("keepdims")].prop_map(String::from), -3i64..4), 0..3),
                1u32..3,
            )
                .prop_map(|(op, ins, attrs, outs)| Step::Node(op, ins, attrs, outs)),
        ]
    }

    const TYPES: [ElementType; 7] =
        [ElementType::F32, ElementType::I64, ElementType::I32, ElementType::U8, ElementType::F16, ElementType::F64, ElementType::Bf16];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        #[test]
        fn declared_graphs_lower_and_compile_without_panicking(steps in prop::collection::vec(step(), 1..12)) {
            let mut d = GraphDraft::default();
            let mut operands: Vec<u32> = Vec::new();
            for (i, s) in steps.into_iter().enumerate() {
                let made = match s {
                    Step::Input(t, shape) => d.input(&format!("in{i}"), TYPES[t as usize], &shape).map(|o| vec![o]),
                    Step::Constant(t, dims) => {
                        let ty = TYPES[t as usize];
                        let n: u32 = dims.iter().product();
                        d.constant(ty, &dims, vec![1u8; n as usize * ty.size()]).map(|o| vec![o])
                    }
                    Step::Node(op, ins, attrs, outs) => {
                        if operands.is_empty() { continue; }
                        let op = SUPPORTED_OPS[op.index(SUPPORTED_OPS.len())];
                        let ins: Vec<u32> = ins.iter().map(|ix| operands[ix.index(operands.len())]).collect();
                        let attrs = attrs.into_iter().map(|(k, v)| {
                            let v = if k == "axes" || k == "perm" { AttrValue::Ints(vec![v, 0]) } else { AttrValue::Int(v) };
                            (k, v)
                        }).collect();
                        d.node(op, &ins, attrs, outs)
                    }
                };
                if let Ok(ids) = made { operands.extend(ids); }
            }
            let Some(&last) = operands.last() else { return Ok(()) };
            if let Ok(bytes) = d.lower(&[("out".to_string(), last)]) {
                prop_assert!(crate::model_screen::screen(&bytes).is_ok(), "the builder wrote a model the screen refuses");
                let model = pb::ModelProto::decode(&bytes[..]).expect("the builder writes valid protobuf");
                let _ = compile(&model);
            }
        }

        #[test]
        fn arbitrary_bytes_compile_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(model) = pb::ModelProto::decode(&bytes[..]) {
                let _ = compile(&model);
            }
        }
    }
}
