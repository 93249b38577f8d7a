//! `wasi:nn` host implementation.

use super::bindings::wasi::nn::{errors, graph, inference, tensor};
use super::{abort, NnError, NnExecContext, NnGraph, NnResult, NnTensor, NnView};
use crate::backend::TensorView;
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
        let bytes = self.check_tensor(dims, ty, given)?;
        self.hold_tensor_bytes(bytes)
    }

    /// Ends the job if a tensor of shape `dims` and type `ty` would pass
    /// the tensor limit or `given` bytes are not its size; else returns
    /// its size.
    pub(crate) fn check_tensor(&self, dims: &[u32], ty: ElementType, given: usize) -> wasmtime::Result<u64> {
        let claimed = dims.iter().try_fold(ty.size() as u64, |acc, &d| acc.checked_mul(u64::from(d))).unwrap_or(u64::MAX);
        self.check_tensor_bytes(|| format!("tensor {dims:?}"), claimed)?;
        if claimed != given as u64 {
            return Err(abort(
                Outcome::InvalidInput,
                format!("tensor of shape {dims:?} and type {ty:?} needs {claimed} bytes but {given} were given"),
            ));
        }
        Ok(claimed)
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
        let mut running = self.begin_compute(&c, |name| inputs.iter().any(|(n, _)| n == name))?;
        let run = (|| {
            let mut views = Vec::with_capacity(inputs.len());
            for (name, t) in &inputs {
                let t = self.table.get(t)?;
                views.push((name.as_str(), TensorView { ty: t.ty, dims: &t.dims, data: &t.data }));
            }
            wasmtime::Result::Ok(running.run(&views))
        })();
        // `compute` takes its inputs (own handles): they end here, whatever
        // the outcome. (Left in the table, a guest running inference in a
        // loop would pile every input it ever passed onto the host.)
        for (_, t) in inputs {
            let t = self.table.delete(t)?;
            self.release_tensor(t);
        }
        let outputs = match self.end_compute(&c, running, run)? {
            Ok(o) => o,
            Err(e) => return Ok(Err(e)),
        };
        let mut result = Vec::with_capacity(outputs.len());
        for (name, t) in outputs {
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
