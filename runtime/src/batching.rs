//! Dynamic batching: concurrent `compute` calls of different jobs on the
//! same model merged into one backend run (Triton's dynamic batcher).
//!
//! A deployment with a [`BatchConfig`] has a [`Batcher`], which counts the
//! deployment's running jobs and has one **lane** per model (sha256 and
//! backend) whose inputs and outputs all have a dynamic first dimension.
//! Every execution context opened on such a model takes a [`Seat`] on its
//! lane for its lifetime (the lane goes when its last seat does).
//!
//! A `compute` on a lane (no thread of its own: the jobs' threads do the
//! work, leader/follower style):
//! - **alone** when its job is the deployment's only running one, when its
//!   inputs do not share one first dimension, or when it has more rows than
//!   `max_batch`: it runs at once on its own context, as without batching
//!   (so one client pays nothing for batching);
//! - else it **joins** a batch being gathered whose inputs have the same
//!   names, types and trailing dimensions, if its rows fit: its input rows
//!   are appended (one copy) and it waits for its own rows of the result;
//! - else it **leads** a new batch: it waits until the batch holds
//!   `max_batch` rows, or every running job of the deployment has joined,
//!   or `window_us` passed; then it runs the concatenated inputs once on its
//!   own context, cuts every output along the first dimension and hands
//!   each job exactly its rows.
//!
//! Rows never cross between jobs: each job's outputs are the rows at its
//! own offsets, checked against the run's row count. A batched run that
//! fails, or whose outputs do not have the batch's rows in front, is not
//! retried as a batch: every job of it runs alone on its own context, so
//! one job's bad input fails only that job (and a model whose outputs are
//! not per-row is never batched again). A follower waits at most until its
//! own deadline. Each job is charged its share (its rows over the run's) of
//! the run's backend time and memory; its input and output bytes are its
//! own.

use crate::backend::{
    BackendError, BackendErrorKind, BackendExecutionContext, BackendGraph, BackendKind, OwnedTensor, TensorView,
};
use crate::tensor::ElementType;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Most rows one batched run may hold.
pub const MAX_BATCH_LIMIT: u32 = 1024;
/// Longest gathering window, in microseconds (100 ms).
pub const MAX_WINDOW_US: u64 = 100_000;

/// A deployment's batching settings (`max_batch`, `batch_window_us` in
/// `mote.toml`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most rows (first-dimension entries, all jobs together) in one run.
    pub max_batch: u32,
    /// How long the first job of a batch waits for others, in µs.
    pub window_us: u64,
}

impl BatchConfig {
    /// Checks the bounds: `max_batch` in 2..=1024, window ≤ 100 ms.
    pub fn validate(&self) -> Result<(), String> {
        if !(2..=MAX_BATCH_LIMIT).contains(&self.max_batch) {
            return Err(format!("max_batch {} is outside 2..={MAX_BATCH_LIMIT}", self.max_batch));
        }
        if self.window_us > MAX_WINDOW_US {
            return Err(format!("batch_window_us {} is above {MAX_WINDOW_US} (100 ms)", self.window_us));
        }
        Ok(())
    }
}

/// Counters of a deployment's batcher.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BatchStats {
    /// Backend runs that merged two or more jobs.
    pub batched_runs: u64,
    /// Jobs' computes served by those runs.
    pub batched_computes: u64,
    /// Rows those runs held.
    pub batched_rows: u64,
    /// Computes that ran alone on a batchable model.
    pub alone_computes: u64,
    /// Batched runs that failed or gave outputs without per-row shape, so
    /// their jobs ran alone.
    pub fallbacks: u64,
    /// Backend time of the batched runs, all together (ns).
    pub batched_run_ns: u64,
}

#[derive(Default)]
struct Counters {
    batched_runs: AtomicU64,
    batched_computes: AtomicU64,
    batched_rows: AtomicU64,
    alone_computes: AtomicU64,
    fallbacks: AtomicU64,
    batched_run_ns: AtomicU64,
}

type LaneKey = (String, BackendKind);

/// One deployment's lanes.
pub(crate) struct Batcher {
    config: BatchConfig,
    /// Most input bytes one merged run holds, all inputs together: the
    /// deployment's `max_tensor_bytes`, the bound a single job's tensor has.
    max_bytes: u64,
    lanes: Mutex<HashMap<LaneKey, Arc<Lane>>>,
    counters: Arc<Counters>,
    /// The deployment's jobs running now: the most computes that could
    /// join a batch soon.
    active: Arc<AtomicUsize>,
}

