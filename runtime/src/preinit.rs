//! Guest pre-initialization (Wizer): run a component's `wizer-initialize`
//! export once, when the guest is built, and ship its initialized memory
//! and globals as the component's data, so that no job pays for it again.
//!
//! A job runs in a fresh instance, so whatever a guest sets up before its
//! first real work (the chat guest parses a 2 MB tokenizer: ≈ 108 ms per
//! job in the sandbox, docs/llm.md) is paid by every job. A guest that
//! exports `wizer-initialize: func()` (the SDK's
//! `mote_sdk::export_initializer!`) is instantiated here with every import
//! a trap, its initializer runs under a fuel and memory budget, and
//! `wasmtime-wizer` rewrites the component with the resulting state as data
//! segments (the initializer's export kept: see `preinitialize`). The node needs nothing for
//! it: a pre-initialized guest is an ordinary component, instantiated
//! copy-on-write from its memory image.
//!
//! The initializer may not call imports (no wasi:nn, no logging, no
//! clock): such a call traps and the build fails with the import's name.
//! What it computes must not depend on the job (the snapshot is shared by
//! every job of the deployment).

use std::task::{Context, Poll, Waker};
use wasmtime::component::{Component, Instance, Linker, WasmList};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

/// The export a guest names its initializer with (Wizer's default).
pub const INIT_EXPORT: &str = "wizer-initialize";

/// Bounds of one pre-initialization.
#[derive(Clone, Copy, Debug)]
pub struct PreinitLimits {
    /// Fuel (≈ wasm instructions) the initializer may spend.
    pub fuel: u64,
    /// Largest linear memory the initializer may grow to, in bytes.
    pub memory_bytes: usize,
}

impl Default for PreinitLimits {
    /// 50 G instructions (tens of seconds) and 1 GiB: a build step, bounded
    /// so that a runaway initializer fails the build instead of hanging it.
    fn default() -> Self {
        Self { fuel: 50_000_000_000, memory_bytes: 1 << 30 }
    }
}

