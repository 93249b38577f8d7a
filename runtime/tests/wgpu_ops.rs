//! The wgpu backend against ONNX Runtime, op by op: each test builds a
//! one-node (or small) ONNX model, runs it on both backends on the same
//! random inputs, and compares every output (f32: relative error ≤ 1e-4;
//! integers and bools: exact). Runs on whatever adapter the machine has
//! (llvmpipe in CI).

#![cfg(feature = "wgpu")]

use mote_runtime::backend::{standalone, Backend, BackendErrorKind, BackendKind, OwnedTensor, TensorView};
use mote_runtime::onnx_proto::{self as pb, attribute_type as at, data_type as dt};
use mote_runtime::tensor::ElementType;
use std::sync::{Arc, OnceLock};

fn ort() -> &'static dyn Backend {
    static B: OnceLock<Box<dyn Backend>> = OnceLock::new();
    B.get_or_init(|| standalone(BackendKind::OrtCpu).expect("ORT CPU backend (run `make setup`)")).as_ref()
}

fn wgpu() -> &'static dyn Backend {
    static B: OnceLock<Box<dyn Backend>> = OnceLock::new();
    B.get_or_init(|| {
        standalone(BackendKind::Wgpu)
            .expect("a wgpu adapter (llvmpipe: `apt-get install libvulkan1 mesa-vulkan-drivers`, done by `make setup`)")
    })
    .as_ref()
}

/// A tensor for a test model: data plus type.
#[derive(Clone, Debug)]
enum T {
    F(Vec<usize>, Vec<f32>),
    I(Vec<usize>, Vec<i64>),
    B(Vec<usize>, Vec<bool>),
    /// int32 (GroupQueryAttention's lengths).
    I32(Vec<usize>, Vec<i32>),
    /// uint8 (packed quantized weights).
    U8(Vec<usize>, Vec<u8>),
}

impl T {
    fn shape(&self) -> &[usize] {
        match self {
            T::F(s, _) | T::I(s, _) | T::B(s, _) | T::I32(s, _) | T::U8(s, _) => s,
        }
    }
    fn elem(&self) -> i32 {
        match self {
            T::F(..) => dt::FLOAT,
            T::I(..) => dt::INT64,
            T::B(..) => dt::BOOL,
            T::I32(..) => dt::INT32,
            T::U8(..) => dt::UINT8,
        }
    }
    fn bytes(&self) -> Vec<u8> {
        match self {
            T::F(_, v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            T::I(_, v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            T::B(_, v) => v.iter().map(|&b| u8::from(b)).collect(),
            T::I32(_, v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            T::U8(_, v) => v.clone(),
        }
    }
    fn proto(&self, name: &str) -> pb::TensorProto {
        pb::TensorProto {
            dims: self.shape().iter().map(|&d| d as i64).collect(),
            data_type: self.elem(),
            name: name.into(),
            raw_data: self.bytes(),
            ..Default::default()
        }
    }
}

/// Deterministic pseudo-random floats in [lo, hi).
fn rand(shape: &[usize], seed: u64, lo: f32, hi: f32) -> T {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let v = (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            lo + (hi - lo) * ((z >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect();
    T::F(shape.to_vec(), v)
}

fn r(shape: &[usize], seed: u64) -> T {
    rand(shape, seed, -2.0, 2.0)
}

fn pos(shape: &[usize], seed: u64) -> T {
    rand(shape, seed, 0.1, 2.0)
}

fn ints(shape: &[usize], v: &[i64]) -> T {
    T::I(shape.to_vec(), v.to_vec())
}

fn attr_i(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: at::INT, i, ..Default::default() }
}
fn attr_f(name: &str, f: f32) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: at::FLOAT, f, ..Default::default() }
}
fn attr_is(name: &str, ints: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: at::INTS, ints: ints.to_vec(), ..Default::default() }
}
fn attr_s(name: &str, s: &str) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: at::STRING, s: s.as_bytes().to_vec(), ..Default::default() }
}
fn attr_t(name: &str, t: &T) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: at::TENSOR, t: Some(t.proto("")), ..Default::default() }
}

fn value_info(name: &str, elem: i32) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto { tensor_type: Some(pb::TypeProtoTensor { elem_type: elem, shape: None }) }),
    }
}

/// An operand of a test node: a runtime input or a constant initializer.
#[derive(Clone)]
enum In {
    Run(T),
    Const(T),
    Absent,
}
use In::{Absent, Const, Run};

/// A model of `nodes`; graph inputs are the `Run` operands, named `in{i}`.
struct Case {
    opset: i64,
    nodes: Vec<pb::NodeProto>,
    operands: Vec<(String, In)>,
    outputs: Vec<(String, i32)>,
}

fn node(op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<pb::AttributeProto>) -> pb::NodeProto {
    pb::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: format!("{op}_0"),
        op_type: op.into(),
        domain: String::new(),
        attribute: attrs,
    }
}

impl Case {
    /// One node `op` over operands `in0..`, one float output `y`.
    fn op(op: &str, ins: Vec<In>, attrs: Vec<pb::AttributeProto>) -> Self {
        Self::op_typed(op, ins, attrs, dt::FLOAT)
    }

    fn op_typed(op: &str, ins: Vec<In>, attrs: Vec<pb::AttributeProto>, out: i32) -> Self {
        let names: Vec<String> = ins
            .iter()
            .enumerate()
            .map(|(i, x)| if matches!(x, Absent) { String::new() } else { format!("in{i}") })
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        Case {
            opset: 17,
            nodes: vec![node(op, &refs, &["y"], attrs)],
            operands: names.into_iter().zip(ins).filter(|(n, _)| !n.is_empty()).collect(),
            outputs: vec![("y".into(), out)],
        }
    }

    /// The node in ONNX Runtime's contrib domain.
    fn microsoft(mut self) -> Self {
        self.nodes[0].domain = "com.microsoft".into();
        self
    }