impl Batcher {
    pub(crate) fn new(config: BatchConfig, max_bytes: u64) -> Self {
        Self { config, max_bytes, lanes: Mutex::default(), counters: Arc::default(), active: Arc::default() }
    }

    /// Counts a job of the deployment as running until the guard drops.
    pub(crate) fn job_started(self: &Arc<Self>) -> ActiveJob {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveJob(self.clone())
    }

    /// A seat on the lane of model `sha256` on `kind`, if `graph` can be
    /// batched: every input and output declared with a dynamic first
    /// dimension.
    pub(crate) fn seat(self: &Arc<Self>, sha256: &str, kind: BackendKind, graph: &dyn BackendGraph) -> Option<Seat> {
        let per_row = |io: &[crate::backend::TensorInfo]| io.iter().all(|t| t.shape.first() == Some(&-1));
        if graph.inputs().is_empty() || !per_row(graph.inputs()) || !per_row(graph.outputs()) {
            return None;
        }
        let key = (sha256.to_string(), kind);
        let mut lanes = lock(&self.lanes);
        let lane = lanes
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Lane::new(self.config, self.max_bytes, self.counters.clone(), self.active.clone(), kind.is_gpu()))
            })
            .clone();
        lane.lock().seats += 1;
        Some(Seat { batcher: self.clone(), key, lane })
    }

    /// Current counters.
    pub(crate) fn stats(&self) -> BatchStats {
        let c = &self.counters;
        BatchStats {
            batched_runs: c.batched_runs.load(Ordering::Relaxed),
            batched_computes: c.batched_computes.load(Ordering::Relaxed),
            batched_rows: c.batched_rows.load(Ordering::Relaxed),
            alone_computes: c.alone_computes.load(Ordering::Relaxed),
            fallbacks: c.fallbacks.load(Ordering::Relaxed),
            batched_run_ns: c.batched_run_ns.load(Ordering::Relaxed),
        }
    }
}

/// A running job of a batching deployment (held by the job's inference
/// state, dropped with its store).
pub(crate) struct ActiveJob(Arc<Batcher>);

impl Drop for ActiveJob {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        // A leader may be waiting for every running job to join: one fewer.
        for lane in lock(&self.0.lanes).values() {
            let _held = lane.lock();
            lane.cv.notify_all();
        }
    }
}

/// An execution context's place on a lane; given up on drop (a lane with
/// no seat left is removed, so a guest loading model after model leaves
/// nothing behind).
pub(crate) struct Seat {
    batcher: Arc<Batcher>,
    key: LaneKey,
    lane: Arc<Lane>,
}

impl Seat {
    pub(crate) fn lane(&self) -> &Arc<Lane> {
        &self.lane
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut lanes = lock(&self.batcher.lanes);
        let mut st = self.lane.lock();
        st.seats -= 1;
        // With no seat, no job is in a compute of this lane.
        let idle = st.seats == 0;
        drop(st);
        if idle && lanes.get(&self.key).is_some_and(|l| Arc::ptr_eq(l, &self.lane)) {
            lanes.remove(&self.key);
        }
    }
}

/// The batches of one model.
pub(crate) struct Lane {
    config: BatchConfig,
    max_bytes: u64,
    counters: Arc<Counters>,
    active: Arc<AtomicUsize>,
    state: Mutex<LaneState>,
    cv: Condvar,
    /// Set when a batched run's outputs were not per-row: never batch again.
    not_per_row: AtomicBool,
    /// Pad merged runs with zero rows to `max_batch` (GPU backends): a
    /// CUDA session re-plans its kernels whenever the input shape differs
    /// from its last run's (≈ 20 ms per change for the CNN on an H200,
    /// against 0.7 ms for a whole run of 8 rows), so merged runs keep to
    /// one size (alone runs to another). On the CPU a change costs ~15% and
    /// a padded row a full row's compute: no padding.
    pad_rows: bool,
}

#[derive(Default)]
struct LaneState {
    seats: usize,
    next_ticket: u64,
    open: Vec<Gathering>,
    delivered: HashMap<u64, Delivery>,
    /// Followers that left at their deadline before their rows came.
    abandoned: HashSet<u64>,
}

/// Input names, types and dimensions after the first, in the job's order.
type Signature = Vec<(String, ElementType, Vec<u32>)>;