/// Why a component could not be pre-initialized.
#[derive(Debug, thiserror::Error)]
pub enum PreinitError {
    /// Wizer could not instrument the component (a shape it does not
    /// support: nested components with modules, a module instantiated
    /// twice, imported modules).
    #[error("instrumenting the component: {0:#}")]
    Instrument(#[source] wasmtime::Error),
    /// The instrumented component did not compile or link.
    #[error("compiling the instrumented component: {0:#}")]
    Compile(#[source] wasmtime::Error),
    /// `wizer-initialize` has parameters or results.
    #[error("`{INIT_EXPORT}` must be `func()`: no parameters, no results")]
    Signature,
    /// Instantiation failed (a start function trapped, a memory too large).
    #[error("instantiating the component: {0:#}")]
    Instantiate(#[source] wasmtime::Error),
    /// The initializer trapped, called an import, ran out of fuel or memory.
    #[error("`{INIT_EXPORT}` failed: {0:#}")]
    Init(#[source] wasmtime::Error),
    /// Reading the state back or rewriting the component failed.
    #[error("snapshotting the initialized state: {0:#}")]
    Snapshot(#[source] wasmtime::Error),
}

/// A pre-initialized component and what its initializer cost.
#[derive(Debug)]
pub struct Preinitialized {
    /// The rewritten component (state as data).
    pub component: Vec<u8>,
    /// Fuel the initializer spent (≈ wasm instructions no job runs now).
    pub fuel: u64,
}

/// Whether `component` exports a top-level `wizer-initialize` function
/// (a cheap parse; nothing is compiled).
pub fn exports_initializer(component: &[u8]) -> bool {
    use wasmparser::{ComponentExternalKind, Parser, Payload};
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(component) {
        let Ok(payload) = payload else { return false };
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentExportSection(exports) if depth == 0 => {
                for export in exports.into_iter().flatten() {
                    if export.name.name == INIT_EXPORT && export.kind == ComponentExternalKind::Func {
                        return true;
                    }
                }
            }
            _ => {}
        }
    }
    false
}

/// Pre-initializes `component` if it exports `wizer-initialize`; `None`
/// if it does not (nothing to do).
pub fn preinitialize(component: &[u8], limits: PreinitLimits) -> Result<Option<Preinitialized>, PreinitError> {
    if !exports_initializer(component) {
        return Ok(None);
    }
    let mut wizer = Wizer::new();
    // Keep the export: wit-bindgen names the core function `wizer-initialize`
    // too, and Wizer 48 removes that core export while the component still
    // lifts it (an invalid component). Calling it again is harmless: the
    // state it builds is already there.
    wizer.keep_init_func(true);
    let (cx, instrumented) = wizer.instrument_component(component).map_err(PreinitError::Instrument)?;

    // An engine of its own: sync calls, fuel, no pooling (one instance).
    let mut config = Config::new();
    config.wasm_component_model(true).consume_fuel(true);
    let engine = Engine::new(&config).map_err(PreinitError::Compile)?;
    let compiled = Component::new(&engine, &instrumented).map_err(PreinitError::Compile)?;
    let mut linker = Linker::<StoreLimits>::new(&engine);
    linker.define_unknown_imports_as_traps(&compiled).map_err(PreinitError::Compile)?;

    let limits_store = StoreLimitsBuilder::new().memory_size(limits.memory_bytes).instances(64).build();
    let mut store = Store::new(&engine, limits_store);
    store.limiter(|s| s);
    store.set_fuel(limits.fuel).map_err(PreinitError::Instantiate)?;
    let instance = linker.instantiate(&mut store, &compiled).map_err(PreinitError::Instantiate)?;
    let init = instance.get_typed_func::<(), ()>(&mut store, INIT_EXPORT).map_err(|_| PreinitError::Signature)?;
    init.call(&mut store, ()).map_err(PreinitError::Init)?;
    let fuel = limits.fuel - store.get_fuel().unwrap_or(0);

    let mut state = SyncState { store: &mut store, instance, error: None };
    let snapshot = poll_ready(wizer.snapshot_component(&cx, &mut state));
    if let Some(e) = state.error {
        return Err(PreinitError::Snapshot(e));
    }
    let component = snapshot.map_err(PreinitError::Snapshot)?;
    Ok(Some(Preinitialized { component, fuel }))
}

/// Drives a future that never waits: `SyncState` answers every call at
/// once, so Wizer's async snapshot completes on its first poll.
fn poll_ready<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!("the snapshot's calls are synchronous"),
    }
}

/// Wizer's view of the instance: its accessor exports, called synchronously.
/// Wizer's trait cannot return errors; the first one is kept here and the
/// call answers an empty value.
struct SyncState<'a> {
    store: &'a mut Store<StoreLimits>,
    instance: Instance,
    error: Option<wasmtime::Error>,
}

impl SyncState<'_> {
    fn call<R>(&mut self, instance: &str, func: &str) -> Option<R>
    where
        R: wasmtime::component::ComponentType + wasmtime::component::Lift + Send + Sync + 'static,
    {
        if self.error.is_some() {
            return None;
        }
        let result = (|| {
            let (_, parent) = self
                .instance
                .get_export(&mut *self.store, None, instance)
                .ok_or_else(|| wasmtime::format_err!("no export `{instance}`"))?;
            let (_, index) = self
                .instance
                .get_export(&mut *self.store, Some(&parent), func)
                .ok_or_else(|| wasmtime::format_err!("no export `{instance}#{func}`"))?;
            let f = self.instance.get_typed_func::<(), (R,)>(&mut *self.store, index)?;
            Ok(f.call(&mut *self.store, ())?.0)
        })();
        match result {
            Ok(r) => Some(r),
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }
}

impl ComponentInstanceState for SyncState<'_> {
    async fn call_func_ret_list_u8(&mut self, instance: &str, func: &str, contents: impl FnOnce(&[u8]) + Send) {
        match self.call::<WasmList<u8>>(instance, func) {
            Some(list) => contents(list.as_le_slice(&*self.store)),
            None => contents(&[]),
        }
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func).unwrap_or(0)
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func).unwrap_or(0)
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call::<f32>(instance, func).map_or(0, f32::to_bits)
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call::<f64>(instance, func).map_or(0, f64::to_bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component whose core module keeps a counter in memory and a
    /// global: `get` returns both summed; `wizer-initialize` sets them (and,
    /// by `$mode`, loops, calls an import or traps instead).
    fn component(init_body: &str, export_init: bool) -> Vec<u8> {
        let export = if export_init {
            r#"(func (export "wizer-initialize") (canon lift (core func $i "wizer-initialize")))"#
        } else {
            ""
        };
        let wat = format!(
            r#"(component
                (import "host-fn" (func $host))
                (core func $host_low (canon lower (func $host)))
                (core module $m
                    (import "h" "f" (func $f))
                    (memory (export "memory") 1)
                    (global $g (mut i32) (i32.const 0))
                    (func (export "wizer-initialize") {init_body})
                    (func (export "get") (result i32)
                        (i32.add (i32.load (i32.const 100)) (global.get $g))))
                (core instance $hi (export "f" (func $host_low)))
                (core instance $i (instantiate $m (with "h" (instance $hi))))
                (func (export "get") (result u32) (canon lift (core func $i "get")))
                {export})"#
        );
        wat::parse_str(wat).unwrap()
    }

    const SETS_STATE: &str = "(i32.store (i32.const 100) (i32.const 40)) (global.set $g (i32.const 2))";

    fn get(component: &[u8]) -> u32 {
        let engine = Engine::new(Config::new().wasm_component_model(true)).unwrap();
        let c = Component::new(&engine, component).unwrap();
        let mut linker = Linker::<()>::new(&engine);
        linker.define_unknown_imports_as_traps(&c).unwrap();
        let mut store = Store::new(&engine, ());
        let i = linker.instantiate(&mut store, &c).unwrap();
        let f = i.get_typed_func::<(), (u32,)>(&mut store, "get").unwrap();
        f.call(&mut store, ()).unwrap().0
    }

    #[test]
    fn snapshot_carries_memory_and_globals() {
        let original = component(SETS_STATE, true);
        assert!(exports_initializer(&original));
        assert_eq!(get(&original), 0, "not initialized yet");
        let done = preinitialize(&original, PreinitLimits::default()).unwrap().unwrap();
        assert!(done.fuel > 0);
        assert_eq!(get(&done.component), 42, "memory (40) and global (2) kept");
        // Still exported (wit-bindgen's guests need it: see `preinitialize`).
        assert!(exports_initializer(&done.component));
    }

    #[test]
    fn without_the_export_nothing_happens() {
        let original = component(SETS_STATE, false);
        assert!(!exports_initializer(&original));
        assert!(preinitialize(&original, PreinitLimits::default()).unwrap().is_none());
    }

    #[test]
    fn an_initializer_that_calls_an_import_fails_the_build() {
        let err = preinitialize(&component("(call $f)", true), PreinitLimits::default()).unwrap_err();
        assert!(matches!(err, PreinitError::Init(_)), "{err}");
        assert!(format!("{err}").contains("host-fn"), "names the import: {err}");
    }

    #[test]
    fn a_runaway_initializer_runs_out_of_fuel() {
        let limits = PreinitLimits { fuel: 1_000_000, ..Default::default() };
        let err = preinitialize(&component("(loop $l (br $l))", true), limits).unwrap_err();
        assert!(matches!(err, PreinitError::Init(_)), "{err}");
    }

    #[test]
    fn an_initializer_that_grows_past_the_memory_budget_fails() {
        let limits = PreinitLimits { memory_bytes: 4 << 16, ..Default::default() };
        let body = "(if (i32.eq (memory.grow (i32.const 16)) (i32.const -1)) (then unreachable))";
        let err = preinitialize(&component(body, true), limits).unwrap_err();
        assert!(matches!(err, PreinitError::Init(_)), "{err}");
    }

    #[test]
    fn a_trap_fails_the_build() {
        let err = preinitialize(&component("unreachable", true), PreinitLimits::default()).unwrap_err();
        assert!(matches!(err, PreinitError::Init(_)), "{err}");
    }

    #[test]
    fn garbage_is_not_an_initializer() {
        assert!(!exports_initializer(b"\0asm\x0d\0\x01\0garbage"));
        assert!(preinitialize(b"not wasm", PreinitLimits::default()).unwrap().is_none());
    }
}
