//! Small tensors kept on the host: integer and boolean tensors (shapes,
//! indices, masks) and scalar float constants.
//!
//! ONNX graphs compute shapes at run time (`Shape → Gather → Concat →
//! Reshape`). Those chains are a few dozen integers; running them as GPU
//! kernels would cost a round trip each. They stay here, and only float
//! tensors live on the device.

use super::Ty;
use crate::onnx_proto::{self as pb, data_type as dt};

/// Host element storage.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum HostData {
    F32(Vec<f32>),
    /// All integer types (int32 and int64 models alike).
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

/// A dense row-major tensor on the host.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct HostTensor {
    pub(super) shape: Vec<usize>,
    pub(super) data: HostData,
}

/// Element count; saturates instead of wrapping, so an overflowing shape
/// fails every size check (a wrapped product could be 0 and pass them).
pub(super) fn numel(shape: &[usize]) -> usize {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).unwrap_or(usize::MAX)
}

pub(super) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// The most elements one tensor may have (1 GiB of float32). Shapes come
/// from the model and its inputs; a guard against absurd ones (an `Expand`
/// to 10^10 elements) that would otherwise exhaust host or device memory.
pub(super) const MAX_ELEMENTS: usize = 1 << 28;

/// Refuses shapes beyond [`MAX_ELEMENTS`] (checked, no overflow).
pub(super) fn guard(shape: &[usize]) -> Result<(), String> {
    let n = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    match n {
        Some(n) if n <= MAX_ELEMENTS => Ok(()),
        _ => Err(format!("a tensor of shape {shape:?} is too large (limit {MAX_ELEMENTS} elements)")),
    }
}

/// Numpy-style broadcast of two shapes.
pub(super) fn broadcast_shapes(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank { a[i + a.len() - rank] } else { 1 };
        let db = if i + b.len() >= rank { b[i + b.len() - rank] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(format!("shapes {a:?} and {b:?} cannot be broadcast together")),
        };
    }
    guard(&out)?;
    Ok(out)
}

/// Normalises a possibly negative axis against `rank`.
pub(super) fn norm_axis(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return Err(format!("axis {axis} is out of range for rank {rank}"));
    }
    Ok(a as usize)
}

/// For every position of an output of `shape` (row-major), the flat source
/// index `src` maps it to.
fn source_indices(shape: &[usize], src: impl Fn(&[usize]) -> usize) -> Vec<usize> {
    let n = numel(shape);
    let mut idx = Vec::with_capacity(n);
    let mut pos = vec![0usize; shape.len()];
    for _ in 0..n {
        idx.push(src(&pos));
        for d in (0..pos.len()).rev() {
            pos[d] += 1;
            if pos[d] < shape[d] {
                break;
            }
            pos[d] = 0;
        }
    }
    idx
}

macro_rules! map_data {
    ($data:expr, |$v:ident| $body:expr) => {
        match $data {
            HostData::F32($v) => HostData::F32($body),
            HostData::I64($v) => HostData::I64($body),
            HostData::Bool($v) => HostData::Bool($body),
        }
    };
}

impl HostTensor {
    pub(super) fn new(shape: Vec<usize>, data: HostData) -> Self {
        debug_assert_eq!(numel(&shape), data.len());
        Self { shape, data }
    }

    pub(super) fn i64(shape: Vec<usize>, v: Vec<i64>) -> Self {
        Self::new(shape, HostData::I64(v))
    }

    pub(super) fn ty(&self) -> Ty {
        match self.data {
            HostData::F32(_) => Ty::F32,
            HostData::I64(_) => Ty::I64,
            HostData::Bool(_) => Ty::Bool,
        }
    }

    /// The values as integers (shapes, axes, indices).
    pub(super) fn as_i64(&self, what: &str) -> Result<Vec<i64>, String> {
        match &self.data {
            HostData::I64(v) => Ok(v.clone()),
            _ => Err(format!("{what} must be an integer tensor, got {:?}", self.ty())),
        }
    }

    /// A single float (for scalar operands such as Clip bounds).
    pub(super) fn scalar_f32(&self) -> Option<f32> {
        if numel(&self.shape) != 1 {
            return None;
        }
        Some(match &self.data {
            HostData::F32(v) => v[0],
            HostData::I64(v) => v[0] as f32,
            HostData::Bool(v) => f32::from(u8::from(v[0])),
        })
    }

