//! Typed graph building over `mote:edge/graph-builder` (ONNX operators).

use crate::bindings::mote::edge::graph_builder::{self as gb, Attribute, AttributeValue, OperandDesc};
use crate::graph::{Graph, NnError, Tensor, TensorType};
use crate::Target;

/// A value in a graph under construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operand(pub u32);

/// Declares a graph op by op; [`GraphBuilder::build`] loads it like any
/// model. Method names follow WebNN; the ops are ONNX's (opset 17).
pub struct GraphBuilder(gb::Builder);

type R = Result<Operand, NnError>;

fn int(name: &str, v: i64) -> Attribute {
    Attribute { name: name.into(), value: AttributeValue::Int(v) }
}
fn ints(name: &str, v: &[i64]) -> Attribute {
    Attribute { name: name.into(), value: AttributeValue::Ints(v.to_vec()) }
}
fn float(name: &str, v: f32) -> Attribute {
    Attribute { name: name.into(), value: AttributeValue::Float(v) }
}

/// Options of a 2-D convolution or pooling window.
#[derive(Clone, Debug)]
pub struct Window {
    /// Kernel size (pools only; convs take it from the weights).
    pub kernel: [i64; 2],
    /// Strides.
    pub strides: [i64; 2],
    /// Padding: top, left, bottom, right.
    pub pads: [i64; 4],
    /// Dilations (convolutions).
    pub dilations: [i64; 2],
    /// Groups (convolutions).
    pub groups: i64,
}

impl Default for Window {
    fn default() -> Self {
        Self { kernel: [1, 1], strides: [1, 1], pads: [0; 4], dilations: [1, 1], groups: 1 }
    }
}

impl GraphBuilder {
    /// An empty graph.
    pub fn new() -> Self {
        Self(gb::Builder::new())
    }

    /// Whether the host can run `op` on `target`.
    pub fn supports(op: &str, target: Target) -> bool {
        gb::supports(op, target)
    }

    /// A graph input; `-1` marks a dynamic axis.
    pub fn input(&self, name: &str, ty: TensorType, shape: &[i64]) -> R {
        Ok(Operand(self.0.input(name, &OperandDesc { ty, shape: shape.to_vec() })?))
    }

    /// A constant (weights).
    pub fn constant(&self, t: &Tensor) -> R {
        Ok(Operand(self.0.constant(&t.0)?))
    }

    /// An f32 constant.
    pub fn constant_f32(&self, dims: &[u32], values: &[f32]) -> R {
        self.constant(&Tensor::from_f32(dims, values))
    }

    /// An i64 constant (shapes, axes).
    pub fn constant_i64(&self, dims: &[u32], values: &[i64]) -> R {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant(&Tensor::new(TensorType::I64, dims, &bytes))
    }

    /// Any ONNX operator with one output.
    pub fn node(&self, op: &str, inputs: &[Operand], attributes: &[Attribute]) -> R {
        let ids: Vec<u32> = inputs.iter().map(|o| o.0).collect();
        Ok(Operand(self.0.node(op, &ids, attributes)?))
    }

    /// Any ONNX operator with `outputs` outputs.
    pub fn node_multi(
        &self,
        op: &str,
        inputs: &[Operand],
        attributes: &[Attribute],
        outputs: u32,
    ) -> Result<Vec<Operand>, NnError> {
        let ids: Vec<u32> = inputs.iter().map(|o| o.0).collect();
        Ok(self.0.node_multi(op, &ids, attributes, outputs)?.into_iter().map(Operand).collect())
    }

