//! The interpreter: runs a [`Program`] op by op on burn's wgpu backend.
//!
//! Float tensors live on the device as burn primitives (runtime rank);
//! integer and boolean tensors, which in real models are shapes, indices
//! and masks, live on the host (see `host.rs`). Each op takes what it is
//! given and moves data only where an op needs it elsewhere (indices for a
//! device `Gather` go up; a device tensor cast to int comes down).

use super::host::{broadcast_shapes, guard, norm_axis, numel, HostData, HostTensor, MAX_ELEMENTS};
use super::program::{AutoPad, BinOp, Coord, Nearest, Node, Op, PadKind, Program, Unary};
use super::Ty;
use burn_backend::ops::{
    ActivationOps, BoolTensorOps, ConvOptions, ConvTransposeOptions, FloatTensorOps, IntTensorOps, ModuleOps, PadMode,
};
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
                | Op::LeakyRelu { .. }
                | Op::HardSigmoid { .. }
                | Op::PRelu
                | Op::MinMax { .. }
                | Op::Compare { .. }
                | Op::Not
                | Op::Logic { .. }
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
                    Unary::Cos => B::float_cos(t),
                    Unary::Sin => B::float_sin(t),
                    Unary::Floor => B::float_floor(t),
                    Unary::Ceil => B::float_ceil(t),
                }))
            }
            Op::LeakyRelu { alpha } => one(Value::F(B::leaky_relu(x()?.f(dev)?, Scalar::from(*alpha)))),
            Op::HardSigmoid { alpha, beta, swish } => {
                let t = x()?.f(dev)?;
                let hs = B::float_clamp(
                    B::float_add_scalar(B::float_mul_scalar(t.clone(), Scalar::from(*alpha)), Scalar::from(*beta)),
                    Scalar::from(0.0f32),
                    Scalar::from(1.0f32),
                );
                one(Value::F(if *swish { B::float_mul(t, hs) } else { hs }))
            }
            Op::PRelu => {
                let t = x()?.f(dev)?;
                let slope = self.input(node, 1)?;
                let shape = dims(&t);
                // Unidirectional: the slope broadcasts to x.
                if broadcast_shapes(&shape, &slope.shape())? != shape {
                    return Err(format!("slope {:?} does not broadcast to {shape:?}", slope.shape()));
                }
                let s = B::float_expand(lift(slope.f(dev)?, shape.len()), shp(&shape));
                let neg = B::float_lower_elem(t.clone(), Scalar::from(0.0f32), BoolStore::U32);
                one(Value::F(B::float_mask_where(t.clone(), neg, B::float_mul(t, s))))
            }
            Op::MinMax { max } => {
                let mut acc = x()?.clone();
                for i in 1..node.inputs.len() {
                    acc = self.min_max(*max, &acc, self.input(node, i)?)?;
                }
                one(acc)
            }
            Op::Compare { greater } => {
                let (a, b) = (x()?, self.input(node, 1)?);
                if a.ty() != Ty::F32 || matches!((a, b), (Value::H(_), Value::H(_))) {
                    let (a, b) = (a.host()?, b.host()?);
                    let (a, b) = if *greater { (a, b) } else { (b, a) };
                    return one(Value::H(a.greater(&b)?));
                }
                let shape = broadcast_shapes(&a.shape(), &b.shape())?;
                let r = shape.len();
                let fa = B::float_expand(lift(a.f(dev)?, r), shp(&shape));
                let fb = B::float_expand(lift(b.f(dev)?, r), shp(&shape));
                one(Value::B(if *greater {
                    B::float_greater(fa, fb, BoolStore::U32)
                } else {
                    B::float_lower(fa, fb, BoolStore::U32)
                }))
            }
            Op::InstanceNorm { eps } => {
                let t = x()?.f(dev)?;
                let shape = dims(&t);
                if shape.len() < 3 {
                    return Err(format!("input {shape:?} must be at least 3-D (N, C, ...)"));
                }
                let (n, c) = (shape[0], shape[1]);
                let flat = reshape(t, &[n, c, numel(&shape[2..])]);
                let mean = B::float_mean_dim(flat.clone(), 2);
                let centered = B::float_sub(flat, mean);
                let var = B::float_mean_dim(B::float_mul(centered.clone(), centered.clone()), 2);
                let inv = B::float_recip(B::float_sqrt(B::float_add_scalar(var, Scalar::from(*eps))));
                let chan = |i: usize| -> R<FT> {
                    let v = self.input(node, i)?;
                    if numel(&v.shape()) != c {
                        return Err(format!("scale and B must have {c} values, got shape {:?}", v.shape()));
                    }
                    Ok(reshape(v.f(dev)?, &[1, c, 1]))
                };
                let y = B::float_add(B::float_mul(B::float_mul(centered, inv), chan(1)?), chan(2)?);
                one(Value::F(reshape(y, &shape)))
            }
            Op::DepthToSpace { block, crd } => {
                let v = x()?;
                let s = v.shape();
                let b = *block;
                let [n, c, h, w] = s[..] else { return Err(format!("input {s:?} must be 4-D")) };
                if c % (b * b) != 0 {
                    return Err(format!("{c} channels do not divide by blocksize² {}", b * b));
                }
                let cb = c / (b * b);
                let out = [n, cb, h.saturating_mul(b), w.saturating_mul(b)];
                let (split, perm) = if *crd {
                    ([n, cb, b, b, h, w], [0, 1, 4, 2, 5, 3])
                } else {
                    ([n, b, b, cb, h, w], [0, 3, 4, 1, 5, 2])
                };
                one(self.permute_value(v, &split, &perm, &out)?)
            }
            Op::SpaceToDepth { block, crd } => {
                let v = x()?;
                let s = v.shape();
                let b = *block;
                let [n, c, h, w] = s[..] else { return Err(format!("input {s:?} must be 4-D")) };
                if h % b != 0 || w % b != 0 {
                    return Err(format!("spatial size {h}×{w} does not divide by blocksize {b}"));
                }
                let split = [n, c, h / b, b, w / b, b];
                let perm = if *crd { [0, 1, 3, 5, 2, 4] } else { [0, 3, 5, 1, 2, 4] };
                one(self.permute_value(v, &split, &perm, &[n, c.saturating_mul(b * b), h / b, w / b])?)
            }
            Op::Tile => {
                let v = x()?;
                let shape = v.shape();
                let reps = self.ints(node, 1, "repeats")?;
                if reps.len() != shape.len() || reps.iter().any(|&r| r < 0) {
                    return Err(format!("repeats {reps:?} must be {} non-negative values", shape.len()));
                }
                let reps: Vec<usize> = reps.iter().map(|&r| r as usize).collect();
                let out: Vec<usize> = shape.iter().zip(&reps).map(|(&d, &r)| d.saturating_mul(r)).collect();
                guard_axes(&out)?;
                match v {
                    Value::F(t) if numel(&out) > 0 => {
                        let mut t = t.clone();
                        for (d, &r) in reps.iter().enumerate() {
                            if r > 1 {
                                t = B::float_repeat_dim(t, d, r);
                            }
                        }
                        one(Value::F(t))
                    }
                    other => {
                        let mut h = other.host()?;
                        for (d, &r) in reps.iter().enumerate() {
                            let n = shape[d];
                            let idx: Vec<usize> = (0..n * r).map(|i| i % n).collect();
                            h = h.take(d, &idx);
                        }
                        one(Value::H(h))
                    }
                }
            }
            Op::Range => {
                let (start, limit, delta) = (x()?.host()?, self.input(node, 1)?.host()?, self.input(node, 2)?.host()?);
                let one_of = |h: &HostTensor| -> R<()> {
                    if numel(&h.shape) == 1 {
                        Ok(())
                    } else {
                        Err(format!("start, limit and delta must be scalars, got shape {:?}", h.shape))
                    }
                };
                one_of(&start)?;
                one_of(&limit)?;
                one_of(&delta)?;
                let h = match (&start.data, &limit.data, &delta.data) {
                    (HostData::I64(s), HostData::I64(l), HostData::I64(d)) => {
                        let (s, l, d) = (s[0], l[0], d[0]);
                        if d == 0 {
                            return Err("delta must not be 0".into());
                        }
                        let n = (l as i128 - s as i128 + d as i128 - d.signum() as i128) / d as i128;
                        let n = usize::try_from(n.max(0)).map_err(|_| "Range is too long".to_string())?;
                        guard(&[n])?;
                        HostTensor::i64(vec![n], (0..n as i64).map(|i| s.wrapping_add(i.wrapping_mul(d))).collect())
                    }
                    (HostData::F32(s), HostData::F32(l), HostData::F32(d)) => {
                        let (s, l, d) = (s[0], l[0], d[0]);
                        if d == 0.0 || !(s.is_finite() && l.is_finite() && d.is_finite()) {
                            return Err("start, limit and delta must be finite and delta not 0".into());
                        }
                        let n = ((l - s) / d).ceil().max(0.0);
                        if n > super::host::MAX_ELEMENTS as f32 {
                            return Err(format!("Range of {n} elements is too long"));
                        }
                        let n = n as usize;
                        HostTensor::new(vec![n], HostData::F32((0..n).map(|i| s + i as f32 * d).collect()))
                    }
                    _ => return Err("start, limit and delta must be numbers of one type".into()),
                };
                one(Value::H(h))
            }
            Op::CumSum { exclusive, reverse } => {
                let v = x()?;
                let shape = v.shape();
                let axis = self.ints(node, 1, "axis")?;
                let [axis] = axis[..] else { return Err("axis must hold one value".into()) };
                let ax = norm_axis(axis, shape.len())?;
                match v {
                    Value::F(t) => {
                        let mut t = t.clone();
                        if *reverse {
                            t = B::float_flip(t, &[ax]);
                        }
                        let mut y = B::float_cumsum(t.clone(), ax);
                        if *exclusive {
                            y = B::float_sub(y, t);
                        }
                        if *reverse {
                            y = B::float_flip(y, &[ax]);
                        }
                        one(Value::F(y))
                    }
                    other => one(Value::H(other.host()?.cumsum(ax, *exclusive, *reverse)?)),
                }
            }
            Op::Trilu { upper } => {
                let v = x()?;
                let shape = v.shape();
                let k = match self.opt_input(node, 1) {
                    Some(k) => {
                        let k = k.host()?.as_i64("k")?;
                        *k.first().ok_or_else(|| "k must hold one value".to_string())?
                    }
                    None => 0,
                };
                let r = shape.len();
                if r < 2 {
                    return Err(format!("input {shape:?} must be at least 2-D"));
                }
                let (rows, cols) = (shape[r - 2], shape[r - 1]);
                // Positions to zero.
                let zero = |i: usize, j: usize| {
                    let d = j as i64 - i as i64;
                    if *upper {
                        d < k
                    } else {
                        d > k
                    }
                };
                match v {
                    Value::F(t) => {
                        let mask: Vec<bool> = (0..rows).flat_map(|i| (0..cols).map(move |j| zero(i, j))).collect();
                        let mask = upload_bool(dev, &HostTensor::new(vec![rows, cols], HostData::Bool(mask)))?;
                        let mask = B::bool_expand(lift_b(mask, r), shp(&shape));
                        let zeros = B::float_full(shp(&shape), Scalar::from(0.0f32), dev, FloatDType::F32);
                        one(Value::F(B::float_mask_where(t.clone(), mask, zeros)))
                    }
                    other => {
                        let mut h = other.host()?;
                        let n = numel(&shape);
                        let z: Vec<bool> = (0..n).map(|f| zero((f / cols.max(1)) % rows.max(1), f % cols.max(1))).collect();
                        for (f, &zf) in z.iter().enumerate() {
                            if zf {
                                match &mut h.data {
                                    HostData::F32(d) => d[f] = 0.0,
                                    HostData::I64(d) => d[f] = 0,
                                    HostData::Bool(d) => d[f] = false,
                                }
                            }
                        }
                        one(Value::H(h))
                    }
                }
            }
            Op::ArgMax { axis, keepdims, last } => {
                let h = x()?.host()?;
                let shape = h.shape.clone();
                let ax = norm_axis(*axis, shape.len())?;
                if shape[ax] == 0 {
                    return Err("ArgMax over an empty axis".into());
                }
                let (outer, n, inner) = (numel(&shape[..ax]), shape[ax], numel(&shape[ax + 1..]));
                let vals: Vec<f64> = match &h.data {
                    HostData::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
                    HostData::I64(v) => v.iter().map(|&x| x as f64).collect(),
                    HostData::Bool(_) => return Err("ArgMax of a bool tensor".into()),
                };
                let mut idx = Vec::with_capacity(outer * inner);
                for o in 0..outer {
                    for i in 0..inner {
                        let mut best = 0;
                        for k in 1..n {
                            let (v, b) = (vals[(o * n + k) * inner + i], vals[(o * n + best) * inner + i]);
                            if v > b || (*last && v == b) {
                                best = k;
                            }
                        }
                        idx.push(best as i64);
                    }
                }
                let mut out = shape.clone();
                if *keepdims {
                    out[ax] = 1;
                } else {
                    out.remove(ax);
                }
                one(Value::H(HostTensor::i64(out, idx)))
            }
            Op::TopK { axis, largest } => {
                let h = x()?.host()?;
                let shape = h.shape.clone();
                let ax = norm_axis(*axis, shape.len())?;
                let k = self.ints(node, 1, "K")?;
                let [k] = k[..] else { return Err("K must hold one value".into()) };
                let n = shape[ax];
                let k = usize::try_from(k).ok().filter(|&k| k <= n).ok_or_else(|| format!("K {k} is out of range for axis of size {n}"))?;
                let (outer, inner) = (numel(&shape[..ax]), numel(&shape[ax + 1..]));
                let vals: Vec<f64> = match &h.data {
                    HostData::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
                    HostData::I64(v) => v.iter().map(|&x| x as f64).collect(),
                    HostData::Bool(_) => return Err("TopK of a bool tensor".into()),
                };
                let mut out = shape.clone();
                out[ax] = k;
                let total = numel(&out);
                let mut picks = vec![0usize; total];
                for o in 0..outer {
                    for i in 0..inner {
                        let at = |j: usize| (o * n + j) * inner + i;
                        let mut order: Vec<usize> = (0..n).collect();
                        // Stable: equal values keep the lower index first.
                        order.sort_by(|&p, &q| {
                            let (a, b) = (vals[at(p)], vals[at(q)]);
                            let c = a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal);
                            if *largest { c.reverse() } else { c }
                        });
                        for (j, &src) in order.iter().take(k).enumerate() {
                            picks[(o * k + j) * inner + i] = src;
                        }
                    }
                }
                let src: Vec<usize> = (0..total)
                    .map(|f| {
                        let (o, rest) = (f / (k * inner), f % (k * inner));
                        let i = rest % inner;
                        (o * n + picks[f]) * inner + i
                    })
                    .collect();
                let values = match &h.data {
                    HostData::F32(v) => HostData::F32(src.iter().map(|&s| v[s]).collect()),
                    HostData::I64(v) => HostData::I64(src.iter().map(|&s| v[s]).collect()),
                    HostData::Bool(_) => unreachable!("refused above"),
                };
                let indices: Vec<i64> = picks.iter().map(|&p| p as i64).collect();
                Ok(vec![Value::H(HostTensor::new(out.clone(), values)), Value::H(HostTensor::i64(out, indices))])
            }
            Op::Pad { mode, pads, value } => {
                let v = x()?;
                let shape = v.shape();
                let r = shape.len();
                let pads = match pads {
                    Some(p) => p.clone(),
                    None => self.ints(node, 1, "pads")?,
                };
                let value = match self.opt_input(node, 2) {
                    Some(c) if pads.len() > 0 && node.inputs.len() > 2 => {
                        let h = c.host()?;
                        if numel(&h.shape) == 0 { *value } else { h.scalar_f32().ok_or_else(|| "constant_value must be a scalar".to_string())? }
                    }
                    _ => *value,
                };
                let axes: Vec<usize> = match self.opt_input(node, 3) {
                    Some(a) => a.host()?.as_i64("axes")?.iter().map(|&a| norm_axis(a, r)).collect::<R<_>>()?,
                    None => (0..r).collect(),
                };
                let na = axes.len();
                if pads.len() != 2 * na {
                    return Err(format!("pads has {} values for {na} axes", pads.len()));
                }
                if let Some(p) = pads.iter().find(|p| p.unsigned_abs() > MAX_ELEMENTS as u64) {
                    return Err(format!("pad {p} is too large (limit {MAX_ELEMENTS})"));
                }
                let mut per = vec![(0i64, 0i64); r];
                for (i, &a) in axes.iter().enumerate() {
                    per[a] = (pads[i], pads[i + na]);
                }
                let mut out = Vec::with_capacity(r);
                for (d, &(b, e)) in per.iter().enumerate() {
                    let n = i64::try_from(shape[d]).map_err(|_| "dimension too large".to_string())?;
                    let o = n.checked_add(b).and_then(|x| x.checked_add(e)).filter(|&o| o >= 0);
                    let o = o.ok_or_else(|| format!("pads {pads:?} do not fit shape {shape:?}"))?;
                    if *mode != PadKind::Constant && n == 0 && o > 0 {
                        return Err("cannot reflect or extend an empty axis".into());
                    }
                    out.push(usize::try_from(o).map_err(|_| "output too large".to_string())?);
                }
                guard_axes(&out)?;
                let simple = per.iter().zip(&shape).all(|(&(b, e), &n)| {
                    b >= 0 && e >= 0 && (*mode != PadKind::Reflect || (b as usize) < n && (e as usize) < n)
                });
                if let (Value::F(t), true) = (v, simple && numel(&out) > 0) {
                    let p: Vec<(usize, usize)> = per.iter().map(|&(b, e)| (b as usize, e as usize)).collect();
                    let m = match mode {
                        PadKind::Constant => PadMode::Constant(value),
                        PadKind::Reflect => PadMode::Reflect,
                        PadKind::Edge => PadMode::Edge,
                    };
                    return one(Value::F(B::float_pad(t.clone(), &p, m)));
                }
                let h = v.host()?.pad(&per, &out, *mode, value);
                if v.ty() == Ty::F32 && matches!(v, Value::F(_)) && numel(&out) > 0 {
                    return one(Value::F(upload(dev, &h)));
                }
                one(Value::H(h))
            }
            Op::Not => match x()? {
                Value::B(b) => one(Value::B(B::bool_not(b.clone()))),
                other => {
                    let h = other.host()?;
                    let HostData::Bool(v) = h.data else { return Err("Not of a non-bool tensor".into()) };
                    one(Value::H(HostTensor::new(h.shape, HostData::Bool(v.iter().map(|b| !b).collect()))))
                }
            },
            Op::Logic { and } => {
                let (a, b) = (x()?.host()?, self.input(node, 1)?.host()?);
                one(Value::H(a.logic(&b, *and)?))
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
                    // min > max: every value becomes max (numpy's clip).
                    (Some(a), Some(b)) if a > b => B::float_clamp_max(B::float_clamp_min(t, Scalar::from(a)), Scalar::from(b)),
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
            Op::ConvTranspose { strides, pads, dilations, group, auto_pad, output_padding, output_shape } => {
                let t = x()?.f(dev)?;
                let w = self.input(node, 1)?.f(dev)?;
                let (xs, ws) = (dims(&t), dims(&w));
                let n = xs.len().saturating_sub(2);
                if !(1..=2).contains(&n) || ws.len() != xs.len() {
                    return Err(format!("input {xs:?} with weight {ws:?}: only 1-D and 2-D ConvTranspose is supported"));
                }
                if xs[1] != ws[0] || ws[0] % group != 0 {
                    return Err(format!("input has {} channels, weight {ws:?} with group {group}", xs[1]));
                }
                let cout = ws[1].checked_mul(*group).filter(|&c| c > 0 && c <= MAX_ELEMENTS).ok_or_else(|| {
                    format!("weight {ws:?} with group {group} has no valid output channel count")
                })?;
                let st = or_ones(strides, n);
                let dl = or_ones(dilations, n);
                let op = if output_padding.is_empty() { vec![0; n] } else { output_padding.clone() };
                if st.len() != n || dl.len() != n || op.len() != n || st.contains(&0) || dl.contains(&0) {
                    return Err(format!("strides/dilations/output_padding do not fit {n} spatial axes"));
                }
                // Full (uncropped) output per axis: (in − 1)·s + (k − 1)·d + 1.
                let mut full = Vec::with_capacity(n);
                for i in 0..n {
                    let f = xs[2 + i]
                        .checked_sub(1)
                        .and_then(|v| v.checked_mul(st[i]))
                        .and_then(|v| (ws[2 + i].checked_sub(1)?.checked_mul(dl[i])).map(|k| (v, k)))
                        .and_then(|(v, k)| v.checked_add(k)?.checked_add(1))
                        .ok_or_else(|| format!("input {xs:?} with weight {ws:?} has no output"))?;
                    full.push(f);
                }
                let mut bound = vec![xs[0], cout];
                bound.extend(full.iter().zip(&op).map(|(&f, &o)| f.saturating_add(o)));
                guard(&bound)?;
                // (begin, end) crop of the full output (negative: zeros).
                let total_pads = |target: &[usize]| -> Vec<(i64, i64)> {
                    (0..n)
                        .map(|i| {
                            let total = (full[i] + op[i]) as i64 - target[i] as i64;
                            let (small, big) = (total.div_euclid(2), total - total.div_euclid(2));
                            if *auto_pad == AutoPad::SameUpper { (small, big) } else { (big, small) }
                        })
                        .collect()
                };
                let crop: Vec<(i64, i64)> = match (output_shape, auto_pad) {
                    (Some(shape), _) => {
                        let target = &shape[shape.len().saturating_sub(n)..];
                        if target.len() != n {
                            return Err(format!("output_shape {shape:?} does not have {n} spatial axes"));
                        }
                        total_pads(target)
                    }
                    (None, AutoPad::SameUpper | AutoPad::SameLower) => {
                        let target: Vec<usize> = (0..n).map(|i| xs[2 + i].saturating_mul(st[i])).collect();
                        total_pads(&target)
                    }
                    (None, AutoPad::Valid) => vec![(0, 0); n],
                    (None, AutoPad::NotSet) => match pads.len() {
                        0 => vec![(0, 0); n],
                        l if l == 2 * n => (0..n).map(|i| (pads[i] as i64, pads[i + n] as i64)).collect(),
                        l => return Err(format!("pads has {l} values for {n} spatial axes")),
                    },
                };
                if let Some(c) = crop.iter().find(|(b, e)| b.unsigned_abs().max(e.unsigned_abs()) > MAX_ELEMENTS as u64) {
                    return Err(format!("pads or output_shape ({c:?}) are too large"));
                }
                let mut y = if n == 2 {
                    let opts = ConvTransposeOptions::new([st[0], st[1]], [0, 0], [0, 0], [dl[0], dl[1]], *group);
                    B::conv_transpose2d(t, w, None, opts)
                } else {
                    B::conv_transpose1d(t, w, None, ConvTransposeOptions::new([st[0]], [0], [0], [dl[0]], *group))
                };
                let mut pad_all = vec![(0usize, 0usize); 2];
                for i in 0..n {
                    let (b, e) = crop[i];
                    let len = (full[i] + op[i]) as i64 - b - e;
                    if len <= 0 {
                        return Err(format!("pads {crop:?} leave no output of {full:?}"));
                    }
                    let (lo, hi) = (b.max(0), (b + len).min(full[i] as i64));
                    if lo >= hi {
                        return Err(format!("pads {crop:?} crop away all of {full:?}"));
                    }
                    if lo > 0 || hi < full[i] as i64 {
                        y = slice_axis(y, 2 + i, lo as usize, hi as usize);
                    }
                    pad_all.push(((-b).max(0) as usize, (b + len - full[i] as i64).max(0) as usize));
                }
                if pad_all.iter().any(|&(a, b)| a > 0 || b > 0) {
                    let mut out = vec![xs[0], cout];
                    out.extend(dims(&y)[2..].iter().zip(&pad_all[2..]).map(|(&d, &(a, b))| d + a + b));
                    guard(&out)?;
                    y = B::float_pad(y, &pad_all, PadMode::Constant(0.0));
                }
                if let Some(b) = self.opt_input(node, 2) {
                    let b = b.f(dev)?;
                    if numel(&dims(&b)) != cout {
                        return Err(format!("bias has {} values for {cout} output channels", numel(&dims(&b))));
                    }
                    let mut s = vec![1; n + 2];
                    s[1] = cout;
                    y = B::float_add(y, reshape(b, &s));
                }
                one(Value::F(y))
            }
            Op::Resize { linear, coord, nearest, axes, keep } => {
                let v = x()?;
                let shape = v.shape();
                let r = shape.len();
                // Opset 10: X, scales. Opset 11+: X, roi, scales, sizes.
                let (scales_at, sizes_at) = if node.inputs.len() == 2 { (1, usize::MAX) } else { (2, 3) };
                let floats = |i: usize| -> R<Option<Vec<f32>>> {
                    match self.opt_input(node, i) {
                        None => Ok(None),
                        Some(s) => match s.host()? {
                            h if numel(&h.shape) == 0 => Ok(None),
                            HostTensor { data: HostData::F32(f), .. } => Ok(Some(f)),
                            HostTensor { data: HostData::I64(n), .. } => Ok(Some(n.iter().map(|&n| n as f32).collect())),
                            _ => Err("scales must be float".into()),
                        },
                    }
                };
                // Scales/sizes over `axes` spread to every axis (others 1).
                let axes: Vec<usize> = match axes {
                    Some(a) => a.iter().map(|&x| norm_axis(x, r)).collect::<R<_>>()?,
                    None => (0..r).collect(),
                };
                let spread = |v: Vec<f32>, what: &str| -> R<Vec<f32>> {
                    if v.len() != axes.len() {
                        return Err(format!("{what} has {} values for {} axes", v.len(), axes.len()));
                    }
                    let mut full: Vec<f32> = if what == "sizes" { shape.iter().map(|&d| d as f32).collect() } else { vec![1.0; r] };
                    for (&a, x) in axes.iter().zip(v) {
                        full[a] = x;
                    }
                    Ok(full)
                };
                let scales_in = floats(scales_at)?.map(|v| spread(v, "scales")).transpose()?;
                let mut sizes_in = floats(sizes_at)?.map(|v| spread(v, "sizes")).transpose()?;
                if let (Some(not_larger), Some(sz)) = (keep, sizes_in.as_mut()) {
                    // One scale for the named axes: the smallest (or largest) ratio.
                    let ratios = axes.iter().map(|&a| f64::from(sz[a]) / shape[a].max(1) as f64);
                    let s = if *not_larger { ratios.fold(f64::INFINITY, f64::min) } else { ratios.fold(0.0, f64::max) };
                    for &a in &axes {
                        sz[a] = (s * shape[a] as f64 + 0.5).floor() as f32;
                    }
                }
                let (out, scales): (Vec<usize>, Vec<f64>) = match (scales_in, sizes_in) {
                    (Some(sc), None) => {
                        if sc.len() != r || sc.iter().any(|&s| !(s > 0.0 && s.is_finite())) {
                            return Err(format!("scales {sc:?} must be {r} positive values"));
                        }
                        let out = shape.iter().zip(&sc).map(|(&d, &s)| (d as f64 * f64::from(s)).floor()).collect::<Vec<f64>>();
                        if out.iter().any(|&o| o > super::host::MAX_ELEMENTS as f64) {
                            return Err(format!("scales {sc:?} give too large an output"));
                        }
                        (out.iter().map(|&o| o as usize).collect(), sc.iter().map(|&s| f64::from(s)).collect())
                    }
                    (None, Some(sz)) => {
                        if sz.len() != r || sz.iter().any(|&s| s < 0.0) {
                            return Err(format!("sizes {sz:?} must be {r} non-negative values"));
                        }
                        let out: Vec<usize> = sz.iter().map(|&s| s as usize).collect();
                        let sc = out.iter().zip(&shape).map(|(&o, &d)| if d == 0 { 1.0 } else { o as f64 / d as f64 }).collect();
                        (out, sc)
                    }
                    _ => return Err("exactly one of scales and sizes must be given".into()),
                };
                guard_axes(&out)?;
                let mut h = v.host()?;
                for d in 0..r {
                    if out[d] == shape[d] && scales[d] == 1.0 {
                        continue;
                    }
                    if shape[d] == 0 {
                        return Err("cannot resize an empty axis".into());
                    }
                    h = resize_axis(&h, d, out[d], scales[d], *linear, *coord, *nearest)?;
                }
                if numel(&out) > 0 {
                    return one(Value::F(upload(dev, &h)));
                }
                one(Value::H(h))
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
                // Average over real elements only, with asymmetric padding:
                // pad with zeros, and divide the window sums by the pooled
                // count of real elements (a padded mask of ones).
                let mut real_count = None;
                if pad.iter().any(|(b, e)| b != e) {
                    let fill = if *max { f32::NEG_INFINITY } else { 0.0 };
                    let mut all = vec![(0, 0), (0, 0)];
                    all.extend(pad.iter().copied());
                    if !*max && !*count_include_pad {
                        let ones = B::float_full(shp(&xs), Scalar::from(1.0f32), dev, FloatDType::F32);
                        real_count = Some(B::float_pad(ones, &all, PadMode::Constant(0.0)));
                    }
                    t = B::float_pad(t, &all, PadMode::Constant(fill));
                } else {
                    sym = pad.iter().map(|p| p.0).collect();
                }
                if let Some(mask) = real_count {
                    let avg = |v: FT| match n {
                        2 => B::avg_pool2d(v, [kernel[0], kernel[1]], [st[0], st[1]], [0, 0], true, *ceil),
                        _ => B::avg_pool1d(v, kernel[0], st[0], 0, true, *ceil),
                    };
                    return one(Value::F(B::float_div(avg(t), avg(mask))));
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
            Op::MatMul => {
                let (a, b) = (x()?, self.input(node, 1)?);
                let y = Value::F(matmul(a.f(dev)?, b.f(dev)?)?);
                if a.shape().len() == 1 && b.shape().len() == 1 {
                    // A dot product: rank 0, which lives on the host.
                    return one(self.reshape_value(y, &[])?);
                }
                one(y)
            }
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
                let f = vals[0].shape();
                for v in &vals {
                    let d = v.shape();
                    if d.len() != f.len() || d.iter().zip(&f).enumerate().any(|(i, (a, b))| i != ax && a != b) {
                        return Err(format!("inputs {f:?} and {d:?} do not fit on axis {ax}"));
                    }
                }
                // Empty parts (host-only: the device holds no empty
                // tensors) add nothing.
                let live: Vec<&Value> = vals.iter().copied().filter(|v| numel(&v.shape()) > 0).collect();
                if live.is_empty() {
                    return one(Value::H(HostTensor::new(out, HostData::F32(vec![]))));
                }
                let ts: Vec<FT> = live.iter().map(|v| v.f(dev)).collect::<R<_>>()?;
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
                            // The device holds no empty tensors: the result lives on the host.
                            return one(Value::H(HostTensor::new(out, HostData::F32(vec![]))));
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
                        // The device holds no empty tensors: an empty part lives on the host.
                        Value::F(_) => {
                            let mut s = shape.clone();
                            s[ax] = 0;
                            Value::H(HostTensor::new(s, HostData::F32(vec![])))
                        }
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

    /// Reshape to `split`, permute, reshape to `out`, where the value lives.
    fn permute_value(&self, v: &Value, split: &[usize], perm: &[usize], out: &[usize]) -> R<Value> {
        guard(out)?;
        Ok(match v {
            Value::F(t) => Value::F(reshape(B::float_permute(reshape(t.clone(), split), perm), out)),
            other => Value::H(other.host()?.reshape(split.to_vec()).transpose(perm).reshape(out.to_vec())),
        })
    }

    /// Elementwise max (or min) of two values with broadcasting: integers
    /// on the host, floats on the device.
    fn min_max(&self, max: bool, a: &Value, b: &Value) -> R<Value> {
        let dev = &self.dev;
        if a.ty() != Ty::F32 || matches!((a, b), (Value::H(_), Value::H(_))) {
            return Ok(Value::H(a.host()?.min_max(&b.host()?, max)?));
        }
        let shape = broadcast_shapes(&a.shape(), &b.shape())?;
        let r = shape.len();
        let fa = B::float_expand(lift(a.f(dev)?, r), shp(&shape));
        let fb = B::float_expand(lift(b.f(dev)?, r), shp(&shape));
        // Where b beats a, take b.
        let take_b = if max {
            B::float_greater(fb.clone(), fa.clone(), BoolStore::U32)
        } else {
            B::float_lower(fb.clone(), fa.clone(), BoolStore::U32)
        };
        Ok(Value::F(B::float_mask_where(fa, take_b, fb)))
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

/// Refuses a shape with any one axis beyond [`MAX_ELEMENTS`]: [`guard`]
/// bounds the product, which an empty axis makes 0 whatever the others
/// are, and host loops that build per-axis index lists need each bounded.
fn guard_axes(shape: &[usize]) -> R<()> {
    guard(shape)?;
    match shape.iter().find(|&&d| d > MAX_ELEMENTS) {
        Some(d) => Err(format!("an axis of {d} in shape {shape:?} is too large (limit {MAX_ELEMENTS})")),
        None => Ok(()),
    }
}

/// One axis of Resize on the host: every output position's source
/// coordinate, then nearest pick or linear blend of the two neighbours
/// (indices clamped to the axis, as ONNX's edge handling does).
fn resize_axis(h: &HostTensor, axis: usize, out_len: usize, scale: f64, linear: bool, coord: Coord, nearest: Nearest) -> R<HostTensor> {
    let HostData::F32(v) = &h.data else { return Err("Resize input must be float".into()) };
    let n = h.shape[axis];
    let (outer, inner) = (numel(&h.shape[..axis]), numel(&h.shape[axis + 1..]));
    // The resized length as ONNX measures it: in · scale, unrounded.
    let resized = n as f64 * scale;
    let src = |o: usize| -> f64 {
        let o = o as f64;
        match coord {
            Coord::HalfPixel => (o + 0.5) / scale - 0.5,
            Coord::HalfPixelSymmetric => {
                let adjustment = out_len as f64 / resized;
                let offset = n as f64 / 2.0 * (1.0 - adjustment);
                offset + (o + 0.5) / scale - 0.5
            }
            Coord::PytorchHalfPixel if resized > 1.0 => (o + 0.5) / scale - 0.5,
            Coord::PytorchHalfPixel => 0.0,
            Coord::AlignCorners if resized != 1.0 => o * (n as f64 - 1.0) / (resized - 1.0),
            Coord::AlignCorners => 0.0,
            Coord::Asymmetric => o / scale,
        }
    };
    let last = n as i64 - 1;
    let clamp = |i: i64| i.clamp(0, last) as usize;
    // Per output position: (index a, index b, weight of b).
    let taps: Vec<(usize, usize, f32)> = (0..out_len)
        .map(|o| {
            let x = src(o);
            if linear {
                let x = x.clamp(0.0, last as f64);
                let f = x.floor();
                (clamp(f as i64), clamp(f as i64 + 1), (x - f) as f32)
            } else {
                let i = match nearest {
                    Nearest::RoundPreferFloor if x.fract().abs() == 0.5 => x.floor(),
                    Nearest::RoundPreferCeil if x.fract().abs() == 0.5 => x.ceil(),
                    Nearest::RoundPreferFloor | Nearest::RoundPreferCeil => x.round(),
                    Nearest::Floor => x.floor(),
                    Nearest::Ceil => x.ceil(),
                };
                (clamp(i as i64), 0, 0.0)
            }
        })
        .collect();
    let mut shape = h.shape.clone();
    shape[axis] = out_len;
    let mut y = Vec::with_capacity(numel(&shape));
    for o in 0..outer {
        for &(a, b, w) in &taps {
            for i in 0..inner {
                let va = v[(o * n + a) * inner + i];
                y.push(if w == 0.0 { va } else { va + (v[(o * n + b) * inner + i] - va) * w });
            }
        }
    }
    Ok(HostTensor::new(shape, HostData::F32(y)))
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
    if out.is_empty() {
        // 1-D · 1-D: the caller takes the one value to rank 0.
        out.push(1);
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