    /// Names the outputs (one node, several outputs).
    fn outputs(mut self, names: &[&str]) -> Self {
        self.nodes[0].output = names.iter().map(|s| s.to_string()).collect();
        self.outputs = names.iter().map(|n| (n.to_string(), dt::FLOAT)).collect();
        self
    }

    fn opset(mut self, v: i64) -> Self {
        self.opset = v;
        self
    }

    fn model(&self) -> Vec<u8> {
        use prost::Message;
        let mut inputs = Vec::new();
        let mut inits = Vec::new();
        for (name, x) in &self.operands {
            match x {
                Run(t) => inputs.push(value_info(name, t.elem())),
                Const(t) => inits.push(t.proto(name)),
                Absent => {}
            }
        }
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![
                pb::OperatorSetIdProto { domain: String::new(), version: self.opset },
                pb::OperatorSetIdProto { domain: "com.microsoft".into(), version: 1 },
            ],
            producer_name: "mote-tests".into(),
            producer_version: "0".into(),
            graph: Some(pb::GraphProto {
                node: self.nodes.clone(),
                name: "case".into(),
                initializer: inits,
                input: inputs,
                output: self.outputs.iter().map(|(n, e)| value_info(n, *e)).collect(),
            }),
        }
        .encode_to_vec()
    }

    fn run_on(&self, backend: &dyn Backend) -> Result<Vec<(String, OwnedTensor)>, String> {
        let graph = backend.load(Arc::from(self.model())).map_err(|e| format!("load: {e}"))?;
        let mut ctx = graph.init_execution_context().map_err(|e| e.to_string())?;
        let owned: Vec<(String, ElementType, Vec<u32>, Vec<u8>)> = self
            .operands
            .iter()
            .filter_map(|(n, x)| match x {
                Run(t) => Some((
                    n.clone(),
                    match t {
                        T::F(..) => ElementType::F32,
                        T::I(..) => ElementType::I64,
                        T::B(..) | T::U8(..) => ElementType::U8,
                        T::I32(..) => ElementType::I32,
                    },
                    t.shape().iter().map(|&d| d as u32).collect(),
                    t.bytes(),
                )),
                _ => None,
            })
            .collect();
        let views: Vec<(&str, TensorView<'_>)> =
            owned.iter().map(|(n, ty, dims, data)| (n.as_str(), TensorView { ty: *ty, dims, data })).collect();
        ctx.compute(&views, None).map_err(|e| format!("compute: {e}"))
    }

    /// Runs on ORT and wgpu and compares.
    #[track_caller]
    fn check(&self) {
        let want = self.run_on(ort()).unwrap_or_else(|e| panic!("ONNX Runtime rejected the test model: {e}"));
        let got = self.run_on(wgpu()).unwrap_or_else(|e| panic!("wgpu backend failed: {e}"));
        assert_eq!(got.len(), want.len(), "number of outputs");
        for ((gn, g), (wn, w)) in got.iter().zip(&want) {
            assert_eq!(gn, wn);
            assert_eq!(g.ty, w.ty, "element type of {gn}");
            assert_eq!(g.dims, w.dims, "shape of {gn}");
            if g.ty == ElementType::F32 {
                let f = |b: &[u8]| -> Vec<f32> {
                    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
                };
                let (a, b) = (f(&g.data), f(&w.data));
                let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
                let mut worst = (0f32, 0usize);
                for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                    if x.is_nan() || y.is_nan() {
                        assert!(x.is_nan() && y.is_nan(), "{gn}[{i}]: wgpu {x}, ORT {y}");
                        continue;
                    }
                    if x.is_infinite() || y.is_infinite() {
                        assert_eq!(x, y, "{gn}[{i}]");
                        continue;
                    }
                    // Relative error, with values far below the tensor's
                    // scale measured against 1e-3 of that scale (sums
                    // that cancel to ~0 have no meaningful relative error).
                    let rel = (x - y).abs() / y.abs().max(scale * 1e-3).max(f32::MIN_POSITIVE);
                    if rel > worst.0 {
                        worst = (rel, i);
                    }
                }
                assert!(
                    worst.0 <= 1e-4,
                    "{gn}: relative error {:.2e} at [{}]: wgpu {}, ORT {}",
                    worst.0,
                    worst.1,
                    a[worst.1],
                    b[worst.1]
                );
            } else {
                assert_eq!(g.data, w.data, "{gn} differs");
            }
        }
    }
}

// ---- convolution and normalisation ----

#[test]
fn conv_plain_strided_dilated_grouped_padded() {
    let x = r(&[1, 4, 9, 9], 1);
    let w = r(&[6, 4, 3, 3], 2);
    let b = r(&[6], 3);
    Case::op("Conv", vec![Run(x.clone()), Const(w.clone()), Const(b.clone())], vec![]).check();
    Case::op("Conv", vec![Run(x.clone()), Const(w.clone()), Absent], vec![attr_is("pads", &[1, 1, 1, 1])]).check();
    Case::op(
        "Conv",
        vec![Run(x.clone()), Const(w.clone()), Const(b.clone())],
        vec![attr_is("strides", &[2, 2]), attr_is("pads", &[1, 1, 1, 1])],
    )
    .check();
    Case::op("Conv", vec![Run(x.clone()), Const(w.clone())], vec![attr_is("dilations", &[2, 2])]).check();
    // Asymmetric pads.
    Case::op("Conv", vec![Run(x.clone()), Const(w.clone())], vec![attr_is("pads", &[0, 1, 2, 1])]).check();
    // Groups: 2 groups, and depthwise.
    Case::op("Conv", vec![Run(x.clone()), Const(r(&[6, 2, 3, 3], 4))], vec![attr_i("group", 2)]).check();
    Case::op(
        "Conv",
        vec![Run(x.clone()), Const(r(&[4, 1, 3, 3], 5)), Const(r(&[4], 6))],
        vec![attr_i("group", 4), attr_is("pads", &[1, 1, 1, 1])],
    )
    .check();
    // auto_pad and a weight given at run time.
    Case::op(
        "Conv",
        vec![Run(x.clone()), Run(r(&[6, 4, 2, 2], 7))],
        vec![attr_s("auto_pad", "SAME_UPPER"), attr_is("strides", &[2, 2])],
    )
    .check();
    Case::op("Conv", vec![Run(x), Const(r(&[6, 4, 2, 2], 7))], vec![attr_s("auto_pad", "SAME_LOWER")]).check();
    // 1-D.
    Case::op(
        "Conv",
        vec![Run(r(&[2, 3, 16], 8)), Const(r(&[5, 3, 3], 9)), Const(r(&[5], 10))],
        vec![attr_is("pads", &[1, 1])],
    )
    .check();
}

