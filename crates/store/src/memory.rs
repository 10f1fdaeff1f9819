//! An in-memory, sparse [`BlockStore`] for tests and the deterministic simulator.
//!
//! Memory is allocated lazily in 64 KiB chunks, so a large store costs nothing until written. Chunks live in
//! shards, each behind its own lock, so sessions touching different regions do not contend.
//!
//! Invariants (checked by `Chunk::check` in debug builds and by the model test):
//! - allocation is tracked per 512-byte sector, one bit each; a chunk is present in its shard only while at least
//!   one of its sectors is mapped (a chunk whose last sector is deallocated is freed);
//! - an unmapped sector's bytes are zero, so reads copy without consulting the bitmap;
//! - a write maps every sector it touches (even partly); a deallocation unmaps the sectors it covers entirely and
//!   zeroes the bytes of the ones it covers partly, which stay mapped (as a file system does with a partial block).
//!
//! Crash model (only in a store built with [`MemoryStore::with_crash_simulation`]): a write is volatile until
//! [`BlockStore::flush`]. The first change to a chunk after a flush saves the chunk's flushed content (its
//! before-image). [`MemoryStore::crash`] puts every changed chunk back, as a power loss with a volatile write cache
//! would; [`MemoryStore::crash_keeping`] lets the simulator decide unit by unit (one logical block, say) whether the
//! newest content reached the media, so a write spanning several units can tear between them but never inside one.
//! Units are visited in ascending offset order, so a seeded decision function replays exactly.

use crate::{BlockStore, Extent};
use std::collections::BTreeMap;
use std::io;
use std::sync::{Mutex, MutexGuard};

/// Allocation unit of the lazy chunk map.
pub const CHUNK_BYTES: u64 = 64 * 1024;
/// Granule of the allocation bitmap: the smallest logical block size lunlock offers.
pub const SECTOR_BYTES: u64 = 512;
const SECTORS_PER_CHUNK: u64 = CHUNK_BYTES / SECTOR_BYTES;
/// Independent locks; chunk `i` lives in shard `i % SHARDS`.
const SHARDS: usize = 16;

const _: () = assert!(
    SECTORS_PER_CHUNK == u128::BITS as u64,
    "one u128 bit per sector of a chunk"
);

/// One allocated 64 KiB chunk.
#[derive(Clone)]
struct Chunk {
    data: Box<[u8]>,
    /// Bit `s` set: sector `s` of this chunk is mapped.
    mapped: u128,
}

impl Chunk {
    fn empty() -> Chunk {
        Chunk {
            data: vec![0u8; CHUNK_BYTES as usize].into_boxed_slice(),
            mapped: 0,
        }
    }

    /// Bits for the sectors touched (at least partly) by bytes `range` of the chunk.
    fn touched_sectors(range: &std::ops::Range<usize>) -> u128 {
        let first = range.start as u64 / SECTOR_BYTES;
        let last = (range.end as u64 - 1) / SECTOR_BYTES;
        sector_mask(first, last + 1)
    }

    /// Bits for the sectors lying wholly inside bytes `range` of the chunk.
    fn covered_sectors(range: &std::ops::Range<usize>) -> u128 {
        let first = (range.start as u64).div_ceil(SECTOR_BYTES);
        let end = range.end as u64 / SECTOR_BYTES;
        if end <= first {
            0
        } else {
            sector_mask(first, end)
        }
    }

    fn check(&self) {
        debug_assert!(self.mapped != 0, "an empty chunk must have been freed");
        debug_assert!(
            (0..SECTORS_PER_CHUNK)
                .filter(|s| self.mapped & (1u128 << s) == 0)
                .all(|s| {
                    let start = (s * SECTOR_BYTES) as usize;
                    self.data[start..start + SECTOR_BYTES as usize]
                        .iter()
                        .all(|&b| b == 0)
                }),
            "unmapped sectors must hold zeros"
        );
    }
}

/// Bits `start..end` set (sector indexes within one chunk, `start < end <= 128`).
fn sector_mask(start: u64, end: u64) -> u128 {
    debug_assert!(start < end && end <= SECTORS_PER_CHUNK);
    let high = if end == SECTORS_PER_CHUNK {
        u128::MAX
    } else {
        (1u128 << end) - 1
    };
    high & !((1u128 << start) - 1)
}

