//! What a block device can do, asked of the kernel once at open: its size (BLKGETSIZE64), logical sector size
//! (BLKSSZGET), whether it can deallocate and what deallocated blocks then read as, and whether its write cache is
//! volatile (sysfs `queue/` attributes).
//!
//! Deallocation decides the logical block provisioning a LUN may claim (SBC-4 4.7, VPD B2h, READ CAPACITY (16)):
//! - `queue/discard_max_bytes` > 0 and `queue/write_zeroes_max_bytes` > 0: fallocate(PUNCH_HOLE|KEEP_SIZE), which
//!   the kernel turns into a WRITE ZEROES that may unmap and that never falls back to writing zeros
//!   (BLKDEV_ZERO_NOFALLBACK). Afterwards the blocks read as zeros, so LBPRZ=1 is the truth.
//! - discard alone: BLKDISCARD. What a discarded block reads back as is up to the device (`discard_zeroes_data` is
//!   obsolete and always 0), so LBPRZ=0.
//! - neither: no thin provisioning; the LUN is reported fully provisioned.
//!
//! The ioctl numbers are the asm-generic encodings (x86_64, aarch64, riscv64); libc lacks the 64-bit ones.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;

/// _IOR(0x12, 114, size_t): device size in bytes.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
/// _IO(0x12, 119): discard a byte range given as two u64 (offset, length).
const BLKDISCARD: libc::c_ulong = 0x1277;

/// How a block device gives blocks back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deallocation {
    /// fallocate(PUNCH_HOLE|KEEP_SIZE): may unmap, always reads back zeros (LBPRZ=1).
    ZeroingUnmap,
    /// BLKDISCARD: unmaps; what reads back is device-defined (LBPRZ=0).
    Discard,
    /// The device cannot deallocate.
    None,
}

/// Facts about an open block device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceFacts {
    pub size_bytes: u64,
    pub logical_block_bytes: u32,
    pub deallocation: Deallocation,
    /// `queue/write_cache` is "write back": completed writes may sit in a volatile device cache until a flush.
    pub volatile_write_cache: bool,
}

/// True when `file` is a block device.
pub fn is_block_device(file: &File) -> io::Result<bool> {
    Ok(file.metadata()?.file_type().is_block_device())
}

/// Reads the facts of the block device `file`.
pub fn facts(file: &File) -> io::Result<DeviceFacts> {
    let queue = queue_directory(file)?;
    let attribute = |name: &str| std::fs::read_to_string(queue.join(name)).unwrap_or_default();
    let positive = |name: &str| attribute(name).trim().parse::<u64>().unwrap_or(0) > 0;
    let deallocation = match (
        positive("discard_max_bytes"),
        positive("write_zeroes_max_bytes"),
    ) {
        (true, true) => Deallocation::ZeroingUnmap,
        (true, false) => Deallocation::Discard,
        (false, _) => Deallocation::None,
    };
    Ok(DeviceFacts {
        size_bytes: size_bytes(file)?,
        logical_block_bytes: logical_block_bytes(file)?,
        deallocation,
        // Unknown (attribute missing) counts as volatile: claiming no cache when there is one would lose data.
        volatile_write_cache: attribute("write_cache").trim() != "write through",
    })
}

/// BLKGETSIZE64.
fn size_bytes(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at a live u64.
    let result = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// BLKSSZGET: the logical sector size, the smallest unit the device addresses.
fn logical_block_bytes(file: &File) -> io::Result<u32> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points at a live c_int.
    let result = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::BLKSSZGET as _,
            &mut size as *mut libc::c_int,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size as u32)
}

/// /sys/dev/block/MAJ:MIN/queue, or the parent disk's queue for a partition (partitions have none of their own).
fn queue_directory(file: &File) -> io::Result<PathBuf> {
    let rdev = file.metadata()?.rdev();
    let device = PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        libc::major(rdev),
        libc::minor(rdev)
    ));
    let own = device.join("queue");
    if own.is_dir() {
        return Ok(own);
    }
    Ok(device.join("..").join("queue"))
}

/// BLKDISCARD of `[offset, offset + len)`; both must be multiples of the logical sector size.
pub fn discard(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKDISCARD reads two u64 through the pointer, which points at a live [u64; 2].
    let result = unsafe { libc::ioctl(file.as_raw_fd(), BLKDISCARD as _, range.as_ptr()) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