#[test]
fn batch_normalization_folded_and_at_run_time() {
    let x = r(&[2, 3, 5, 5], 11);
    let (s, b, m, v) = (r(&[3], 12), r(&[3], 13), r(&[3], 14), pos(&[3], 15));
    Case::op(
        "BatchNormalization",
        vec![Run(x.clone()), Const(s.clone()), Const(b.clone()), Const(m.clone()), Const(v.clone())],
        vec![attr_f("epsilon", 1e-3)],
    )
    .check();
    Case::op("BatchNormalization", vec![Run(x), Run(s), Run(b), Run(m), Run(v)], vec![]).check();
}

#[test]
fn layer_normalization_lrn() {
    let x = r(&[2, 5, 8], 16);
    Case::op("LayerNormalization", vec![Run(x.clone()), Const(r(&[8], 17)), Const(r(&[8], 18))], vec![]).check();
    Case::op(
        "LayerNormalization",
        vec![Run(x.clone()), Const(r(&[5, 8], 19))],
        vec![attr_i("axis", 1), attr_f("epsilon", 1e-3)],
    )
    .check();
    Case::op("LayerNormalization", vec![Run(x), Run(r(&[8], 20))], vec![attr_i("axis", -1)]).check();
    let img = r(&[1, 6, 4, 4], 21);
    Case::op("LRN", vec![Run(img.clone())], vec![attr_i("size", 3)]).check();
    Case::op(
        "LRN",
        vec![Run(img)],
        vec![attr_i("size", 5), attr_f("alpha", 0.01), attr_f("beta", 0.5), attr_f("bias", 2.0)],
    )
    .check();
}

// ---- elementwise ----

#[test]
fn unary_functions() {
    let x = r(&[3, 7], 22);
    for op in ["Relu", "Sigmoid", "Tanh", "Erf", "Exp", "Neg", "Abs", "Identity"] {
        Case::op(op, vec![Run(x.clone())], vec![]).check();
    }
    let p = pos(&[3, 7], 23);
    for op in ["Sqrt", "Log", "Reciprocal"] {
        Case::op(op, vec![Run(p.clone())], vec![]).check();
    }
}

#[test]
fn gelu_exact_and_tanh() {
    let x = r(&[4, 9], 24);
    Case::op("Gelu", vec![Run(x.clone())], vec![]).opset(20).check();
    Case::op("Gelu", vec![Run(x)], vec![attr_s("approximate", "tanh")]).opset(20).check();
}

#[test]
fn clip_inputs_and_legacy_attributes() {
    let x = r(&[3, 5], 25);
    let lo = T::F(vec![], vec![-0.5]);
    let hi = T::F(vec![], vec![0.7]);
    Case::op("Clip", vec![Run(x.clone()), Const(lo.clone()), Const(hi.clone())], vec![]).check();
    Case::op("Clip", vec![Run(x.clone()), Const(lo), Absent], vec![]).check();
    Case::op("Clip", vec![Run(x.clone()), Absent, Run(hi)], vec![]).check();
    Case::op("Clip", vec![Run(x)], vec![attr_f("min", 0.0), attr_f("max", 6.0)]).opset(6).check();
}

#[test]
fn binary_arithmetic_with_broadcasting() {
    for op in ["Add", "Sub", "Mul", "Div"] {
        Case::op(op, vec![Run(r(&[2, 3, 4], 26)), Run(pos(&[2, 3, 4], 27))], vec![]).check();
        Case::op(op, vec![Run(r(&[2, 3, 4], 28)), Const(pos(&[4], 29))], vec![]).check();
        Case::op(op, vec![Run(r(&[2, 1, 4], 30)), Run(pos(&[3, 1], 31))], vec![]).check();
        Case::op(op, vec![Run(r(&[2, 3], 32)), Const(T::F(vec![], vec![1.5]))], vec![]).check();
        Case::op(op, vec![Const(T::F(vec![1], vec![0.75])), Run(pos(&[2, 3], 33))], vec![]).check();
    }
    Case::op("Sum", vec![Run(r(&[2, 3], 34)), Run(r(&[3], 35)), Run(r(&[2, 1], 36))], vec![]).check();
}

#[test]
fn pow_scalar_and_tensor_exponents() {
    // Integer exponents on negative bases (x^2 in variance, x^3 in GELU-tanh).
    Case::op("Pow", vec![Run(r(&[3, 4], 37)), Const(T::F(vec![], vec![2.0]))], vec![]).check();
    Case::op("Pow", vec![Run(r(&[3, 4], 38)), Const(T::F(vec![], vec![3.0]))], vec![]).check();
    Case::op("Pow", vec![Run(pos(&[3, 4], 39)), Const(T::F(vec![], vec![0.5]))], vec![]).check();
    Case::op("Pow", vec![Run(pos(&[3, 4], 40)), Run(r(&[4], 41))], vec![]).check();
}

