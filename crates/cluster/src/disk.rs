//! What the lock manager needs from a disk and a clock. The lock manager is generic over both, so it runs the same
//! against a real target over iSCSI ([`crate::iscsi_disk::IscsiDisk`]) and under the deterministic simulator.

use std::fmt;
use std::future::Future;
use std::time::Duration;

/// How one COMPARE AND WRITE (SBC-4 5.3) ended, as far as the host can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CawOutcome {
    /// GOOD: the new image is on the disk.
    Written,
    /// CHECK CONDITION, MISCOMPARE (0E/1D/00): the block did not hold the expected image. The offset of the first
    /// differing byte comes from the INFORMATION field when the target sets VALID.
    Miscompare { offset: Option<u64> },
    /// The write may or may not have happened: timeout, connection loss, task aborted, BUSY, TASK SET FULL, a unit
    /// attention. Only reading the block back can tell.
    Unknown(String),
    /// RESERVATION CONFLICT: this host has been fenced (its PR key was preempted). Nothing was written.
    Fenced,
    /// A definite error that retrying cannot fix (ILLEGAL REQUEST, MEDIUM ERROR, ...). Nothing was written.
    Failed(String),
}

/// A read or plain write that did not complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskError {
    /// Possibly transient: timeout, connection loss, unit attention, BUSY.
    Transient(String),
    /// RESERVATION CONFLICT.
    Fenced,
    Failed(String),
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskError::Transient(why) => write!(f, "{why} (transient)"),
            DiskError::Fenced => write!(f, "reservation conflict: this host has been fenced"),
            DiskError::Failed(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for DiskError {}

/// One logical unit, addressed in blocks. Every call is independent, so implementations may be shared by tasks.
pub trait Disk: Send + Sync {
    fn block_size(&self) -> u32;

    /// Reads `count` consecutive blocks.
    fn read(
        &self,
        lba: u64,
        count: u32,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, DiskError>> + Send;

    /// Writes whole blocks with FUA; used only by `format`, which owns the disk at that moment.
    fn write(
        &self,
        lba: u64,
        data: Vec<u8>,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), DiskError>> + Send;

    /// COMPARE AND WRITE of one block with FUA: `expected` and `new` are each one block.
    fn compare_and_write(
        &self,
        lba: u64,
        expected: &[u8],
        new: &[u8],
        timeout: Duration,
    ) -> impl Future<Output = CawOutcome> + Send;

    /// PERSISTENT RESERVE OUT, PREEMPT AND ABORT (SPC-4 5.12.11.2.3) of `victim_key` by this host's `own_key`,
    /// keeping a WRITE EXCLUSIVE - REGISTRANTS ONLY reservation: removes the victim's registration, aborts its
    /// tasks, and makes its later writes fail with RESERVATION CONFLICT.
    fn preempt_and_abort(
        &self,
        own_key: u64,
        victim_key: u64,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), DiskError>> + Send;

    /// The registered PR keys (PERSISTENT RESERVE IN, READ KEYS, SPC-4 6.16.2).
    fn read_keys(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u64>, DiskError>> + Send;
}

/// A monotonic clock and a way to wait. Time is measured from an arbitrary origin and never compared across hosts.
pub trait Clock: Send + Sync {
    fn now(&self) -> Duration;
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send;
}

/// The real clock: tokio's monotonic `Instant` and timer.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> TokioClock {
        TokioClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }
}
