//! `mote build`: compile a guest crate (or workspace) to components.
//!
//! Two toolchains are supported. Where rustup has the `wasm32-wasip2`
//! target, cargo produces components directly. Otherwise mote uses a
//! distribution Rust with its standard-library sources (Debian's
//! `rustc-web` + `rust-web-src`) to build for `wasm32-unknown-unknown` with
//! `-Zbuild-std`, and turns each core module into a component with
//! `wit-component` (the world is embedded by `wit-bindgen`). With
//! `--target wasm32-wasip1` the same toolchain builds WASI guests (Debian's
//! `wasi-libc`), and the WASI preview-1 imports are adapted to WASI 0.2 with
//! wasmtime's adapter, so such guests get the node's (empty, captured) WASI.
//!
//! A crate with a `main` (a `bin` target) is a command program: it builds
//! for `wasm32-wasip1` (wasmtime's command adapter) or, with rustup's
//! target, `wasm32-wasip2`, into a `wasi:cli/command` component.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// How guests are compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Toolchain {
    /// rustup's `wasm32-wasip2` target.
    Wasip2,
    /// A distribution rustc with std sources, `wasm32-unknown-unknown`.
    BuildStd,
}

struct BuildStd {
    rustc: PathBuf,
    cargo: PathBuf,
    linker: PathBuf,
}

fn find_build_std() -> Option<BuildStd> {
    let rustc = PathBuf::from("/usr/bin/rustc");
    let cargo = PathBuf::from("/usr/bin/cargo");
    let src = Path::new("/usr/lib/rustlib/src/rust/library/std");
    if !(rustc.is_file() && cargo.is_file() && src.is_dir()) {
        return None;
    }
    let mut linkers: Vec<PathBuf> = std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin/wasm-ld"))
        .filter(|p| p.is_file() && p.to_string_lossy().contains("llvm-"))
        .collect();
    linkers.sort();
    Some(BuildStd { rustc, cargo, linker: linkers.pop()? })
}

fn has_wasip2() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == "wasm32-wasip2"))
}

fn pick(requested: Option<Toolchain>) -> Result<Toolchain> {
    if let Some(t) = requested {
        return Ok(t);
    }
    if let Ok(v) = std::env::var("MOTE_GUEST_TOOLCHAIN") {
        return match v.as_str() {
            "wasip2" => Ok(Toolchain::Wasip2),
            "build-std" => Ok(Toolchain::BuildStd),
            other => bail!("MOTE_GUEST_TOOLCHAIN={other}: expected wasip2 or build-std"),
        };
    }
    if has_wasip2() {
        Ok(Toolchain::Wasip2)
    } else if find_build_std().is_some() {
        Ok(Toolchain::BuildStd)
    } else {
        bail!(
            "no guest toolchain: run `rustup target add wasm32-wasip2`, or install Debian's \
             rustc-web, rust-web-src and lld (scripts/setup.sh does this)"
        )
    }
}

/// What a crate target builds into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A `cdylib`: a `mote:edge/job` guest (a reactor).
    Guest,
    /// A `bin` (a `main`): a `wasi:cli/command` program.
    Program,
}

/// The cdylib and bin targets of the package(s) in `dir`.
fn targets(dir: &Path) -> Result<Vec<(String, Kind)>> {
    let out = Command::new("cargo")
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(dir)
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed in {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    // A package directory builds that package; a workspace root, all members.
    let manifest = dir.join("Cargo.toml").canonicalize().ok();
    let packages: Vec<&serde_json::Value> = meta["packages"].as_array().into_iter().flatten().collect();
    let own = packages
        .iter()
        .copied()
        .filter(|p| manifest.as_ref().is_some_and(|m| Path::new(p["manifest_path"].as_str().unwrap_or_default()) == m));
    let selected: Vec<&serde_json::Value> = if own.clone().count() > 0 { own.collect() } else { packages };
    let mut names = Vec::new();
    for pkg in selected {
        for t in pkg["targets"].as_array().into_iter().flatten() {
            let has = |kind: &str| t["crate_types"].as_array().is_some_and(|c| c.iter().any(|c| c == kind));
            let name = t["name"].as_str().unwrap_or_default();
            if has("cdylib") {
                names.push((name.replace('-', "_"), Kind::Guest));
            } else if t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin")) {
                // cargo keeps a binary's name as written.
                names.push((name.to_string(), Kind::Program));
            }
        }
    }
    if names.is_empty() {
        bail!(
            "{} has no cdylib or bin crate: a guest needs `crate-type = [\"cdylib\"]`, a command program a `main`",
            dir.display()
        );
    }
    Ok(names)
}