#[test]
fn equal_and_where() {
    // Values on a coarse grid so that equal pairs exist.
    let grid = |shape: &[usize], seed| match rand(shape, seed, 0.0, 3.0) {
        T::F(s, v) => T::F(s, v.into_iter().map(|x| x.floor()).collect()),
        t => t,
    };
    Case::op_typed("Equal", vec![Run(grid(&[4, 5], 42)), Run(grid(&[5], 43))], vec![], dt::BOOL).check();
    Case::op_typed(
        "Equal",
        vec![Run(ints(&[2, 3], &[1, 2, 3, 4, 5, 6])), Const(ints(&[3], &[1, 5, 6]))],
        vec![],
        dt::BOOL,
    )
    .check();
    let cond = T::B(vec![2, 1, 4], vec![true, false, false, true, true, true, false, false]);
    Case::op("Where", vec![Run(cond), Run(r(&[2, 3, 4], 44)), Run(r(&[4], 45))], vec![]).check();
    // Condition computed on the device.
    let c = Case {
        opset: 17,
        nodes: vec![node("Equal", &["a", "b"], &["c"], vec![]), node("Where", &["c", "x", "y"], &["out"], vec![])],
        operands: vec![
            ("a".into(), Run(grid(&[3, 4], 46))),
            ("b".into(), Run(grid(&[3, 4], 47))),
            ("x".into(), Run(r(&[3, 4], 48))),
            ("y".into(), Const(T::F(vec![], vec![-1.0]))),
        ],
        outputs: vec![("out".into(), dt::FLOAT)],
    };
    c.check();
}

// ---- activations over axes ----

#[test]
fn softmax_and_log_softmax() {
    let x = r(&[2, 3, 5], 49);
    for op in ["Softmax", "LogSoftmax"] {
        Case::op(op, vec![Run(x.clone())], vec![]).check();
        Case::op(op, vec![Run(x.clone())], vec![attr_i("axis", 1)]).check();
        Case::op(op, vec![Run(x.clone())], vec![attr_i("axis", -3)]).check();
        // Opset 11: flattens to 2-D at the axis.
        Case::op(op, vec![Run(x.clone())], vec![attr_i("axis", 1)]).opset(11).check();
    }
}

// ---- pooling ----

#[test]
fn max_and_average_pooling() {
    let x = r(&[1, 3, 9, 9], 50);
    let k3 = attr_is("kernel_shape", &[3, 3]);
    Case::op("MaxPool", vec![Run(x.clone())], vec![k3.clone()]).check();
    Case::op(
        "MaxPool",
        vec![Run(x.clone())],
        vec![k3.clone(), attr_is("strides", &[2, 2]), attr_is("pads", &[1, 1, 1, 1])],
    )
    .check();
    Case::op("MaxPool", vec![Run(x.clone())], vec![k3.clone(), attr_is("strides", &[2, 2]), attr_i("ceil_mode", 1)])
        .check();
    Case::op("MaxPool", vec![Run(x.clone())], vec![attr_is("kernel_shape", &[2, 2]), attr_is("dilations", &[2, 2])])
        .check();
    Case::op("MaxPool", vec![Run(x.clone())], vec![attr_is("kernel_shape", &[2, 2]), attr_is("pads", &[0, 0, 1, 1])])
        .check();
    Case::op("MaxPool", vec![Run(r(&[2, 3, 12], 51))], vec![attr_is("kernel_shape", &[3]), attr_is("strides", &[2])])
        .check();
    Case::op("AveragePool", vec![Run(x.clone())], vec![k3.clone(), attr_is("strides", &[2, 2])]).check();
    Case::op("AveragePool", vec![Run(x.clone())], vec![k3.clone(), attr_is("pads", &[1, 1, 1, 1])]).check();
    Case::op(
        "AveragePool",
        vec![Run(x.clone())],
        vec![k3.clone(), attr_is("pads", &[1, 1, 1, 1]), attr_i("count_include_pad", 1)],
    )
    .check();
    Case::op(
        "AveragePool",
        vec![Run(x.clone())],
        vec![k3, attr_s("auto_pad", "SAME_UPPER"), attr_i("count_include_pad", 1)],
    )
    .check();
    Case::op(
        "AveragePool",
        vec![Run(r(&[2, 3, 12], 52))],
        vec![attr_is("kernel_shape", &[4]), attr_is("strides", &[2])],
    )
    .check();
    Case::op("GlobalAveragePool", vec![Run(x.clone())], vec![]).check();
    Case::op("GlobalMaxPool", vec![Run(x)], vec![]).check();
}

// ---- linear algebra ----

#[test]
fn gemm_and_matmul() {
    Case::op("Gemm", vec![Run(r(&[3, 5], 53)), Const(r(&[5, 4], 54)), Const(r(&[4], 55))], vec![]).check();
    Case::op(
        "Gemm",
        vec![Run(r(&[5, 3], 56)), Const(r(&[4, 5], 57)), Const(r(&[3, 4], 58))],
        vec![attr_i("transA", 1), attr_i("transB", 1), attr_f("alpha", 0.5), attr_f("beta", 2.0)],
    )
    .check();
    Case::op("Gemm", vec![Run(r(&[2, 6], 59)), Run(r(&[6, 3], 60))], vec![]).check();
    Case::op("MatMul", vec![Run(r(&[4, 6], 61)), Run(r(&[6, 3], 62))], vec![]).check();
    Case::op("MatMul", vec![Run(r(&[2, 4, 6], 63)), Const(r(&[6, 3], 64))], vec![]).check();
    Case::op("MatMul", vec![Run(r(&[2, 3, 4, 6], 65)), Run(r(&[2, 3, 6, 5], 66))], vec![]).check();
    Case::op("MatMul", vec![Run(r(&[2, 1, 4, 6], 67)), Run(r(&[3, 6, 5], 68))], vec![]).check();
    Case::op("MatMul", vec![Run(r(&[6], 69)), Run(r(&[6, 5], 70))], vec![]).check();
    Case::op("MatMul", vec![Run(r(&[2, 4, 6], 71)), Run(r(&[6], 72))], vec![]).check();
}

// ---- reductions ----