    /// `a @ b`.
    pub fn matmul(&self, a: Operand, b: Operand) -> R {
        self.node("MatMul", &[a, b], &[])
    }
    /// `alpha * a' @ b' + beta * c` with optional transposes.
    pub fn gemm(&self, a: Operand, b: Operand, c: Option<Operand>, trans_b: bool) -> R {
        let mut ins = vec![a, b];
        ins.extend(c);
        self.node("Gemm", &ins, &[int("transB", i64::from(trans_b))])
    }
    /// Elementwise `a + b` (broadcasting).
    pub fn add(&self, a: Operand, b: Operand) -> R {
        self.node("Add", &[a, b], &[])
    }
    /// Elementwise `a - b`.
    pub fn sub(&self, a: Operand, b: Operand) -> R {
        self.node("Sub", &[a, b], &[])
    }
    /// Elementwise `a * b`.
    pub fn mul(&self, a: Operand, b: Operand) -> R {
        self.node("Mul", &[a, b], &[])
    }
    /// Elementwise `a / b`.
    pub fn div(&self, a: Operand, b: Operand) -> R {
        self.node("Div", &[a, b], &[])
    }
    /// `max(x, 0)`.
    pub fn relu(&self, x: Operand) -> R {
        self.node("Relu", &[x], &[])
    }
    /// Logistic sigmoid.
    pub fn sigmoid(&self, x: Operand) -> R {
        self.node("Sigmoid", &[x], &[])
    }
    /// Hyperbolic tangent.
    pub fn tanh(&self, x: Operand) -> R {
        self.node("Tanh", &[x], &[])
    }
    /// Gauss error function.
    pub fn erf(&self, x: Operand) -> R {
        self.node("Erf", &[x], &[])
    }
    /// Exact GELU, `x * 0.5 * (1 + erf(x / sqrt 2))`, built from `Erf`.
    pub fn gelu(&self, x: Operand) -> R {
        let inv_sqrt2 = self.constant_f32(&[], &[std::f32::consts::FRAC_1_SQRT_2])?;
        let half = self.constant_f32(&[], &[0.5])?;
        let one = self.constant_f32(&[], &[1.0])?;
        let e = self.erf(self.mul(x, inv_sqrt2)?)?;
        self.mul(self.mul(x, half)?, self.add(e, one)?)
    }
    /// Softmax over `axis`.
    pub fn softmax(&self, x: Operand, axis: i64) -> R {
        self.node("Softmax", &[x], &[int("axis", axis)])
    }
    /// 2-D convolution (NCHW) with optional bias.
    pub fn conv2d(&self, x: Operand, w: Operand, bias: Option<Operand>, win: &Window) -> R {
        let mut ins = vec![x, w];
        ins.extend(bias);
        self.node(
            "Conv",
            &ins,
            &[
                ints("strides", &win.strides),
                ints("pads", &win.pads),
                ints("dilations", &win.dilations),
                int("group", win.groups),
            ],
        )
    }
    /// 2-D max pooling.
    pub fn max_pool2d(&self, x: Operand, win: &Window) -> R {
        self.node(
            "MaxPool",
            &[x],
            &[ints("kernel_shape", &win.kernel), ints("strides", &win.strides), ints("pads", &win.pads)],
        )
    }
    /// 2-D average pooling (padding excluded from the mean).
    pub fn average_pool2d(&self, x: Operand, win: &Window) -> R {
        self.node(
            "AveragePool",
            &[x],
            &[ints("kernel_shape", &win.kernel), ints("strides", &win.strides), ints("pads", &win.pads)],
        )
    }
    /// Mean over the spatial axes, keeping them as 1.
    pub fn global_average_pool(&self, x: Operand) -> R {
        self.node("GlobalAveragePool", &[x], &[])
    }
    /// Inference batch normalisation.
    pub fn batch_norm(
        &self,
        x: Operand,
        scale: Operand,
        bias: Operand,
        mean: Operand,
        var: Operand,
        epsilon: f32,
    ) -> R {
        self.node("BatchNormalization", &[x, scale, bias, mean, var], &[float("epsilon", epsilon)])
    }
    /// Layer normalisation over the axes from `axis` on.
    pub fn layer_norm(&self, x: Operand, scale: Operand, bias: Operand, axis: i64, epsilon: f32) -> R {
        self.node("LayerNormalization", &[x, scale, bias], &[int("axis", axis), float("epsilon", epsilon)])
    }
    /// Reshape to `shape` (`-1` infers one axis, `0` copies).
    pub fn reshape(&self, x: Operand, shape: &[i64]) -> R {
        let s = self.constant_i64(&[shape.len() as u32], shape)?;
        self.node("Reshape", &[x, s], &[])
    }
    /// Permute axes.
    pub fn transpose(&self, x: Operand, perm: &[i64]) -> R {
        self.node("Transpose", &[x], &[ints("perm", perm)])
    }
    /// Concatenate along `axis`.
    pub fn concat(&self, xs: &[Operand], axis: i64) -> R {
        self.node("Concat", xs, &[int("axis", axis)])
    }
    /// Flatten to 2-D at `axis`.
    pub fn flatten(&self, x: Operand, axis: i64) -> R {
        self.node("Flatten", &[x], &[int("axis", axis)])
    }

    /// Finishes the graph with named outputs and loads it for `target`.
    pub fn build(&self, outputs: &[(&str, Operand)], target: Target) -> Result<Graph, NnError> {
        let outs: Vec<(String, u32)> = outputs.iter().map(|(n, o)| (n.to_string(), o.0)).collect();
        Graph::from_graph(self.0.build(&outs, target)?)
    }
}

impl Default for GraphBuilder {
    fn default() -> Self {
        Self::new()
    }
}