    /// Elements picked by flat source index.
    fn pick(&self, shape: Vec<usize>, idx: &[usize]) -> Self {
        let data = map_data!(&self.data, |v| idx.iter().map(|&i| v[i]).collect());
        Self::new(shape, data)
    }

    /// Source flat indices for every output position of an index map
    /// `out[d] = sel[d][i_d]` (per-axis index lists).
    fn select_axes(&self, sel: &[Vec<usize>]) -> Self {
        let st = strides(&self.shape);
        let shape: Vec<usize> = sel.iter().map(Vec::len).collect();
        let idx =
            source_indices(&shape, |pos| pos.iter().zip(sel).zip(&st).map(|((&p, s), &stride)| s[p] * stride).sum());
        self.pick(shape, &idx)
    }

    pub(super) fn broadcast_to(&self, shape: &[usize]) -> Result<Self, String> {
        let out = broadcast_shapes(&self.shape, shape)?;
        if out != shape {
            return Err(format!("shape {:?} cannot be broadcast to {shape:?}", self.shape));
        }
        if self.shape == shape {
            return Ok(self.clone());
        }
        let off = shape.len() - self.shape.len();
        let sel: Vec<Vec<usize>> = (0..shape.len())
            .map(|d| {
                let src = if d >= off { self.shape[d - off] } else { 1 };
                if src == 1 {
                    vec![0; shape[d]]
                } else {
                    (0..shape[d]).collect()
                }
            })
            .collect();
        // Select on a view with the broadcast rank.
        let mut view = self.clone();
        view.shape = (0..shape.len()).map(|d| if d >= off { self.shape[d - off] } else { 1 }).collect();
        Ok(view.select_axes(&sel))
    }

    pub(super) fn reshape(mut self, shape: Vec<usize>) -> Self {
        debug_assert_eq!(numel(&shape), numel(&self.shape));
        self.shape = shape;
        self
    }

    pub(super) fn transpose(&self, perm: &[usize]) -> Self {
        let st = strides(&self.shape);
        let shape: Vec<usize> = perm.iter().map(|&p| self.shape[p]).collect();
        let idx = source_indices(&shape, |pos| pos.iter().zip(perm).map(|(&p, &ax)| p * st[ax]).sum());
        self.pick(shape, &idx)
    }

    /// Keeps, along `axis`, the positions in `indices` (already in range).
    pub(super) fn take(&self, axis: usize, indices: &[usize]) -> Self {
        let sel: Vec<Vec<usize>> = (0..self.shape.len())
            .map(|d| if d == axis { indices.to_vec() } else { (0..self.shape[d]).collect() })
            .collect();
        self.select_axes(&sel)
    }

    pub(super) fn concat(parts: &[&HostTensor], axis: usize) -> Result<Self, String> {
        let first = parts[0];
        let mut shape = first.shape.clone();
        shape[axis] = 0;
        for p in parts {
            if p.shape.len() != first.shape.len()
                || p.shape.iter().enumerate().any(|(d, &s)| d != axis && s != first.shape[d])
                || p.ty() != first.ty()
            {
                return Err(format!("Concat inputs {:?} and {:?} do not fit on axis {axis}", first.shape, p.shape));
            }
            shape[axis] += p.shape[axis];
        }
        let outer: usize = first.shape[..axis].iter().product();
        let inner = |t: &HostTensor| -> usize { t.shape[axis..].iter().product() };
        let mut data = match first.data {
            HostData::F32(_) => HostData::F32(Vec::new()),
            HostData::I64(_) => HostData::I64(Vec::new()),
            HostData::Bool(_) => HostData::Bool(Vec::new()),
        };
        for o in 0..outer {
            for p in parts {
                let n = inner(p);
                match (&mut data, &p.data) {
                    (HostData::F32(d), HostData::F32(s)) => d.extend_from_slice(&s[o * n..(o + 1) * n]),
                    (HostData::I64(d), HostData::I64(s)) => d.extend_from_slice(&s[o * n..(o + 1) * n]),
                    (HostData::Bool(d), HostData::Bool(s)) => d.extend_from_slice(&s[o * n..(o + 1) * n]),
                    _ => unreachable!("types checked above"),
                }
            }
        }
        Ok(Self::new(shape, data))
    }

