//! The node's local artifact cache: guests, models and requests fetched
//! from `MOTE_ARTIFACTS`, stored by sha256 under `DATA_DIR/artifacts`,
//! bounded in bytes with least-recently-used eviction. Survives restarts.

use mote_runtime::receipt::sha256_hex;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

/// A bounded, content-addressed file cache.
pub struct ArtifactCache {
    dir: PathBuf,
    max_bytes: u64,
    /// Serialises writes and eviction (reads need no lock).
    lock: Mutex<()>,
}

impl ArtifactCache {
    /// Opens (creating) the cache in `dir`.
    pub fn open(dir: PathBuf, max_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir, max_bytes, lock: Mutex::new(()) })
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// The artifact's bytes, if cached and intact (a file whose hash no
    /// longer matches is removed). Marks it recently used.
    pub fn get(&self, sha256: &str) -> Option<Vec<u8>> {
        let path = self.path(sha256);
        let bytes = std::fs::read(&path).ok()?;
        if sha256_hex(&bytes) != sha256 {
            tracing::warn!(%sha256, "cached artifact corrupted; removed");
            let _ = std::fs::remove_file(&path);
            return None;
        }
        if let Ok(f) = std::fs::File::options().append(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Some(bytes)
    }

    /// Stores bytes already checked against `sha256`, then evicts the
    /// least recently used artifacts until the cache fits its bound (the
    /// new one stays even if it alone is larger).
    pub fn put(&self, sha256: &str, bytes: &[u8]) -> std::io::Result<()> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let tmp = self.dir.join(format!(".{sha256}.{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, self.path(sha256))?;
        self.evict(sha256)
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.entries().iter().map(|e| e.1).sum()
    }

    fn entries(&self) -> Vec<(PathBuf, u64, SystemTime)> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        rd.filter_map(Result::ok)
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((e.path(), m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
            })
            .collect()
    }

    fn evict(&self, keep: &str) -> std::io::Result<()> {
        let mut entries = self.entries();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort_by_key(|e| e.2);
        for (path, len, _) in entries {
            if total <= self.max_bytes {
                break;
            }
            if path.file_name().is_some_and(|n| n == keep) {
                continue;
            }
            std::fs::remove_file(&path)?;
            total -= len;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_lru_and_corruption_detected() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(dir.path().to_path_buf(), 250).unwrap();
        let blob = |b: u8| vec![b; 100];
        let sha = |b: u8| sha256_hex(&blob(b));
        cache.put(&sha(1), &blob(1)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.put(&sha(2), &blob(2)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(cache.get(&sha(1)).is_some(), "touch 1: now 2 is the oldest");
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.put(&sha(3), &blob(3)).unwrap();
        assert!(cache.get(&sha(2)).is_none(), "2 was least recently used");
        assert!(cache.get(&sha(1)).is_some() && cache.get(&sha(3)).is_some());
        assert!(cache.bytes() <= 250);
        std::fs::write(dir.path().join(sha(3)), b"tampered").unwrap();
        assert!(cache.get(&sha(3)).is_none(), "a file whose hash no longer matches is not served");
    }
}
