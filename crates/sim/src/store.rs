//! The target's block store in the simulation: lunlock's in-memory store with crash simulation, plus a record of
//! what every block must hold after a crash. A flush makes everything written before it durable; a crash keeps or
//! loses each unflushed 512-byte block independently (writes are atomic per block, not across blocks).

use lunlock_store::memory::MemoryStore;
use lunlock_store::{BlockStore, Extent};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::Mutex;

pub const SECTOR: u64 = 512;

#[derive(Default)]
struct Record {
    /// Newest content of every block ever written.
    latest: BTreeMap<u64, Vec<u8>>,
    /// Content at the last flush of blocks written since (absent: zeros).
    durable: BTreeMap<u64, Vec<u8>>,
    /// Blocks written since the last flush.
    dirty: BTreeSet<u64>,
}

pub struct TrackingStore {
    inner: MemoryStore,
    record: Mutex<Record>,
}

impl TrackingStore {
    pub fn new(capacity_bytes: u64) -> TrackingStore {
        TrackingStore {
            inner: MemoryStore::new(capacity_bytes).with_crash_simulation(true),
            record: Mutex::new(Record::default()),
        }
    }

    /// One block as it is now.
    pub fn block(&self, lba: u64) -> Vec<u8> {
        let mut buf = vec![0u8; SECTOR as usize];
        // A read inside the capacity cannot fail on the memory store.
        let _ = self.inner.read_at(&mut buf, lba * SECTOR);
        buf
    }

    /// Power loss: each block written since the last flush keeps its newest content when `keep` says so, else
    /// returns to its flushed content. Returns the blocks whose content afterwards is neither what the record allows.
    pub fn crash(&self, keep: impl FnMut(u64) -> bool) -> Vec<String> {
        self.inner.crash_keeping(SECTOR, keep);
        let mut record = lock(&self.record);
        let mut wrong = Vec::new();
        let blocks: Vec<u64> = record.latest.keys().copied().collect();
        for block in blocks {
            let now = self.block(block);
            let latest = &record.latest[&block];
            let allowed = if record.dirty.contains(&block) {
                let durable = record
                    .durable
                    .get(&block)
                    .cloned()
                    .unwrap_or_else(|| vec![0; SECTOR as usize]);
                now == *latest || now == durable
            } else {
                now == *latest
            };
            if !allowed {
                wrong.push(format!(
                    "LBA {block}: after the crash it holds neither its flushed nor its newest content"
                ));
            }
            record.latest.insert(block, now);
        }
        record.dirty.clear();
        record.durable.clear();
        wrong
    }
}

impl BlockStore for TrackingStore {
    fn capacity_bytes(&self) -> u64 {
        self.inner.capacity_bytes()
    }

    fn is_read_only(&self) -> bool {
        false
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_at(buf, offset)?;
        let mut record = lock(&self.record);
        let first = offset / SECTOR;
        let last = (offset + buf.len() as u64).div_ceil(SECTOR);
        for block in first..last {
            if !record.dirty.contains(&block) {
                let flushed = record.latest.get(&block).cloned();
                if let Some(flushed) = flushed {
                    record.durable.insert(block, flushed);
                }
                record.dirty.insert(block);
            }
            let content = self.block(block);
            record.latest.insert(block, content);
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.inner.flush()?;
        let mut record = lock(&self.record);
        record.dirty.clear();
        record.durable.clear();
        Ok(())
    }

    fn deallocate(&self, offset: u64, len_bytes: u64) -> io::Result<()> {
        self.inner.deallocate(offset, len_bytes)?;
        let zeros = vec![0u8; len_bytes as usize];
        // Record the zeros as a write would be.
        let mut record = lock(&self.record);
        for block in offset / SECTOR..(offset + len_bytes).div_ceil(SECTOR) {
            if !record.dirty.contains(&block) {
                if let Some(flushed) = record.latest.get(&block).cloned() {
                    record.durable.insert(block, flushed);
                }
                record.dirty.insert(block);
            }
            record
                .latest
                .insert(block, zeros[..SECTOR as usize].to_vec());
        }
        Ok(())
    }

    fn allocation_at(&self, offset: u64) -> io::Result<Extent> {
        self.inner.allocation_at(offset)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_keeps_flushed_blocks_and_tears_unflushed_ones_per_block() {
        let store = TrackingStore::new(1 << 20);
        store.write_at(&[1u8; 1024], 0).unwrap();
        store.flush().unwrap();
        store.write_at(&[2u8; 1024], 0).unwrap();
        // Keep block 0's new content, lose block 1's.
        let wrong = store.crash(|offset| offset == 0);
        assert!(wrong.is_empty(), "{wrong:?}");
        assert_eq!(store.block(0), vec![2u8; 512]);
        assert_eq!(store.block(1), vec![1u8; 512]);
    }

    #[test]
    fn the_record_notices_a_store_that_loses_flushed_data() {
        let store = TrackingStore::new(1 << 20);
        store.write_at(&[3u8; 512], 4096).unwrap();
        store.flush().unwrap();
        // Simulate a broken store: overwrite behind the record's back.
        store.inner.write_at(&[9u8; 512], 4096).unwrap();
        store.inner.flush().unwrap();
        let wrong = store.crash(|_| false);
        assert_eq!(wrong.len(), 1);
    }
}
