//! `mote:edge/graph-builder` host implementation.

use super::bindings::mote::edge::graph_builder::{self as gb, Attribute, AttributeValue, OperandDesc};
use super::bindings::wasi::nn::errors::ErrorCode;
use super::bindings::wasi::nn::graph::ExecutionTarget;
use super::{NnGraph, NnResult, NnTensor, NnView};
use crate::graph_builder::{is_supported_op, AttrValue, DraftError, GraphDraft};
use crate::receipt::sha256_hex;
use wasmtime::component::Resource;

fn attrs(list: Vec<Attribute>) -> Vec<(String, AttrValue)> {
    list.into_iter()
        .map(|a| {
            let v = match a.value {
                AttributeValue::Int(i) => AttrValue::Int(i),
                AttributeValue::Float(f) => AttrValue::Float(f),
                AttributeValue::Str(s) => AttrValue::Str(s),
                AttributeValue::Ints(v) => AttrValue::Ints(v),
                AttributeValue::Floats(v) => AttrValue::Floats(v),
                AttributeValue::Strs(v) => AttrValue::Strs(v),
            };
            (a.name, v)
        })
        .collect()
}

impl NnView<'_> {
    fn draft_error<T>(&mut self, e: DraftError) -> NnResult<T> {
        let code = match e {
            DraftError::UnsupportedOp(_) => ErrorCode::UnsupportedOperation,
            DraftError::TooManyNodes => ErrorCode::TooLarge,
            _ => ErrorCode::InvalidArgument,
        };
        self.nn_error(code, e.to_string())
    }
}

impl gb::HostBuilder for NnView<'_> {
    fn new(&mut self) -> wasmtime::Result<Resource<GraphDraft>> {
        Ok(self.table.push(GraphDraft::default())?)
    }

    fn input(&mut self, b: Resource<GraphDraft>, name: String, desc: OperandDesc) -> NnResult<u32> {
        let r = self.table.get_mut(&b)?.input(&name, desc.ty.into(), &desc.shape);
        match r {
            Ok(op) => Ok(Ok(op)),
            Err(e) => self.draft_error(e),
        }
    }

    fn constant(&mut self, b: Resource<GraphDraft>, value: Resource<NnTensor>) -> NnResult<u32> {
        let t = self.table.get(&value)?;
        let (ty, dims, data) = (t.ty, t.dims.clone(), t.data.clone());
        let total = self.table.get(&b)?.constant_bytes() + data.len() as u64;
        self.check_tensor_bytes(|| "graph constants".into(), total)?;
        let r = self.table.get_mut(&b)?.constant(ty, &dims, data);
        match r {
            Ok(op) => Ok(Ok(op)),
            Err(e) => self.draft_error(e),
        }
    }

    fn node(
        &mut self,
        b: Resource<GraphDraft>,
        op_type: String,
        inputs: Vec<u32>,
        attributes: Vec<Attribute>,
    ) -> NnResult<u32> {
        let r = self.table.get_mut(&b)?.node(&op_type, &inputs, attrs(attributes), 1);
        match r {
            Ok(ops) => Ok(Ok(ops[0])),
            Err(e) => self.draft_error(e),
        }
    }

    fn node_multi(
        &mut self,
        b: Resource<GraphDraft>,
        op_type: String,
        inputs: Vec<u32>,
        attributes: Vec<Attribute>,
        outputs: u32,
    ) -> NnResult<Vec<u32>> {
        let r = self.table.get_mut(&b)?.node(&op_type, &inputs, attrs(attributes), outputs);
        match r {
            Ok(ops) => Ok(Ok(ops)),
            Err(e) => self.draft_error(e),
        }
    }

    fn build(
        &mut self,
        b: Resource<GraphDraft>,
        outputs: Vec<(String, u32)>,
        target: ExecutionTarget,
    ) -> NnResult<Resource<NnGraph>> {
        let lowered = self.table.get(&b)?.lower(&outputs);
        let bytes = match lowered {
            Ok(b) => b,
            Err(e) => return self.draft_error(e),
        };
        let kind = match self.resolve_backend(Some(target)) {
            Ok(k) => k,
            Err(msg) => return self.nn_error(ErrorCode::UnsupportedOperation, msg),
        };
        let sha = sha256_hex(&bytes);
        self.load_model(bytes.into(), sha, kind)
    }

    fn drop(&mut self, b: Resource<GraphDraft>) -> wasmtime::Result<()> {
        self.table.delete(b)?;
        Ok(())
    }
}

impl gb::Host for NnView<'_> {
    fn supports(&mut self, op_type: String, target: ExecutionTarget) -> wasmtime::Result<bool> {
        Ok(is_supported_op(&op_type)
            && self
                .resolve_backend(Some(target))
                .is_ok_and(|k| k.supports_op(&op_type) && self.ctx.node.backends.get(k).is_ok()))
    }
}
