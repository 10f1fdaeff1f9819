//! SCSI block device logic (SPC-4, SBC-4), sans-IO: no sockets, clocks or threads inside.
//!
//! The target runtime hands each command to [`Dispatcher::execute`] as a [`ScsiCommand`] and gets a
//! [`ScsiResponse`] back. A [`Dispatcher`] owns one target's logical units and answers what belongs to the target as
//! a whole (REPORT LUNS, commands to LUNs that do not exist). A `LogicalUnit` decodes the CDB into a typed command,
//! checks unit attentions and reservations ([`pr`]: SCSI-3 persistent reservations, SCSI-2 RESERVE/RELEASE,
//! APTPL persistence through [`PrPersistence`]), and executes it over a `lunlock_store::BlockStore`.
//!
//! Types below are the contract with the `server` and `sim` crates; keep them stable.

pub mod alua;
mod block_io;
pub mod cdb;
mod dispatcher;
pub mod hold_time;
mod inquiry;
mod lu;
mod mode;
mod opcodes;
pub mod pr;
#[cfg(test)]
mod provisioning_tests;
pub mod range_lock;
pub mod registry;
mod sanitize;
pub mod sbc;
pub mod sense;
pub mod store_failure;
pub mod task_set;
#[cfg(test)]
mod test_store;
#[cfg(test)]
mod tests;
pub mod ua;
pub mod xcopy;

pub use alua::{TargetPortGroup, TargetPortGroups, TargetPortGroupsError};
pub use block_io::BlockIo;
pub use dispatcher::{encode_lun, Dispatcher, MAX_LUN};
pub use lu::{Admission, Admitted, LogicalUnit, LogicalUnitConfig};
pub use pr::{decode_pr_state, encode_pr_state, PrPersistence, PrStateError};
pub use sanitize::SanitizeOperation;
pub use xcopy::{CopyChunk, CopyFailure, CopyStart, ExtendedCopy};

use std::sync::Arc;

/// An iSCSI initiator port identifier's session part (RFC 7143 11.12.5), 6 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Isid(pub [u8; 6]);

/// An I_T nexus (SAM-5 4.6.4): initiator port (iSCSI name + ISID) and target port (target name + relative target
/// port identifier, which lunlock takes from the portal group tag). Reservations and unit attentions belong to it.
/// The port's target port group comes from the logical unit's [`TargetPortGroups`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItNexus {
    pub initiator_name: String,
    pub isid: Isid,
    pub target_name: String,
    /// Relative target port identifier (SPC-4 7.8.6.7); 1-based.
    pub relative_target_port: u16,
}

/// The I_T nexuses logged in now, as the transport knows them. The `scsi` crate does no I/O and keeps no session
/// table, so the runtime answers from its sessions and the simulator from its actors; the one question is asked
/// by REGISTER AND MOVE, whose TransportID may name an initiator device (iSCSI format 00b, a name without ISID)
/// that stands for an initiator port only through the nexuses logged in (SPC-4 5.13.8, 7.6.4.6).
pub trait LoggedInNexuses: Sync {
    /// Calls `visit` once for every I_T nexus logged in now, in any order.
    fn for_each_logged_in(&self, visit: &mut dyn FnMut(&ItNexus));
}

/// A list of nexuses is the simplest answer: the test harnesses' and an embedder's.
impl<N: std::borrow::Borrow<ItNexus> + Sync> LoggedInNexuses for Vec<N> {
    fn for_each_logged_in(&self, visit: &mut dyn FnMut(&ItNexus)) {
        for nexus in self {
            visit(nexus.borrow());
        }
    }
}

/// Opaque in `ScsiCommand`'s Debug output: listing would ask the runtime (and may take its session lock).
impl std::fmt::Debug for dyn LoggedInNexuses + '_ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoggedInNexuses")
    }
}

/// SAM-5 task attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskAttribute {
    Untagged,
    Simple,
    Ordered,
    HeadOfQueue,
    Aca,
}