#[test]
fn reduce_mean_and_sum() {
    let x = r(&[2, 3, 4], 73);
    Case::op("ReduceMean", vec![Run(x.clone())], vec![attr_is("axes", &[-1])]).check();
    Case::op("ReduceMean", vec![Run(x.clone())], vec![attr_is("axes", &[0, 2]), attr_i("keepdims", 0)]).check();
    Case::op("ReduceMean", vec![Run(x.clone())], vec![]).check();
    Case::op("ReduceSum", vec![Run(x.clone()), Const(ints(&[2], &[1, -1]))], vec![]).check();
    Case::op("ReduceSum", vec![Run(x.clone()), Const(ints(&[1], &[1]))], vec![attr_i("keepdims", 0)]).check();
    Case::op("ReduceSum", vec![Run(x.clone())], vec![]).check();
    Case::op("ReduceSum", vec![Run(x.clone()), Const(ints(&[0], &[]))], vec![attr_i("noop_with_empty_axes", 1)])
        .check();
    // ReduceMean with axes as an input (opset 18).
    Case::op("ReduceMean", vec![Run(x), Const(ints(&[1], &[-2]))], vec![]).opset(18).check();
    // On integers (host).
    Case::op_typed(
        "ReduceSum",
        vec![Run(ints(&[2, 3], &[1, 2, 3, 4, 5, 6])), Const(ints(&[1], &[0]))],
        vec![],
        dt::INT64,
    )
    .check();
}

// ---- shape manipulation ----

#[test]
fn concat_reshape_flatten_transpose() {
    Case::op(
        "Concat",
        vec![Run(r(&[2, 3, 1], 74)), Run(r(&[2, 3, 4], 75)), Const(r(&[2, 3, 2], 76))],
        vec![attr_i("axis", -1)],
    )
    .check();
    Case::op("Concat", vec![Run(r(&[1, 3], 77)), Run(r(&[2, 3], 78))], vec![attr_i("axis", 0)]).check();
    Case::op_typed(
        "Concat",
        vec![Run(ints(&[2], &[1, 2])), Const(ints(&[1], &[-1]))],
        vec![attr_i("axis", 0)],
        dt::INT64,
    )
    .check();
    let x = r(&[2, 3, 4, 5], 79);
    Case::op("Reshape", vec![Run(x.clone()), Const(ints(&[3], &[0, -1, 5]))], vec![]).check();
    Case::op("Reshape", vec![Run(x.clone()), Run(ints(&[2], &[6, 20]))], vec![]).check();
    Case::op("Flatten", vec![Run(x.clone())], vec![attr_i("axis", 2)]).check();
    Case::op("Flatten", vec![Run(x.clone())], vec![attr_i("axis", -1)]).check();
    Case::op("Flatten", vec![Run(x.clone())], vec![attr_i("axis", 0)]).check();
    Case::op("Transpose", vec![Run(x.clone())], vec![attr_is("perm", &[0, 2, 3, 1])]).check();
    Case::op("Transpose", vec![Run(x)], vec![]).check();
}

#[test]
fn squeeze_unsqueeze_expand() {
    let x = r(&[2, 1, 3, 1], 80);
    Case::op("Squeeze", vec![Run(x.clone()), Const(ints(&[1], &[1]))], vec![]).check();
    Case::op("Squeeze", vec![Run(x.clone()), Const(ints(&[2], &[-1, 1]))], vec![]).check();
    Case::op("Squeeze", vec![Run(x.clone())], vec![]).check();
    Case::op("Squeeze", vec![Run(x.clone())], vec![attr_is("axes", &[3])]).opset(11).check();
    Case::op("Unsqueeze", vec![Run(r(&[2, 3], 81)), Const(ints(&[2], &[0, -1]))], vec![]).check();
    Case::op("Unsqueeze", vec![Run(r(&[2, 3], 82))], vec![attr_is("axes", &[1])]).opset(11).check();
    Case::op("Expand", vec![Run(r(&[3, 1], 83)), Const(ints(&[3], &[2, 3, 4]))], vec![]).check();
    Case::op("Expand", vec![Run(r(&[2, 1, 4], 84)), Const(ints(&[2], &[3, 1]))], vec![]).check();
    Case::op_typed("Expand", vec![Run(ints(&[1, 2], &[7, 8])), Const(ints(&[2], &[3, 2]))], vec![], dt::INT64).check();
}

#[test]
fn gather_on_device_and_host() {
    let x = r(&[5, 4, 3], 85);
    Case::op("Gather", vec![Run(x.clone()), Const(ints(&[2, 2], &[0, 2, 1, -1]))], vec![]).check();
    Case::op("Gather", vec![Run(x.clone()), Run(ints(&[3], &[2, 0, -2]))], vec![attr_i("axis", -1)]).check();
    Case::op("Gather", vec![Run(x), Const(ints(&[], &[1]))], vec![attr_i("axis", 1)]).check();
    // Embedding lookup: token ids at run time.
    Case::op("Gather", vec![Const(r(&[50, 8], 86)), Run(ints(&[1, 6], &[3, 17, 0, 49, 3, 8]))], vec![]).check();
    Case::op_typed("Gather", vec![Run(ints(&[4], &[10, 20, 30, 40])), Const(ints(&[2], &[-1, 0]))], vec![], dt::INT64)
        .check();
}

#[test]
fn slice_with_steps_and_negative_indices() {
    let x = r(&[6, 8, 5], 87);
    let s = |starts: &[i64], ends: &[i64], axes: Option<&[i64]>, steps: Option<&[i64]>| {
        let n = starts.len();
        let mut ins = vec![Run(x.clone()), Const(ints(&[n], starts)), Const(ints(&[n], ends))];
        ins.push(axes.map_or(Absent, |a| Const(ints(&[n], a))));
        ins.push(steps.map_or(Absent, |a| Const(ints(&[n], a))));
        while matches!(ins.last(), Some(Absent)) {
            ins.pop();
        }
        Case::op("Slice", ins, vec![]).check();
    };
    s(&[1, 2], &[4, 7], None, None);
    s(&[-3], &[i64::MAX], Some(&[1]), None);
    s(&[0, 1], &[6, 8], Some(&[0, 1]), Some(&[2, 3]));
    s(&[-1], &[i64::MIN], Some(&[0]), Some(&[-1]));
    s(&[6, 4], &[0, 0], Some(&[1, -1]), Some(&[-2, -1]));
    s(&[1], &[3], Some(&[-1]), None);
    // Legacy attribute form (opset 9).
    Case::op(
        "Slice",
        vec![Run(x)],
        vec![attr_is("starts", &[0, 1]), attr_is("ends", &[2, -1]), attr_is("axes", &[0, 2])],
    )
    .opset(9)
    .check();
}

