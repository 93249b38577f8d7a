//! `mote:edge/inference-io`: an inference in one host call, tensors by
//! value as the request's own `io-tensor`s. Linked by hand: bindgen would
//! lift each input's bytes into a fresh `Vec`; here they stay where they
//! lie in guest memory and the backend reads them there (the store is
//! only read while the run goes). Outputs are moved into the result and
//! lowered into guest memory once.

use super::bindings::mote::edge::types::{Datatype as WitDatatype, IoTensor};
use super::bindings::wasi::nn::errors::ErrorCode;
use super::{NnExecContext, NnView};
use crate::backend::TensorView;
use crate::tensor::{Datatype, ElementType};
use mote_protocol::MAX_INPUTS;
use wasmtime::component::{ComponentType, Lift, Linker, Resource, WasmList};
use wasmtime::StoreContextMut;

/// The WIT interface, as guests import it.
const INTERFACE: &str = "mote:edge/inference-io@0.1.0";

/// An input `io-tensor` as lifted: its bytes left in guest memory.
#[derive(ComponentType, Lift)]
#[component(record)]
struct InputTensor {
    name: String,
    datatype: WitDatatype,
    shape: Vec<u64>,
    data: WasmList<u8>,
}

/// An input checked for a backend: element type and u32 dimensions.
struct Checked {
    ty: ElementType,
    dims: Vec<u32>,
}

/// Links `compute`, reaching the capability through `view`.
pub(super) fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> NnView<'_>,
) -> wasmtime::Result<()> {
    linker.instance(INTERFACE)?.func_wrap(
        "compute",
        move |mut store: StoreContextMut<'_, T>, (c, inputs): (Resource<NnExecContext>, WasmList<InputTensor>)| {
            // Refused before any of it is lifted (names and shapes are
            // copied to the host): no model takes more inputs than a
            // request may carry.
            if inputs.len() > MAX_INPUTS {
                let message = format!("{} input tensors; a compute takes at most {MAX_INPUTS}", inputs.len());
                return Ok((view(store.data_mut()).nn_error(ErrorCode::InvalidArgument, message)?,));
            }
            let inputs = inputs.iter(&mut store)?.collect::<wasmtime::Result<Vec<InputTensor>>>()?;
            let mut checked = Vec::with_capacity(inputs.len());
            for t in &inputs {
                let datatype = Datatype::from(t.datatype);
                let Some(ty) = datatype.element_type() else {
                    let message = format!("input '{}' has datatype {datatype}, which wasi-nn cannot carry", t.name);
                    return Ok((view(store.data_mut()).nn_error(ErrorCode::InvalidArgument, message)?,));
                };
                let Ok(dims) = t.shape.iter().map(|&d| u32::try_from(d)).collect::<Result<Vec<u32>, _>>() else {
                    let message = format!("input '{}': a dimension of {:?} exceeds u32", t.name, t.shape);
                    return Ok((view(store.data_mut()).nn_error(ErrorCode::InvalidArgument, message)?,));
                };
                checked.push(Checked { ty, dims });
            }
            let mut running = {
                let mut v = view(store.data_mut());
                for (t, k) in inputs.iter().zip(&checked) {
                    v.check_tensor(&k.dims, k.ty, t.data.len())?;
                }
                v.begin_compute(&c, |name| inputs.iter().any(|t| t.name == name))?
            };
            let views: Vec<(&str, TensorView<'_>)> = inputs
                .iter()
                .zip(&checked)
                .map(|(t, k)| (t.name.as_str(), TensorView { ty: k.ty, dims: &k.dims, data: t.data.as_le_slice(&store) }))
                .collect();
            let run = running.run(&views);
            drop(views);
            let outputs = match view(store.data_mut()).end_compute(&c, running, Ok(run))? {
                Ok(o) => o,
                Err(e) => return Ok((Err(e),)),
            };
            let values = outputs
                .into_iter()
                .map(|(name, t)| IoTensor {
                    name,
                    datatype: Datatype::from(t.ty).into(),
                    shape: t.dims.into_iter().map(u64::from).collect(),
                    data: t.data,
                })
                .collect::<Vec<_>>();
            Ok((Ok(values),))
        },
    )
}
