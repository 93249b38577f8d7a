//! The interpreter: runs a [`Program`] op by op on burn's wgpu backend.
//!
//! Float tensors live on the device as burn primitives (runtime rank);
//! integer and boolean tensors, which in real models are shapes, indices
//! and masks, live on the host (see `host.rs`). Each op takes what it is
//! given and moves data only where an op needs it elsewhere (indices for a
//! device `Gather` go up; a device tensor cast to int comes down).

use super::host::{broadcast_shapes, guard, norm_axis, numel, HostData, HostTensor};
use super::program::{AutoPad, BinOp, Node, Op, Program, Unary};
use super::Ty;
use burn_backend::ops::{ActivationOps, BoolTensorOps, ConvOptions, FloatTensorOps, IntTensorOps, ModuleOps, PadMode};
use burn_backend::tensor::{BoolTensor, FloatTensor, IntTensor};
use burn_backend::{BoolStore, FloatDType, Scalar, Shape, Slice, TensorData, TensorMetadata};
use std::time::Instant;

/// burn's wgpu backend (CubeCL on wgpu, no fusion).
pub(super) type B = burn_wgpu::Wgpu;
/// The device handle burn's ops take.
pub(super) type WgpuDevice = burn_backend::tensor::Device<B>;
type FT = FloatTensor<B>;
type BT = BoolTensor<B>;

/// A value in a slot.
#[derive(Clone)]
pub(super) enum Value {
    /// float32 on the device.
    F(FT),
    /// bool on the device (from comparing device floats).
    B(BT),
    /// Anything on the host.
    H(HostTensor),
}

type R<T> = Result<T, String>;

/// Polls a future to completion on this thread (burn's reads are futures
/// that complete once the device queue has drained up to them).
pub(super) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

fn shp(v: &[usize]) -> Shape {
    Shape::from(v.to_vec())
}

fn dims(t: &FT) -> Vec<usize> {
    t.shape().to_vec()
}

fn reshape(t: FT, shape: &[usize]) -> FT {
    if dims(&t) == shape {
        return t;
    }
    B::float_reshape(t, shp(shape))
}

/// Prepends size-1 axes up to `rank`.
fn lift(t: FT, rank: usize) -> FT {
    let d = dims(&t);
    if d.len() >= rank {
        return t;
    }
    let mut s = vec![1; rank - d.len()];
    s.extend(d);
    reshape(t, &s)
}

/// Both operands at one rank (numpy broadcasting aligns trailing axes).
fn align(a: FT, b: FT) -> (FT, FT) {
    let r = dims(&a).len().max(dims(&b).len());
    (lift(a, r), lift(b, r))
}

thread_local! {
    static UPLOADED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn count_upload(bytes: usize) {
    UPLOADED.with(|c| c.set(c.get() + bytes as u64));
}

/// Bytes this thread has uploaded to the device (weights at load, inputs
/// and index tensors at compute).
pub fn uploaded_bytes_on_this_thread() -> u64 {
    UPLOADED.with(std::cell::Cell::get)
}

/// Uploads as float32. The device holds no rank-0 tensors: a scalar goes
/// up as shape `[1]` (callers broadcast it; results that should be rank 0
/// come back to the host, see [`Frame::scalar_result`]).
pub(super) fn upload(dev: &WgpuDevice, h: &HostTensor) -> FT {
    let v: Vec<f32> = match &h.data {
        HostData::F32(v) => v.clone(),
        HostData::I64(v) => v.iter().map(|&x| x as f32).collect(),
        HostData::Bool(v) => v.iter().map(|&x| f32::from(u8::from(x))).collect(),
    };
    let shape = if h.shape.is_empty() { vec![1] } else { h.shape.clone() };
    count_upload(v.len() * 4);
    B::float_from_data(TensorData::new(v, shape), dev)
}

fn upload_bool(dev: &WgpuDevice, h: &HostTensor) -> R<BT> {
    let HostData::Bool(v) = &h.data else { return Err("expected a bool tensor".into()) };
    let shape = if h.shape.is_empty() { vec![1] } else { h.shape.clone() };
    count_upload(v.len() * 4);
    let f = B::float_from_data(
        TensorData::new(v.iter().map(|&x| f32::from(u8::from(x))).collect::<Vec<f32>>(), shape),
        dev,
    );
    Ok(B::float_equal_elem(f, Scalar::from(1.0f32), BoolStore::U32))
}

fn upload_indices(dev: &WgpuDevice, idx: &[i64]) -> IntTensor<B> {
    let v: Vec<i32> = idx.iter().map(|&i| i as i32).collect();
    count_upload(v.len() * 4);
    B::int_from_data(TensorData::new(v, vec![idx.len()]), dev)
}

/// Reads a float tensor back, waiting for the device at most until
/// `deadline` (`Ok(None)` when it passed first).
///
/// burn's read blocks its caller inside `poll` until the device is done,
/// so with a deadline the read is handed to the process's one reader
/// thread and this thread waits for it only until the deadline; the device
/// finishes abandoned work on its own, and its result is dropped. One
/// thread for all reads: the device runs its queue in order anyway, and a
/// job that gives up leaves no thread behind.
pub(super) fn download_f_until(t: FT, deadline: Option<Instant>) -> R<Option<HostTensor>> {
    let shape = dims(&t);
    let data = match deadline {
        None => read_float(t),
        Some(d) => {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            reader().send((t, tx)).map_err(|_| "the device reader thread has stopped".to_string())?;
            match rx.recv_timeout(d.saturating_duration_since(Instant::now())) {
                Ok(data) => data,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => return Ok(None),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("reading a result from the device failed (the reader panicked)".into())
                }
            }
        }
    };
    let data = data.map_err(|e| format!("reading a result from the device failed: {e:?}"))?;
    let v: Vec<f32> = data.try_into_vec::<f32>().map_err(|e| format!("unexpected result data: {e:?}"))?;
    Ok(Some(HostTensor::new(shape, HostData::F32(v))))
}

type ReadResult = Result<TensorData, burn_backend::ExecutionError>;

fn read_float(t: FT) -> ReadResult {
    block_on(B::float_into_data(t))
}

/// The reader thread's queue, started on first use.
fn reader() -> &'static std::sync::mpsc::Sender<(FT, std::sync::mpsc::SyncSender<ReadResult>)> {
    static READER: std::sync::OnceLock<std::sync::mpsc::Sender<(FT, std::sync::mpsc::SyncSender<ReadResult>)>> =
        std::sync::OnceLock::new();
    READER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<(FT, std::sync::mpsc::SyncSender<ReadResult>)>();
        std::thread::Builder::new()
            .name("mote-wgpu-read".into())
            .spawn(move || {
                for (t, done) in rx {
                    // A panicking read drops `done`: its job sees an error.
                    if let Ok(r) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_float(t))) {
                        let _ = done.send(r);
                    }
                }
            })
            .expect("spawn the wgpu reader thread");
        tx
    })
}

