//! Block storage behind a logical unit, and crash-safe metadata files.
//!
//! The `scsi` crate executes commands over the [`BlockStore`] trait; this crate has its implementations:
//! [`file::FileStore`] (a sparse file: pread/pwrite, fdatasync, hole punching, SEEK_DATA/SEEK_HOLE) and
//! [`memory::MemoryStore`] (for tests and the simulator). [`metadata`] writes small metadata files crash-safely
//! (temp file, fsync, rename, directory fsync, version and checksum). A `FileStore` can also sit on a block device
//! ([`block_device`]) and do its I/O with O_DIRECT through [`aligned`] buffers.

pub mod aligned;
pub mod block_device;
pub mod file;
pub mod group_commit;
pub mod identity;
pub mod journal;
pub mod memory;
pub mod metadata;
pub mod power_loss;

use std::io;

/// A store's descriptor for direct submission (io_uring), valid as long as the store lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawIo {
    pub fd: std::os::fd::RawFd,
    /// Buffer address alignment O_DIRECT requires (None: buffered, any address).
    pub alignment: Option<usize>,
    pub read_only: bool,
}

/// One run of blocks that share an allocation state, as reported by [`BlockStore::allocation_at`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// True when the bytes are backed by storage; false for a hole (deallocated, reads as zeros).
    pub mapped: bool,
    /// Length in bytes of the run starting at the queried offset (at least 1 byte, clipped to capacity).
    pub len_bytes: u64,
}

/// Byte-addressed storage of a fixed capacity. Offsets and lengths given by the `scsi` crate are always multiples
/// of the logical block size and lie inside the capacity; implementations still check and return an error rather
/// than panic.
///
/// Implementations are shared by every session (`&self`): concurrent calls on non-overlapping ranges must be safe
/// and must not serialize on one lock. Atomicity across overlapping commands is the caller's job (LBA range locks).
pub trait BlockStore: Send + Sync + 'static {
    /// Capacity in bytes.
    fn capacity_bytes(&self) -> u64;
    /// True when writes must be refused (the LUN is write-protected).
    fn is_read_only(&self) -> bool;
    /// Fill `buf` from `offset`. Holes read as zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Fills `buf` from `offset` only if that can be done without waiting for the disk (the page cache holds
    /// it: preadv2 with RWF_NOWAIT for files), so the runtime may call it on a reactor thread. Ok(false): it
    /// would have to wait (or the store cannot tell); `buf` is then unspecified and the caller reads it through
    /// its I/O engine with [`BlockStore::read_at`].
    fn read_at_without_waiting(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        let _ = (buf, offset);
        Ok(false)
    }
    /// The descriptor an io_uring engine may read and write directly, and how its buffers must be aligned. None:
    /// the store has no descriptor (memory stores), and I/O goes through its methods on blocking threads.
    fn raw_io(&self) -> Option<RawIo> {
        None
    }
    /// Write `buf` at `offset`. Not durable until [`BlockStore::flush`] returns.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make every completed write durable (fdatasync for files). FUA and SYNCHRONIZE CACHE call this.
    fn flush(&self) -> io::Result<()>;
    /// Deallocate a byte range: afterwards it reads as zeros and reports `mapped: false` (punch hole for files).
    fn deallocate(&self, offset: u64, len_bytes: u64) -> io::Result<()>;
    /// The allocation state at `offset` and how far it extends (SEEK_DATA/SEEK_HOLE for files).
    fn allocation_at(&self, offset: u64) -> io::Result<Extent>;

    /// True when [`BlockStore::deallocate`] gives storage back. When false, `deallocate` still works (it writes
    /// zeros), but the LUN must not claim logical block provisioning management (SBC-4 4.7.3: LBPME, LBPU, UNMAP).
    fn supports_deallocate(&self) -> bool {
        true
    }

    /// True when a deallocated range reads back as zeros, which is what LBPRZ=1 promises (SBC-4 4.7.4.5, VPD B2h,
    /// READ CAPACITY (16)). False when what reads back is up to the device (a plain discard).
    fn deallocated_reads_zero(&self) -> bool {
        true
    }

    /// True when a completed write may still sit in a volatile cache (the page cache, a disk's write-back cache)
    /// until [`BlockStore::flush`]: the Caching mode page then reports WCE=1 (SBC-4 6.5.6). FUA and SYNCHRONIZE
    /// CACHE flush either way.
    fn volatile_write_cache(&self) -> bool {
        true
    }
}

/// Checks that `[offset, offset + len)` lies inside `capacity_bytes` without overflowing; `store` names the store
/// in the error. Every implementation checks ranges the same way, so a wrapped range can never reach an I/O call.
pub(crate) fn check_range(
    store: &dyn std::fmt::Display,
    offset: u64,
    len: u64,
    capacity_bytes: u64,
) -> io::Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= capacity_bytes => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{store}: range {offset}+{len} beyond capacity {capacity_bytes}"),
        )),
    }
}
