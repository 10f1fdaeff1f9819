//! A store that loses what a power cut would lose, for crash tests of the real daemon.
//!
//! [`PowerLossStore`] wraps another store and keeps every completed write in the daemon's own memory until
//! [`BlockStore::flush`] (FUA, SYNCHRONIZE CACHE) writes it through and makes it durable. Killing the daemon with
//! SIGKILL then loses exactly the writes that were not yet flushed, as a disk with a volatile write cache loses
//! them at a power cut (SBC-4 4.15, WCE=1), whereas a plain buffered file would keep them in the kernel's page
//! cache. Nothing else about the store changes: reads see the newest data, and a write-back cache of at most
//! [`MAX_CACHED_BYTES`] is destaged by a flush of its own, as a disk destages its cache.
//!
//! Testing only (`simulate_power_loss = true` on a LUN, docs/config.md).

use crate::{BlockStore, Extent};
use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

/// Unflushed data held before the store destages it by itself.
pub const MAX_CACHED_BYTES: usize = 64 << 20;

#[derive(Default)]
struct Cache {
    /// Written and not yet being flushed, by block index.
    pending: BTreeMap<u64, Vec<u8>>,
    /// Taken by a flush in progress and not yet written through; reads still see it.
    flushing: Option<Arc<BTreeMap<u64, Vec<u8>>>>,
    pending_bytes: usize,
}

pub struct PowerLossStore {
    inner: Arc<dyn BlockStore>,
    block_size: u64,
    cache: Mutex<Cache>,
    /// One flush at a time: a flush that returns has written through everything completed before it started.
    flush_order: Mutex<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PowerLossStore {
    /// Wraps `inner`, whose offsets and lengths are multiples of `block_size` (the LU's logical block size).
    pub fn new(inner: Arc<dyn BlockStore>, block_size: u32) -> PowerLossStore {
        PowerLossStore {
            inner,
            block_size: u64::from(block_size.max(1)),
            cache: Mutex::new(Cache::default()),
            flush_order: Mutex::new(()),
        }
    }

    fn check_blocks(&self, offset: u64, len: u64) -> io::Result<()> {
        if !offset.is_multiple_of(self.block_size) || !len.is_multiple_of(self.block_size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "power-loss store: {offset}+{len} is not in whole {}-byte blocks",
                    self.block_size
                ),
            ));
        }
        crate::check_range(
            &"power-loss store",
            offset,
            len,
            self.inner.capacity_bytes(),
        )
    }

    /// Bytes written and not yet durable.
    pub fn unflushed_bytes(&self) -> usize {
        let cache = lock(&self.cache);
        cache.pending_bytes
            + cache.flushing.as_ref().map_or(0, |f| f.len()) * self.block_size as usize
    }
}

impl BlockStore for PowerLossStore {
    fn capacity_bytes(&self) -> u64 {
        self.inner.capacity_bytes()
    }

    fn is_read_only(&self) -> bool {
        self.inner.is_read_only()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check_blocks(offset, buf.len() as u64)?;
        self.inner.read_at(buf, offset)?;
        let cache = lock(&self.cache);
        let first = offset / self.block_size;
        for (i, out) in buf.chunks_mut(self.block_size as usize).enumerate() {
            let index = first + i as u64;
            let newest = cache
                .pending
                .get(&index)
                .or_else(|| cache.flushing.as_ref().and_then(|f| f.get(&index)));
            if let Some(block) = newest {
                out.copy_from_slice(block);
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.inner.is_read_only() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "power-loss store: read-only",
            ));
        }
        self.check_blocks(offset, buf.len() as u64)?;
        let over = {
            let mut cache = lock(&self.cache);
            let first = offset / self.block_size;
            for (i, block) in buf.chunks(self.block_size as usize).enumerate() {
                if cache
                    .pending
                    .insert(first + i as u64, block.to_vec())
                    .is_none()
                {
                    cache.pending_bytes += block.len();
                }
            }
            cache.pending_bytes > MAX_CACHED_BYTES
        };
        if over {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        let _order = lock(&self.flush_order);
        let taken = {
            let mut cache = lock(&self.cache);
            let taken = Arc::new(std::mem::take(&mut cache.pending));
            cache.pending_bytes = 0;
            cache.flushing = Some(Arc::clone(&taken));
            taken
        };
        let written = taken
            .iter()
            .try_for_each(|(index, block)| self.inner.write_at(block, index * self.block_size))
            .and_then(|()| self.inner.flush());
        let mut cache = lock(&self.cache);
        cache.flushing = None;
        if written.is_err() {
            // Not durable after all: keep the data cached (newer writes win), so reads stay right and the next
            // flush tries again.
            for (index, block) in taken.iter() {
                if !cache.pending.contains_key(index) {
                    cache.pending.insert(*index, block.clone());
                    cache.pending_bytes += block.len();
                }
            }
        }
        written
    }