fn download_b_until(t: BT, deadline: Option<Instant>) -> R<Option<HostTensor>> {
    let f = B::bool_into_float(t, FloatDType::F32);
    let Some(h) = download_f_until(f, deadline)? else { return Ok(None) };
    let HostData::F32(v) = h.data else { unreachable!() };
    Ok(Some(HostTensor::new(h.shape, HostData::Bool(v.iter().map(|&x| x != 0.0).collect()))))
}

impl Value {
    fn shape(&self) -> Vec<usize> {
        match self {
            Value::F(t) => dims(t),
            Value::B(t) => t.shape().to_vec(),
            Value::H(h) => h.shape.clone(),
        }
    }

    fn ty(&self) -> Ty {
        match self {
            Value::F(_) => Ty::F32,
            Value::B(_) => Ty::Bool,
            Value::H(h) => h.ty(),
        }
    }

    /// As a float tensor on the device.
    fn f(&self, dev: &WgpuDevice) -> R<FT> {
        match self {
            Value::F(t) => Ok(t.clone()),
            Value::B(t) => Ok(B::bool_into_float(t.clone(), FloatDType::F32)),
            Value::H(h) => Ok(upload(dev, h)),
        }
    }

    /// On the host (reading device data back if needed).
    pub(super) fn host(&self) -> R<HostTensor> {
        self.host_until(None)?.ok_or_else(|| "unreachable: no deadline".to_string())
    }

    /// On the host, waiting for the device at most until `deadline`
    /// (`Ok(None)` when it passed first).
    pub(super) fn host_until(&self, deadline: Option<Instant>) -> R<Option<HostTensor>> {
        match self {
            Value::F(t) => download_f_until(t.clone(), deadline),
            Value::B(t) => download_b_until(t.clone(), deadline),
            Value::H(h) => Ok(Some(h.clone())),
        }
    }

    /// A host scalar's value, if this is one.
    fn host_scalar(&self) -> Option<f32> {
        match self {
            Value::H(h) => h.scalar_f32(),
            _ => None,
        }
    }
}

/// Slot table of one run.
pub(super) struct Frame<'p> {
    pub(super) program: &'p Program,
    pub(super) values: Vec<Option<Value>>,
    pub(super) dev: WgpuDevice,
}

