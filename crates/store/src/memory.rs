//! An in-memory, sparse [`BlockStore`] for tests and the deterministic simulator.
//!
//! Memory is allocated lazily in 64 KiB chunks, so a large store costs nothing until written. Chunks live in
//! shards, each behind its own lock, so sessions touching different regions do not contend.
//!
//! Crash model (for the simulator): a write is volatile until [`BlockStore::flush`]. [`MemoryStore::crash`] puts
//! every chunk written since the last flush back to its flushed content, as a power loss would with a volatile
//! write cache.

use crate::{BlockStore, Extent};
use std::collections::HashMap;
use std::io;
use std::sync::Mutex;

const CHUNK_BYTES: u64 = 64 * 1024;
const SHARDS: usize = 16;

#[derive(Default)]
struct Shard {
    /// Current content of allocated chunks; absent chunks are holes.
    chunks: HashMap<u64, Box<[u8]>>,
    /// For chunks changed since the last flush: their content at that flush (None: it was a hole).
    unflushed: HashMap<u64, Option<Box<[u8]>>>,
}

pub struct MemoryStore {
    capacity_bytes: u64,
    read_only: bool,
    shards: Vec<Mutex<Shard>>,
}

impl MemoryStore {
    pub fn new(capacity_bytes: u64) -> MemoryStore {
        MemoryStore {
            capacity_bytes,
            read_only: false,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    pub fn with_read_only(mut self, read_only: bool) -> MemoryStore {
        self.read_only = read_only;
        self
    }

    /// Drops every write not yet flushed (power loss with a volatile cache).
    pub fn crash(&self) {
        for shard in &self.shards {
            let mut shard = lock(shard);
            let restores: Vec<_> = shard.unflushed.drain().collect();
            for (index, old) in restores {
                match old {
                    Some(data) => shard.chunks.insert(index, data),
                    None => shard.chunks.remove(&index),
                };
            }
        }
    }

    fn shard(&self, chunk_index: u64) -> &Mutex<Shard> {
        &self.shards[(chunk_index % SHARDS as u64) as usize]
    }

    fn check_range(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.capacity_bytes => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "range {offset}+{len} beyond capacity {}",
                    self.capacity_bytes
                ),
            )),
        }
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "memory store is read-only",
            ));
        }
        Ok(())
    }

    /// Calls `f(chunk_index, offset_in_chunk, range_in_buffer)` for each chunk piece of [offset, offset+len).
    fn for_each_piece(
        offset: u64,
        len: u64,
        mut f: impl FnMut(u64, usize, std::ops::Range<usize>),
    ) {
        let mut done = 0u64;
        while done < len {
            let position = offset + done;
            let index = position / CHUNK_BYTES;
            let within = (position % CHUNK_BYTES) as usize;
            let n = (CHUNK_BYTES - within as u64).min(len - done);
            f(index, within, done as usize..(done + n) as usize);
            done += n;
        }
    }

    fn modify(
        &self,
        offset: u64,
        len: u64,
        mut change: impl FnMut(&mut Shard, u64, usize, std::ops::Range<usize>),
    ) {
        Self::for_each_piece(offset, len, |index, within, range| {
            let mut shard = lock(self.shard(index));
            if !shard.unflushed.contains_key(&index) {
                let before = shard.chunks.get(&index).cloned();
                shard.unflushed.insert(index, before);
            }
            change(&mut shard, index, within, range);
        });
    }
}

fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    // A panic while holding a shard lock cannot leave a chunk half-updated in a way later readers could
    // misinterpret (copies are whole slices), so a poisoned lock is still usable.
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl BlockStore for MemoryStore {
    fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        Self::for_each_piece(offset, buf.len() as u64, |index, within, range| {
            let shard = lock(self.shard(index));
            let out = &mut buf[range.clone()];
            match shard.chunks.get(&index) {
                Some(chunk) => out.copy_from_slice(&chunk[within..within + range.len()]),
                None => out.fill(0),
            }
        });
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_writable()?;
        self.check_range(offset, buf.len() as u64)?;
        self.modify(offset, buf.len() as u64, |shard, index, within, range| {
            let chunk = shard
                .chunks
                .entry(index)
                .or_insert_with(|| vec![0u8; CHUNK_BYTES as usize].into_boxed_slice());
            chunk[within..within + range.len()].copy_from_slice(&buf[range]);
        });
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        for shard in &self.shards {
            lock(shard).unflushed.clear();
        }
        Ok(())
    }

    fn deallocate(&self, offset: u64, len_bytes: u64) -> io::Result<()> {
        self.check_writable()?;
        self.check_range(offset, len_bytes)?;
        self.modify(offset, len_bytes, |shard, index, within, range| {
            if within == 0 && range.len() as u64 == CHUNK_BYTES {
                shard.chunks.remove(&index);
            } else if let Some(chunk) = shard.chunks.get_mut(&index) {
                chunk[within..within + range.len()].fill(0);
                if chunk.iter().all(|&b| b == 0) {
                    shard.chunks.remove(&index);
                }
            }
        });
        Ok(())
    }

    fn allocation_at(&self, offset: u64) -> io::Result<Extent> {
        if offset >= self.capacity_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "offset beyond capacity",
            ));
        }
        let is_mapped = |index: u64| lock(self.shard(index)).chunks.contains_key(&index);
        let first = offset / CHUNK_BYTES;
        let mapped = is_mapped(first);
        let last_chunk = (self.capacity_bytes - 1) / CHUNK_BYTES;
        let mut next = first + 1;
        while next <= last_chunk && is_mapped(next) == mapped {
            next += 1;
        }
        let end = (next * CHUNK_BYTES).min(self.capacity_bytes);
        Ok(Extent {
            mapped,
            len_bytes: end - offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_writes_and_holes_read_zero() {
        let store = MemoryStore::new(1 << 20);
        store.write_at(&[7u8; 1000], 65_000).unwrap();
        let mut buf = vec![1u8; 2000];
        store.read_at(&mut buf, 64_500).unwrap();
        assert!(buf[..500].iter().all(|&b| b == 0));
        assert!(buf[500..1500].iter().all(|&b| b == 7));
        assert!(buf[1500..].iter().all(|&b| b == 0));
    }

    #[test]
    fn deallocate_makes_holes() {
        let store = MemoryStore::new(1 << 20);
        store.write_at(&[1u8; 4096], 0).unwrap();
        assert_eq!(
            store.allocation_at(0).unwrap(),
            Extent {
                mapped: true,
                len_bytes: CHUNK_BYTES
            }
        );
        store.deallocate(0, 4096).unwrap();
        let mut buf = vec![9u8; 4096];
        store.read_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        assert_eq!(
            store.allocation_at(0).unwrap(),
            Extent {
                mapped: false,
                len_bytes: 1 << 20
            }
        );
    }

    #[test]
    fn crash_drops_unflushed_writes_only() {
        let store = MemoryStore::new(1 << 20);
        store.write_at(&[1u8; 512], 0).unwrap();
        store.flush().unwrap();
        store.write_at(&[2u8; 512], 0).unwrap();
        store.write_at(&[3u8; 512], 200_000).unwrap();
        store.crash();
        let mut buf = vec![0u8; 512];
        store.read_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|&b| b == 1));
        store.read_at(&mut buf, 200_000).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }

    #[test]
    fn out_of_range_and_read_only_are_errors() {
        let store = MemoryStore::new(4096);
        assert!(store.write_at(&[0u8; 512], 4096).is_err());
        assert!(store.read_at(&mut [0u8; 1], u64::MAX).is_err());
        let read_only = MemoryStore::new(4096).with_read_only(true);
        assert!(read_only.write_at(&[0u8; 512], 0).is_err());
    }
}