/// A batch being gathered by its leader.
struct Gathering {
    leader: u64,
    signature: Signature,
    /// One buffer per input: the rows of every member, in joining order.
    data: Vec<Vec<u8>>,
    /// Bytes in `data`, all inputs together.
    bytes: u64,
    rows: u32,
    /// (ticket, rows) of the followers, in joining order (the leader's
    /// rows come first).
    followers: Vec<(u64, u32)>,
}

enum Delivery {
    Rows(Computed),
    Alone,
}

/// One job's result of a compute through a lane.
pub(crate) struct Computed {
    /// The job's outputs (its rows only).
    pub(crate) outputs: Result<Vec<(String, OwnedTensor)>, BackendError>,
    /// Backend time charged to the job: its share of the run.
    pub(crate) backend_ns: u64,
    /// Backend memory charged to the job: its share of the run's.
    pub(crate) peak_bytes: u64,
    /// Jobs whose rows the run held (1: alone).
    pub(crate) jobs: u32,
}

impl Lane {
    fn new(
        config: BatchConfig,
        max_bytes: u64,
        counters: Arc<Counters>,
        active: Arc<AtomicUsize>,
        pad_rows: bool,
    ) -> Self {
        Self {
            config,
            max_bytes,
            counters,
            active,
            state: Mutex::default(),
            cv: Condvar::new(),
            not_per_row: AtomicBool::new(false),
            pad_rows,
        }
    }

    /// Rows a merged run of `rows` is padded to: `max_batch`, else (where
    /// that would pass the byte bound a merged run has) the next power of
    /// two within it, else `rows`.
    fn padded_rows(&self, rows: u32, bytes: u64) -> u32 {
        if !self.pad_rows || rows == 0 {
            return rows;
        }
        let fits = |target: u32| bytes / u64::from(rows) * u64::from(target) <= self.max_bytes;
        [self.config.max_batch, rows.next_power_of_two().min(self.config.max_batch)]
            .into_iter()
            .find(|&t| t >= rows && fits(t))
            .unwrap_or(rows)
    }

