//! `wasi:nn` host implementation.

use super::bindings::wasi::nn::{errors, graph, inference, tensor};
use super::{abort, NnError, NnExecContext, NnGraph, NnResult, NnTensor, NnView};
use crate::backend::TensorView;
use crate::batching::compute_alone;
use crate::limits::Outcome;
use crate::receipt::sha256_hex;
use crate::tensor::ElementType;
use errors::ErrorCode;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::Resource;

impl tensor::HostTensor for NnView<'_> {
    fn new(
        &mut self,
        dimensions: Vec<u32>,
        ty: tensor::TensorType,
        data: Vec<u8>,
    ) -> wasmtime::Result<Resource<NnTensor>> {
        // Linked by hand (`add_to_linker`, reusing buffers); bindgen's
        // path, kept for the trait, runs the same checks.
        let ty = ElementType::from(ty);
        self.admit_tensor(&dimensions, ty, data.len())?;
        Ok(self.table.push(NnTensor { dims: dimensions, ty, data })?)
    }

    fn dimensions(&mut self, t: Resource<NnTensor>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.table.get(&t)?.dims.clone())
    }

    fn ty(&mut self, t: Resource<NnTensor>) -> wasmtime::Result<tensor::TensorType> {
        Ok(self.table.get(&t)?.ty.into())
    }

    fn data(&mut self, t: Resource<NnTensor>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&t)?.data.clone())
    }

    fn drop(&mut self, t: Resource<NnTensor>) -> wasmtime::Result<()> {
        let t = self.table.delete(t)?;
        self.release_tensor(t);
        Ok(())
    }
}

impl tensor::Host for NnView<'_> {}

impl NnView<'_> {
    /// Admits a new tensor of shape `dims` and type `ty` with `given`
    /// bytes into the job's table: ends the job if it would pass the
    /// tensor limit or `given` is not its size, else counts its bytes as
    /// held (which may end the job at its memory limit).
    pub(crate) fn admit_tensor(&mut self, dims: &[u32], ty: ElementType, given: usize) -> wasmtime::Result<()> {
        let claimed = dims.iter().try_fold(ty.size() as u64, |acc, &d| acc.checked_mul(u64::from(d))).unwrap_or(u64::MAX);
        self.check_tensor_bytes(&format!("tensor {dims:?}"), claimed)?;
        if claimed != given as u64 {
            return Err(abort(
                Outcome::InvalidInput,
                format!("tensor of shape {dims:?} and type {ty:?} needs {claimed} bytes but {given} were given"),
            ));
        }
        self.hold_tensor_bytes(claimed)
    }
}

impl errors::HostError for NnView<'_> {
    fn code(&mut self, e: Resource<NnError>) -> wasmtime::Result<ErrorCode> {
        Ok(self.table.get(&e)?.code)
    }

    fn data(&mut self, e: Resource<NnError>) -> wasmtime::Result<String> {
        Ok(self.table.get(&e)?.data.clone())
    }

    fn drop(&mut self, e: Resource<NnError>) -> wasmtime::Result<()> {
        self.table.delete(e)?;
        Ok(())
    }
}

impl errors::Host for NnView<'_> {}

impl graph::HostGraph for NnView<'_> {
    fn init_execution_context(&mut self, g: Resource<NnGraph>) -> NnResult<Resource<NnExecContext>> {
        let g = self.table.get(&g)?;
        let graph = g.graph.clone();
        let seat = self.ctx.batcher.as_ref().and_then(|b| b.seat(&g.sha256, g.kind, &*graph));
        let start = Instant::now();
        let ctx = graph.init_execution_context();
        self.ctx.meter.backend_ns += start.elapsed().as_nanos() as u64;
        match ctx {
            Ok(ctx) => Ok(Ok(self.table.push(NnExecContext::new(ctx, seat))?)),
            Err(e) => self.backend_error(e),
        }
    }

    fn drop(&mut self, g: Resource<NnGraph>) -> wasmtime::Result<()> {
        self.table.delete(g)?;
        Ok(())
    }
}

