//! Loaded graphs shared across jobs, keyed by model content, bounded in
//! bytes and shared fairly between deployments.
//!
//! The key is the sha256 of the model bytes (for builder graphs, of the
//! lowered ONNX) plus the backend, so the second `load` of the same model on
//! the same backend returns the graph already built: no new session, no new
//! optimisation pass. Entries are `Arc`s, so evicting one never disturbs a
//! job still using it.
//!
//! Bounds, because the loads come from strangers:
//! - **Bytes, not count**: each entry is charged what the backend says it
//!   holds ([`BackendGraph::memory_bytes`]); the total stays under the
//!   cache's capacity.
//! - **Fair share**: every entry belongs to the deployment that loaded it.
//!   To make room, the cache evicts the least recently used entry of the
//!   owner furthest over its fair share (capacity divided among the owners
//!   present), so one tenant loading model after model evicts its own
//!   graphs, not another's.
//! - **Pinned**: a deployment's named models, loaded when it is warmed, are
//!   never evicted while the runtime lives (the operator chose them; their
//!   bytes still count).
//!
//! A graph that cannot fit even after evicting everything evictable is
//! returned to the job without being cached.

use crate::backend::{BackendError, BackendGraph, BackendKind};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

type Key = (String, BackendKind);

struct Entry {
    graph: Arc<dyn BackendGraph>,
    owner: Arc<str>,
    bytes: u64,
    pinned: bool,
    last_used: u64,
}

/// A map from (model sha256, backend) to a loaded graph, bounded in bytes.
pub struct GraphCache {
    entries: Mutex<HashMap<Key, Entry>>,
    capacity_bytes: u64,
    clock: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
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
    /// Bytes the held graphs are charged.
    pub bytes: u64,
    /// Graphs evicted so far.
    pub evictions: u64,
}

/// How a graph enters the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residency {
    /// Evictable (loaded by a job).
    Evictable,
    /// Never evicted (a deployment's named model, loaded at warm-up).
    Pinned,
}