    /// Converts to another element type (ONNX Cast semantics).
    pub(super) fn cast(&self, to: Ty) -> Self {
        let data = match (&self.data, to) {
            (HostData::F32(v), Ty::F32) => HostData::F32(v.clone()),
            (HostData::F32(v), Ty::I64 | Ty::I32) => HostData::I64(v.iter().map(|&x| x as i64).collect()),
            (HostData::F32(v), Ty::Bool) => HostData::Bool(v.iter().map(|&x| x != 0.0).collect()),
            (HostData::I64(v), Ty::F32) => HostData::F32(v.iter().map(|&x| x as f32).collect()),
            (HostData::I64(v), Ty::I64) => HostData::I64(v.clone()),
            (HostData::I64(v), Ty::I32) => HostData::I64(v.iter().map(|&x| i64::from(x as i32)).collect()),
            (HostData::I64(v), Ty::Bool) => HostData::Bool(v.iter().map(|&x| x != 0).collect()),
            (HostData::Bool(v), Ty::F32) => HostData::F32(v.iter().map(|&x| f32::from(u8::from(x))).collect()),
            (HostData::Bool(v), Ty::I64 | Ty::I32) => HostData::I64(v.iter().map(|&x| i64::from(x)).collect()),
            (HostData::Bool(v), Ty::Bool) => HostData::Bool(v.clone()),
        };
        Self::new(self.shape.clone(), data)
    }

