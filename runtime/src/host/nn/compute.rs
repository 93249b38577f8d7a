//! One compute on a job's execution context, shared by both ways a guest
//! runs one: wasi-nn's `compute` (tensors as resources in the job's table)
//! and `mote:edge/inference-io` (tensors by value, inputs read in guest
//! memory). A compute is taken in three steps so that its inputs may
//! borrow the store while it runs: [`NnView::begin_compute`] takes the
//! backend context out of its resource, [`Running::run`] runs it without
//! the store, and [`NnView::end_compute`] puts it back and meters the run.

use super::{NnExecContext, NnResult, NnView};
use crate::backend::{BackendExecutionContext, OwnedTensor, TensorView};
use crate::batching::{compute_alone, Computed, Lane};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::Resource;

/// A compute under way: the context, out of its resource while it runs.
pub(crate) struct Running {
    ctx: Box<dyn BackendExecutionContext>,
    /// The model's batching lane, where this compute may be merged.
    lane: Option<Arc<Lane>>,
    deadline: Instant,
    /// The context has bound state: the step is metered in tokens.
    stateful: bool,
    /// The step continues kept state (no bound input was passed).
    continuing: bool,
    last_rows: u64,
    /// Tokens fed and batch rows (stateful steps only).
    fed: (u64, u64),
    bytes_in: u64,
}

impl Running {
    /// Runs the inputs, merged with other jobs' computes where the
    /// deployment batches. Needs nothing of the store.
    pub(crate) fn run(&mut self, inputs: &[(&str, TensorView<'_>)]) -> Computed {
        self.bytes_in = inputs.iter().map(|(_, t)| t.data.len() as u64).sum();
        if self.stateful {
            let ids = inputs.iter().find(|(n, _)| *n == "input_ids").or(inputs.first());
            if let Some((_, t)) = ids {
                let dims = t.dims;
                self.fed = (dims.iter().map(|&d| u64::from(d)).product(), dims.first().map_or(1, |&d| u64::from(d)));
            }
        }
        match &self.lane {
            Some(lane) => lane.compute(&mut *self.ctx, inputs, self.deadline),
            None => compute_alone(&mut *self.ctx, inputs, self.deadline),
        }
    }
}

impl NnView<'_> {
    /// Takes `c`'s backend context out for one compute; `passes(name)`
    /// says whether the guest passes the input `name` itself.
    pub(crate) fn begin_compute(
        &mut self,
        c: &Resource<NnExecContext>,
        passes: impl Fn(&str) -> bool,
    ) -> wasmtime::Result<Running> {
        let entry = self.table.get_mut(c)?;
        let Some(ctx) = entry.ctx.take() else {
            return Err(wasmtime::Error::msg("execution context re-entered"));
        };
        let stateful = !entry.bound.is_empty();
        let continuing = stateful && entry.has_state && !entry.bound.iter().any(|(_, i)| passes(i));
        Ok(Running {
            ctx,
            // A stateful step is one sequence's: never merged with others.
            lane: if stateful { None } else { entry.seat.as_ref().map(|s| s.lane().clone()) },
            deadline: self.ctx.deadline,
            stateful,
            continuing,
            last_rows: entry.last_rows,
            fed: (0, 1),
            bytes_in: 0,
        })
    }

    /// Puts the context back and meters the run (`run`: its result, or the
    /// error that kept it from running): backend time, bytes in and out,
    /// tokens of a stateful step, backend memory; ends the job where an
    /// output passes the tensor limit. Returns the outputs, or the
    /// guest-visible error of a failed run.
    pub(crate) fn end_compute(
        &mut self,
        c: &Resource<NnExecContext>,
        running: Running,
        run: wasmtime::Result<Computed>,
    ) -> NnResult<Vec<(String, OwnedTensor)>> {
        let Running { ctx, stateful, continuing, last_rows, fed: (fed, rows), bytes_in, .. } = running;
        self.table.get_mut(c)?.ctx = Some(ctx);
        let run = run?;
        if run.jobs > 1 {
            tracing::trace!(jobs = run.jobs, "compute served by a batched run");
        }
        if stateful {
            let entry = self.table.get_mut(c)?;
            entry.has_state = run.outputs.is_ok();
            if run.outputs.is_ok() {
                let step = super::state::step_tokens(fed, rows, continuing, last_rows);
                entry.last_rows = rows;
                self.ctx.meter.prompt_tokens += step.prompt;
                self.ctx.meter.completion_tokens += step.completion;
            }
        }
        self.ctx.meter.backend_ns += run.backend_ns;
        self.ctx.meter.bytes_in += bytes_in;
        self.charge_backend_memory(run.peak_bytes)?;
        let outputs = match run.outputs {
            Ok(o) => o,
            Err(e) => return self.backend_error(e),
        };
        for (name, t) in &outputs {
            self.check_tensor_bytes(|| format!("output '{name}'"), t.data.len() as u64)?;
            self.ctx.meter.bytes_out += t.data.len() as u64;
        }
        Ok(Ok(outputs))
    }
}