impl Frame<'_> {
    fn input(&self, node: &Node, i: usize) -> R<&Value> {
        let s = node.inputs.get(i).copied().flatten().ok_or_else(|| format!("input {i} is missing"))?;
        self.values[s].as_ref().ok_or_else(|| format!("input {i} has no value (bug: freed too early)"))
    }

    fn opt_input(&self, node: &Node, i: usize) -> Option<&Value> {
        node.inputs.get(i).copied().flatten().and_then(|s| self.values[s].as_ref())
    }

    fn ints(&self, node: &Node, i: usize, what: &str) -> R<Vec<i64>> {
        self.input(node, i)?.host()?.as_i64(what)
    }

    /// Elementwise ops over rank-0 operands give rank-0 results: those
    /// live on the host (the device holds no rank-0 tensors).
    fn scalar_result(&self, node: &Node, v: Value) -> R<Value> {
        let elementwise = matches!(
            node.op,
            Op::Unary(_)
                | Op::Gelu { .. }
                | Op::Clip { .. }
                | Op::Binary(_)
                | Op::Sum
                | Op::Where
                | Op::Cast { .. }
                | Op::Equal
        );
        if !elementwise || matches!(v, Value::H(_)) {
            return Ok(v);
        }
        let all_rank0 = node
            .inputs
            .iter()
            .enumerate()
            .filter(|(i, _)| !matches!(node.op, Op::Clip { .. }) || *i == 0)
            .filter_map(|(_, s)| s.and_then(|s| self.values[s].as_ref()))
            .all(|x| x.shape().is_empty());
        if all_rank0 {
            let h = v.host()?;
            return Ok(Value::H(h.reshape(vec![])));
        }
        Ok(v)
    }

    /// Runs one node; errors name the node.
    pub(super) fn step(&mut self, index: usize) -> R<()> {
        let node = &self.program.nodes[index];
        let outs = self
            .eval(node)
            .and_then(|o| o.into_iter().map(|v| self.scalar_result(node, v)).collect::<R<Vec<_>>>())
            .map_err(|e| {
                let label = if node.name.is_empty() { format!("#{index}") } else { format!("'{}'", node.name) };
                format!("{} node {label}: {e}", node.op_type)
            })?;
        for (slot, v) in node.outputs.iter().zip(outs) {
            if let Some(s) = slot {
                self.values[*s] = Some(v);
            }
        }
        for &s in &self.program.drop_after[index] {
            self.values[s] = None;
        }
        Ok(())
    }

    fn eval(&self, node: &Node) -> R<Vec<Value>> {
        let dev = &self.dev;
        let x = || self.input(node, 0);
        let one = |v: Value| Ok(vec![v]);
        match &node.op {
            Op::Identity => {
                let v = x()?.clone();
                // Dropout's mask, only when a later node reads it.
                if node.outputs.get(1).copied().flatten().is_none() {
                    return one(v);
                }
                let mask = HostTensor::new(v.shape(), HostData::Bool(vec![true; numel(&v.shape())]));
                Ok(vec![v, Value::H(mask)])
            }
            Op::Unary(u) => {
                let t = x()?.f(dev)?;
                one(Value::F(match u {
                    Unary::Relu => B::relu(t),
                    Unary::Sigmoid => B::sigmoid(t),
                    Unary::Tanh => B::float_tanh(t),
                    Unary::Erf => B::float_erf(t),
                    Unary::Sqrt => B::float_sqrt(t),
                    Unary::Exp => B::float_exp(t),
                    Unary::Log => B::float_log(t),
                    Unary::Neg => B::float_neg(t),
                    Unary::Abs => B::float_abs(t),
                    Unary::Reciprocal => B::float_recip(t),
                }))
            }
            Op::Gelu { tanh } => {
                let t = x()?.f(dev)?;
                let y = if *tanh {
                    // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
                    let x3 = B::float_powi_scalar(t.clone(), Scalar::from(3i64));
                    let inner = B::float_add(t.clone(), B::float_mul_scalar(x3, Scalar::from(0.044715f32)));
                    let th =
                        B::float_tanh(B::float_mul_scalar(inner, Scalar::from((2.0f32 / std::f32::consts::PI).sqrt())));
                    B::float_mul(
                        B::float_mul_scalar(t, Scalar::from(0.5f32)),
                        B::float_add_scalar(th, Scalar::from(1.0f32)),
                    )
                } else {
                    // 0.5 x (1 + erf(x / sqrt 2))
                    let e = B::float_erf(B::float_mul_scalar(t.clone(), Scalar::from(std::f32::consts::FRAC_1_SQRT_2)));
                    B::float_mul(
                        B::float_mul_scalar(t, Scalar::from(0.5f32)),
                        B::float_add_scalar(e, Scalar::from(1.0f32)),
                    )
                };
                one(Value::F(y))
            }
            Op::Clip { min, max } => {
                let t = x()?.f(dev)?;
                let bound = |i: usize, attr: &Option<f32>| -> R<Option<f32>> {
                    if attr.is_some() {
                        return Ok(*attr);
                    }
                    match self.opt_input(node, i) {
                        None => Ok(None),
                        Some(v) => {
                            let h = v.host()?;
                            h.scalar_f32().map(Some).ok_or_else(|| "min and max must be scalars".to_string())
                        }
                    }
                };
                let (lo, hi) = (bound(1, min)?, bound(2, max)?);
                let y = match (lo, hi) {
                    (Some(a), Some(b)) => B::float_clamp(t, Scalar::from(a), Scalar::from(b)),
                    (Some(a), None) => B::float_clamp_min(t, Scalar::from(a)),
                    (None, Some(b)) => B::float_clamp_max(t, Scalar::from(b)),
                    (None, None) => t,
                };
                one(Value::F(y))
            }
            Op::Binary(op) => self.binary(*op, x()?, self.input(node, 1)?).map(|v| vec![v]),
            Op::Sum => {
                let mut acc = x()?.clone();
                for i in 1..node.inputs.len() {
                    acc = self.binary(BinOp::Add, &acc, self.input(node, i)?)?;
                }
                one(acc)
            }
            Op::Equal => {
                let (a, b) = (x()?, self.input(node, 1)?);
                match (a, b) {
                    (Value::H(a), Value::H(b)) => one(Value::H(a.equal(b)?)),
                    _ => {
                        if a.ty() != Ty::F32 || b.ty() != Ty::F32 {
                            let (a, b) = (a.host()?, b.host()?);
                            return one(Value::H(a.equal(&b)?));
                        }
                        let (fa, fb) = align(a.f(dev)?, b.f(dev)?);
                        one(Value::B(B::float_equal(fa, fb, BoolStore::U32)))
                    }
                }
            }
            Op::Where => {
                let (c, a, b) = (x()?, self.input(node, 1)?, self.input(node, 2)?);
                if let (Value::H(c), Value::H(a), Value::H(b)) = (c, a, b) {
                    return one(Value::H(HostTensor::where_(c, a, b)?));
                }
                if a.ty() != Ty::F32 {
                    return one(Value::H(HostTensor::where_(&c.host()?, &a.host()?, &b.host()?)?));
                }
                let shape = broadcast_shapes(&broadcast_shapes(&c.shape(), &a.shape())?, &b.shape())?;
                let mask = match c {
                    Value::B(m) => m.clone(),
                    Value::H(h) => upload_bool(dev, h)?,
                    Value::F(_) => return Err("condition must be bool".into()),
                };
                let r = shape.len();
                let mask = B::bool_expand(lift_b(mask, r), shp(&shape));
                let xa = B::float_expand(lift(a.f(dev)?, r), shp(&shape));
                let yb = B::float_expand(lift(b.f(dev)?, r), shp(&shape));
                one(Value::F(B::float_mask_where(yb, mask, xa)))
            }
            Op::Softmax { axis, log, legacy } => {
                let t = x()?.f(dev)?;
                let shape = dims(&t);
                let ax = norm_axis(*axis, shape.len())?;
                let (t, dim) = if *legacy {
                    let outer: usize = shape[..ax].iter().product();
                    (reshape(t, &[outer, numel(&shape[ax..])]), 1)
                } else {
                    (t, ax)
                };
                let m = B::float_max_dim(t.clone(), dim);
                let shifted = B::float_sub(t, m);
                let e = B::float_exp(shifted.clone());
                let s = B::float_sum_dim(e.clone(), dim);
                let y = if *log { B::float_sub(shifted, B::float_log(s)) } else { B::float_div(e, s) };
                one(Value::F(reshape(y, &shape)))
            }
            Op::BatchNorm { eps, folded } => {
                let t = x()?.f(dev)?;
                let rank = dims(&t).len();
                if rank < 2 {
                    return Err("input must have a channel axis".into());
                }
                let chan = |v: FT| -> FT {
                    let c = numel(&dims(&v));
                    let mut s = vec![1; rank];
                    s[1] = c;
                    reshape(v, &s)
                };
                let y = if *folded {
                    let mul = chan(self.input(node, 1)?.f(dev)?);
                    let add = chan(self.input(node, 2)?.f(dev)?);
                    B::float_add(B::float_mul(t, mul), add)
                } else {
                    let scale = chan(self.input(node, 1)?.f(dev)?);
                    let bias = chan(self.input(node, 2)?.f(dev)?);
                    let mean = chan(self.input(node, 3)?.f(dev)?);
                    let var = chan(self.input(node, 4)?.f(dev)?);
                    let inv = B::float_recip(B::float_sqrt(B::float_add_scalar(var, Scalar::from(*eps))));
                    let norm = B::float_mul(B::float_sub(t, mean), inv);
                    B::float_add(B::float_mul(norm, scale), bias)
                };
                one(Value::F(y))
            }
            Op::LayerNorm { axis, eps } => {
                let t = x()?.f(dev)?;
                let shape = dims(&t);
                let ax = norm_axis(*axis, shape.len())?;
                let outer: usize = shape[..ax].iter().product();
                let inner = numel(&shape[ax..]);
                let flat = reshape(t, &[outer, inner]);
                let mean = B::float_mean_dim(flat.clone(), 1);
                let centered = B::float_sub(flat, mean.clone());
                let var = B::float_mean_dim(B::float_mul(centered.clone(), centered.clone()), 1);
                let inv = B::float_recip(B::float_sqrt(B::float_add_scalar(var, Scalar::from(*eps))));
                let norm = reshape(B::float_mul(centered, inv.clone()), &shape);
                let (n, s) = align(norm, self.input(node, 1)?.f(dev)?);
                let mut y = B::float_mul(n, s);
                if let Some(b) = self.opt_input(node, 2) {
                    let (yy, bb) = align(y, b.f(dev)?);
                    y = B::float_add(yy, bb);
                }
                let mut stat_shape = shape[..ax].to_vec();
                stat_shape.extend(std::iter::repeat_n(1, shape.len() - ax));
                Ok(vec![Value::F(y), Value::F(reshape(mean, &stat_shape)), Value::F(reshape(inv, &stat_shape))])
            }
            Op::Lrn { alpha, beta, bias, size } => {
                let t = x()?.f(dev)?;
                let shape = dims(&t);
                if shape.len() < 3 {
                    return Err("input must be at least 3-D (N, C, ...)".into());
                }
                let (n, c, rest) = (shape[0], shape[1], numel(&shape[2..]));
                let sq = B::float_mul(t.clone(), t.clone());
                let sq = reshape(sq, &[n, 1, c, rest]);
                let before = (size - 1) / 2;
                let after = size - 1 - before;
                guard(&[n, c.saturating_add(*size), rest])?;
                let padded = B::float_pad(sq, &[(0, 0), (0, 0), (before, after), (0, 0)], PadMode::Constant(0.0));
                // Mean over the channel window (count includes padding), so
                // alpha * mean = alpha / size * square_sum.
                let avg = B::avg_pool2d(padded, [*size, 1], [1, 1], [0, 0], true, false);
                let avg = reshape(avg, &shape);
                let denom = B::float_add_scalar(B::float_mul_scalar(avg, Scalar::from(*alpha)), Scalar::from(*bias));
                let denom = B::float_powf_scalar(denom, Scalar::from(*beta));
                one(Value::F(B::float_div(t, denom)))
            }
            Op::Conv { strides, pads, dilations, group, auto_pad } => {
                let t = x()?.f(dev)?;
                let w = self.input(node, 1)?.f(dev)?;
                let b = self.opt_input(node, 2).map(|b| b.f(dev)).transpose()?;
                let xs = dims(&t);
                let ws = dims(&w);
                let n = xs.len().saturating_sub(2);
                if !(1..=2).contains(&n) || ws.len() != xs.len() {
                    return Err(format!(
                        "input {xs:?} with weight {ws:?}: only 1-D and 2-D convolutions are supported"
                    ));
                }
                if xs[1] != ws[1] * group {
                    return Err(format!("input has {} channels, weight expects {} × group {group}", xs[1], ws[1]));
                }
                let st = or_ones(strides, n);
                let dl = or_ones(dilations, n);
                let pad = resolve_pads(*auto_pad, pads, &xs[2..], &ws[2..], &st, &dl)?;
                // Bound on the output: every padded position, every filter.
                let mut bound = vec![xs[0], ws[0]];
                bound.extend(xs[2..].iter().zip(&pad).map(|(&d, &(b, e))| d.saturating_add(b).saturating_add(e)));
                guard(&bound)?;
                let y = if n == 2 {
                    let opts = ConvOptions::new_with_padding([st[0], st[1]], [pad[0], pad[1]], [dl[0], dl[1]], *group);
                    B::conv2d(t, w, b, opts)
                } else {
                    B::conv1d(t, w, b, ConvOptions::new_with_padding([st[0]], [pad[0]], [dl[0]], *group))
                };
                one(Value::F(y))
            }
            Op::Pool { max, kernel, strides, pads, dilations, ceil, count_include_pad, auto_pad } => {
                let mut t = x()?.f(dev)?;
                let xs = dims(&t);
                let n = kernel.len();
                if xs.len() != n + 2 {
                    return Err(format!("input {xs:?} does not fit a {n}-D kernel"));
                }
                let st = or_ones(strides, n);
                let dl = or_ones(dilations, n);
                let pad = resolve_pads(*auto_pad, pads, &xs[2..], kernel, &st, &dl)?;
                let mut bound = xs[..2].to_vec();
                bound.extend(xs[2..].iter().zip(&pad).map(|(&d, &(b, e))| d.saturating_add(b).saturating_add(e)));
                guard(&bound)?;
                let mut sym = vec![0; n];
                if pad.iter().any(|(b, e)| b != e) {
                    if !*max && !*count_include_pad {
                        return Err("asymmetric padding with count_include_pad=0 is not supported".into());
                    }
                    let fill = if *max { f32::NEG_INFINITY } else { 0.0 };
                    let mut all = vec![(0, 0), (0, 0)];
                    all.extend(pad.iter().copied());
                    t = B::float_pad(t, &all, PadMode::Constant(fill));
                } else {
                    sym = pad.iter().map(|p| p.0).collect();
                }
                let y = match (n, *max) {
                    (2, true) => B::max_pool2d(
                        t,
                        [kernel[0], kernel[1]],
                        [st[0], st[1]],
                        [sym[0], sym[1]],
                        [dl[0], dl[1]],
                        *ceil,
                    ),
                    (2, false) => B::avg_pool2d(
                        t,
                        [kernel[0], kernel[1]],
                        [st[0], st[1]],
                        [sym[0], sym[1]],
                        *count_include_pad,
                        *ceil,
                    ),
                    (_, true) => B::max_pool1d(t, kernel[0], st[0], sym[0], dl[0], *ceil),
                    (_, false) => B::avg_pool1d(t, kernel[0], st[0], sym[0], *count_include_pad, *ceil),
                };
                one(Value::F(y))
            }
            Op::GlobalPool { max } => {
                let t = x()?.f(dev)?;
                let xs = dims(&t);
                if xs.len() < 3 {
                    return Err(format!("input {xs:?} has no spatial axes"));
                }
                let flat = reshape(t, &[xs[0], xs[1], numel(&xs[2..])]);
                let r = if *max { B::float_max_dim(flat, 2) } else { B::float_mean_dim(flat, 2) };
                let mut out = xs[..2].to_vec();
                out.extend(std::iter::repeat_n(1, xs.len() - 2));
                one(Value::F(reshape(r, &out)))
            }
            Op::Gemm { alpha, beta, trans_a, trans_b } => {
                let mut a = x()?.f(dev)?;
                let mut b = self.input(node, 1)?.f(dev)?;
                if dims(&a).len() != 2 || dims(&b).len() != 2 {
                    return Err(format!("A {:?} and B {:?} must be 2-D", dims(&a), dims(&b)));
                }
                if *trans_a {
                    a = B::float_swap_dims(a, 0, 1);
                }
                if *trans_b {
                    b = B::float_swap_dims(b, 0, 1);
                }
                if dims(&a)[1] != dims(&b)[0] {
                    return Err(format!("A {:?} and B {:?} do not fit", dims(&a), dims(&b)));
                }
                let mut y = B::float_matmul(a, b);
                if *alpha != 1.0 {
                    y = B::float_mul_scalar(y, Scalar::from(*alpha));
                }
                if let Some(c) = self.opt_input(node, 2) {
                    if *beta != 0.0 {
                        let mut c = c.f(dev)?;
                        if *beta != 1.0 {
                            c = B::float_mul_scalar(c, Scalar::from(*beta));
                        }
                        broadcast_shapes(&dims(&c), &dims(&y))?;
                        let (yy, cc) = align(y, c);
                        y = B::float_add(yy, cc);
                    }
                }
                one(Value::F(y))
            }
            Op::MatMul => one(Value::F(matmul(x()?.f(dev)?, self.input(node, 1)?.f(dev)?)?)),
            Op::Reduce { mean, axes, keepdims, noop_with_empty_axes } => {
                let v = x()?;
                let shape = v.shape();
                let axes = match axes {
                    Some(a) => a.clone(),
                    None => match self.opt_input(node, 1) {
                        Some(a) => a.host()?.as_i64("axes")?,
                        None => vec![],
                    },
                };
                if axes.is_empty() && *noop_with_empty_axes {
                    return one(v.clone());
                }
                let mut ax: Vec<usize> = if axes.is_empty() {
                    (0..shape.len()).collect()
                } else {
                    axes.iter().map(|&a| norm_axis(a, shape.len())).collect::<R<_>>()?
                };
                ax.sort_unstable();
                ax.dedup();
                let mut out: Vec<usize> = shape.clone();
                for &a in &ax {
                    out[a] = 1;
                }
                let kept = if let Value::H(h) = v {
                    Value::H(h.reduce(&ax, *mean)?)
                } else {
                    let mut t = v.f(dev)?;
                    for &a in &ax {
                        t = if *mean { B::float_mean_dim(t, a) } else { B::float_sum_dim(t, a) };
                    }
                    Value::F(t)
                };
                if *keepdims {
                    return one(kept);
                }
                let squeezed: Vec<usize> =
                    shape.iter().enumerate().filter(|(d, _)| !ax.contains(d)).map(|(_, &s)| s).collect();
                one(self.reshape_value(kept, &squeezed)?)
            }
            Op::Concat { axis } => {
                let vals: Vec<&Value> = (0..node.inputs.len()).map(|i| self.input(node, i)).collect::<R<_>>()?;
                let rank = vals[0].shape().len();
                let ax = norm_axis(*axis, rank)?;
                if vals.iter().all(|v| matches!(v, Value::H(_))) {
                    let hs: Vec<HostTensor> = vals.iter().map(|v| v.host()).collect::<R<_>>()?;
                    let refs: Vec<&HostTensor> = hs.iter().collect();
                    return one(Value::H(HostTensor::concat(&refs, ax)?));
                }
                if vals[0].ty() != Ty::F32 {
                    let hs: Vec<HostTensor> = vals.iter().map(|v| v.host()).collect::<R<_>>()?;
                    let refs: Vec<&HostTensor> = hs.iter().collect();
                    return one(Value::H(HostTensor::concat(&refs, ax)?));
                }
                let total: usize = vals.iter().map(|v| v.shape().get(ax).copied().unwrap_or(0)).sum();
                let mut out = vals[0].shape();
                out[ax] = total;
                guard(&out)?;
                let ts: Vec<FT> = vals.iter().map(|v| v.f(dev)).collect::<R<_>>()?;
                for t in &ts {
                    let d = dims(t);
                    let f = dims(&ts[0]);
                    if d.len() != f.len() || d.iter().zip(&f).enumerate().any(|(i, (a, b))| i != ax && a != b) {
                        return Err(format!("inputs {f:?} and {d:?} do not fit on axis {ax}"));
                    }
                }
                one(Value::F(B::float_cat(ts, ax)))
            }
            Op::Reshape { allowzero } => {
                let v = x()?;
                let spec = self.ints(node, 1, "shape")?;
                let shape = v.shape();
                let out = reshape_target(&shape, &spec, *allowzero)?;
                one(self.reshape_value(v.clone(), &out)?)
            }
            Op::Flatten { axis } => {
                let v = x()?;
                let shape = v.shape();
                let a = if *axis < 0 { *axis + shape.len() as i64 } else { *axis };
                if a < 0 || a as usize > shape.len() {
                    return Err(format!("axis {axis} is out of range for rank {}", shape.len()));
                }
                let a = a as usize;
                one(self.reshape_value(v.clone(), &[numel(&shape[..a]), numel(&shape[a..])])?)
            }
            Op::Squeeze { axes } => {
                let v = x()?;
                let shape = v.shape();
                let axes = match axes {
                    Some(a) => Some(a.clone()),
                    None => self.opt_input(node, 1).map(|a| a.host().and_then(|h| h.as_i64("axes"))).transpose()?,
                };
                let drop: Vec<usize> = match axes {
                    Some(a) => a.iter().map(|&x| norm_axis(x, shape.len())).collect::<R<_>>()?,
                    None => (0..shape.len()).filter(|&d| shape[d] == 1).collect(),
                };
                if let Some(&d) = drop.iter().find(|&&d| shape[d] != 1) {
                    return Err(format!("cannot squeeze axis {d} of size {}", shape[d]));
                }
                let out: Vec<usize> =
                    shape.iter().enumerate().filter(|(d, _)| !drop.contains(d)).map(|(_, &s)| s).collect();
                one(self.reshape_value(v.clone(), &out)?)
            }
            Op::Unsqueeze { axes } => {
                let v = x()?;
                let shape = v.shape();
                let axes = match axes {
                    Some(a) => a.clone(),
                    None => self.ints(node, 1, "axes")?,
                };
                let rank = shape.len() + axes.len();
                let mut ax: Vec<usize> = axes.iter().map(|&a| norm_axis(a, rank)).collect::<R<_>>()?;
                ax.sort_unstable();
                let mut out = shape.clone();
                for a in ax {
                    out.insert(a, 1);
                }
                one(self.reshape_value(v.clone(), &out)?)
            }
            Op::Transpose { perm } => {
                let v = x()?;
                let rank = v.shape().len();
                let perm: Vec<usize> = perm.clone().unwrap_or_else(|| (0..rank).rev().collect());
                let mut check = perm.clone();
                check.sort_unstable();
                if check != (0..rank).collect::<Vec<_>>() {
                    return Err(format!("perm {perm:?} is not a permutation of rank {rank}"));
                }
                match v {
                    Value::F(t) => one(Value::F(B::float_permute(t.clone(), &perm))),
                    other => one(Value::H(other.host()?.transpose(&perm))),
                }
            }
            Op::Gather { axis } => {
                let data = x()?;
                let idx_h = self.input(node, 1)?.host()?;
                let idx = idx_h.as_i64("indices")?;
                let shape = data.shape();
                let ax = norm_axis(*axis, shape.len())?;
                let n = shape[ax] as i64;
                let fixed: Vec<i64> = idx
                    .iter()
                    .map(|&i| {
                        let j = if i < 0 { i + n } else { i };
                        if j < 0 || j >= n {
                            Err(format!("index {i} is out of range for axis {ax} of size {n}"))
                        } else {
                            Ok(j)
                        }
                    })
                    .collect::<R<_>>()?;
                let mut out = shape[..ax].to_vec();
                out.extend(&idx_h.shape);
                out.extend(&shape[ax + 1..]);
                guard(&out)?;
                let picked = match data {
                    Value::F(t) => Value::F(B::float_select(t.clone(), ax, upload_indices(dev, &fixed))),
                    other => {
                        let h = other.host()?;
                        let u: Vec<usize> = fixed.iter().map(|&i| i as usize).collect();
                        Value::H(h.take(ax, &u))
                    }
                };
                one(self.reshape_value(picked, &out)?)
            }
            Op::Slice { attrs } => {
                let data = x()?;
                let shape = data.shape();
                let (starts, ends, axes, steps) = match attrs {
                    Some((s, e, a)) => (s.clone(), e.clone(), a.clone(), None),
                    None => (
                        self.ints(node, 1, "starts")?,
                        self.ints(node, 2, "ends")?,
                        self.opt_input(node, 3).map(|v| v.host().and_then(|h| h.as_i64("axes"))).transpose()?,
                        self.opt_input(node, 4).map(|v| v.host().and_then(|h| h.as_i64("steps"))).transpose()?,
                    ),
                };
                let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
                let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
                if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
                    return Err("starts, ends, axes and steps must have the same length".into());
                }
                // Per axis: the kept indices, ascending, and whether to flip.
                let mut ranges: Vec<(usize, usize, usize, bool)> = shape.iter().map(|&d| (0, d, 1, false)).collect();
                for k in 0..starts.len() {
                    let ax = norm_axis(axes[k], shape.len())?;
                    let dim = shape[ax] as i64;
                    let step = steps[k];
                    if step == 0 {
                        return Err("step must not be 0".into());
                    }
                    let fix = |v: i64| if v < 0 { v + dim } else { v };
                    let picked: Vec<i64> = if step > 0 {
                        let s = fix(starts[k]).clamp(0, dim);
                        let e = fix(ends[k]).clamp(0, dim);
                        (s..e).step_by(step as usize).collect()
                    } else {
                        let s = fix(starts[k]).clamp(-1, dim - 1);
                        let e = fix(ends[k]).clamp(-1, dim - 1);
                        let mut v = Vec::new();
                        let mut i = s;
                        while i > e {
                            v.push(i);
                            i += step;
                        }
                        v
                    };
                    ranges[ax] = match (picked.first(), picked.last()) {
                        (None, _) | (_, None) => (0, 0, 1, false),
                        (Some(&a), Some(&b)) if step > 0 => (a as usize, b as usize + 1, step as usize, false),
                        (Some(&a), Some(&b)) => (b as usize, a as usize + 1, (-step) as usize, true),
                    };
                }
                let flips: Vec<usize> = ranges.iter().enumerate().filter(|(_, r)| r.3).map(|(d, _)| d).collect();
                match data {
                    Value::F(t) => {
                        if ranges.iter().any(|r| r.0 >= r.1) {
                            let out: Vec<usize> =
                                ranges.iter().map(|r| if r.0 >= r.1 { 0 } else { (r.1 - r.0).div_ceil(r.2) }).collect();
                            return Err(format!("empty slice result {out:?} is not supported on the device"));
                        }
                        let slices: Vec<Slice> =
                            ranges.iter().map(|r| Slice::new(r.0 as isize, Some(r.1 as isize), r.2 as isize)).collect();
                        let mut y = B::float_slice(t.clone(), &slices);
                        if !flips.is_empty() {
                            y = B::float_flip(y, &flips);
                        }
                        one(Value::F(y))
                    }
                    other => {
                        let h = other.host()?;
                        let mut out = h;
                        for (d, r) in ranges.iter().enumerate() {
                            let mut idx: Vec<usize> = (r.0..r.1).step_by(r.2).collect();
                            if r.3 {
                                idx.reverse();
                            }
                            out = out.take(d, &idx);
                        }
                        one(Value::H(out))
                    }
                }
            }
            Op::Shape { start, end } => {
                let shape = x()?.shape();
                let r = shape.len() as i64;
                let fix = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let (s, e) = (fix(*start), fix(end.unwrap_or(r)));
                let v: Vec<i64> = if s < e { shape[s..e].iter().map(|&d| d as i64).collect() } else { vec![] };
                one(Value::H(HostTensor::i64(vec![v.len()], v)))
            }
            Op::ConstantOfShape { value } => {
                let shape: Vec<usize> = self
                    .ints(node, 0, "shape")?
                    .into_iter()
                    .map(|d| usize::try_from(d).map_err(|_| format!("negative dimension {d}")))
                    .collect::<R<_>>()?;
                guard(&shape)?;
                let n = numel(&shape);
                let data = match &value.data {
                    HostData::F32(v) => HostData::F32(vec![v[0]; n]),
                    HostData::I64(v) => HostData::I64(vec![v[0]; n]),
                    HostData::Bool(v) => HostData::Bool(vec![v[0]; n]),
                };
                let h = HostTensor::new(shape, data);
                // Large float fills are used on the device: upload once here.
                if h.ty() == Ty::F32 && n > 1 {
                    return one(Value::F(upload(dev, &h)));
                }
                one(Value::H(h))
            }
            Op::Cast { to } => {
                let v = x()?;
                match (v, to) {
                    (Value::F(_), Ty::F32) => one(v.clone()),
                    (Value::B(b), Ty::F32) => one(Value::F(B::bool_into_float(b.clone(), FloatDType::F32))),
                    (Value::B(_), Ty::Bool) => one(v.clone()),
                    (other, to) => one(Value::H(other.host()?.cast(*to))),
                }
            }
            Op::Expand => {
                let v = x()?;
                let spec: Vec<usize> = self
                    .ints(node, 1, "shape")?
                    .into_iter()
                    .map(|d| usize::try_from(d).map_err(|_| format!("negative dimension {d}")))
                    .collect::<R<_>>()?;
                let out = broadcast_shapes(&v.shape(), &spec)?;
                match v {
                    Value::F(t) => one(Value::F(B::float_expand(lift(t.clone(), out.len()), shp(&out)))),
                    other => one(Value::H(other.host()?.broadcast_to(&out)?)),
                }
            }
            Op::Split { axis, split } => {
                let v = x()?;
                let shape = v.shape();
                let ax = norm_axis(*axis, shape.len())?;
                let parts = node.outputs.len();
                let sizes: Vec<usize> = match (split, self.opt_input(node, 1)) {
                    (Some(s), _) => s.iter().map(|&d| usize::try_from(d).map_err(|_| format!("negative split {d}"))).collect::<R<_>>()?,
                    (None, Some(h)) => h
                        .host()?
                        .as_i64("split")?
                        .into_iter()
                        .map(|d| usize::try_from(d).map_err(|_| format!("negative split {d}")))
                        .collect::<R<_>>()?,
                    // Equal parts, the last one smaller when it does not divide.
                    (None, None) => {
                        let each = shape[ax].div_ceil(parts.max(1));
                        (0..parts).map(|i| each.min(shape[ax].saturating_sub(i * each))).collect()
                    }
                };
                if sizes.len() != parts || sizes.iter().sum::<usize>() != shape[ax] {
                    return Err(format!("split {sizes:?} does not divide axis {ax} of {shape:?} into {parts} outputs"));
                }
                let mut at = 0;
                let mut out = Vec::with_capacity(parts);
                for n in sizes {
                    out.push(match v {
                        Value::F(t) if n > 0 => Value::F(slice_axis(t.clone(), ax, at, at + n)),
                        Value::F(_) => return Err("an empty split output is not supported on the device".into()),
                        other => Value::H(other.host()?.take(ax, &(at..at + n).collect::<Vec<_>>())),
                    });
                    at += n;
                }
                Ok(out)
            }
            Op::RmsNorm { axis, eps } => {
                let t = x()?.f(dev)?;
                let shape = dims(&t);
                let ax = norm_axis(*axis, shape.len())?;
                let outer: usize = shape[..ax].iter().product();
                let flat = reshape(t, &[outer, numel(&shape[ax..])]);
                let ms = B::float_mean_dim(B::float_mul(flat.clone(), flat.clone()), 1);
                let inv = B::float_recip(B::float_sqrt(B::float_add_scalar(ms, Scalar::from(*eps))));
                let norm = reshape(B::float_mul(flat, inv), &shape);
                let (n, s) = align(norm, self.input(node, 1)?.f(dev)?);
                one(Value::F(B::float_mul(n, s)))
            }
            Op::Gqa { heads, kv_heads, scale, rotary } => self.group_query_attention(node, *heads, *kv_heads, *scale, *rotary),
        }
    }

    /// ORT's GroupQueryAttention for rows without padding: every row's
    /// `seqlens_k + 1` is the past length plus the new tokens, and new
    /// token `i` sits at position `past + i` and sees keys `0..=past + i`.
    fn group_query_attention(&self, node: &Node, heads: usize, kv: usize, scale: Option<f32>, rotary: bool) -> R<Vec<Value>> {
        let dev = &self.dev;
        let q = self.input(node, 0)?.f(dev)?;
        let d = dims(&q);
        let [b, s, width] = d[..] else { return Err(format!("query must be 3-D, got {d:?}")) };
        let (q, k, v, hd) = match (self.opt_input(node, 1), self.opt_input(node, 2)) {
            (Some(k), Some(v)) => {
                let hd = width / heads;
                let (k, v) = (k.f(dev)?, v.f(dev)?);
                if hd * heads != width || dims(&k) != [b, s, kv * hd] || dims(&v) != [b, s, kv * hd] {
                    return Err(format!("query {d:?}, key {:?} and value {:?} do not fit the heads", dims(&k), dims(&v)));
                }
                (q, k, v, hd)
            }
            _ => {
                let hd = width / (heads + 2 * kv);
                if hd == 0 || hd * (heads + 2 * kv) != width {
                    return Err(format!("packed QKV width {width} does not split into {heads}+2·{kv} heads"));
                }
                let (qw, kw) = (heads * hd, kv * hd);
                (slice_axis(q.clone(), 2, 0, qw), slice_axis(q.clone(), 2, qw, qw + kw), slice_axis(q, 2, qw + kw, qw + 2 * kw), hd)
            }
        };
        let to_heads = |t: FT, n: usize| B::float_swap_dims(reshape(t, &[b, s, n, hd]), 1, 2);
        let (mut q, mut k, v) = (to_heads(q, heads), to_heads(k, kv), to_heads(v, kv));
        let past = match (self.opt_input(node, 3), self.opt_input(node, 4)) {
            (Some(pk), Some(pv)) => {
                let (sk, sv) = (pk.shape(), pv.shape());
                if sk.len() != 4 || sk != sv || sk[0] != b || sk[1] != kv || sk[3] != hd {
                    return Err(format!("past key {sk:?} / value {sv:?} must be [{b}, {kv}, past, {hd}]"));
                }
                (sk[2] > 0).then(|| Ok::<_, String>((pk.f(dev)?, pv.f(dev)?))).transpose()?.map(|kv| (sk[2], kv))
            }
            _ => None,
        };
        let p = past.as_ref().map_or(0, |(n, _)| *n);
        let t = p + s;
        let seqlens = self.ints(node, 5, "seqlens_k")?;
        let total = self.ints(node, 6, "total_sequence_length")?;
        if seqlens.len() != b || seqlens.iter().any(|&n| n + 1 != t as i64) || total.first() != Some(&(t as i64)) {
            return Err(format!(
                "rows must be unpadded: seqlens_k {seqlens:?} + 1 and total_sequence_length {total:?} must equal past {p} + new {s} \
                 (padded batches are not supported on wgpu)"
            ));
        }
        if rotary {
            let (cos, sin) = (self.input(node, 7)?.f(dev)?, self.input(node, 8)?.f(dev)?);
            let cd = dims(&cos);
            if cd.len() != 2 || cd[1] * 2 != hd || dims(&sin) != cd || cd[0] < t {
                return Err(format!("cos/sin caches {cd:?} must be [≥ {t}, {}]", hd / 2));
            }
            let half = hd / 2;
            let rows = |c: FT| reshape(slice_axis(c, 0, p, t), &[1, 1, s, half]);
            let (c, sn) = (rows(cos), rows(sin));
            let rotate = |x: FT| {
                let (x1, x2) = (slice_axis(x.clone(), 3, 0, half), slice_axis(x, 3, half, hd));
                let r1 = B::float_sub(B::float_mul(x1.clone(), c.clone()), B::float_mul(x2.clone(), sn.clone()));
                let r2 = B::float_add(B::float_mul(x2, c.clone()), B::float_mul(x1, sn.clone()));
                B::float_cat(vec![r1, r2], 3)
            };
            q = rotate(q);
            k = rotate(k);
        }
        let (pk, pv) = match past {
            Some((_, (pk, pv))) => (B::float_cat(vec![pk, k], 2), B::float_cat(vec![pv, v], 2)),
            None => (k, v),
        };
        guard(&[b, heads, s, t])?;
        let group = heads / kv;
        let spread = |x: FT| {
            if group == 1 {
                return x.clone();
            }
            let x = B::float_expand(reshape(x, &[b, kv, 1, t, hd]), shp(&[b, kv, group, t, hd]));
            reshape(x, &[b, heads, t, hd])
        };
        let scale = scale.unwrap_or(1.0 / (hd as f32).sqrt());
        let mut scores = B::float_mul_scalar(B::float_matmul(q, B::float_swap_dims(spread(pk.clone()), 2, 3)), Scalar::from(scale));
        if s > 1 {
            // Causal: new token i (position p + i) sees keys 0..=p + i.
            let mask: Vec<f32> =
                (0..s).flat_map(|i| (0..t).map(move |j| if j > p + i { f32::NEG_INFINITY } else { 0.0 })).collect();
            let mask = upload(dev, &HostTensor::new(vec![1, 1, s, t], HostData::F32(mask)));
            scores = B::float_add(scores, mask);
        }
        let m = B::float_max_dim(scores.clone(), 3);
        let e = B::float_exp(B::float_sub(scores, m));
        let probs = B::float_div(e.clone(), B::float_sum_dim(e, 3));
        let out = B::float_matmul(probs, spread(pv.clone()));
        let out = reshape(B::float_swap_dims(out, 1, 2), &[b, s, heads * hd]);
        Ok(vec![Value::F(out), Value::F(pk), Value::F(pv)])
    }

    /// Reshapes a value where it lives (rank 0 comes to the host).
    fn reshape_value(&self, v: Value, shape: &[usize]) -> R<Value> {
        Ok(match v {
            Value::H(h) => Value::H(h.reshape(shape.to_vec())),
            v if shape.is_empty() => Value::H(v.host()?.reshape(vec![])),
            Value::F(t) => Value::F(reshape(t, shape)),
            Value::B(t) => Value::B(B::bool_reshape(t, shp(shape))),
        })
    }

    /// Elementwise arithmetic: on the host when both operands are there,
    /// with scalar kernels when one side is a host scalar, else on the device.
    fn binary(&self, op: BinOp, a: &Value, b: &Value) -> R<Value> {
        let dev = &self.dev;
        if let (Value::H(x), Value::H(y)) = (a, b) {
            if x.ty() != Ty::F32 || numel(&x.shape).max(numel(&y.shape)) <= 64 {
                let y = if x.ty() == Ty::F32 && y.ty() != Ty::F32 { y.cast(Ty::F32) } else { y.clone() };
                return Ok(Value::H(x.arith(&y, op)?));
            }
        }
        if a.ty() != Ty::F32 {
            // Integer arithmetic happens on the host (it is shape math).
            return Ok(Value::H(a.host()?.arith(&b.host()?, op)?));
        }
        let (sa, sb) = (a.shape(), b.shape());
        let out = broadcast_shapes(&sa, &sb)?;
        // Scalar right operand, and it does not raise the rank.
        if let Some(s) = b.host_scalar() {
            if sb.len() <= sa.len() {
                let t = a.f(dev)?;
                let s = Scalar::from(s);
                return Ok(Value::F(match op {
                    BinOp::Add => B::float_add_scalar(t, s),
                    BinOp::Sub => B::float_sub_scalar(t, s),
                    BinOp::Mul => B::float_mul_scalar(t, s),
                    BinOp::Div => B::float_div_scalar(t, s),
                    BinOp::Pow => B::float_powf_scalar(t, s),
                }));
            }
        }
        if let Some(s) = a.host_scalar() {
            if sa.len() <= sb.len() && op != BinOp::Pow {
                let t = b.f(dev)?;
                let sc = Scalar::from(s);
                return Ok(Value::F(match op {
                    BinOp::Add => B::float_add_scalar(t, sc),
                    BinOp::Sub => B::float_add_scalar(B::float_neg(t), sc),
                    BinOp::Mul => B::float_mul_scalar(t, sc),
                    _ => B::float_div(B::float_full(shp(&sb), sc, dev, FloatDType::F32), t),
                }));
            }
        }
        let (x, y) = align(a.f(dev)?, b.f(dev)?);
        let y = if op == BinOp::Pow && dims(&y) != out {
            // The device pow kernel wants matching shapes.
            B::float_expand(y, shp(&out))
        } else {
            y
        };
        Ok(Value::F(match op {
            BinOp::Add => B::float_add(x, y),
            BinOp::Sub => B::float_sub(x, y),
            BinOp::Mul => B::float_mul(x, y),
            BinOp::Div => B::float_div(x, y),
            BinOp::Pow => B::float_powf(if dims(&x) != out { B::float_expand(x, shp(&out)) } else { x }, y),
        }))
    }
}

