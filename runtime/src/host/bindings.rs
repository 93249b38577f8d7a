//! Bindings generated from `wit/` for the host.

#![allow(missing_docs, unreachable_pub)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "mote:edge/job",
    imports: {
        "mote:edge/usage.current": store,
        default: trappable,
    },
    with: {
        "wasi:nn/tensor.tensor": super::NnTensor,
        "wasi:nn/graph.graph": super::NnGraph,
        "wasi:nn/inference.graph-execution-context": super::NnExecContext,
        "wasi:nn/errors.error": super::NnError,
        "mote:edge/graph-builder.builder": crate::graph_builder::GraphDraft,
    },
});
