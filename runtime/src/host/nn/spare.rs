//! Data buffers of a job's dropped tensors, kept for its next tensors.
//!
//! A guest that runs inference in a loop creates its input tensors again
//! on every run. Copied into a fresh allocation each time, a large input
//! often lands on pages the allocator has given back, and the kernel
//! zeroes them again on first touch: a whole 2 MB huge page about every
//! other CNN input, measured (docs/benchmarks.md). A recycled buffer has
//! its pages already.

/// Buffers a job keeps at most.
const MAX_KEPT: usize = 4;
/// Buffers smaller than this are not kept: the allocator serves them from
/// memory it keeps anyway.
const MIN_KEPT_BYTES: usize = 64 * 1024;

/// A job's spare tensor buffers: at most [`MAX_KEPT`], the largest given
/// back. The caller counts them against the job's memory (see
/// `NnView::release_tensor`).
#[derive(Default)]
pub(crate) struct SpareBuffers {
    kept: Vec<Vec<u8>>,
}

impl SpareBuffers {
    /// An empty buffer with room for `len` bytes: the smallest kept one
    /// that holds them, else a new one.
    pub(crate) fn take(&mut self, len: usize) -> Vec<u8> {
        let kept = &mut self.kept;
        let fit = (0..kept.len()).filter(|&i| kept[i].capacity() >= len).min_by_key(|&i| kept[i].capacity());
        match fit {
            Some(i) => kept.swap_remove(i),
            None => Vec::with_capacity(len),
        }
    }

    /// Bytes the kept buffers hold (their capacity).
    pub(crate) fn kept_bytes(&self) -> u64 {
        self.kept.iter().map(|b| b.capacity() as u64).sum()
    }

    /// Gives every kept buffer back to the allocator.
    pub(crate) fn clear(&mut self) {
        self.kept = Vec::new();
    }

    /// Keeps `buf` (emptied: a buffer is only ever handed out empty) if it
    /// is large enough to be worth it and larger than the smallest kept.
    pub(crate) fn give(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() < MIN_KEPT_BYTES {
            return;
        }
        buf.clear();
        let kept = &mut self.kept;
        if kept.len() < MAX_KEPT {
            kept.push(buf);
        } else if let Some(i) = (0..kept.len()).min_by_key(|&i| kept[i].capacity()) {
            if kept[i].capacity() < buf.capacity() {
                kept[i] = buf;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(len: usize, byte: u8) -> Vec<u8> {
        vec![byte; len]
    }

    #[test]
    fn a_buffer_given_back_is_handed_out_empty_and_reused() {
        let mut spare = SpareBuffers::default();
        let first = filled(600_000, 7);
        let at = first.as_ptr();
        spare.give(first);
        let again = spare.take(500_000);
        assert!(again.is_empty(), "handed out with the last tensor's bytes");
        assert_eq!(again.as_ptr(), at, "not the kept buffer");
        // Nothing kept now: a second take allocates.
        assert_eq!(spare.take(10).capacity(), 10);
    }

    #[test]
    fn the_smallest_buffer_that_fits_is_taken_and_small_ones_are_not_kept() {
        let mut spare = SpareBuffers::default();
        for len in [1 << 20, 100_000, 300_000] {
            spare.give(filled(len, 1));
        }
        spare.give(filled(MIN_KEPT_BYTES - 1, 1));
        assert_eq!(spare.kept.len(), 3);
        assert_eq!(spare.take(200_000).capacity(), 300_000);
        assert_eq!(spare.take(200_000).capacity(), 1 << 20);
        // Too large for what is left: a new buffer, the kept one stays.
        assert_eq!(spare.take(200_000).capacity(), 200_000);
        assert_eq!(spare.kept.len(), 1);
    }

    #[test]
    fn at_most_a_few_buffers_are_kept_the_largest() {
        let mut spare = SpareBuffers::default();
        for i in 1..=10 {
            spare.give(filled(i * MIN_KEPT_BYTES, 1));
        }
        let mut caps: Vec<usize> = spare.kept.iter().map(Vec::capacity).collect();
        caps.sort_unstable();
        assert_eq!(caps, (7..=10).map(|i| i * MIN_KEPT_BYTES).collect::<Vec<_>>());
        assert_eq!(spare.kept_bytes(), (34 * MIN_KEPT_BYTES) as u64);
        spare.clear();
        assert_eq!(spare.kept_bytes(), 0);
    }
}