fn lift_b(t: BT, rank: usize) -> BT {
    let d = t.shape().to_vec();
    if d.len() >= rank {
        return t;
    }
    let mut s = vec![1; rank - d.len()];
    s.extend(d);
    B::bool_reshape(t, shp(&s))
}

fn or_ones(v: &[usize], n: usize) -> Vec<usize> {
    if v.is_empty() {
        vec![1; n]
    } else {
        v.to_vec()
    }
}

/// (begin, end) padding per spatial axis.
fn resolve_pads(
    auto: AutoPad,
    pads: &[usize],
    input: &[usize],
    kernel: &[usize],
    strides: &[usize],
    dilations: &[usize],
) -> R<Vec<(usize, usize)>> {
    let n = input.len();
    if strides.len() != n || dilations.len() != n || kernel.len() != n {
        return Err(format!("strides/dilations/kernel do not have {n} spatial axes"));
    }
    match auto {
        AutoPad::Valid => Ok(vec![(0, 0); n]),
        AutoPad::NotSet => {
            if pads.is_empty() {
                Ok(vec![(0, 0); n])
            } else if pads.len() == 2 * n {
                Ok((0..n).map(|i| (pads[i], pads[i + n])).collect())
            } else {
                Err(format!("pads has {} values for {n} spatial axes", pads.len()))
            }
        }
        AutoPad::SameUpper | AutoPad::SameLower => Ok((0..n)
            .map(|i| {
                let out = input[i].div_ceil(strides[i]);
                let eff = (kernel[i] - 1) * dilations[i] + 1;
                let total = ((out - 1) * strides[i] + eff).saturating_sub(input[i]);
                let small = total / 2;
                if auto == AutoPad::SameUpper {
                    (small, total - small)
                } else {
                    (total - small, small)
                }
            })
            .collect()),
    }
}

