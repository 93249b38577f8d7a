//! `mote`: the mote command-line tool and edge node.

use clap::Parser;

/// mimalloc instead of the system allocator: tensors are large, short-lived
/// buffers (a 224×224 image is 600 KB). glibc's malloc returned their pages
/// to the kernel between jobs, so every job faulted them in again; mimalloc
/// keeps freed pages for reuse (docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    give_mesa_a_runtime_dir();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("MOTE_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = mote_agent::cli::Cli::parse();
    match mote_agent::cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Mesa's Vulkan drivers (reached by the wgpu backend's adapter probe)
/// print an error in every process without `XDG_RUNTIME_DIR`. Where it is
/// unset, point it at a private directory. Runs first in `main`, before any
/// thread exists, which is what makes changing the environment sound.
fn give_mesa_a_runtime_dir() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("mote-xdg-{uid}"));
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
        // Only a directory we own with mode 0700 will do (as the spec asks).
        if let Ok(m) = std::fs::metadata(&dir) {
            if m.is_dir() && m.uid() == uid && m.permissions().mode() & 0o777 == 0o700 {
                std::env::set_var("XDG_RUNTIME_DIR", &dir);
            }
        }
    }
}