/// Builds every guest in `dir` and writes `NAME.wasm` components to `out`.
/// `target` overrides the toolchain's default target triple.
pub(crate) fn build(
    dir: &Path,
    out: &Path,
    toolchain: Option<Toolchain>,
    target: Option<&str>,
    preinit: bool,
) -> Result<Vec<PathBuf>> {
    let toolchain = pick(toolchain)?;
    let names = targets(dir)?;
    let programs = names.iter().any(|(_, k)| *k == Kind::Program);
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| dir.join("target"), PathBuf::from);
    let triple = match (toolchain, target) {
        (_, Some(t)) => t,
        (Toolchain::Wasip2, None) => "wasm32-wasip2",
        // A command program needs WASI; a job guest needs nothing.
        (Toolchain::BuildStd, None) if programs => "wasm32-wasip1",
        (Toolchain::BuildStd, None) => "wasm32-unknown-unknown",
    };
    if programs && !matches!(triple, "wasm32-wasip1" | "wasm32-wasip2") {
        bail!("command programs (a `main`) build for --target wasm32-wasip1 or wasm32-wasip2, not {triple}");
    }
    if toolchain == Toolchain::BuildStd && triple == "wasm32-wasip2" {
        bail!(
            "--target wasm32-wasip2 needs rustup's wasm32-wasip2 target (`rustup target add wasm32-wasip2`): \
             the distribution toolchain has no WASI 0.2 libc or component linker; use --target wasm32-wasip1"
        );
    }
    if toolchain == Toolchain::BuildStd && triple == "wasm32-wasip1" && !Path::new(WASI_LIBC).join("libc.a").is_file() {
        bail!("--target wasm32-wasip1 needs WASI libc in {WASI_LIBC} (Debian package wasi-libc)");
    }
    let mut cmd;
    match toolchain {
        Toolchain::Wasip2 => {
            cmd = Command::new("cargo");
            cmd.args(["build", "--release", "--target", triple]);
        }
        Toolchain::BuildStd => {
            let ts = find_build_std().context("Debian rustc-web/rust-web-src/lld not found")?;
            cmd = Command::new(&ts.cargo);
            cmd.args(["build", "--release", "-Zbuild-std=std,panic_abort", "--target", triple])
                .env("RUSTC", &ts.rustc)
                .env("RUSTC_BOOTSTRAP", "1")
                .env("RUSTFLAGS", build_std_rustflags(&ts.linker, triple))
                // rustup's proxies would otherwise pick their own toolchain.
                .env_remove("RUSTUP_TOOLCHAIN")
                .env_remove("CARGO");
        }
    }
    cmd.current_dir(dir).env("CARGO_TARGET_DIR", &target_dir);
    eprintln!("building guests in {} ({triple})", dir.display());
    let status = cmd.status().context("starting cargo")?;
    if !status.success() {
        bail!("guest build failed in {}", dir.display());
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut written = Vec::new();
    for (name, kind) in names {
        let built = target_dir.join(triple).join("release").join(format!("{name}.wasm"));
        let bytes = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
        let dest = out.join(format!("{}.wasm", name.replace('_', "-")));
        let key = BuildKey::of(&bytes, kind, triple, preinit);
        if let Some(len) = key.as_ref().and_then(|k| k.reuse(&dest)) {
            eprintln!("  {} ({} KiB, unchanged)", dest.display(), len / 1024);
            written.push(dest);
            continue;
        }
        let component = match (wasmparser_is_component(&bytes), kind) {
            (true, _) => bytes,
            (false, Kind::Guest) => componentize(&bytes)?,
            (false, Kind::Program) => componentize_program(&bytes)?,
        };
        let (component, note) = match kind {
            Kind::Guest if preinit && triple == "wasm32-unknown-unknown" => pre_initialize(component, &dest)?,
            Kind::Guest if preinit && mote_runtime::preinit::exports_initializer(&component) => {
                // wasi-libc's start-up (preopens, stdio) calls WASI, which
                // the initializer's sandbox does not have.
                eprintln!(
                    "  note: {}'s pre-initializer not run: a {triple} guest's start-up calls WASI; \
                     build for wasm32-unknown-unknown to pre-initialize",
                    dest.display()
                );
                (component, String::new())
            }
            _ => (component, String::new()),
        };
        std::fs::write(&dest, &component).with_context(|| format!("writing {}", dest.display()))?;
        if let Some(k) = &key {
            k.record(&dest, &component);
        }
        eprintln!("  {} ({} KiB{note})", dest.display(), component.len() / 1024);
        written.push(dest);
    }
    Ok(written)
}