/// ONNX Reshape's target shape (0 copies, -1 infers).
fn reshape_target(shape: &[usize], spec: &[i64], allowzero: bool) -> R<Vec<usize>> {
    let total = numel(shape);
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allowzero => out.push(*shape.get(i).ok_or_else(|| format!("0 at position {i} has no input axis"))?),
            d if d >= 0 => out.push(d as usize),
            _ => return Err(format!("invalid shape {spec:?}")),
        }
    }
    if let Some(i) = infer {
        let known: usize = out.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, &d)| d).product();
        if known == 0 || total % known != 0 {
            return Err(format!("cannot reshape {shape:?} to {spec:?}"));
        }
        out[i] = total / known;
    }
    if numel(&out) != total {
        return Err(format!("cannot reshape {shape:?} ({total} elements) to {out:?}"));
    }
    Ok(out)
}

/// `t[.., start..end, ..]` along `axis`, on the device.
fn slice_axis(t: FT, axis: usize, start: usize, end: usize) -> FT {
    let slices: Vec<Slice> = dims(&t)
        .iter()
        .enumerate()
        .map(|(i, &n)| if i == axis { Slice::new(start as isize, Some(end as isize), 1) } else { Slice::new(0, Some(n as isize), 1) })
        .collect();
    B::float_slice(t, &slices)
}