    fn lock(&self) -> MutexGuard<'_, LaneState> {
        lock(&self.state)
    }

    /// Runs `inputs` on `ctx`, merged with other jobs' computes where it can.
    pub(crate) fn compute(
        &self,
        ctx: &mut dyn BackendExecutionContext,
        inputs: &[(&str, TensorView<'_>)],
        deadline: Instant,
    ) -> Computed {
        let config = self.config;
        let bytes: u64 = inputs.iter().map(|(_, t)| t.data.len() as u64).sum();
        // Inputs that could not share a run with even one more job of their
        // size are not copied into a batch buffer at all.
        let Some((rows, signature)) =
            batch_shape(inputs).filter(|(r, _)| *r <= config.max_batch && bytes.saturating_mul(2) <= self.max_bytes)
        else {
            return self.alone(ctx, inputs, deadline);
        };
        let mut st = self.lock();
        if self.active.load(Ordering::Relaxed) <= 1 || self.not_per_row.load(Ordering::Relaxed) {
            drop(st);
            return self.alone(ctx, inputs, deadline);
        }
        let ticket = st.next_ticket;
        st.next_ticket += 1;

        // Join a batch being gathered, if one fits.
        let max_bytes = self.max_bytes;
        if let Some(g) = st.open.iter_mut().find(|g| {
            g.signature == signature && g.rows + rows <= config.max_batch && g.bytes + bytes <= max_bytes
        }) {
            for (buf, (_, t)) in g.data.iter_mut().zip(inputs) {
                buf.extend_from_slice(t.data);
            }
            g.bytes += bytes;
            g.rows += rows;
            g.followers.push((ticket, rows));
            self.cv.notify_all();
            loop {
                if let Some(d) = st.delivered.remove(&ticket) {
                    drop(st);
                    return match d {
                        Delivery::Rows(c) => c,
                        Delivery::Alone => self.alone(ctx, inputs, deadline),
                    };
                }
                let now = Instant::now();
                if now >= deadline {
                    st.abandoned.insert(ticket);
                    return Computed {
                        outputs: Err(BackendError::new(
                            BackendErrorKind::Timeout,
                            "the job's deadline passed while its batch was computed",
                        )),
                        backend_ns: 0,
                        peak_bytes: 0,
                        jobs: 0,
                    };
                }
                st = self.cv.wait_timeout(st, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
            }
        }

        // Lead a new batch.
        st.open.push(Gathering {
            leader: ticket,
            signature,
            data: inputs.iter().map(|(_, t)| t.data.to_vec()).collect(),
            bytes,
            rows,
            followers: Vec::new(),
        });
        let until = (Instant::now() + Duration::from_micros(config.window_us)).min(deadline);
        loop {
            let g = st.open.iter().find(|g| g.leader == ticket).expect("a leader's batch stays open until it takes it");
            let now = Instant::now();
            let everyone = g.followers.len() + 1 >= self.active.load(Ordering::Relaxed);
            if g.rows >= config.max_batch || everyone || now >= until {
                break;
            }
            st = self.cv.wait_timeout(st, until - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        let at = st.open.iter().position(|g| g.leader == ticket).expect("still open");
        let batch = st.open.swap_remove(at);
        drop(st);
        if batch.followers.is_empty() {
            return self.alone(ctx, inputs, deadline);
        }
        self.run_batch(ctx, inputs, batch, deadline)
    }

    fn alone(
        &self,
        ctx: &mut dyn BackendExecutionContext,
        inputs: &[(&str, TensorView<'_>)],
        deadline: Instant,
    ) -> Computed {
        self.counters.alone_computes.fetch_add(1, Ordering::Relaxed);
        compute_alone(ctx, inputs, deadline)
    }

    /// The leader's part: one run for the whole batch, each follower handed
    /// its rows (or told to run alone), the leader's rows returned.
    fn run_batch(
        &self,
        ctx: &mut dyn BackendExecutionContext,
        inputs: &[(&str, TensorView<'_>)],
        mut batch: Gathering,
        deadline: Instant,
    ) -> Computed {
        // Followers are told to run alone unless they are handed rows, also
        // if this thread unwinds.
        let mut pending = Pending { lane: self, tickets: batch.followers.iter().map(|&(t, _)| t).collect() };
        // Zero rows after the jobs' rows, cut off again below.
        let run_rows = self.padded_rows(batch.rows, batch.bytes);
        if run_rows > batch.rows {
            for d in &mut batch.data {
                let row_bytes = d.len() / batch.rows as usize;
                d.resize(row_bytes * run_rows as usize, 0);
            }
        }
        let dims: Vec<Vec<u32>> =
            batch.signature.iter().map(|(_, _, rest)| std::iter::once(run_rows).chain(rest.iter().copied()).collect())
            .collect();
        let views: Vec<(&str, TensorView<'_>)> = batch
            .signature
            .iter()
            .zip(&dims)
            .zip(&batch.data)
            .map(|(((name, ty, _), dims), data)| (name.as_str(), TensorView { ty: *ty, dims, data }))
            .collect();
        let leader_rows = batch.rows - batch.followers.iter().map(|&(_, r)| r).sum::<u32>();
        let padding = (run_rows > batch.rows).then_some(run_rows - batch.rows);
        let parts: Vec<u32> =
            std::iter::once(leader_rows).chain(batch.followers.iter().map(|&(_, r)| r)).chain(padding).collect();
        let start = Instant::now();
        let run = ctx.compute(&views, Some(deadline));
        let ns = start.elapsed().as_nanos() as u64;
        let peak = ctx.backend_peak_bytes();
        let counters = &self.counters;
        let split = match run {
            Ok(outputs) => split_rows(outputs, &parts).map(|mut per_part| {
                if padding.is_some() {
                    per_part.pop();
                }
                per_part
            }).map_err(|e| {
                self.not_per_row.store(true, Ordering::Relaxed);
                tracing::warn!("batched outputs are not per-row ({e}): this model is no longer batched");
            }),
            Err(e) => {
                tracing::debug!("batched run failed ({e}): its jobs run alone");
                Err(())
            }
        };
        let Ok(mut split) = split else {
            counters.fallbacks.fetch_add(1, Ordering::Relaxed);
            drop(pending); // every follower runs alone
            return self.alone(ctx, inputs, deadline);
        };
        counters.batched_runs.fetch_add(1, Ordering::Relaxed);
        let jobs = (batch.followers.len() + 1) as u32;
        counters.batched_computes.fetch_add(u64::from(jobs), Ordering::Relaxed);
        counters.batched_rows.fetch_add(u64::from(batch.rows), Ordering::Relaxed);
        counters.batched_run_ns.fetch_add(ns, Ordering::Relaxed);
        let share = |total: u64, rows: u32| (u128::from(total) * u128::from(rows)).div_ceil(u128::from(batch.rows)) as u64;
        let computed =
            |outputs, rows| Computed { outputs: Ok(outputs), backend_ns: share(ns, rows), peak_bytes: share(peak, rows), jobs };
        let own = split.remove(0);
        {
            let mut st = self.lock();
            for (&(ticket, rows), outputs) in batch.followers.iter().zip(split) {
                if !st.abandoned.remove(&ticket) {
                    st.delivered.insert(ticket, Delivery::Rows(computed(outputs, rows)));
                }
            }
            pending.tickets.clear();
        }
        self.cv.notify_all();
        computed(own, leader_rows)
    }
}

/// One job's compute on its own context, timed and charged whole: what a
/// compute is without batching.
pub(crate) fn compute_alone(
    ctx: &mut dyn BackendExecutionContext,
    inputs: &[(&str, TensorView<'_>)],
    deadline: Instant,
) -> Computed {
    let start = Instant::now();
    let outputs = ctx.compute(inputs, Some(deadline));
    Computed { outputs, backend_ns: start.elapsed().as_nanos() as u64, peak_bytes: ctx.backend_peak_bytes(), jobs: 1 }
}

/// Followers not yet handed rows: told to run alone when dropped.
struct Pending<'a> {
    lane: &'a Lane,
    tickets: Vec<u64>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.tickets.is_empty() {
            return;
        }
        let mut st = self.lane.lock();
        for t in self.tickets.drain(..) {
            if !st.abandoned.remove(&t) {
                st.delivered.insert(t, Delivery::Alone);
            }
        }
        drop(st);
        self.lane.cv.notify_all();
    }
}

/// The rows every input shares in its first dimension, and the inputs'
/// signature; `None` if they do not share one (or have none).
fn batch_shape(inputs: &[(&str, TensorView<'_>)]) -> Option<(u32, Signature)> {
    let rows = *inputs.first()?.1.dims.first()?;
    if rows == 0 {
        return None;
    }
    inputs
        .iter()
        .map(|(name, t)| match t.dims.split_first() {
            Some((&r, rest)) if r == rows => Some((name.to_string(), t.ty, rest.to_vec())),
            _ => None,
        })
        .collect::<Option<Signature>>()
        .map(|sig| (rows, sig))
}

/// Cuts each output along its first dimension into `parts` rows each, in
/// order; an error if an output does not have `sum(parts)` rows in front.
fn split_rows(outputs: Vec<(String, OwnedTensor)>, parts: &[u32]) -> Result<Vec<Vec<(String, OwnedTensor)>>, String> {
    let total: u32 = parts.iter().sum();
    let mut per_job: Vec<Vec<(String, OwnedTensor)>> = parts.iter().map(|_| Vec::with_capacity(outputs.len())).collect();
    for (name, t) in outputs {
        let Some((&first, rest)) = t.dims.split_first() else {
            return Err(format!("output '{name}' is a scalar"));
        };
        if first != total || t.data.len() % total as usize != 0 {
            return Err(format!("output '{name}' has shape {:?} for a batch of {total} rows", t.dims));
        }
        let row_bytes = t.data.len() / total as usize;
        let mut offset = 0;
        for (job, &rows) in per_job.iter_mut().zip(parts) {
            let len = rows as usize * row_bytes;
            let dims = std::iter::once(rows).chain(rest.iter().copied()).collect();
            job.push((name.clone(), OwnedTensor { ty: t.ty, dims, data: t.data[offset..offset + len].to_vec() }));
            offset += len;
        }
    }
    Ok(per_job)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::TensorInfo;
    use std::sync::Barrier;

    /// A model `y[r] = 2·x[r] + r_sum(x[r])` per row (f32, `[n, 3]` in,
    /// `[n, 3]` out): rows mixed up, or offsets wrong, change results. A
    /// row holding NaN fails the run (one job's bad input). Records the
    /// rows of every run.
    struct RowModel {
        runs: Arc<Mutex<Vec<u32>>>,
        /// Outputs with the first dimension dropped (not per-row).
        squash: bool,
        delay: Duration,
    }

    impl BackendGraph for RowModel {
        fn init_execution_context(&self) -> Result<Box<dyn BackendExecutionContext>, BackendError> {
            Ok(Box::new(RowCtx { runs: self.runs.clone(), squash: self.squash, delay: self.delay }))
        }
        fn inputs(&self) -> &[TensorInfo] {
            static IO: std::sync::LazyLock<Vec<TensorInfo>> = std::sync::LazyLock::new(|| {
                vec![TensorInfo { name: "x".into(), datatype: Some(crate::tensor::Datatype::Fp32), shape: vec![-1, 3] }]
            });
            &IO
        }
        fn outputs(&self) -> &[TensorInfo] {
            self.inputs()
        }
        fn memory_bytes(&self) -> u64 {
            0
        }
    }

    struct RowCtx {
        runs: Arc<Mutex<Vec<u32>>>,
        squash: bool,
        delay: Duration,
    }

    impl BackendExecutionContext for RowCtx {
        fn compute(
            &mut self,
            inputs: &[(&str, TensorView<'_>)],
            _deadline: Option<Instant>,
        ) -> Result<Vec<(String, OwnedTensor)>, BackendError> {
            std::thread::sleep(self.delay);
            let x = inputs[0].1;
            let vals: Vec<f32> = x.data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            if vals.iter().any(|v| v.is_nan()) {
                return Err(BackendError::new(BackendErrorKind::Runtime, "NaN in input"));
            }
            lock(&self.runs).push(x.dims[0]);
            let out: Vec<u8> = vals
                .chunks_exact(3)
                .flat_map(|row| {
                    let s: f32 = row.iter().sum();
                    row.iter().map(move |v| 2.0 * v + s).collect::<Vec<_>>()
                })
                .flat_map(f32::to_le_bytes)
                .collect();
            let dims = if self.squash { vec![x.dims[0] * 3] } else { x.dims.to_vec() };
            Ok(vec![("y".into(), OwnedTensor { ty: ElementType::F32, dims, data: out })])
        }
        fn backend_peak_bytes(&self) -> u64 {
            1000
        }
    }

    fn rows_of(job: usize, rows: u32) -> Vec<f32> {
        (0..rows * 3).map(|i| (job * 1000) as f32 + i as f32).collect()
    }

    fn expected(x: &[f32]) -> Vec<f32> {
        x.chunks_exact(3)
            .flat_map(|row| {
                let s: f32 = row.iter().sum();
                row.iter().map(move |v| 2.0 * v + s).collect::<Vec<_>>()
            })
            .collect()
    }

    fn bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|f| f.to_le_bytes()).collect()
    }

    fn floats(b: &[u8]) -> Vec<f32> {
        b.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    }

    /// Runs `jobs` concurrent computes on a lane of `kind` (job i has `rows(i)` rows, data
    /// `data(i)`), each with its own seat and context, started together.
    fn run_jobs(
        kind: BackendKind,
        config: BatchConfig,
        max_bytes: u64,
        model: RowModel,
        jobs: usize,
        rows: impl Fn(usize) -> u32 + Sync,
        data: impl Fn(usize) -> Vec<f32> + Sync,
    ) -> Vec<(Vec<f32>, Computed)> {
        let batcher = Arc::new(Batcher::new(config, max_bytes));
        let running: Vec<ActiveJob> = (0..jobs).map(|_| batcher.job_started()).collect();
        let seats: Vec<Seat> = (0..jobs).map(|_| batcher.seat("m", kind, &model).unwrap()).collect();
        let barrier = Barrier::new(jobs);
        let out = std::thread::scope(|s| {
            let handles: Vec<_> = seats
                .iter()
                .enumerate()
                .map(|(i, seat)| {
                    let (model, barrier, rows, data) = (&model, &barrier, &rows, &data);
                    s.spawn(move || {
                        let x = data(i);
                        let b = bytes(&x);
                        let dims = [rows(i), 3];
                        let mut ctx = model.init_execution_context().unwrap();
                        barrier.wait();
                        let c = seat.lane().compute(
                            &mut *ctx,
                            &[("x", TensorView { ty: ElementType::F32, dims: &dims, data: &b })],
                            Instant::now() + Duration::from_secs(10),
                        );
                        (x, c)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        drop(seats);
        drop(running);
        assert!(lock(&batcher.lanes).is_empty(), "a lane outlived its seats");
        assert_eq!(batcher.active.load(Ordering::Relaxed), 0);
        out
    }

    #[test]
    fn concurrent_jobs_are_merged_and_each_gets_exactly_its_rows() {
        let runs = Arc::new(Mutex::new(Vec::new()));
        let model = RowModel { runs: runs.clone(), squash: false, delay: Duration::from_millis(2) };
        let config = BatchConfig { max_batch: 16, window_us: 200_000 };
        let results = run_jobs(BackendKind::OrtCpu, config, 1 << 30, model, 8, |i| 1 + (i % 3) as u32, |i| rows_of(i, 1 + (i % 3) as u32));
        for (x, c) in &results {
            let out = c.outputs.as_ref().expect("computed");
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].1.dims, vec![(x.len() / 3) as u32, 3]);
            assert_eq!(floats(&out[0].1.data), expected(x), "a job got rows that are not its own");
        }
        let runs = lock(&runs).clone();
        assert_eq!(runs.iter().sum::<u32>(), results.iter().map(|(x, _)| (x.len() / 3) as u32).sum::<u32>());
        assert!(runs.len() < 8, "nothing was merged: runs {runs:?}");
        assert!(runs.iter().all(|&r| r <= 16));
        // Every seat joined: the batch left before its 200 ms window.
        let merged = results.iter().filter(|(_, c)| c.jobs > 1).count();
        assert!(merged >= 2);
        // Each job pays its share of the run, never the whole.
        for (_, c) in results.iter().filter(|(_, c)| c.jobs > 1) {
            assert!(c.peak_bytes < 1000, "charged the whole batch's memory: {}", c.peak_bytes);
        }
    }

    #[test]
    fn max_batch_caps_every_run() {
        let runs = Arc::new(Mutex::new(Vec::new()));
        let model = RowModel { runs: runs.clone(), squash: false, delay: Duration::from_millis(2) };
        let config = BatchConfig { max_batch: 4, window_us: 50_000 };
        let results = run_jobs(BackendKind::OrtCpu, config, 1 << 30, model, 12, |_| 1, |i| rows_of(i, 1));
        for (x, c) in &results {
            assert_eq!(floats(&c.outputs.as_ref().unwrap()[0].1.data), expected(x));
        }
        let runs = lock(&runs).clone();
        assert!(runs.iter().all(|&r| r <= 4), "{runs:?}");
        assert_eq!(runs.iter().sum::<u32>(), 12);
    }

    /// On a GPU lane merged runs are padded with zero rows to `max_batch`
    /// (a CUDA session re-plans at every new input shape); the padding
    /// never reaches a job, and the CPU lane is not padded.
    #[test]
    fn gpu_lanes_pad_merged_runs_to_max_batch_and_cut_the_padding_off() {
        for (kind, padded) in [(BackendKind::OrtCuda, true), (BackendKind::OrtCpu, false)] {
            let runs = Arc::new(Mutex::new(Vec::new()));
            let model = RowModel { runs: runs.clone(), squash: false, delay: Duration::from_millis(2) };
            let config = BatchConfig { max_batch: 8, window_us: 100_000 };
            let results = run_jobs(kind, config, 1 << 30, model, 5, |i| 1 + (i % 2) as u32, |i| rows_of(i, 1 + (i % 2) as u32));
            for (i, (x, c)) in results.iter().enumerate() {
                let out = &c.outputs.as_ref().unwrap()[0].1;
                assert_eq!(out.dims, vec![1 + (i % 2) as u32, 3], "{kind}: job {i} got another job's or padding rows");
                assert_eq!(floats(&out.data), expected(x), "{kind}: job {i}");
            }
            let runs = lock(&runs).clone();
            let rows: u32 = 7; // 1 + 2 + 1 + 2 + 1
            if padded {
                // Merged runs have 8 rows; a job left alone runs its own.
                assert!(runs.iter().all(|r| *r == 8 || *r <= 2), "{kind}: {runs:?}");
                assert!(runs.contains(&8), "{kind}: {runs:?}");
            } else {
                assert_eq!(runs.iter().sum::<u32>(), rows, "{kind}: {runs:?}");
            }
        }
        // Padding never takes a run past the merged run's byte bound: with
        // room for 3 rows only, 3 one-row jobs run as 3 rows, not 8 or 4.
        let runs = Arc::new(Mutex::new(Vec::new()));
        let model = RowModel { runs: runs.clone(), squash: false, delay: Duration::from_millis(2) };
        let config = BatchConfig { max_batch: 8, window_us: 100_000 };
        run_jobs(BackendKind::OrtCuda, config, 36, model, 3, |_| 1, |i| rows_of(i, 1));
        assert_eq!(lock(&runs).iter().sum::<u32>(), 3, "{:?}", lock(&runs));
    }

    #[test]
    fn a_bad_row_fails_only_its_own_job() {
        let runs = Arc::new(Mutex::new(Vec::new()));
        let model = RowModel { runs, squash: false, delay: Duration::from_millis(1) };
        let config = BatchConfig { max_batch: 16, window_us: 200_000 };
        let data = |i: usize| {
            let mut x = rows_of(i, 2);
            if i == 3 {
                x[4] = f32::NAN;
            }
            x
        };
        let results = run_jobs(BackendKind::OrtCpu, config, 1 << 30, model, 6, |_| 2, data);
        for (i, (x, c)) in results.iter().enumerate() {
            if i == 3 {
                assert_eq!(c.outputs.as_ref().unwrap_err().kind, BackendErrorKind::Runtime);
            } else {
                assert_eq!(floats(&c.outputs.as_ref().unwrap()[0].1.data), expected(x), "job {i}");
            }
        }
    }

    #[test]
    fn outputs_without_per_row_shape_fall_back_to_alone_runs() {
        let runs = Arc::new(Mutex::new(Vec::new()));
        let model = RowModel { runs: runs.clone(), squash: true, delay: Duration::from_millis(1) };
        let config = BatchConfig { max_batch: 16, window_us: 200_000 };
        let results = run_jobs(BackendKind::OrtCpu, config, 1 << 30, model, 4, |_| 1, |i| rows_of(i, 1));
        for (x, c) in &results {
            let out = &c.outputs.as_ref().unwrap()[0].1;
            assert_eq!(out.dims, vec![3], "the job's own, unbatched, output");
            assert_eq!(floats(&out.data), expected(x));
            assert_eq!(c.jobs, 1);
        }
    }

    #[test]
    fn a_batch_never_holds_more_input_bytes_than_one_tensor_may() {
        // 12 jobs of 2 rows (24 bytes each): a 100-byte bound lets at most
        // 4 jobs (8 rows) share a run, whatever max_batch says.
        let runs = Arc::new(Mutex::new(Vec::new()));
        let model = RowModel { runs: runs.clone(), squash: false, delay: Duration::from_millis(2) };
        let config = BatchConfig { max_batch: 64, window_us: 50_000 };
        let results = run_jobs(BackendKind::OrtCpu, config, 100, model, 12, |_| 2, |i| rows_of(i, 2));
        for (x, c) in &results {
            assert_eq!(floats(&c.outputs.as_ref().unwrap()[0].1.data), expected(x));
        }
        let runs = lock(&runs).clone();
        assert!(runs.iter().all(|&r| r <= 8), "{runs:?}");
        assert!(runs.iter().any(|&r| r > 2), "nothing merged: {runs:?}");
        // Inputs over half the bound run alone, uncopied.
        let runs = Arc::new(Mutex::new(Vec::new()));
        let model = RowModel { runs: runs.clone(), squash: false, delay: Duration::from_millis(2) };
        run_jobs(BackendKind::OrtCpu, config, 40, model, 4, |_| 2, |i| rows_of(i, 2));
        assert_eq!(lock(&runs).clone(), vec![2, 2, 2, 2]);
    }

    #[test]
    fn a_lone_seat_never_waits_for_the_window() {
        let model = RowModel { runs: Arc::default(), squash: false, delay: Duration::ZERO };
        let config = BatchConfig { max_batch: 8, window_us: MAX_WINDOW_US };
        let start = Instant::now();
        let results = run_jobs(BackendKind::OrtCpu, config, 1 << 30, model, 1, |_| 1, |i| rows_of(i, 1));
        assert!(results[0].1.outputs.is_ok());
        assert!(start.elapsed() < Duration::from_millis(90), "waited {:?}", start.elapsed());
    }

    #[test]
    fn mismatched_inputs_are_not_merged() {
        // Rows differing in trailing dimensions, or inputs without a
        // shared first dimension, run alone.
        assert!(batch_shape(&[
            ("a", TensorView { ty: ElementType::F32, dims: &[2, 3], data: &[] }),
            ("b", TensorView { ty: ElementType::F32, dims: &[1, 3], data: &[] }),
        ])
        .is_none());
        assert!(batch_shape(&[("a", TensorView { ty: ElementType::F32, dims: &[], data: &[] })]).is_none());
        let (rows, sig) = batch_shape(&[("a", TensorView { ty: ElementType::I64, dims: &[5, 7], data: &[] })]).unwrap();
        assert_eq!((rows, sig), (5, vec![("a".to_string(), ElementType::I64, vec![7])]));
        assert!(BatchConfig { max_batch: 1, window_us: 0 }.validate().is_err());
        assert!(BatchConfig { max_batch: 8, window_us: MAX_WINDOW_US + 1 }.validate().is_err());
        assert!(BatchConfig { max_batch: 8, window_us: 500 }.validate().is_ok());
    }
}