    /// Written through at once, after the cached writes it could otherwise be reordered with: UNMAP and WRITE SAME
    /// with UNMAP are rare, and this keeps the model simple (a deallocation is durable when it completes).
    fn deallocate(&self, offset: u64, len_bytes: u64) -> io::Result<()> {
        self.check_blocks(offset, len_bytes)?;
        self.flush()?;
        self.inner.deallocate(offset, len_bytes)?;
        self.inner.flush()
    }

    fn allocation_at(&self, offset: u64) -> io::Result<Extent> {
        // Cached blocks are mapped; the inner store knows the rest once they are written through.
        self.flush()?;
        self.inner.allocation_at(offset)
    }

    fn supports_deallocate(&self) -> bool {
        self.inner.supports_deallocate()
    }

    fn deallocated_reads_zero(&self) -> bool {
        self.inner.deallocated_reads_zero()
    }

    fn volatile_write_cache(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;

    fn store() -> (Arc<MemoryStore>, PowerLossStore) {
        let inner = Arc::new(MemoryStore::new(1 << 20));
        let wrapped = PowerLossStore::new(inner.clone(), 512);
        (inner, wrapped)
    }

    #[test]
    fn writes_reach_the_inner_store_only_when_flushed() {
        let (inner, store) = store();
        store.write_at(&[7; 1024], 4096).unwrap();
        let mut seen = vec![0u8; 1024];
        store.read_at(&mut seen, 4096).unwrap();
        assert_eq!(seen, vec![7; 1024], "reads see the cached write");
        inner.read_at(&mut seen, 4096).unwrap();
        assert_eq!(seen, vec![0; 1024], "not written through yet");
        assert_eq!(store.unflushed_bytes(), 1024);
        store.flush().unwrap();
        inner.read_at(&mut seen, 4096).unwrap();
        assert_eq!(seen, vec![7; 1024]);
        assert_eq!(store.unflushed_bytes(), 0);
    }

    #[test]
    fn a_read_spanning_cached_and_written_blocks_sees_the_newest_of_each() {
        let (_, store) = store();
        store.write_at(&[1; 1536], 0).unwrap();
        store.flush().unwrap();
        store.write_at(&[2; 512], 512).unwrap();
        let mut seen = vec![0u8; 1536];
        store.read_at(&mut seen, 0).unwrap();
        assert_eq!(&seen[..512], &[1; 512]);
        assert_eq!(&seen[512..1024], &[2; 512]);
        assert_eq!(&seen[1024..], &[1; 512]);
    }

    #[test]
    fn deallocation_writes_the_cache_through_first() {
        let (inner, store) = store();
        store.write_at(&[3; 512], 0).unwrap();
        store.write_at(&[4; 512], 512).unwrap();
        store.deallocate(512, 512).unwrap();
        let mut seen = vec![9u8; 1024];
        inner.read_at(&mut seen, 0).unwrap();
        assert_eq!(&seen[..512], &[3; 512]);
        assert_eq!(&seen[512..], &[0; 512]);
    }

    #[test]
    fn unaligned_ranges_are_errors() {
        let (_, store) = store();
        assert!(store.write_at(&[0; 100], 0).is_err());
        assert!(store.read_at(&mut [0; 512], 7).is_err());
    }
}
