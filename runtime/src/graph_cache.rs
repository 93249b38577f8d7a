//! Loaded graphs shared across jobs, keyed by model content.
//!
//! The key is the sha256 of the model bytes (for builder graphs, of the
//! lowered ONNX) plus the backend, so the second `load` of the same model on
//! the same backend returns the graph already built: no new session, no new
//! optimisation pass. Entries are `Arc`s, so evicting one never disturbs a
//! job still using it.

use crate::backend::{BackendError, BackendGraph, BackendKind};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

type Key = (String, BackendKind);

struct Entry {
    graph: Arc<dyn BackendGraph>,
    last_used: u64,
}

/// A bounded map from (model sha256, backend) to a loaded graph.
pub struct GraphCache {
    entries: Mutex<HashMap<Key, Entry>>,
    capacity: usize,
    clock: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Counters of a [`GraphCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Loads served from the cache.
    pub hits: u64,
    /// Loads that built a graph.
    pub misses: u64,
    /// Graphs held now.
    pub entries: usize,
}

impl GraphCache {
    /// A cache holding at most `capacity` graphs (least recently used goes
    /// first).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::default(),
            capacity: capacity.max(1),
            clock: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Returns the cached graph for `(sha256, backend)`, or loads it with
    /// `load` and caches it. The bool is true on a cache hit. The lock is not
    /// held while loading.
    pub fn get_or_load(
        &self,
        sha256: &str,
        backend: BackendKind,
        load: impl FnOnce() -> Result<Arc<dyn BackendGraph>, BackendError>,
    ) -> Result<(Arc<dyn BackendGraph>, bool), BackendError> {
        let key = (sha256.to_string(), backend);
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = self.lock().get_mut(&key) {
            e.last_used = now;
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok((e.graph.clone(), true));
        }
        let graph = load()?;
        self.misses.fetch_add(1, Ordering::Relaxed);
        let mut entries = self.lock();
        // Another job may have loaded the same model meanwhile: keep one.
        if let Some(e) = entries.get(&key) {
            return Ok((e.graph.clone(), false));
        }
        if entries.len() >= self.capacity {
            if let Some(oldest) = entries.iter().min_by_key(|(_, e)| e.last_used).map(|(k, _)| k.clone()) {
                entries.remove(&oldest);
            }
        }
        entries.insert(key, Entry { graph: graph.clone(), last_used: now });
        Ok((graph, false))
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.lock().len(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}