/// What a written component was made from: its core module, its kind and
/// target, whether pre-initialization was asked for, and this `mote`
/// binary (whose componentizer, adapters and pre-initializer made it).
/// `mote build` keeps it beside each component it writes
/// (`.NAME.wasm.build`, with the component's own digest), and a later build
/// from the same key keeps the component as it is instead of making it
/// again: cargo rebuilt nothing, so neither does mote (a guest's
/// pre-initializer can run for seconds).
#[derive(Debug, PartialEq, Eq)]
struct BuildKey(String);

impl BuildKey {
    /// The key of `module` built as `kind` for `triple`; `None` when this
    /// binary cannot be read (then every build makes its components).
    fn of(module: &[u8], kind: Kind, triple: &str, preinit: bool) -> Option<Self> {
        static SELF: std::sync::OnceLock<Option<blake3::Hash>> = std::sync::OnceLock::new();
        let mote = SELF.get_or_init(|| {
            let exe = std::env::current_exe().ok()?;
            let mut h = blake3::Hasher::new();
            h.update_reader(std::fs::File::open(exe).ok()?).ok()?;
            Some(h.finalize())
        });
        Some(Self::with(mote.as_ref()?.as_bytes(), module, kind, triple, preinit))
    }

    fn with(mote: &[u8; 32], module: &[u8], kind: Kind, triple: &str, preinit: bool) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"mote build key 1\0");
        h.update(mote);
        h.update(format!("{kind:?}\0{triple}\0{preinit}\0").as_bytes());
        h.update(blake3::hash(module).as_bytes());
        Self(h.finalize().to_hex().to_string())
    }

    fn record_path(dest: &Path) -> PathBuf {
        let name = dest.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        dest.with_file_name(format!(".{name}.build"))
    }

    /// The length of `dest` when it was written from this key and is still
    /// what was written; `None` otherwise.
    fn reuse(&self, dest: &Path) -> Option<usize> {
        let record = std::fs::read_to_string(Self::record_path(dest)).ok()?;
        let mut lines = record.lines();
        if lines.next()? != self.0 {
            return None;
        }
        let written = lines.next()?;
        let component = std::fs::read(dest).ok()?;
        (blake3::hash(&component).to_hex().as_str() == written).then_some(component.len())
    }

    /// Notes that `dest` was written from this key (best effort: without
    /// the note the next build makes the component again).
    fn record(&self, dest: &Path, component: &[u8]) {
        let note = format!("{}\n{}\n", self.0, blake3::hash(component).to_hex());
        if let Err(e) = std::fs::write(Self::record_path(dest), note) {
            tracing::debug!("{}: build key not kept: {e}", dest.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_is_kept_only_while_its_key_and_its_bytes_are_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("guest.wasm");
        let mote = [7u8; 32];
        let key = BuildKey::with(&mote, b"core module", Kind::Guest, "wasm32-unknown-unknown", true);
        assert_eq!(key.reuse(&dest), None, "nothing written yet");
        std::fs::write(&dest, b"component").unwrap();
        assert_eq!(key.reuse(&dest), None, "written without a key");
        key.record(&dest, b"component");
        assert_eq!(key.reuse(&dest), Some(9));
        // Any input changed: another key.
        for other in [
            BuildKey::with(&[8u8; 32], b"core module", Kind::Guest, "wasm32-unknown-unknown", true),
            BuildKey::with(&mote, b"core module!", Kind::Guest, "wasm32-unknown-unknown", true),
            BuildKey::with(&mote, b"core module", Kind::Program, "wasm32-unknown-unknown", true),
            BuildKey::with(&mote, b"core module", Kind::Guest, "wasm32-wasip1", true),
            BuildKey::with(&mote, b"core module", Kind::Guest, "wasm32-unknown-unknown", false),
        ] {
            assert_ne!(other, key);
            assert_eq!(other.reuse(&dest), None);
        }
        // The component changed since (edited, truncated): made again.
        std::fs::write(&dest, b"componenT").unwrap();
        assert_eq!(key.reuse(&dest), None);
        std::fs::remove_file(&dest).unwrap();
        assert_eq!(key.reuse(&dest), None);
    }
}

/// Runs a guest's pre-initializer (`wizer-initialize`) once and returns the
/// component with the state it left ([`mote_runtime::preinit`]), or the
/// component unchanged if it has none; the note tells what was done.
fn pre_initialize(component: Vec<u8>, dest: &Path) -> Result<(Vec<u8>, String)> {
    use mote_runtime::preinit;
    let started = std::time::Instant::now();
    match preinit::preinitialize(&component, preinit::PreinitLimits::default())
        .with_context(|| format!("pre-initializing {} (build with --no-preinit to skip)", dest.display()))?
    {
        None => Ok((component, String::new())),
        Some(done) => {
            let note = format!(
                ", pre-initialized: {:.1} M instructions in {} ms, was {} KiB",
                done.fuel as f64 / 1e6,
                started.elapsed().as_millis(),
                component.len() / 1024
            );
            Ok((done.component, note))
        }
    }
}

/// RUSTFLAGS of a build-std guest build. On `wasm32-unknown-unknown` there
/// is no source of randomness: `getrandom` 0.3 (pulled in by hash maps'
/// seeding, e.g. in the `tokenizers` crate) is told to use a function the
/// guest provides (`__getrandom_v03_custom`), so a guest that needs random
/// bytes chooses them (deterministically, for re-executable jobs) instead
/// of failing to compile.
fn build_std_rustflags(linker: &Path, triple: &str) -> String {
    let mut flags = format!("-C linker={} -L {WASI_LIBC}", linker.display());
    if triple == "wasm32-unknown-unknown" {
        flags.push_str(" --cfg getrandom_backend=\"custom\"");
    }
    flags
}

/// Where Debian's `wasi-libc` puts the wasm32-wasi sysroot libraries.
const WASI_LIBC: &str = "/usr/lib/wasm32-wasi";

/// A component's header has layer 1 (bytes 6..8 of the preamble).
fn wasmparser_is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

/// Turns a core module with an embedded `component-type` section into a
/// component. A module that imports WASI preview 1 (built for
/// `wasm32-wasip1`) is adapted to WASI 0.2 with wasmtime's reactor adapter.
pub(crate) fn componentize(module: &[u8]) -> Result<Vec<u8>> {
    use wasi_preview1_component_adapter_provider as adapter;
    let mut encoder = wit_component::ComponentEncoder::default();
    encoder
        .module(module)
        .context("reading the core module's component-type section (was it built with wit-bindgen?)")?;
    if imports_module(module, adapter::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME) {
        encoder
            .adapter(adapter::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, adapter::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER)
            .context("adding the WASI preview-1 adapter")?;
    }
    encoder.validate(true).encode().context("encoding the component")
}

/// Turns a `wasm32-wasip1` program (a core module with `_start`) into a
/// `wasi:cli/command` component with wasmtime's command adapter; the
/// world its wit-bindgen imports declare (e.g. `wasi:nn/ml`) is embedded.
pub(crate) fn componentize_program(module: &[u8]) -> Result<Vec<u8>> {
    use wasi_preview1_component_adapter_provider as adapter;
    let module = unwrap_realloc(module)?;
    let mut encoder = wit_component::ComponentEncoder::default();
    encoder.module(&module).context("reading the program's core module")?;
    encoder
        .adapter(adapter::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, adapter::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER)
        .context("adding the WASI preview-1 command adapter")?;
    encoder.validate(true).encode().context("encoding the command component")
}

/// In a program (a module with `_start`), wasm-ld wraps every other export
/// in a `*.command_export` function that runs the C constructors first.
/// With the distribution's WASI libc those constructors read the preopened
/// directories, so the host's first call of `cabi_realloc` (lowering a
/// `wasi:nn` result into the program's memory) would call imports from
/// inside a realloc, which the component model forbids ("cannot leave
/// component instance"). The wrapper's body is `call ctors; local.get…;
/// call cabi_realloc; [call dtors]`: the export is pointed at the wrapped
/// function itself. (Newer WASI libcs read preopens lazily and never hit
/// this; a module without such a wrapper is returned unchanged.)
fn unwrap_realloc(module: &[u8]) -> Result<Vec<u8>> {
    use wasmparser::{ExternalKind, Operator, Parser, Payload};
    let mut imported_funcs = 0u32;
    let mut realloc: Option<u32> = None;
    let mut bodies = Vec::new();
    for payload in Parser::new(0).parse_all(module) {
        match payload? {
            Payload::ImportSection(r) => {
                for imp in r.into_imports() {
                    if matches!(imp?.ty, wasmparser::TypeRef::Func(_)) {
                        imported_funcs += 1;
                    }
                }
            }
            Payload::ExportSection(r) => {
                for e in r {
                    let e = e?;
                    if e.name == "cabi_realloc" && e.kind == ExternalKind::Func {
                        realloc = Some(e.index);
                    }
                }
            }
            Payload::CodeSectionEntry(body) => bodies.push(body),
            _ => {}
        }
    }
    let Some(wrapper) = realloc else { return Ok(module.to_vec()) };
    let Some(body) = wrapper.checked_sub(imported_funcs).and_then(|i| bodies.get(i as usize)) else {
        return Ok(module.to_vec());
    };
    // call A; local.get 0..n; call F; [call D]; end — F is the real one.
    let ops: Vec<Operator<'_>> = body.get_operators_reader()?.into_iter().collect::<Result<_, _>>()?;
    let target = match ops.as_slice() {
        [Operator::Call { .. }, rest @ ..] => {
            let gets = rest.iter().take_while(|o| matches!(o, Operator::LocalGet { .. })).count();
            match &rest[gets..] {
                [Operator::Call { function_index }, Operator::End]
                | [Operator::Call { function_index }, Operator::Call { .. }, Operator::End]
                    if gets > 0 =>
                {
                    Some(*function_index)
                }
                _ => None,
            }
        }
        _ => None,
    };
    let Some(target) = target else { return Ok(module.to_vec()) };
    let mut out = wasm_encoder::Module::new();
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload?;
        if let Payload::ExportSection(r) = &payload {
            let mut exports = wasm_encoder::ExportSection::new();
            for e in r.clone() {
                let e = e?;
                let kind = match e.kind {
                    ExternalKind::Func | ExternalKind::FuncExact => wasm_encoder::ExportKind::Func,
                    ExternalKind::Table => wasm_encoder::ExportKind::Table,
                    ExternalKind::Memory => wasm_encoder::ExportKind::Memory,
                    ExternalKind::Global => wasm_encoder::ExportKind::Global,
                    ExternalKind::Tag => wasm_encoder::ExportKind::Tag,
                };
                let index = if e.name == "cabi_realloc" { target } else { e.index };
                exports.export(e.name, kind, index);
            }
            out.section(&exports);
        } else if let Some((id, range)) = payload.as_section() {
            out.section(&wasm_encoder::RawSection { id, data: &module[range.start as usize..range.end as usize] });
        }
    }
    Ok(out.finish())
}

/// Whether a core module imports anything from module `name`.
fn imports_module(module: &[u8], name: &str) -> bool {
    wasmparser::Parser::new(0).parse_all(module).any(|payload| match payload {
        Ok(wasmparser::Payload::ImportSection(reader)) => {
            reader.into_imports().any(|imp| imp.is_ok_and(|i| i.module == name))
        }
        _ => false,
    })
}
