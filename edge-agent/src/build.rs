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

/// The cdylib targets of the package(s) in `dir`.
fn cdylib_names(dir: &Path) -> Result<Vec<String>> {
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
            if t["crate_types"].as_array().is_some_and(|c| c.iter().any(|c| c == "cdylib")) {
                names.push(t["name"].as_str().unwrap_or_default().replace('-', "_"));
            }
        }
    }
    if names.is_empty() {
        bail!("{} has no cdylib crate: a guest needs `crate-type = [\"cdylib\"]`", dir.display());
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
) -> Result<Vec<PathBuf>> {
    let toolchain = pick(toolchain)?;
    let names = cdylib_names(dir)?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| dir.join("target"), PathBuf::from);
    let triple = match (toolchain, target) {
        (_, Some(t)) => t,
        (Toolchain::Wasip2, None) => "wasm32-wasip2",
        (Toolchain::BuildStd, None) => "wasm32-unknown-unknown",
    };
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
    for name in names {
        let built = target_dir.join(triple).join("release").join(format!("{name}.wasm"));
        let bytes = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
        let component = if wasmparser_is_component(&bytes) { bytes } else { componentize(&bytes)? };
        let dest = out.join(format!("{}.wasm", name.replace('_', "-")));
        std::fs::write(&dest, &component).with_context(|| format!("writing {}", dest.display()))?;
        eprintln!("  {} ({} KiB)", dest.display(), component.len() / 1024);
        written.push(dest);
    }
    Ok(written)
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

/// Whether a core module imports anything from module `name`.
fn imports_module(module: &[u8], name: &str) -> bool {
    wasmparser::Parser::new(0).parse_all(module).any(|payload| match payload {
        Ok(wasmparser::Payload::ImportSection(reader)) => {
            reader.into_imports().any(|imp| imp.is_ok_and(|i| i.module == name))
        }
        _ => false,
    })
}