impl GraphCache {
    /// A cache holding at most `capacity_bytes` of graphs.
    pub fn new(capacity_bytes: u64) -> Self {
        Self {
            entries: Mutex::default(),
            capacity_bytes,
            clock: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// Returns the cached graph for `(sha256, backend)`, or loads it with
    /// `load` and caches it for `owner`. The bool is true on a cache hit.
    /// The lock is not held while loading.
    pub fn get_or_load(
        &self,
        sha256: &str,
        backend: BackendKind,
        owner: &Arc<str>,
        residency: Residency,
        load: impl FnOnce() -> Result<Arc<dyn BackendGraph>, BackendError>,
    ) -> Result<(Arc<dyn BackendGraph>, bool), BackendError> {
        let key = (sha256.to_string(), backend);
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = self.lock().get_mut(&key) {
            e.last_used = now;
            e.pinned |= residency == Residency::Pinned;
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok((e.graph.clone(), true));
        }
        let graph = load()?;
        self.misses.fetch_add(1, Ordering::Relaxed);
        let bytes = graph.memory_bytes();
        let mut entries = self.lock();
        // Another job may have loaded the same model meanwhile: keep one.
        if let Some(e) = entries.get(&key) {
            return Ok((e.graph.clone(), false));
        }
        let pinned = residency == Residency::Pinned;
        if !pinned && !self.make_room(&mut entries, owner, bytes) {
            tracing::debug!(%sha256, bytes, "graph not cached: larger than the room the cache can make");
            return Ok((graph, false));
        }
        entries.insert(key, Entry { graph: graph.clone(), owner: owner.clone(), bytes, pinned, last_used: now });
        Ok((graph, false))
    }

    /// Evicts until `bytes` more fit, fairly; false if they cannot.
    fn make_room(&self, entries: &mut HashMap<Key, Entry>, owner: &Arc<str>, bytes: u64) -> bool {
        loop {
            let used: u64 = entries.values().map(|e| e.bytes).sum();
            if used + bytes <= self.capacity_bytes {
                return true;
            }
            let Some(victim) = fair_victim(entries, owner, bytes, self.capacity_bytes) else {
                return false;
            };
            entries.remove(&victim);
            self.evictions.fetch_add(1, Ordering::Relaxed);
            crate::backend::ort::memory_freed();
        }
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        let entries = self.lock();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: entries.len(),
            bytes: entries.values().map(|e| e.bytes).sum(),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The entry to evict so that `owner` can add `incoming` bytes: the least
/// recently used evictable entry of the owner furthest above its fair
/// share (counting `incoming` as the owner's). `None` if nothing is
/// evictable.
fn fair_victim(entries: &HashMap<Key, Entry>, owner: &Arc<str>, incoming: u64, capacity: u64) -> Option<Key> {
    let mut usage: HashMap<&str, u64> = HashMap::new();
    for e in entries.values() {
        *usage.entry(&e.owner).or_default() += e.bytes;
    }
    *usage.entry(owner).or_default() += incoming;
    let share = capacity / usage.len().max(1) as u64;
    // Owners by how far over their share they are, furthest first; an owner
    // with nothing evictable is skipped.
    let mut owners: Vec<(&str, u64)> = usage.into_iter().collect();
    owners.sort_by_key(|&(o, u)| (std::cmp::Reverse(u.saturating_sub(share)), o));
    for (o, _) in owners {
        let lru = entries
            .iter()
            .filter(|(_, e)| !e.pinned && &*e.owner == o)
            .min_by_key(|(_, e)| e.last_used)
            .map(|(k, _)| k.clone());
        if lru.is_some() {
            return lru;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendExecutionContext, TensorInfo};

    struct Fake(u64);
    impl BackendGraph for Fake {
        fn init_execution_context(&self) -> Result<Box<dyn BackendExecutionContext>, BackendError> {
            unreachable!("not run")
        }
        fn inputs(&self) -> &[TensorInfo] {
            &[]
        }
        fn outputs(&self) -> &[TensorInfo] {
            &[]
        }
        fn memory_bytes(&self) -> u64 {
            self.0
        }
    }

    fn load(c: &GraphCache, sha: &str, owner: &Arc<str>, bytes: u64, r: Residency) -> bool {
        c.get_or_load(sha, BackendKind::OrtCpu, owner, r, || Ok(Arc::new(Fake(bytes)) as Arc<dyn BackendGraph>))
            .unwrap()
            .1
    }

    fn cached(c: &GraphCache, sha: &str) -> bool {
        c.lock().contains_key(&(sha.to_string(), BackendKind::OrtCpu))
    }

    #[test]
    fn bytes_bound_the_cache_and_a_flood_evicts_only_the_flooder() {
        let c = GraphCache::new(100);
        let (a, b): (Arc<str>, Arc<str>) = ("tenant-a".into(), "flooder".into());
        load(&c, "a-pinned", &a, 20, Residency::Pinned);
        load(&c, "a-warm", &a, 20, Residency::Evictable);
        assert!(load(&c, "a-warm", &a, 20, Residency::Evictable), "second load is a hit");
        for i in 0..50 {
            load(&c, &format!("flood-{i}"), &b, 16, Residency::Evictable);
            assert!(c.stats().bytes <= 100, "over capacity: {:?}", c.stats());
        }
        assert!(cached(&c, "a-pinned") && cached(&c, "a-warm"), "the flood evicted another tenant's graphs");
        assert!(cached(&c, "flood-49") && !cached(&c, "flood-0"), "the flooder keeps its newest");
        assert!(c.stats().evictions >= 45);

        // Over its share, a tenant loses its own LRU first even when the
        // other has older entries.
        let c = GraphCache::new(100);
        load(&c, "a1", &a, 30, Residency::Evictable);
        load(&c, "b1", &b, 30, Residency::Evictable);
        load(&c, "b2", &b, 30, Residency::Evictable);
        load(&c, "b3", &b, 30, Residency::Evictable);
        assert!(cached(&c, "a1") && !cached(&c, "b1") && cached(&c, "b3"));
    }

    #[test]
    fn a_graph_larger_than_the_room_is_served_but_not_cached() {
        let c = GraphCache::new(50);
        let a: Arc<str> = "a".into();
        load(&c, "pinned", &a, 40, Residency::Pinned);
        assert!(!load(&c, "big", &a, 30, Residency::Evictable));
        assert!(!cached(&c, "big") && cached(&c, "pinned"));
        assert_eq!(c.stats().bytes, 40);
    }
}
