//! A job guest's `handle` export, type-checked once per deployment.
//!
//! bindgen's `JobPre::instantiate` looks up and type-checks the export on
//! every instance it creates (`get_typed_func`): ≈ 10 % of a small guest's
//! instantiation, paid by every job, though every instance of one
//! `InstancePre` has the very same types. Here the first instance of a
//! deployment is checked as bindgen checks it, the result is kept, and
//! later instances call `handle` without the check.

use super::bindings::exports::mote::edge::handler::HandlerError;
use super::bindings::mote::edge::types::{Request, Response};
use super::JobState;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use wasmtime::component::{ComponentExportIndex, Func, Instance, InstancePre, TypedFunc};
use wasmtime::AsContextMut;

/// The exported interface and function: `mote:edge/handler.handle`
/// (wit/edge.wit). A guest of another version of the interface exports
/// another name, and is refused at deploy.
const INTERFACE: &str = "mote:edge/handler@0.1.0";
const FUNCTION: &str = "handle";

/// `handle`'s parameters and results, as bindgen calls it.
type Params<'a> = (&'a Request,);
type Results = (Result<Response, HandlerError>,);

/// A job guest, pre-instantiated: each job instantiates it in its own store.
#[derive(Clone)]
pub(crate) struct HandlerPre {
    pre: InstancePre<JobState>,
    handle: ComponentExportIndex,
    /// Set once `handle`'s type matched [`Params`] and [`Results`] on an
    /// instance of `pre`; shared by the deployment's clones.
    checked: Arc<AtomicBool>,
}

/// One instance of a job guest, ready for one call of `handle`.
pub(crate) struct HandlerInstance {
    handle: Func,
}

impl HandlerPre {
    /// Finds the `handle` export by name, as bindgen's `JobPre::new` would.
    pub(crate) fn new(pre: InstancePre<JobState>) -> wasmtime::Result<Self> {
        let component = pre.component();
        let interface = component
            .get_export_index(None, INTERFACE)
            .ok_or_else(|| wasmtime::format_err!("no exported instance named `{INTERFACE}`"))?;
        let handle = component
            .get_export_index(Some(&interface), FUNCTION)
            .ok_or_else(|| wasmtime::format_err!("`{INTERFACE}` does not export `{FUNCTION}`"))?;
        Ok(Self { pre, handle, checked: Arc::default() })
    }

    /// Instantiates the guest in `store`. The deployment's first instance
    /// type-checks `handle` (an instance whose export does not match fails
    /// here, as with bindgen, and leaves the next one to check again).
    pub(crate) fn instantiate(
        &self,
        mut store: impl AsContextMut<Data = JobState>,
    ) -> wasmtime::Result<HandlerInstance> {
        let instance: Instance = self.pre.instantiate(&mut store)?;
        let handle = if self.checked.load(Ordering::Acquire) {
            instance
                .get_func(&mut store, self.handle)
                .ok_or_else(|| wasmtime::format_err!("the instance has no `{FUNCTION}` export"))?
        } else {
            let typed = wasmtime::error::Context::context(
                instance.get_typed_func::<Params<'_>, Results>(&mut store, &self.handle),
                "type-checking export func `handle`",
            )?;
            self.checked.store(true, Ordering::Release);
            *typed.func()
        };
        Ok(HandlerInstance { handle })
    }
}

impl HandlerInstance {
    /// Calls `handle` once.
    pub(crate) fn call_handle(
        &self,
        mut store: impl AsContextMut<Data = JobState>,
        request: &Request,
    ) -> wasmtime::Result<Result<Response, HandlerError>> {
        // SAFETY: `new_unchecked` requires the function's type to be
        // `Params -> Results`. `handle` was taken from an instance of the
        // deployment's `InstancePre`, whose component and linker fix every
        // instance's types, and `HandlerPre::instantiate` set `checked` only
        // after `get_typed_func` verified these very types on one of them.
        let typed = unsafe { TypedFunc::<Params<'_>, Results>::new_unchecked(self.handle) };
        let (result,) = typed.call(&mut store, (request,))?;
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The interface's name follows the WIT package's version: a bump
    /// there must come here too.
    #[test]
    fn the_interface_name_is_the_wit_packages() {
        let wit = include_str!("../../../wit/edge.wit");
        let package = wit.lines().find_map(|l| l.strip_prefix("package ")).expect("a package line");
        let (name, version) = package.trim_end_matches(';').split_once('@').expect("a versioned package");
        assert_eq!(INTERFACE, format!("{name}/handler@{version}"));
    }
}