#[derive(Default)]
struct Shard {
    /// Allocated chunks by chunk index; absent chunks are holes. Ordered so a hole's end is a range query.
    chunks: BTreeMap<u64, Chunk>,
    /// Crash simulation only: for chunks changed since the last flush, their content at that flush (None: a hole).
    before_images: BTreeMap<u64, Option<Chunk>>,
}

pub struct MemoryStore {
    capacity_bytes: u64,
    read_only: bool,
    simulate_crashes: bool,
    shards: Vec<Mutex<Shard>>,
}

impl MemoryStore {
    /// A store of `capacity_bytes`, every byte unmapped and reading as zero.
    pub fn new(capacity_bytes: u64) -> MemoryStore {
        MemoryStore {
            capacity_bytes,
            read_only: false,
            simulate_crashes: false,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    pub fn with_read_only(mut self, read_only: bool) -> MemoryStore {
        self.read_only = read_only;
        self
    }

    /// Keeps the flushed content of every chunk changed since the last flush so [`MemoryStore::crash`] can return
    /// to it. Off by default: it costs a 64 KiB copy per chunk per flush interval.
    pub fn with_crash_simulation(mut self, simulate_crashes: bool) -> MemoryStore {
        self.simulate_crashes = simulate_crashes;
        self
    }

    /// Power loss: every write and deallocation not yet flushed is lost.
    ///
    /// # Panics
    /// When the store was not built `with_crash_simulation(true)` (a harness bug: there is nothing to go back to).
    pub fn crash(&self) {
        self.crash_keeping(CHUNK_BYTES, |_| false);
    }

    /// Power loss with a torn cache: for each `unit_bytes` unit changed since the last flush, `keep(offset)`
    /// decides whether its newest content survives (true) or it returns to its flushed content (false). Units are
    /// atomic, and offered in ascending offset order; a unit written twice since the flush survives with its newest
    /// content or not at all. `keep` runs under a shard lock and must not call back into this store.
    ///
    /// # Panics
    /// When crash simulation is off, or `unit_bytes` is not a power of two between 512 and 64 KiB.
    pub fn crash_keeping(&self, unit_bytes: u64, mut keep: impl FnMut(u64) -> bool) {
        assert!(
            self.simulate_crashes,
            "crash() needs MemoryStore::with_crash_simulation(true)"
        );
        assert!(
            unit_bytes.is_power_of_two() && (SECTOR_BYTES..=CHUNK_BYTES).contains(&unit_bytes),
            "crash unit {unit_bytes} must be a power of two from {SECTOR_BYTES} to {CHUNK_BYTES} bytes"
        );
        let mut changed: Vec<u64> = Vec::new();
        for shard in &self.shards {
            changed.extend(lock(shard).before_images.keys().copied());
        }
        changed.sort_unstable();
        for index in changed {
            let mut shard = lock(self.shard(index));
            let before = shard
                .before_images
                .remove(&index)
                .flatten()
                .unwrap_or_else(Chunk::empty);
            let mut now = shard.chunks.remove(&index).unwrap_or_else(Chunk::empty);
            revert_lost_units(
                &before,
                &mut now,
                index * CHUNK_BYTES,
                unit_bytes,
                &mut keep,
            );
            if now.mapped != 0 {
                now.check();
                shard.chunks.insert(index, now);
            }
        }
    }

    /// Bytes of chunk memory in use (for tests that check sparseness).
    pub fn allocated_bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|shard| lock(shard).chunks.len() as u64 * CHUNK_BYTES)
            .sum()
    }

    fn shard(&self, chunk_index: u64) -> &Mutex<Shard> {
        &self.shards[(chunk_index % SHARDS as u64) as usize]
    }

