//! `mote:edge/inference-io`: an inference in one host call, tensors by
//! value. Linked by hand: bindgen would lift each input's bytes into a
//! fresh `Vec`; here they stay where they lie in guest memory and the
//! backend reads them there (the store is only read while the run goes).
//! Outputs are moved into the result and lowered into guest memory once.

use super::bindings::mote::edge::inference_io::TensorValue;
use super::bindings::wasi::nn::tensor::TensorType;
use super::{NnExecContext, NnView};
use crate::backend::TensorView;
use crate::tensor::ElementType;
use wasmtime::component::{ComponentType, Lift, Linker, Resource, WasmList};
use wasmtime::StoreContextMut;

/// The WIT interface, as guests import it.
const INTERFACE: &str = "mote:edge/inference-io@0.1.0";

/// An input `tensor-value` as lifted: its bytes left in guest memory.
#[derive(ComponentType, Lift)]
#[component(record)]
struct InputValue {
    name: String,
    dimensions: Vec<u32>,
    ty: TensorType,
    data: WasmList<u8>,
}

/// Links `compute`, reaching the capability through `view`.
pub(super) fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> NnView<'_>,
) -> wasmtime::Result<()> {
    linker.instance(INTERFACE)?.func_wrap(
        "compute",
        move |mut store: StoreContextMut<'_, T>, (c, inputs): (Resource<NnExecContext>, WasmList<InputValue>)| {
            let inputs = inputs.iter(&mut store)?.collect::<wasmtime::Result<Vec<InputValue>>>()?;
            let mut running = {
                let mut v = view(store.data_mut());
                for t in &inputs {
                    v.check_tensor(&t.dimensions, ElementType::from(t.ty), t.data.len())?;
                }
                v.begin_compute(&c, |name| inputs.iter().any(|t| t.name == name))?
            };
            let views: Vec<(&str, TensorView<'_>)> = inputs
                .iter()
                .map(|t| {
                    let view = TensorView { ty: t.ty.into(), dims: &t.dimensions, data: t.data.as_le_slice(&store) };
                    (t.name.as_str(), view)
                })
                .collect();
            let run = running.run(&views);
            drop(views);
            let outputs = match view(store.data_mut()).end_compute(&c, running, Ok(run))? {
                Ok(o) => o,
                Err(e) => return Ok((Err(e),)),
            };
            let values = outputs
                .into_iter()
                .map(|(name, t)| TensorValue { name, dimensions: t.dims, ty: t.ty.into(), data: t.data })
                .collect::<Vec<_>>();
            Ok((Ok(values),))
        },
    )
}