#[test]
fn shape_constants_cast() {
    let x = r(&[2, 3, 4], 88);
    Case::op_typed("Shape", vec![Run(x.clone())], vec![], dt::INT64).check();
    Case::op_typed("Shape", vec![Run(x.clone())], vec![attr_i("start", 1), attr_i("end", -1)], dt::INT64).check();
    Case::op("ConstantOfShape", vec![Const(ints(&[2], &[3, 4]))], vec![attr_t("value", &T::F(vec![1], vec![2.5]))])
        .check();
    Case::op("ConstantOfShape", vec![Run(ints(&[2], &[2, 2]))], vec![]).check();
    Case::op_typed(
        "ConstantOfShape",
        vec![Const(ints(&[1], &[3]))],
        vec![attr_t("value", &ints(&[1], &[7]))],
        dt::INT64,
    )
    .check();
    Case::op_typed("Cast", vec![Run(rand(&[3, 4], 89, -5.0, 5.0))], vec![attr_i("to", dt::INT64 as i64)], dt::INT64)
        .check();
    Case::op("Cast", vec![Run(ints(&[3], &[-2, 0, 9]))], vec![attr_i("to", dt::FLOAT as i64)]).check();
    Case::op("Cast", vec![Run(T::B(vec![3], vec![true, false, true]))], vec![attr_i("to", dt::FLOAT as i64)]).check();
    // A Constant node feeding an op.
    let c = Case {
        opset: 17,
        nodes: vec![
            node("Constant", &[], &["k"], vec![attr_t("value", &r(&[3, 4], 90))]),
            node("Mul", &["x", "k"], &["out"], vec![]),
        ],
        operands: vec![("x".into(), Run(r(&[2, 3, 4], 91)))],
        outputs: vec![("out".into(), dt::FLOAT)],
    };
    c.check();
}

#[test]
fn dropout_in_inference_mode() {
    Case::op("Dropout", vec![Run(r(&[3, 4], 92))], vec![]).check();
    Case::op(
        "Dropout",
        vec![Run(r(&[3, 4], 93)), Const(T::F(vec![], vec![0.3])), Const(T::B(vec![], vec![false]))],
        vec![],
    )
    .check();
}

/// The shape arithmetic PyTorch exports emit before a Reshape.
#[test]
fn dynamic_shape_chain() {
    let c = Case {
        opset: 17,
        nodes: vec![
            node("Shape", &["x"], &["s"], vec![]),
            node("Gather", &["s", "zero"], &["n"], vec![attr_i("axis", 0)]),
            node("Unsqueeze", &["n", "axes0"], &["n1"], vec![]),
            node("Concat", &["n1", "minus1"], &["target"], vec![attr_i("axis", 0)]),
            node("Reshape", &["x", "target"], &["flat"], vec![]),
            node("Relu", &["flat"], &["out"], vec![]),
        ],
        operands: vec![
            ("x".into(), Run(r(&[3, 4, 5], 94))),
            ("zero".into(), Const(ints(&[], &[0]))),
            ("axes0".into(), Const(ints(&[1], &[0]))),
            ("minus1".into(), Const(ints(&[1], &[-1]))),
        ],
        outputs: vec![("out".into(), dt::FLOAT), ("target".into(), dt::INT64)],
    };
    c.check();
}

// ---- ops added for ONNX conformance (see also wgpu_conformance.rs) ----

#[test]
fn elementwise_activations_and_comparisons() {
    for op in ["Cos", "Sin", "Floor", "Ceil", "HardSwish"] {
        Case::op(op, vec![Run(r(&[3, 4], 130))], vec![]).check();
    }
    Case::op("LeakyRelu", vec![Run(r(&[3, 4], 131))], vec![attr_f("alpha", 0.1)]).check();
    Case::op("HardSigmoid", vec![Run(r(&[3, 4], 132))], vec![attr_f("alpha", 0.3), attr_f("beta", 0.4)]).check();
    Case::op("PRelu", vec![Run(r(&[2, 3, 4], 133)), Const(r(&[4], 134))], vec![]).check();
    Case::op("Max", vec![Run(r(&[3, 4], 135)), Run(r(&[4], 136)), Run(r(&[3, 1], 137))], vec![]).check();
    Case::op("Min", vec![Run(r(&[3, 4], 138)), Run(r(&[3, 4], 139))], vec![]).check();
    Case::op_typed("Greater", vec![Run(r(&[3, 4], 140)), Run(r(&[4], 141))], vec![], dt::BOOL).check();
    Case::op_typed("Less", vec![Run(r(&[3, 4], 142)), Run(r(&[3, 4], 143))], vec![], dt::BOOL).check();
}