    /// Elementwise arithmetic with broadcasting (both operands one type).
    pub(super) fn arith(&self, other: &HostTensor, op: super::program::BinOp) -> Result<Self, String> {
        use super::program::BinOp as Op;
        let shape = broadcast_shapes(&self.shape, &other.shape)?;
        let a = self.broadcast_to(&shape)?;
        let b = other.broadcast_to(&shape)?;
        let data = match (&a.data, &b.data) {
            (HostData::F32(x), HostData::F32(y)) => HostData::F32(
                x.iter()
                    .zip(y)
                    .map(|(&x, &y)| match op {
                        Op::Add => x + y,
                        Op::Sub => x - y,
                        Op::Mul => x * y,
                        Op::Div => x / y,
                        Op::Pow => x.powf(y),
                    })
                    .collect(),
            ),
            (HostData::I64(x), HostData::I64(y)) => HostData::I64(
                x.iter()
                    .zip(y)
                    .map(|(&x, &y)| match op {
                        Op::Add => Ok(x.wrapping_add(y)),
                        Op::Sub => Ok(x.wrapping_sub(y)),
                        Op::Mul => Ok(x.wrapping_mul(y)),
                        Op::Div if y == 0 => Err("integer division by zero".to_string()),
                        Op::Div => Ok(x.wrapping_div(y)),
                        Op::Pow => Ok(x.wrapping_pow(y.clamp(0, u32::MAX as i64) as u32)),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            _ => return Err(format!("{op:?} of {:?} and {:?} tensors", a.ty(), b.ty())),
        };
        Ok(Self::new(shape, data))
    }

    /// Elementwise equality with broadcasting.
    pub(super) fn equal(&self, other: &HostTensor) -> Result<Self, String> {
        let shape = broadcast_shapes(&self.shape, &other.shape)?;
        let a = self.broadcast_to(&shape)?;
        let b = other.broadcast_to(&shape)?;
        let v: Vec<bool> = match (&a.data, &b.data) {
            (HostData::F32(x), HostData::F32(y)) => x.iter().zip(y).map(|(x, y)| x == y).collect(),
            (HostData::I64(x), HostData::I64(y)) => x.iter().zip(y).map(|(x, y)| x == y).collect(),
            (HostData::Bool(x), HostData::Bool(y)) => x.iter().zip(y).map(|(x, y)| x == y).collect(),
            _ => return Err(format!("Equal of {:?} and {:?} tensors", a.ty(), b.ty())),
        };
        Ok(Self::new(shape, HostData::Bool(v)))
    }

    /// ONNX Pad: `per[d]` = (begin, end) padding of axis `d` (negative
    /// crops), `out` the resulting shape (checked by the caller).
    pub(super) fn pad(&self, per: &[(i64, i64)], out: &[usize], mode: super::program::PadKind, value: f32) -> Self {
        use super::program::PadKind as K;
        let st = strides(&self.shape);
        let n = numel(out);
        let mut src: Vec<Option<usize>> = Vec::with_capacity(n);
        let mut pos = vec![0usize; out.len()];
        for _ in 0..n {
            let mut flat = Some(0usize);
            for d in 0..out.len() {
                let len = self.shape[d] as i64;
                let mut p = pos[d] as i64 - per[d].0;
                if p < 0 || p >= len {
                    p = match mode {
                        K::Constant => {
                            flat = None;
                            break;
                        }
                        K::Edge => p.clamp(0, len - 1),
                        K::Reflect => {
                            if len == 1 {
                                0
                            } else {
                                let period = 2 * (len - 1);
                                let m = p.rem_euclid(period);
                                if m < len { m } else { period - m }
                            }
                        }
                    };
                }
                flat = flat.map(|f| f + p as usize * st[d]);
            }
            src.push(flat);
            for d in (0..pos.len()).rev() {
                pos[d] += 1;
                if pos[d] < out[d] {
                    break;
                }
                pos[d] = 0;
            }
        }
        let data = match &self.data {
            HostData::F32(v) => HostData::F32(src.iter().map(|s| s.map_or(value, |i| v[i])).collect()),
            HostData::I64(v) => HostData::I64(src.iter().map(|s| s.map_or(value as i64, |i| v[i])).collect()),
            HostData::Bool(v) => HostData::Bool(src.iter().map(|s| s.map_or(value != 0.0, |i| v[i])).collect()),
        };
        Self::new(out.to_vec(), data)
    }

    /// Running sum along `axis` (ONNX CumSum).
    pub(super) fn cumsum(&self, axis: usize, exclusive: bool, reverse: bool) -> Result<Self, String> {
        let n = self.shape[axis];
        let inner: usize = self.shape[axis + 1..].iter().product();
        let outer: usize = self.shape[..axis].iter().product();
        macro_rules! run {
            ($v:expr, $zero:expr, $add:expr) => {{
                let v = $v;
                let mut out = vec![$zero; v.len()];
                for o in 0..outer {
                    for i in 0..inner {
                        let mut acc = $zero;
                        for s in 0..n {
                            let k = if reverse { n - 1 - s } else { s };
                            let at = (o * n + k) * inner + i;
                            if exclusive {
                                out[at] = acc;
                                acc = $add(acc, v[at]);
                            } else {
                                acc = $add(acc, v[at]);
                                out[at] = acc;
                            }
                        }
                    }
                }
                out
            }};
        }
        let data = match &self.data {
            HostData::F32(v) => HostData::F32(run!(v, 0f32, |a: f32, b: f32| a + b)),
            HostData::I64(v) => HostData::I64(run!(v, 0i64, |a: i64, b: i64| a.wrapping_add(b))),
            HostData::Bool(_) => return Err("CumSum of a bool tensor".into()),
        };
        Ok(Self::new(self.shape.clone(), data))
    }

    /// Elementwise `self > other` with broadcasting (numbers).
    pub(super) fn greater(&self, other: &HostTensor) -> Result<Self, String> {
        let shape = broadcast_shapes(&self.shape, &other.shape)?;
        let a = self.broadcast_to(&shape)?;
        let b = other.broadcast_to(&shape)?;
        let v: Vec<bool> = match (&a.data, &b.data) {
            (HostData::F32(x), HostData::F32(y)) => x.iter().zip(y).map(|(x, y)| x > y).collect(),
            (HostData::I64(x), HostData::I64(y)) => x.iter().zip(y).map(|(x, y)| x > y).collect(),
            _ => return Err(format!("comparison of {:?} and {:?} tensors", a.ty(), b.ty())),
        };
        Ok(Self::new(shape, HostData::Bool(v)))
    }

    /// Elementwise max (or min) with broadcasting; NaN wins, as in numpy.
    pub(super) fn min_max(&self, other: &HostTensor, max: bool) -> Result<Self, String> {
        let shape = broadcast_shapes(&self.shape, &other.shape)?;
        let a = self.broadcast_to(&shape)?;
        let b = other.broadcast_to(&shape)?;
        let data = match (&a.data, &b.data) {
            (HostData::F32(x), HostData::F32(y)) => HostData::F32(
                x.iter()
                    .zip(y)
                    .map(|(&x, &y)| if x.is_nan() || y.is_nan() { f32::NAN } else if max { x.max(y) } else { x.min(y) })
                    .collect(),
            ),
            (HostData::I64(x), HostData::I64(y)) => {
                HostData::I64(x.iter().zip(y).map(|(&x, &y)| if max { x.max(y) } else { x.min(y) }).collect())
            }
            _ => return Err(format!("Max/Min of {:?} and {:?} tensors", a.ty(), b.ty())),
        };
        Ok(Self::new(shape, data))
    }

    /// Elementwise And (`and`) or Or of bool tensors, with broadcasting.
    pub(super) fn logic(&self, other: &HostTensor, and: bool) -> Result<Self, String> {
        let shape = broadcast_shapes(&self.shape, &other.shape)?;
        let (HostData::Bool(x), HostData::Bool(y)) = (self.broadcast_to(&shape)?.data, other.broadcast_to(&shape)?.data)
        else {
            return Err("And/Or take bool tensors".into());
        };
        let v = x.iter().zip(&y).map(|(&x, &y)| if and { x && y } else { x || y }).collect();
        Ok(Self::new(shape, HostData::Bool(v)))
    }

    /// `cond ? x : y` with broadcasting.
    pub(super) fn where_(cond: &HostTensor, x: &HostTensor, y: &HostTensor) -> Result<Self, String> {
        let shape = broadcast_shapes(&broadcast_shapes(&cond.shape, &x.shape)?, &y.shape)?;
        let HostData::Bool(c) = cond.broadcast_to(&shape)?.data else {
            return Err("Where condition must be bool".into());
        };
        let x = x.broadcast_to(&shape)?;
        let y = y.broadcast_to(&shape)?;
        let data = match (x.data, y.data) {
            (HostData::F32(a), HostData::F32(b)) => {
                HostData::F32(c.iter().zip(a.into_iter().zip(b)).map(|(&c, (a, b))| if c { a } else { b }).collect())
            }
            (HostData::I64(a), HostData::I64(b)) => {
                HostData::I64(c.iter().zip(a.into_iter().zip(b)).map(|(&c, (a, b))| if c { a } else { b }).collect())
            }
            (HostData::Bool(a), HostData::Bool(b)) => {
                HostData::Bool(c.iter().zip(a.into_iter().zip(b)).map(|(&c, (a, b))| if c { a } else { b }).collect())
            }
            _ => return Err("Where branches have different types".into()),
        };
        Ok(Self::new(shape, data))
    }

    /// Sum or mean over `axes` (sorted, unique), keeping them as size 1.
    pub(super) fn reduce(&self, axes: &[usize], mean: bool) -> Result<Self, String> {
        let mut out_shape = self.shape.clone();
        for &a in axes {
            out_shape[a] = 1;
        }
        let count: usize = axes.iter().map(|&a| self.shape[a]).product();
        let ost = strides(&out_shape);
        let n = numel(&self.shape);
        let out_of = |flat: usize| -> usize {
            let mut rem = flat;
            let mut o = 0;
            for d in 0..self.shape.len() {
                let st: usize = self.shape[d + 1..].iter().product();
                let p = rem / st;
                rem %= st;
                if out_shape[d] != 1 {
                    o += p * ost[d];
                }
            }
            o
        };
        let data = match &self.data {
            HostData::F32(v) => {
                let mut acc = vec![0f32; numel(&out_shape)];
                for i in 0..n {
                    acc[out_of(i)] += v[i];
                }
                if mean && count > 0 {
                    acc.iter_mut().for_each(|x| *x /= count as f32);
                }
                HostData::F32(acc)
            }
            HostData::I64(v) => {
                let mut acc = vec![0i64; numel(&out_shape)];
                for i in 0..n {
                    acc[out_of(i)] = acc[out_of(i)].wrapping_add(v[i]);
                }
                if mean && count > 0 {
                    acc.iter_mut().for_each(|x| *x /= count as i64);
                }
                HostData::I64(acc)
            }
            HostData::Bool(_) => return Err("cannot reduce a bool tensor".into()),
        };
        Ok(Self::new(out_shape, data))
    }

    /// Reads an ONNX initializer or constant.
    pub(super) fn from_proto(t: &pb::TensorProto) -> Result<Self, String> {
        if t.data_location == 1 || !t.external_data.is_empty() {
            return Err(format!("tensor '{}' keeps its data in an external file, which mote does not read", t.name));
        }
        let shape: Vec<usize> = t
            .dims
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| format!("tensor '{}' has negative dimension {d}", t.name)))
            .collect::<Result<_, _>>()?;
        let n = numel(&shape);
        let raw = &t.raw_data;
        let data = match t.data_type {
            dt::FLOAT if !raw.is_empty() => {
                HostData::F32(raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
            }
            dt::FLOAT => HostData::F32(t.float_data.clone()),
            dt::DOUBLE if !raw.is_empty() => {
                HostData::F32(raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect())
            }
            dt::DOUBLE => HostData::F32(t.double_data.iter().map(|&x| x as f32).collect()),
            dt::INT64 if !raw.is_empty() => {
                HostData::I64(raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect())
            }
            dt::INT64 => HostData::I64(t.int64_data.clone()),
            dt::INT32 if !raw.is_empty() => HostData::I64(
                raw.chunks_exact(4).map(|c| i64::from(i32::from_le_bytes(c.try_into().unwrap()))).collect(),
            ),
            dt::INT32 => HostData::I64(t.int32_data.iter().map(|&x| i64::from(x)).collect()),
            dt::UINT8 if !raw.is_empty() => HostData::I64(raw.iter().map(|&x| i64::from(x)).collect()),
            dt::INT8 if !raw.is_empty() => HostData::I64(raw.iter().map(|&x| i64::from(x as i8)).collect()),
            dt::UINT8 | dt::INT8 => HostData::I64(t.int32_data.iter().map(|&x| i64::from(x)).collect()),
            dt::BOOL if !raw.is_empty() => HostData::Bool(raw.iter().map(|&x| x != 0).collect()),
            dt::BOOL => HostData::Bool(t.int32_data.iter().map(|&x| x != 0).collect()),
            other => {
                return Err(format!(
                    "tensor '{}' has ONNX data type {other}, which the wgpu backend does not handle",
                    t.name
                ))
            }
        };
        if data.len() != n {
            return Err(format!("tensor '{}' has {} values for shape {shape:?}", t.name, data.len()));
        }
        Ok(Self::new(shape, data))
    }
}

impl HostData {
    pub(super) fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::I64(v) => v.len(),
            HostData::Bool(v) => v.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_and_transpose() {
        let t = HostTensor::i64(vec![2, 1], vec![1, 2]);
        let b = t.broadcast_to(&[2, 3]).unwrap();
        assert_eq!(b.data, HostData::I64(vec![1, 1, 1, 2, 2, 2]));
        let tr = b.transpose(&[1, 0]);
        assert_eq!(tr.shape, vec![3, 2]);
        assert_eq!(tr.data, HostData::I64(vec![1, 2, 1, 2, 1, 2]));
        assert!(broadcast_shapes(&[2, 3], &[4]).is_err());
    }

    #[test]
    fn concat_take_reduce() {
        let a = HostTensor::i64(vec![2, 1], vec![1, 2]);
        let b = HostTensor::i64(vec![2, 2], vec![3, 4, 5, 6]);
        let c = HostTensor::concat(&[&a, &b], 1).unwrap();
        assert_eq!(c.data, HostData::I64(vec![1, 3, 4, 2, 5, 6]));
        assert_eq!(c.take(1, &[2, 0]).data, HostData::I64(vec![4, 1, 6, 2]));
        assert_eq!(c.reduce(&[0], false).unwrap().data, HostData::I64(vec![3, 8, 10]));
        assert_eq!(norm_axis(-1, 3), Ok(2));
        assert!(norm_axis(3, 3).is_err());
    }
}
