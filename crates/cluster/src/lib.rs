//! The ATS lock manager: a lockspace on a shared LUN (superblock, heartbeat slots, lock records), heartbeats,
//! exclusive and shared locks with fencing tokens, and the miscompare resolver that makes every COMPARE AND WRITE
//! outcome definite by reading back. It is generic over [`Disk`] and [`Clock`], so the same code runs over iSCSI
//! against a real target ([`iscsi_disk::IscsiDisk`]) and in memory ([`memory_disk::MemoryDisk`]).
//!
//! The on-disk format is in docs/lockspace-format.md and the event log schema in docs/lock-events.md.

pub mod demo;
pub mod disk;
pub mod events;
/// The on-disk format lives in its own sans-IO crate, which the target also reads for its status page.
pub use lunlock_lockspace as format;
pub mod host;
pub mod iscsi_disk;
pub mod locks;
pub mod memory_disk;
pub mod resolver;
pub mod space;
#[cfg(test)]
mod tests;

pub use disk::{AbortResult, Cause, CawOutcome, Clock, Disk, DiskError, TokioClock};
pub use events::{EventLog, Verdict};
pub use format::{LockMode, Superblock, Uuid};
pub use host::{BrokenVariant, Host, HostConfig, Liveness};
pub use locks::{Acquire, LockHandle};
pub use resolver::{AtsPolicy, AtsResult};

use std::fmt;

/// Why a lock manager operation failed.
#[derive(Debug)]
pub enum ClusterError {
    /// A read or write did not complete.
    Disk(DiskError),
    /// Reads of a range kept failing transiently, within the attempts the policy allows.
    ReadsFailed {
        lba: u64,
        count: u32,
        attempts: u32,
        last: DiskError,
    },
    /// A COMPARE AND WRITE failed definitely (nothing was written).
    CompareAndWrite {
        lba: u64,
        cause: disk::Cause,
    },
    /// PREEMPT AND ABORT of `victim` was refused with RESERVATION CONFLICT although both keys are registered.
    PreemptRefused {
        victim: u64,
    },
    /// RESERVATION CONFLICT: this host's PR key was preempted. It must stop using the disk.
    Fenced,
    /// A lockspace block is not what it should be.
    Format {
        lba: u64,
        error: format::FormatError,
    },
    /// An ATS kept finding nothing landed after every attempt.
    GaveUp {
        op: &'static str,
        lba: u64,
        attempts: u32,
    },
    /// Another host took this host's slot (it judged this host dead).
    SlotLost {
        slot: u32,
        now: String,
    },
    /// The lock is no longer ours (broken while we were stalled).
    LockLost {
        name: String,
        token: u64,
        now_generation: u64,
    },
    NotJoined,
    NoFreeSlot {
        slots: u32,
    },
    NoFreeLockRecord {
        locks: u32,
    },
    /// `format` found a lockspace and was not told to overwrite it.
    AlreadyFormatted {
        lba: u64,
    },
    Usage(String),
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterError::Disk(error) => write!(f, "{error}"),
            ClusterError::ReadsFailed {
                lba,
                count,
                attempts,
                last,
            } => write!(
                f,
                "reading {count} block(s) at LBA {lba} failed {attempts} times: {last}"
            ),
            ClusterError::CompareAndWrite { lba, cause } => {
                write!(f, "COMPARE AND WRITE of LBA {lba}: {cause}")
            }
            ClusterError::PreemptRefused { victim } => write!(
                f,
                "PREEMPT AND ABORT of key {victim:#x} was refused although both keys are registered"
            ),
            ClusterError::Fenced => write!(
                f,
                "reservation conflict: this host has been fenced (its PR key was preempted)"
            ),
            ClusterError::Format { lba, error } => write!(f, "lockspace block at LBA {lba}: {error}"),
            ClusterError::GaveUp { op, lba, attempts } => write!(
                f,
                "{op} at LBA {lba}: nothing landed after {attempts} attempts"
            ),
            ClusterError::SlotLost { slot, now } => {
                write!(f, "heartbeat slot {slot} was taken over by {now}")
            }
            ClusterError::LockLost {
                name,
                token,
                now_generation,
            } => write!(
                f,
                "lock {name} (token {token}) is no longer held: its generation is now {now_generation}"
            ),
            ClusterError::NotJoined => write!(f, "this host holds no heartbeat slot"),
            ClusterError::NoFreeSlot { slots } => {
                write!(f, "all {slots} heartbeat slots are held by live hosts")
            }
            ClusterError::NoFreeLockRecord { locks } => {
                write!(f, "all {locks} lock records are bound to other names")
            }
            ClusterError::AlreadyFormatted { lba } => write!(
                f,
                "a lockspace already exists at LBA {lba} (use --force to overwrite it)"
            ),
            ClusterError::Usage(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for ClusterError {}

impl From<DiskError> for ClusterError {
    fn from(e: DiskError) -> Self {
        match e {
            DiskError::Fenced => ClusterError::Fenced,
            other => ClusterError::Disk(other),
        }
    }
}