#[test]
fn conv_transpose_pad_resize_instance_norm() {
    let w = r(&[2, 3, 3, 3], 151);
    Case::op("ConvTranspose", vec![Run(r(&[1, 2, 4, 5], 150)), Const(w.clone()), Const(r(&[3], 152))], vec![
        attr_is("strides", &[2, 2]),
        attr_is("pads", &[1, 0, 0, 1]),
        attr_is("output_padding", &[1, 1]),
    ])
    .check();
    Case::op("ConvTranspose", vec![Run(r(&[1, 2, 4, 5], 153)), Const(w)], vec![attr_is("output_shape", &[9, 11]), attr_is("strides", &[2, 2])]).check();
    for mode in ["constant", "reflect", "edge"] {
        Case::op("Pad", vec![Run(r(&[2, 3, 4], 154)), Const(ints(&[6], &[0, 1, 2, 0, 2, 1])), Const(T::F(vec![], vec![0.5]))], vec![attr_s("mode", mode)]).check();
    }
    for (mode, coord) in [("nearest", "asymmetric"), ("linear", "half_pixel"), ("linear", "align_corners")] {
        Case::op("Resize", vec![Run(r(&[1, 2, 3, 4], 155)), Absent, Const(T::F(vec![4], vec![1.0, 1.0, 2.0, 1.5]))], vec![
            attr_s("mode", mode),
            attr_s("coordinate_transformation_mode", coord),
        ])
        .check();
    }
    Case::op("InstanceNormalization", vec![Run(r(&[2, 3, 4, 5], 156)), Const(r(&[3], 157)), Const(r(&[3], 158))], vec![]).check();
}

// ---- what the backend refuses ----

#[test]
fn unsupported_op_fails_at_load_naming_it() {
    let c = Case::op("Einsum", vec![Run(r(&[4, 5], 95)), Run(r(&[5, 2], 94))], vec![attr_s("equation", "ij,jk->ik")]);
    let err = match wgpu().load(Arc::from(c.model())) {
        Ok(_) => panic!("Einsum must not load on wgpu"),
        Err(e) => e,
    };
    assert_eq!(err.kind, BackendErrorKind::Unsupported);
    assert!(err.message.contains("Einsum") && err.message.contains("wgpu"), "{}", err.message);
    assert!(!BackendKind::Wgpu.supports_op("Einsum"));
    assert!(BackendKind::Wgpu.supports_op("Conv") && BackendKind::OrtCpu.supports_op("Einsum"));
    // An attribute value the backend does not implement is refused at load, naming it.
    let c = Case::op("Resize", vec![Run(r(&[1, 1, 4, 4], 93)), Absent, Const(T::F(vec![4], vec![1.0, 1.0, 2.0, 2.0]))], vec![attr_s("mode", "cubic")]);
    let err = wgpu().load(Arc::from(c.model())).err().expect("cubic Resize refused");
    assert_eq!(err.kind, BackendErrorKind::Unsupported);
    assert!(err.message.contains("Resize mode cubic is not supported by the wgpu backend"), "{}", err.message);
    // A float64 model is refused at load too (never silently narrowed).
    let mut c = Case::op("Relu", vec![Run(r(&[2], 96))], vec![]);
    c.outputs[0].1 = dt::DOUBLE;
    let mut m: pb::ModelProto = prost::Message::decode(&c.model()[..]).unwrap();
    m.graph.as_mut().unwrap().input[0].r#type.as_mut().unwrap().tensor_type.as_mut().unwrap().elem_type = dt::DOUBLE;
    let err = wgpu().load(Arc::from(prost::Message::encode_to_vec(&m))).err().expect("float64 input refused");
    assert!(err.message.contains("FP64"), "{}", err.message);
}

#[test]
fn bad_inputs_are_errors_not_crashes() {
    let c = Case::op("MatMul", vec![Run(r(&[2, 3], 97)), Run(r(&[3, 4], 98))], vec![]);
    let g = wgpu().load(Arc::from(c.model())).unwrap();
    let mut ctx = g.init_execution_context().unwrap();
    let a: Vec<u8> = vec![0; 2 * 5 * 4];
    let b: Vec<u8> = vec![0; 3 * 4 * 4];
    let err = ctx
        .compute(
            &[
                ("in0", TensorView { ty: ElementType::F32, dims: &[2, 5], data: &a }),
                ("in1", TensorView { ty: ElementType::F32, dims: &[3, 4], data: &b }),
            ],
            None,
        )
        .unwrap_err();
    assert!(err.message.contains("MatMul") && err.message.contains("do not fit"), "{}", err.message);
    let err =
        ctx.compute(&[("in0", TensorView { ty: ElementType::I64, dims: &[2, 3], data: &[0; 48] })], None).unwrap_err();
    assert_eq!(err.kind, BackendErrorKind::InvalidArgument, "{}", err.message);
    // The same context still computes afterwards: 1s times 1s is 3.
    let ones = |n: usize| -> Vec<u8> { (0..n).flat_map(|_| 1f32.to_le_bytes()).collect() };
    let (a, b) = (ones(6), ones(12));
    let out = ctx
        .compute(
            &[
                ("in0", TensorView { ty: ElementType::F32, dims: &[2, 3], data: &a }),
                ("in1", TensorView { ty: ElementType::F32, dims: &[3, 4], data: &b }),
            ],
            None,
        )
        .expect("the context computes after two refused calls");
    assert_eq!(out[0].1.dims, vec![2, 4]);
    assert!(out[0].1.data.chunks_exact(4).all(|c| f32::from_le_bytes(c.try_into().unwrap()) == 3.0));
    let garbage = wgpu().load(Arc::from(&b"not a model"[..])).err().expect("garbage refused");
    assert_eq!(garbage.kind, BackendErrorKind::InvalidEncoding);
}

/// Shapes from a model or its inputs that would need absurd memory are
/// refused before anything is allocated; the backend keeps working.
#[test]
fn absurd_shapes_are_refused() {
    for (case, what) in [
        (Case::op("Expand", vec![Run(r(&[1, 1], 99)), Const(ints(&[2], &[1 << 20, 1 << 20]))], vec![]), "Expand"),
        (Case::op("Add", vec![Run(r(&[1 << 16, 1], 100)), Run(r(&[1, 1 << 13], 101))], vec![]), "Add"),
        (Case::op("ConstantOfShape", vec![Const(ints(&[3], &[1 << 12, 1 << 12, 1 << 12]))], vec![]), "ConstantOfShape"),
        (
            Case::op(
                "Conv",
                vec![Run(r(&[1, 1, 4, 4], 102)), Const(r(&[1, 1, 1, 1], 103))],
                vec![attr_is("pads", &[1 << 15, 1 << 15, 1 << 15, 1 << 15])],
            ),
            "Conv",
        ),
    ] {
        let err = case.run_on(wgpu()).expect_err(what);
        assert!(err.contains("too large") && err.contains(what), "{what}: {err}");
    }
    Case::op("Relu", vec![Run(r(&[2, 3], 104))], vec![]).check();
}