impl graph::Host for NnView<'_> {
    fn load(
        &mut self,
        parts: Vec<Vec<u8>>,
        encoding: graph::GraphEncoding,
        target: graph::ExecutionTarget,
    ) -> NnResult<Resource<NnGraph>> {
        use graph::GraphEncoding as E;
        if !matches!(encoding, E::Onnx | E::Autodetect) {
            return self.nn_error(
                ErrorCode::InvalidEncoding,
                format!("graph encoding {encoding:?} is not supported; this node loads ONNX models"),
            );
        }
        let bytes: Arc<[u8]> = match <[Vec<u8>; 1]>::try_from(parts) {
            Ok([one]) => one.into(),
            Err(parts) => {
                return self.nn_error(
                    ErrorCode::InvalidArgument,
                    format!("an ONNX model is one part, got {} parts", parts.len()),
                );
            }
        };
        let kind = match self.resolve_backend(Some(target)) {
            Ok(k) => k,
            Err(msg) => return self.nn_error(ErrorCode::UnsupportedOperation, msg),
        };
        let sha = sha256_hex(&bytes);
        self.load_model(bytes, sha, kind)
    }

    fn load_by_name(&mut self, name: String) -> NnResult<Resource<NnGraph>> {
        let Some(model) = self.ctx.models.get(&name).cloned() else {
            let mut known: Vec<&str> = self.ctx.models.keys().map(String::as_str).collect();
            known.sort_unstable();
            return self.nn_error(
                ErrorCode::NotFound,
                format!("no model named '{name}' in this deployment (models: {})", known.join(", ")),
            );
        };
        let kind = match self.resolve_backend(None) {
            Ok(k) => k,
            Err(msg) => return self.nn_error(ErrorCode::UnsupportedOperation, msg),
        };
        self.load_model(model.bytes.clone(), model.sha256.clone(), kind)
    }
}

impl inference::HostGraphExecutionContext for NnView<'_> {
    fn compute(
        &mut self,
        c: Resource<NnExecContext>,
        inputs: Vec<(String, Resource<NnTensor>)>,
    ) -> NnResult<Vec<(String, Resource<NnTensor>)>> {
        let entry = self.table.get_mut(&c)?;
        let Some(mut ctx) = entry.ctx.take() else {
            return Err(wasmtime::Error::msg("execution context re-entered"));
        };
        // With bound state, the step is metered in tokens (mote:edge/state).
        let stateful = !entry.bound.is_empty();
        let continuing =
            stateful && entry.has_state && !entry.bound.iter().any(|(_, i)| inputs.iter().any(|(n, _)| n == i));
        let last_rows = entry.last_rows;
        // A stateful step is one sequence's: never merged with others.
        let lane = if stateful { None } else { entry.seat.as_ref().map(|s| s.lane().clone()) };
        let result: wasmtime::Result<_> = (|| {
            let mut views = Vec::with_capacity(inputs.len());
            let mut bytes_in = 0u64;
            let mut fed = (0u64, 1u64);
            if stateful {
                let ids = inputs.iter().find(|(n, _)| n == "input_ids").or(inputs.first());
                if let Some((_, t)) = ids {
                    let dims = &self.table.get(t)?.dims;
                    fed = (dims.iter().map(|&d| u64::from(d)).product(), dims.first().map_or(1, |&d| u64::from(d)));
                }
            }
            for (name, t) in &inputs {
                let t = self.table.get(t)?;
                bytes_in += t.data.len() as u64;
                views.push((name.as_str(), TensorView { ty: t.ty, dims: &t.dims, data: &t.data }));
            }
            let run = match &lane {
                Some(lane) => lane.compute(&mut *ctx, &views, self.ctx.deadline),
                None => compute_alone(&mut *ctx, &views, self.ctx.deadline),
            };
            wasmtime::Result::Ok((run, bytes_in, fed))
        })();
        self.table.get_mut(&c)?.ctx = Some(ctx);
        // `compute` takes its inputs (own handles): they end here, whatever
        // the outcome. (Left in the table, a guest running inference in a
        // loop would pile every input it ever passed onto the host.)
        for (_, t) in inputs {
            let t = self.table.delete(t)?;
            self.release_tensor(t);
        }
        let (run, bytes_in, (fed, rows)) = result?;
        if run.jobs > 1 {
            tracing::trace!(jobs = run.jobs, "compute served by a batched run");
        }
        let (out, ns, backend_peak) = (run.outputs, run.backend_ns, run.peak_bytes);
        if stateful {
            let entry = self.table.get_mut(&c)?;
            entry.has_state = out.is_ok();
            if out.is_ok() {
                let step = super::state::step_tokens(fed, rows, continuing, last_rows);
                entry.last_rows = rows;
                self.ctx.meter.prompt_tokens += step.prompt;
                self.ctx.meter.completion_tokens += step.completion;
            }
        }
        self.ctx.meter.backend_ns += ns;
        self.ctx.meter.bytes_in += bytes_in;
        self.charge_backend_memory(backend_peak)?;
        let outputs = match out {
            Ok(o) => o,
            Err(e) => return self.backend_error(e),
        };
        let mut result = Vec::with_capacity(outputs.len());
        for (name, t) in outputs {
            self.check_tensor_bytes(&format!("output '{name}'"), t.data.len() as u64)?;
            self.ctx.meter.bytes_out += t.data.len() as u64;
            self.hold_tensor_bytes(t.data.len() as u64)?;
            result.push((name, self.table.push(NnTensor { dims: t.dims, ty: t.ty, data: t.data })?));
        }
        Ok(Ok(result))
    }

    fn drop(&mut self, c: Resource<NnExecContext>) -> wasmtime::Result<()> {
        self.table.delete(c)?;
        Ok(())
    }
}

impl inference::Host for NnView<'_> {}