    fn check_range(&self, offset: u64, len: u64) -> io::Result<()> {
        crate::check_range(&"memory store", offset, len, self.capacity_bytes)
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

    /// Calls `f(chunk_index, byte_range_in_chunk, byte_range_in_buffer)` for each chunk piece of [offset, offset+len).
    fn for_each_piece(
        offset: u64,
        len: u64,
        mut f: impl FnMut(u64, std::ops::Range<usize>, std::ops::Range<usize>),
    ) {
        let mut done = 0u64;
        while done < len {
            let position = offset + done;
            let index = position / CHUNK_BYTES;
            let within = (position % CHUNK_BYTES) as usize;
            let n = (CHUNK_BYTES - within as u64).min(len - done);
            f(
                index,
                within..within + n as usize,
                done as usize..(done + n) as usize,
            );
            done += n;
        }
    }

    /// Runs `change` on each chunk piece of the range, saving before-images first when simulating crashes.
    fn modify(
        &self,
        offset: u64,
        len: u64,
        mut change: impl FnMut(&mut Shard, u64, std::ops::Range<usize>, std::ops::Range<usize>),
    ) {
        Self::for_each_piece(offset, len, |index, in_chunk, in_buffer| {
            let mut shard = lock(self.shard(index));
            if self.simulate_crashes && !shard.before_images.contains_key(&index) {
                let before = shard.chunks.get(&index).cloned();
                shard.before_images.insert(index, before);
            }
            change(&mut shard, index, in_chunk, in_buffer);
        });
    }

    /// Where the run of sectors sharing the allocation state of `sector` ends (an absolute sector number).
    fn run_end_sector(&self, sector: u64, mapped: bool) -> u64 {
        let last_sector = self.capacity_bytes.div_ceil(SECTOR_BYTES);
        let mut index = sector / SECTORS_PER_CHUNK;
        let mut from = sector % SECTORS_PER_CHUNK;
        loop {
            let bits = lock(self.shard(index))
                .chunks
                .get(&index)
                .map_or(0, |chunk| chunk.mapped);
            // Sectors at or after `from` whose state differs from `mapped`.
            let differing =
                (if mapped { !bits } else { bits }) & sector_mask(from, SECTORS_PER_CHUNK);
            if differing != 0 {
                return (index * SECTORS_PER_CHUNK + differing.trailing_zeros() as u64)
                    .min(last_sector);
            }
            let next = if mapped {
                index + 1
            } else {
                self.next_chunk_after(index)
            };
            if next.saturating_mul(SECTORS_PER_CHUNK) >= last_sector {
                return last_sector;
            }
            index = next;
            from = 0;
        }
    }

    /// The lowest allocated chunk index above `index`, or `u64::MAX` when there is none.
    fn next_chunk_after(&self, index: u64) -> u64 {
        self.shards
            .iter()
            .filter_map(|shard| {
                lock(shard)
                    .chunks
                    .range(index + 1..)
                    .next()
                    .map(|(&next, _)| next)
            })
            .min()
            .unwrap_or(u64::MAX)
    }
}

/// For each `unit_bytes` unit of a chunk at `chunk_offset` that differs between `before` and `now`, asks `keep`
/// and, when the unit is lost, copies it (bytes and allocation bits) back from `before`.
fn revert_lost_units(
    before: &Chunk,
    now: &mut Chunk,
    chunk_offset: u64,
    unit_bytes: u64,
    keep: &mut impl FnMut(u64) -> bool,
) {
    let unit = unit_bytes as usize;
    for start in (0..CHUNK_BYTES as usize).step_by(unit) {
        let range = start..start + unit;
        let bits = Chunk::covered_sectors(&range);
        let same = before.data[range.clone()] == now.data[range.clone()]
            && before.mapped & bits == now.mapped & bits;
        if same || keep(chunk_offset + start as u64) {
            continue;
        }
        now.data[range.clone()].copy_from_slice(&before.data[range]);
        now.mapped = (now.mapped & !bits) | (before.mapped & bits);
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
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
        Self::for_each_piece(offset, buf.len() as u64, |index, in_chunk, in_buffer| {
            let shard = lock(self.shard(index));
            let out = &mut buf[in_buffer];
            match shard.chunks.get(&index) {
                Some(chunk) => out.copy_from_slice(&chunk.data[in_chunk]),
                None => out.fill(0),
            }
        });
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_writable()?;
        self.check_range(offset, buf.len() as u64)?;
        self.modify(
            offset,
            buf.len() as u64,
            |shard, index, in_chunk, in_buffer| {
                let chunk = shard.chunks.entry(index).or_insert_with(Chunk::empty);
                chunk.mapped |= Chunk::touched_sectors(&in_chunk);
                chunk.data[in_chunk].copy_from_slice(&buf[in_buffer]);
            },
        );
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        for shard in &self.shards {
            lock(shard).before_images.clear();
        }
        Ok(())
    }

    fn deallocate(&self, offset: u64, len_bytes: u64) -> io::Result<()> {
        self.check_writable()?;
        self.check_range(offset, len_bytes)?;
        self.modify(offset, len_bytes, |shard, index, in_chunk, _| {
            let Some(chunk) = shard.chunks.get_mut(&index) else {
                return;
            };
            chunk.mapped &= !Chunk::covered_sectors(&in_chunk);
            chunk.data[in_chunk].fill(0);
            if chunk.mapped == 0 {
                shard.chunks.remove(&index);
            } else {
                chunk.check();
            }
        });
        Ok(())
    }

    fn allocation_at(&self, offset: u64) -> io::Result<Extent> {
        if offset >= self.capacity_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "memory store: offset {offset} beyond capacity {}",
                    self.capacity_bytes
                ),
            ));
        }
        let sector = offset / SECTOR_BYTES;
        let index = sector / SECTORS_PER_CHUNK;
        let bits = lock(self.shard(index))
            .chunks
            .get(&index)
            .map_or(0, |chunk| chunk.mapped);
        let mapped = bits & (1u128 << (sector % SECTORS_PER_CHUNK)) != 0;
        let end = (self.run_end_sector(sector, mapped) * SECTOR_BYTES).min(self.capacity_bytes);
        debug_assert!(end > offset);
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
    fn sector_masks() {
        assert_eq!(sector_mask(0, 128), u128::MAX);
        assert_eq!(sector_mask(0, 1), 1);
        assert_eq!(sector_mask(127, 128), 1u128 << 127);
        assert_eq!(Chunk::touched_sectors(&(511..513)), 0b11);
        assert_eq!(Chunk::covered_sectors(&(511..1536)), 0b110);
        assert_eq!(Chunk::covered_sectors(&(1..511)), 0);
    }

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
    fn a_large_store_costs_nothing_until_written() {
        let store = MemoryStore::new(1 << 40);
        assert_eq!(store.allocated_bytes(), 0);
        assert_eq!(
            store.allocation_at(0).unwrap(),
            Extent {
                mapped: false,
                len_bytes: 1 << 40
            }
        );
        store.write_at(&[1u8; 512], 1 << 39).unwrap();
        assert_eq!(store.allocated_bytes(), CHUNK_BYTES);
        assert_eq!(
            store.allocation_at(4096).unwrap(),
            Extent {
                mapped: false,
                len_bytes: (1 << 39) - 4096
            }
        );
        assert_eq!(
            store.allocation_at(1 << 39).unwrap(),
            Extent {
                mapped: true,
                len_bytes: 512
            }
        );
    }

    #[test]
    fn deallocate_tracks_sectors_exactly() {
        let store = MemoryStore::new(1 << 20);
        store.write_at(&[1u8; 8192], 0).unwrap();
        assert_eq!(
            store.allocation_at(0).unwrap(),
            Extent {
                mapped: true,
                len_bytes: 8192
            }
        );
        store.deallocate(512, 1024).unwrap();
        assert_eq!(
            store.allocation_at(0).unwrap(),
            Extent {
                mapped: true,
                len_bytes: 512
            }
        );
        assert_eq!(
            store.allocation_at(512).unwrap(),
            Extent {
                mapped: false,
                len_bytes: 1024
            }
        );
        assert_eq!(
            store.allocation_at(1536).unwrap(),
            Extent {
                mapped: true,
                len_bytes: 8192 - 1536
            }
        );
        let mut buf = vec![9u8; 2048];
        store.read_at(&mut buf, 0).unwrap();
        assert!(buf[..512].iter().all(|&b| b == 1) && buf[512..1536].iter().all(|&b| b == 0));
        store.deallocate(0, 8192).unwrap();
        assert_eq!(
            store.allocation_at(0).unwrap(),
            Extent {
                mapped: false,
                len_bytes: 1 << 20
            }
        );
        assert_eq!(
            store.allocated_bytes(),
            0,
            "a fully deallocated chunk is freed"
        );
    }

    #[test]
    fn partial_sector_deallocation_zeroes_but_stays_mapped() {
        let store = MemoryStore::new(1 << 20);
        store.write_at(&[1u8; 1024], 0).unwrap();
        store.deallocate(100, 200).unwrap();
        assert_eq!(
            store.allocation_at(0).unwrap(),
            Extent {
                mapped: true,
                len_bytes: 1024
            }
        );
        let mut buf = vec![0u8; 512];
        store.read_at(&mut buf, 0).unwrap();
        assert!(buf[..100].iter().all(|&b| b == 1) && buf[100..300].iter().all(|&b| b == 0));
        assert!(buf[300..].iter().all(|&b| b == 1));
    }

    #[test]
    fn mapped_runs_span_chunks() {
        let store = MemoryStore::new(1 << 20);
        store
            .write_at(&vec![3u8; 3 * CHUNK_BYTES as usize], CHUNK_BYTES / 2)
            .unwrap();
        let extent = store.allocation_at(CHUNK_BYTES / 2).unwrap();
        assert_eq!(
            extent,
            Extent {
                mapped: true,
                len_bytes: 3 * CHUNK_BYTES
            }
        );
        let tail = CHUNK_BYTES / 2 + 3 * CHUNK_BYTES;
        assert_eq!(
            store.allocation_at(tail).unwrap(),
            Extent {
                mapped: false,
                len_bytes: (1 << 20) - tail
            }
        );
    }

    #[test]
    fn crash_drops_unflushed_writes_only() {
        let store = MemoryStore::new(1 << 20).with_crash_simulation(true);
        store.write_at(&[1u8; 512], 0).unwrap();
        store.flush().unwrap();
        store.write_at(&[2u8; 512], 0).unwrap();
        store.write_at(&[3u8; 512], 200_000).unwrap();
        store.deallocate(0, 512).unwrap();
        store.crash();
        let mut buf = vec![0u8; 512];
        store.read_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|&b| b == 1));
        assert!(store.allocation_at(0).unwrap().mapped);
        store.read_at(&mut buf, 200_000).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        assert!(!store.allocation_at(200_000 / 512 * 512).unwrap().mapped);
    }

    #[test]
    fn crash_tears_between_units_never_inside_one() {
        let store = MemoryStore::new(1 << 20).with_crash_simulation(true);
        store.write_at(&[1u8; 4 * 4096], 0).unwrap();
        store.flush().unwrap();
        store.write_at(&[2u8; 4 * 4096], 0).unwrap();
        let mut offered = Vec::new();
        store.crash_keeping(4096, |offset| {
            offered.push(offset);
            offset % 8192 == 0
        });
        assert_eq!(
            offered,
            vec![0, 4096, 8192, 12288],
            "only changed units, in offset order"
        );
        let mut buf = vec![0u8; 4 * 4096];
        store.read_at(&mut buf, 0).unwrap();
        for (unit, expected) in [(0, 2u8), (1, 1), (2, 2), (3, 1)] {
            assert!(
                buf[unit * 4096..(unit + 1) * 4096]
                    .iter()
                    .all(|&b| b == expected),
                "unit {unit}"
            );
        }
        // The crash is a flush point: a second crash changes nothing.
        store.crash();
        let mut again = vec![0u8; 4 * 4096];
        store.read_at(&mut again, 0).unwrap();
        assert_eq!(again, buf);
    }

    #[test]
    #[should_panic(expected = "with_crash_simulation")]
    fn crash_without_simulation_is_a_harness_bug() {
        MemoryStore::new(4096).crash();
    }

    #[test]
    fn out_of_range_and_read_only_are_errors() {
        let store = MemoryStore::new(4096);
        assert!(store.write_at(&[0u8; 512], 4096).is_err());
        assert!(store.read_at(&mut [0u8; 1], u64::MAX).is_err());
        assert!(store.deallocate(4096, 1).is_err());
        assert!(store.allocation_at(4096).is_err());
        let read_only = MemoryStore::new(4096).with_read_only(true);
        assert!(read_only.write_at(&[0u8; 512], 0).is_err());
        assert!(read_only.deallocate(0, 512).is_err());
    }
}
