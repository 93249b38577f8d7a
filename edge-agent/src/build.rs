//! `mote build`: compile a guest crate (or workspace) to components.
//!
//! Two toolchains are supported. Where rustup has the `wasm32-wasip2`
//! target, cargo produces components directly. Otherwise mote uses a
//! distribution Rust with its standard-library sources (Debian's
//! `rustc-web` + `rust-web-src`) to build for `wasm32-unknown-unknown` with
//! `-Zbuild-std`, and turns each core module into a component with
//! `wit-component` (the world is embedded by `wit-bindgen`).

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
    let mut names = Vec::new();
    for pkg in meta["packages"].as_array().into_iter().flatten() {
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
pub(crate) fn build(dir: &Path, out: &Path, toolchain: Option<Toolchain>) -> Result<Vec<PathBuf>> {
    let toolchain = pick(toolchain)?;
    let names = cdylib_names(dir)?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| dir.join("target"), PathBuf::from);
    let triple = match toolchain {
        Toolchain::Wasip2 => "wasm32-wasip2",
        Toolchain::BuildStd => "wasm32-unknown-unknown",
    };
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
                .env("RUSTFLAGS", format!("-C linker={}", ts.linker.display()))
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

/// A component's header has layer 1 (bytes 6..8 of the preamble).
fn wasmparser_is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

/// Turns a core module with an embedded `component-type` section into a
/// component.
pub(crate) fn componentize(module: &[u8]) -> Result<Vec<u8>> {
    wit_component::ComponentEncoder::default()
        .module(module)
        .context("reading the core module's component-type section (was it built with wit-bindgen?)")?
        .validate(true)
        .encode()
        .context("encoding the component")
}