/// What one I_T nexus may do with the logical units of its target: LUN masking and read-only exports per
/// initiator (the target's ACL). A masked LU is, to that nexus, a LUN that does not exist (SPC-4 6.33 REPORT LUNS
/// lists only accessible LUs; other commands get LOGICAL UNIT NOT SUPPORTED, SPC-4 6.6.2 and SAM-5 5.9.5). A
/// read-only export is write-protected for that nexus only (SBC-4 4.11: DATA PROTECT, WRITE PROTECTED).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NexusAccess {
    /// The LUNs the nexus may see; None: every LUN of the target.
    pub luns: Option<Vec<u64>>,
    /// Every LUN the nexus sees is write-protected for it.
    pub read_only: bool,
}

impl NexusAccess {
    /// Every LUN, read and write: a target without ACL entries.
    pub const FULL: NexusAccess = NexusAccess {
        luns: None,
        read_only: false,
    };

    pub fn sees(&self, lun: u64) -> bool {
        self.luns.as_ref().is_none_or(|luns| luns.contains(&lun))
    }
}

/// One SCSI command as delivered by the transport, with all its Data-Out gathered.
#[derive(Debug)]
pub struct ScsiCommand<'a> {
    pub nexus: &'a Arc<ItNexus>,
    /// LUN number decoded from the 8-byte LUN field (SAM-5 4.7, single level).
    pub lun: u64,
    pub cdb: &'a [u8],
    /// Data-Out as received. It may be shorter or longer than the CDB requires when the initiator's expected data
    /// transfer length disagrees with the CDB; the logical unit then answers as the standard says.
    pub data_out: &'a [u8],
    /// The transport's expected data transfer length for this command (bytes).
    pub expected_transfer_length: u32,
    pub task_tag: u64,
    pub attribute: TaskAttribute,
    /// The nexuses logged in now, for the commands whose meaning depends on them (REGISTER AND MOVE).
    pub logged_in: &'a dyn LoggedInNexuses,
    /// What this nexus may access (masking, read-only export).
    pub access: &'a NexusAccess,
}

/// SAM-5 status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ScsiStatus {
    Good = 0x00,
    CheckCondition = 0x02,
    ConditionMet = 0x04,
    Busy = 0x08,
    ReservationConflict = 0x18,
    TaskSetFull = 0x28,
    AcaActive = 0x30,
    TaskAborted = 0x40,
}

/// The outcome of one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiResponse {
    pub status: ScsiStatus,
    /// Sense data (fixed or descriptor format) when status is CHECK CONDITION; empty otherwise.
    pub sense: Vec<u8>,
    /// Data-In, already truncated to the CDB's allocation length. The transport truncates it further to its
    /// expected data transfer length and reports the residual.
    pub data_in: Vec<u8>,
    /// For commands with a Data-Out phase: the number of bytes the CDB asked for, so the transport can report a
    /// residual overflow or underflow against its expected data transfer length.
    pub data_out_wanted: Option<u32>,
    /// What the command did beyond its own answer that the runtime must carry out before it answers.
    pub effects: SideEffects,
}

/// A command's effects on other tasks, returned with its response so the runtime acts on them before it sends
/// the status, instead of asking the logical unit afterwards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SideEffects {
    /// PREEMPT AND ABORT (SPC-4 5.13.11.5): the I_T nexuses whose task sets at this logical unit are aborted.
    /// Their tasks end (TASK ABORTED or the 2Fh/00h unit attention, per the Control mode page's TAS) before the
    /// PREEMPT AND ABORT itself completes.
    pub aborted_nexuses: Vec<ItNexus>,
}

impl SideEffects {
    /// Nothing beyond the command's own answer: what nearly every command returns.
    pub const NONE: SideEffects = SideEffects {
        aborted_nexuses: Vec::new(),
    };
}

/// Task management functions that reach logical units (SAM-5 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetKind {
    LogicalUnitReset,
    TargetWarmReset,
    TargetColdReset,
    /// I_T nexus loss (SAM-5 6.3.4): connection dropped, session closed or reinstated, I_T NEXUS RESET.
    NexusLoss,
}
