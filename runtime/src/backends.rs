//! The node's backends, each created on first use (loading ONNX Runtime,
//! probing CUDA, opening a wgpu adapter), and which one serves a job.

use crate::backend::ort::{OrtBackend, OrtOptions};
use crate::backend::{Backend, BackendChoice, BackendError, BackendKind};
use std::sync::{Arc, OnceLock};

/// Backends, each created on first use.
pub(crate) struct Backends {
    ort: OrtOptions,
    cpu: OnceLock<Result<Arc<OrtBackend>, BackendError>>,
    cuda: OnceLock<Result<Arc<OrtBackend>, BackendError>>,
    wgpu: OnceLock<Result<Arc<dyn Backend>, BackendError>>,
}

impl Backends {
    pub(crate) fn new(ort: OrtOptions) -> Self {
        Self { ort, cpu: OnceLock::new(), cuda: OnceLock::new(), wgpu: OnceLock::new() }
    }

    pub(crate) fn get(&self, kind: BackendKind) -> Result<Arc<dyn Backend>, BackendError> {
        let cell = match kind {
            BackendKind::OrtCpu => &self.cpu,
            BackendKind::OrtCuda => &self.cuda,
            BackendKind::Wgpu => {
                let b = self.wgpu.get_or_init(|| {
                    let b = crate::backend::standalone(BackendKind::Wgpu);
                    if let Err(e) = &b {
                        tracing::info!(backend = %kind, "backend unavailable: {e}");
                    }
                    b.map(Arc::from)
                });
                return b.clone();
            }
        };
        let b = cell.get_or_init(|| {
            let b = match kind {
                BackendKind::OrtCpu => OrtBackend::cpu_with(self.ort),
                BackendKind::OrtCuda => OrtBackend::cuda_with(self.ort),
                BackendKind::Wgpu => unreachable!("returned above"),
            };
            if let Err(e) = &b {
                tracing::info!(backend = %kind, "backend unavailable: {e}");
            }
            b.map(Arc::new)
        });
        match b {
            Ok(b) => Ok(b.clone() as Arc<dyn Backend>),
            Err(e) => Err(e.clone()),
        }
    }

    /// The backend a deployment's named models run on (`load-by-name`, and
    /// `warm`, which must agree with it to pre-fill the cache): a fixed
    /// choice, or for `auto` the best GPU, else ORT CPU.
    pub(crate) fn for_named_models(&self, choice: BackendChoice) -> BackendKind {
        match choice {
            BackendChoice::Fixed(k) => k,
            BackendChoice::Auto => self.best_gpu().unwrap_or(BackendKind::OrtCpu),
        }
    }

    /// The best GPU backend this node can use, if any: CUDA, else wgpu on a
    /// hardware adapter. A software adapter (llvmpipe) does not count: ORT
    /// CPU is faster than a rasteriser emulating a GPU on the same cores.
    pub(crate) fn best_gpu(&self) -> Option<BackendKind> {
        if self.get(BackendKind::OrtCuda).is_ok() {
            return Some(BackendKind::OrtCuda);
        }
        #[cfg(feature = "wgpu")]
        if crate::backend::wgpu::has_hardware_adapter() && self.get(BackendKind::Wgpu).is_ok() {
            return Some(BackendKind::Wgpu);
        }
        None
    }

    /// ORT sessions built so far.
    pub(crate) fn sessions_built(&self) -> u64 {
        [&self.cpu, &self.cuda]
            .iter()
            .filter_map(|c| c.get().and_then(|r| r.as_ref().ok()))
            .map(|b| b.sessions_built())
            .sum()
    }
}