/// ONNX MatMul: numpy semantics (1-D promotion, broadcast batch axes).
fn matmul(a: FT, b: FT) -> R<FT> {
    let (da, db) = (dims(&a), dims(&b));
    if da.is_empty() || db.is_empty() {
        return Err("MatMul inputs must be at least 1-D".into());
    }
    let a = if da.len() == 1 { reshape(a, &[1, da[0]]) } else { a };
    let b = if db.len() == 1 { reshape(b, &[db[0], 1]) } else { b };
    let (a, b) = align(a, b);
    let (sa, sb) = (dims(&a), dims(&b));
    let r = sa.len();
    if sa[r - 1] != sb[r - 2] {
        return Err(format!("shapes {da:?} and {db:?} do not fit for MatMul"));
    }
    let batch = broadcast_shapes(&sa[..r - 2], &sb[..r - 2])?;
    let mut full_out = batch.clone();
    full_out.extend([sa[r - 2], sb[r - 1]]);
    guard(&full_out)?;
    let full = |t: FT, s: &[usize]| -> FT {
        let mut want = batch.clone();
        want.extend(&s[r - 2..]);
        if s == want.as_slice() {
            t
        } else {
            B::float_expand(t, shp(&want))
        }
    };
    let y = B::float_matmul(full(a, &sa), full(b, &sb));
    let mut out = batch;
    if da.len() > 1 {
        out.push(sa[r - 2]);
    }
    if db.len() > 1 {
        out.push(sb[r - 1]);
    }
    Ok(reshape(y, &out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_targets() {
        assert_eq!(reshape_target(&[2, 3, 4], &[0, -1], false).unwrap(), vec![2, 12]);
        assert_eq!(reshape_target(&[2, 3, 4], &[-1], false).unwrap(), vec![24]);
        assert!(reshape_target(&[2, 3, 4], &[5, -1], false).is_err());
        assert!(reshape_target(&[2, 3], &[-1, -1], false).is_err());
    }

    #[test]
    fn same_padding() {
        let p = resolve_pads(AutoPad::SameUpper, &[], &[5], &[4], &[1], &[1]).unwrap();
        assert_eq!(p, vec![(1, 2)]);
        let p = resolve_pads(AutoPad::SameLower, &[], &[5], &[4], &[1], &[1]).unwrap();
        assert_eq!(p, vec![(2, 1)]);
        let p = resolve_pads(AutoPad::NotSet, &[1, 2, 3, 4], &[8, 8], &[3, 3], &[1, 1], &[1, 1]).unwrap();
        assert_eq!(p, vec![(1, 3), (2, 4)]);
    }
}