/// Ops are submitted asynchronously, so a job waits for the device when it
/// reads its outputs: the deadline must hold there. A 1536³ MatMul takes
/// seconds on llvmpipe; with a 100 ms deadline the run ends with Timeout
/// long before the device is done (on a fast GPU it may simply finish).
#[test]
fn the_deadline_holds_while_the_device_computes() {
    let n = 1536;
    let c = Case::op("MatMul", vec![Run(r(&[n, n], 105)), Run(r(&[n, n], 106))], vec![]);
    let g = wgpu().load(Arc::from(c.model())).unwrap();
    let mut ctx = g.init_execution_context().unwrap();
    let (a, b) = match (&c.operands[0].1, &c.operands[1].1) {
        (Run(a), Run(b)) => (a.bytes(), b.bytes()),
        _ => unreachable!(),
    };
    let dims = [n as u32, n as u32];
    let start = std::time::Instant::now();
    let r = ctx.compute(
        &[
            ("in0", TensorView { ty: ElementType::F32, dims: &dims, data: &a }),
            ("in1", TensorView { ty: ElementType::F32, dims: &dims, data: &b }),
        ],
        Some(start + std::time::Duration::from_millis(100)),
    );
    let took = start.elapsed();
    if let Err(e) = &r {
        assert_eq!(e.kind, BackendErrorKind::Timeout, "{}", e.message);
    }
    assert!(took < std::time::Duration::from_millis(1500), "compute returned after {took:?} (deadline 100 ms)");
}

// ---- the LLM decoder's operators (SmolLM2 as scripts/convert_gguf.py writes it) ----

#[test]
fn split_and_simplified_layer_normalization() {
    let x = r(&[2, 3, 10], 120);
    Case::op("Split", vec![Run(x.clone())], vec![attr_i("axis", -1)]).outputs(&["a", "b"]).check();
    Case::op("Split", vec![Run(x.clone()), Const(ints(&[3], &[2, 5, 3]))], vec![attr_i("axis", 2)])
        .outputs(&["a", "b", "c"])
        .check();
    Case::op("Split", vec![Run(x.clone())], vec![attr_i("axis", 1), attr_is("split", &[1, 2])])
        .opset(11)
        .outputs(&["a", "b"])
        .check();
    Case::op("SimplifiedLayerNormalization", vec![Run(x.clone()), Const(r(&[10], 121))], vec![attr_f("epsilon", 1e-5)])
        .check();
    Case::op("SimplifiedLayerNormalization", vec![Run(x), Run(r(&[3, 10], 122))], vec![attr_i("axis", 1)]).check();
}

/// Deterministic bytes.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    (0..n as u64).map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed * 97) >> 3) as u8).collect()
}

#[test]
fn matmul_nbits_four_and_eight_bit() {
    // K = 48 is one and a half blocks of 32: the last block is padded.
    let (k, n, block) = (48usize, 6usize, 32usize);
    let blocks = k.div_ceil(block);
    let attrs = |bits: i64| vec![attr_i("K", k as i64), attr_i("N", n as i64), attr_i("bits", bits), attr_i("block_size", block as i64)];
    let a = r(&[2, 3, k], 123);
    let scales = rand(&[n * blocks], 124, 0.01, 0.1);
    for (bits, zeros) in [
        (4, Some(T::U8(vec![n * blocks.div_ceil(2)], bytes(n * blocks.div_ceil(2), 5)))),
        (4, None),
        (8, Some(T::U8(vec![n * blocks], bytes(n * blocks, 6)))),
        (4, Some(rand(&[n * blocks], 125, 4.0, 12.0))), // float zero points (ORT: 4-bit only)
    ] {
        let blob = block * bits as usize / 8;
        let q = T::U8(vec![n, blocks, blob], bytes(n * blocks * blob, bits as u64));
        let mut ins = vec![Run(a.clone()), Const(q), Const(scales.clone())];
        if let Some(z) = zeros {
            ins.push(Const(z));
        }
        Case::op("MatMulNBits", ins, attrs(bits)).microsoft().check();
    }
}

#[test]
fn group_query_attention_prompt_and_cached_steps() {
    // 4 query heads share 2 KV heads of size 16; rotary from caches.
    let (heads, kv, hd) = (4usize, 2usize, 16usize);
    let width = (heads + 2 * kv) * hd;
    let attrs = || vec![attr_i("num_heads", heads as i64), attr_i("kv_num_heads", kv as i64), attr_i("do_rotary", 1)];
    let angles = |f: fn(f32) -> f32| {
        let v = (0..16).flat_map(|p| (0..hd / 2).map(move |i| f(p as f32 / 10f32.powf(i as f32 / 2.0)))).collect();
        T::F(vec![16, hd / 2], v)
    };
    let (cos, sin) = (angles(f32::cos), angles(f32::sin));
    let step = |new: usize, past: usize, seed: u64| {
        let ins = vec![
            Run(r(&[1, new, width], seed)),
            Absent,
            Absent,
            Run(r(&[1, kv, past, hd], seed + 1)),
            Run(r(&[1, kv, past, hd], seed + 2)),
            Run(T::I32(vec![1], vec![(past + new - 1) as i32])),
            Run(T::I32(vec![], vec![(past + new) as i32])),
            Const(cos.clone()),
            Const(sin.clone()),
        ];
        Case::op("GroupQueryAttention", ins, attrs()).microsoft().outputs(&["y", "present_key", "present_value"])
    };
    step(5, 0, 130).check(); // a prompt: causal over itself, empty cache
    step(1, 6, 140).check(); // one generated token over a kept cache
}
