//! Bindings generated from `wit/` for the host, and the conversions between
//! their element-type enums and mote's (by declaration order: see
//! `mote_protocol::tensor` for the one table behind every mapping).

#![allow(missing_docs, unreachable_pub)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "mote:edge/job",
    imports: {
        default: trappable,
    },
    with: {
        "wasi:nn/tensor.tensor": super::nn::NnTensor,
        "wasi:nn/graph.graph": super::nn::NnGraph,
        "wasi:nn/inference.graph-execution-context": super::nn::NnExecContext,
        "wasi:nn/errors.error": super::nn::NnError,
        "mote:edge/graph-builder.builder": crate::graph_builder::GraphDraft,
    },
});

use crate::tensor::{Datatype, ElementType};
use mote::edge::types::Datatype as WitDatatype;
use wasi::nn::tensor::TensorType;

/// `wasi:nn/tensor.tensor-type`'s cases in declaration order.
const TENSOR_TYPES: [TensorType; 7] = {
    use TensorType as T;
    [T::Fp16, T::Fp32, T::Fp64, T::Bf16, T::U8, T::I32, T::I64]
};

/// `mote:edge/types.datatype`'s cases in declaration order.
const WIT_DATATYPES: [WitDatatype; 14] = {
    use WitDatatype as W;
    [
        W::Bool,
        W::Uint8,
        W::Uint16,
        W::Uint32,
        W::Uint64,
        W::Int8,
        W::Int16,
        W::Int32,
        W::Int64,
        W::Fp16,
        W::Fp32,
        W::Fp64,
        W::Bf16,
        W::Bytes,
    ]
};

impl From<TensorType> for ElementType {
    fn from(t: TensorType) -> Self {
        ElementType::ALL[t as usize]
    }
}

impl From<ElementType> for TensorType {
    fn from(t: ElementType) -> Self {
        TENSOR_TYPES[t as usize]
    }
}

impl From<WitDatatype> for Datatype {
    fn from(d: WitDatatype) -> Self {
        Datatype::ALL[d as usize]
    }
}

impl From<Datatype> for WitDatatype {
    fn from(d: Datatype) -> Self {
        WIT_DATATYPES[d as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wit_enums_convert_by_declaration_order() {
        for (i, t) in TENSOR_TYPES.into_iter().enumerate() {
            assert_eq!(t as usize, i);
            assert_eq!(TensorType::from(ElementType::from(t)) as usize, i);
        }
        for (i, d) in WIT_DATATYPES.into_iter().enumerate() {
            assert_eq!(d as usize, i);
            // The WIT case names are the KServe spellings.
            let name = format!("{d:?}").to_uppercase();
            assert_eq!(name.rsplit("::").next(), Some(Datatype::from(d).as_str()));
        }
        assert_eq!(ElementType::from(TensorType::U8), ElementType::U8);
        assert_eq!(ElementType::from(TensorType::Bf16), ElementType::Bf16);
    }
}
