//! The command registry: one row per operation code and service action lunlock executes, and the one place that
//! knows what a command is.
//!
//! A [`Row`] holds the command's name (SPC-4 Annex D, SBC-4 Table 16), its REPORT SUPPORTED OPERATION CODES CDB
//! usage data (SPC-4 6.35.3: byte 0 the opcode, a bit set where the decoder reads the CDB, the control byte
//! last), the decoder [`Command::parse`] calls for its opcode, and the facts the runtime schedules by: the range
//! lock it takes ([`LockKind`]), whether it may wait for the disk, whether it changes the medium.
//!
//! Invariants, checked by the tests below (and, for the first two, at compile time):
//! - every row's usage data is as long as its opcode's CDB (SPC-4 4.2.5.1) and starts with the opcode;
//! - every row that changes the medium holds an exclusive lock, so no writing command runs beside a
//!   COMPARE AND WRITE of its blocks (SBC-4 5.3);
//! - [`Command::row`] is an exhaustive match: a new `Command` variant does not compile until it has a row, and
//!   `parse(encode(command))` gives back `command` and its row for every row;
//! - an opcode that has no row is refused by [`Command::parse`].
//!
//! Who asks the registry: `Command::parse`, `may_wait_for_disk`, `writes_medium` and the range lock
//! ([`Command::lock_request`]) in this crate; REPORT SUPPORTED OPERATION CODES (`opcodes`); the runtime's fault
//! rules (`server::fault`); the initiator's failure messages and every client's CDBs ([`Command::encode`]); the
//! simulator's event log. The crate is sans-IO and depends only on `store`, so clients depend on it directly
//! rather than on a copy of the table.

use crate::cdb::{
    decode, Addressed, Command, CopyResultsRequest, RwCdb, SanitizeAction, VerifyCdb,
};
use crate::pr::{PrIn, ServiceActionOut};
use crate::range_lock::{Access, LockRequest, Span};
use crate::sense::Sense;

/// Operation codes lunlock knows (SPC-4 Annex D / SBC-4 Table 16).
pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0A;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1A;
    pub const START_STOP_UNIT: u8 = 0x1B;
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1E;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2A;
    pub const WRITE_AND_VERIFY_10: u8 = 0x2E;
    pub const VERIFY_10: u8 = 0x2F;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const READ_DEFECT_DATA_10: u8 = 0x37;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const SANITIZE: u8 = 0x48;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const RESERVE_10: u8 = 0x56;
    pub const RELEASE_10: u8 = 0x57;
    pub const MODE_SENSE_10: u8 = 0x5A;
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
    pub const EXTENDED_COPY: u8 = 0x83;
    pub const RECEIVE_COPY_RESULTS: u8 = 0x84;
    pub const READ_16: u8 = 0x88;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const WRITE_16: u8 = 0x8A;
    pub const ORWRITE_16: u8 = 0x8B;
    pub const WRITE_AND_VERIFY_16: u8 = 0x8E;
    pub const VERIFY_16: u8 = 0x8F;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const WRITE_ATOMIC_16: u8 = 0x9C;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    pub const REPORT_LUNS: u8 = 0xA0;
    pub const MAINTENANCE_IN: u8 = 0xA3;
    pub const READ_12: u8 = 0xA8;
    pub const WRITE_12: u8 = 0xAA;
    pub const WRITE_AND_VERIFY_12: u8 = 0xAE;
    pub const VERIFY_12: u8 = 0xAF;
    pub const READ_DEFECT_DATA_12: u8 = 0xB7;

    /// SERVICE ACTION IN(16) service actions (SBC-4).
    pub const SA_READ_CAPACITY_16: u16 = 0x10;
    pub const SA_GET_LBA_STATUS: u16 = 0x12;
    /// EXTENDED COPY service actions (SPC-4 6.4): 00h is LID1.
    pub const SA_EXTENDED_COPY_LID1: u16 = 0x00;
    /// RECEIVE COPY RESULTS service actions (SPC-3 6.18.1).
    pub const SA_COPY_STATUS: u16 = 0x00;
    pub const SA_COPY_OPERATING_PARAMETERS: u16 = 0x03;
    /// MAINTENANCE IN service actions (SPC-4).
    pub const SA_REPORT_TARGET_PORT_GROUPS: u16 = 0x0A;
    pub const SA_REPORT_SUPPORTED_OPCODES: u16 = 0x0C;
    pub const SA_REPORT_SUPPORTED_TMFS: u16 = 0x0D;
}

/// Which blocks a range lock covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extent {
    /// The blocks the CDB names ([`Command::addressed`]); "to the end of the medium" (WRITE SAME with NUMBER OF
    /// LOGICAL BLOCKS 0) is the whole medium.
    Blocks,
    /// The whole medium: the command's ranges are in its parameter list (UNMAP), it touches every block
    /// (SANITIZE), or it changes the reservations every command checks under its lock (PERSISTENT RESERVE OUT,
    /// RESERVE, RELEASE), which must not interleave with any command's check-then-execute.
    Medium,
}

/// The LBA range lock a command holds while it runs (`crate::range_lock`), so COMPARE AND WRITE stays atomic
/// against it (SBC-4 5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    /// Touches no block and no reservation.
    None,
    /// Reads: overlapping readers run together.
    Shared(Extent),
    /// Changes the medium or the reservations.
    Exclusive(Extent),
    /// Takes its own locks, one bounded chunk at a time, on the logical units its parameter list names (EXTENDED
    /// COPY, which may span LUNs): the source range shared, then the destination range exclusive, never both at
    /// once, so two copies cannot wait for each other (`crate::xcopy`).
    PerCopyChunk,
}

/// One operation code and service action lunlock executes.
#[derive(Debug)]
pub struct Row {
    /// The command's name as SPC-4 and SBC-4 (and sg3_utils) write it: "READ(16)", "PERSISTENT RESERVE OUT".
    pub name: &'static str,
    pub opcode: u8,
    /// The service action, for opcodes that have them (SPC-4 4.2.5.2).
    pub service_action: Option<u16>,
    /// The service action's name when the opcode's name alone does not say it ("PREEMPT AND ABORT").
    pub service_action_name: Option<&'static str>,
    /// CDB usage data (SPC-4 6.35.3); its length is the CDB's.
    pub usage: &'static [u8],
    /// The decoder for this opcode: every row of an opcode has the same one.
    pub parse: fn(&[u8]) -> Result<Command, Sense>,
    pub lock: LockKind,
    /// Store I/O, a flush or an fsync of saved state: the runtime runs it on the LUN's I/O engine.
    pub may_wait_for_disk: bool,
    /// Changes the medium: refused with DATA PROTECT on a write-protected LU; always holds an exclusive lock (per
    /// chunk, for EXTENDED COPY).
    pub writes_medium: bool,
    /// Arbitrates between hosts: COMPARE AND WRITE (heartbeats and on-disk locks) and PERSISTENT RESERVE OUT
    /// (registrations, reservations, fencing). The runtime runs it on the LUN's arbitration threads, scheduled
    /// ahead of bulk I/O, since a heartbeat that waits for a CPU is what times out and starts the ATS miscompare
    /// cascade.
    pub arbitrates: bool,
}

impl Row {
    /// The length of the CDB (SPC-4 4.2.5.1).
    pub const fn cdb_length(&self) -> usize {
        self.usage.len()
    }

    /// The name with the service action's, for logs: "PERSISTENT RESERVE OUT PREEMPT AND ABORT".
    pub fn full_name(&self) -> String {
        match self.service_action_name {
            Some(action) => format!("{} {action}", self.name),
            None => self.name.to_string(),
        }
    }

    /// The name without its CDB size: "READ" for READ(6), (10), (12) and (16).
    pub fn family(&self) -> &'static str {
        match self.name.find('(') {
            Some(at) => &self.name[..at],
            None => self.name,
        }
    }

    const fn new(
        name: &'static str,
        usage: &'static [u8],
        parse: fn(&[u8]) -> Result<Command, Sense>,
    ) -> Row {
        Row {
            name,
            opcode: usage[0],
            service_action: None,
            service_action_name: None,
            usage,
            parse,
            lock: LockKind::None,
            may_wait_for_disk: false,
            writes_medium: false,
            arbitrates: false,
        }
    }

    /// A row of an opcode with service actions: the service action is in the usage data's byte 1.
    const fn action(mut self, name: Option<&'static str>) -> Row {
        self.service_action = Some((self.usage[1] & 0x1F) as u16);
        self.service_action_name = name;
        self
    }

    const fn lock(mut self, lock: LockKind) -> Row {
        self.lock = lock;
        self
    }

    const fn waits(mut self) -> Row {
        self.may_wait_for_disk = true;
        self
    }

    /// Arbitrates between hosts (see [`Row::arbitrates`]).
    const fn arbitrates(mut self) -> Row {
        self.arbitrates = true;
        self
    }

    /// Changes the medium: it may wait for the disk and holds its blocks (or the medium) exclusively.
    const fn writes(mut self, extent: Extent) -> Row {
        self.lock = LockKind::Exclusive(extent);
        self.may_wait_for_disk = true;
        self.writes_medium = true;
        self
    }

    /// EXTENDED COPY: it may write the medium of another LU than the one it is sent to, and locks chunk by chunk.
    const fn copies(mut self) -> Row {
        self.lock = LockKind::PerCopyChunk;
        self.may_wait_for_disk = true;
        self.writes_medium = true;
        self
    }
}

/// Whether `lock` keeps every write of a command exclusive against the other commands of its blocks.
const fn writes_exclusively(lock: LockKind) -> bool {
    matches!(lock, LockKind::Exclusive(_) | LockKind::PerCopyChunk)
}

/// Control byte usage: NACA (bit 2) and LINK (bit 0) are examined (and refused when set).
const C: u8 = 0x05;
const SHARED_BLOCKS: LockKind = LockKind::Shared(Extent::Blocks);
const EXCLUSIVE_MEDIUM: LockKind = LockKind::Exclusive(Extent::Medium);
use Extent::{Blocks, Medium};

/// The rows, one `static` each so [`Command::row`] can name them. Usage data: SPC-4 6.35.3 Table 257, one byte
/// per CDB byte.
#[rustfmt::skip]
pub mod rows {
    use super::*;

    pub static TEST_UNIT_READY: Row = Row::new("TEST UNIT READY", &[op::TEST_UNIT_READY, 0, 0, 0, 0, C], decode::test_unit_ready);
    pub static REQUEST_SENSE: Row = Row::new("REQUEST SENSE", &[op::REQUEST_SENSE, 0x01, 0, 0, 0xFF, C], decode::request_sense);
    pub static READ_6: Row = Row::new("READ(6)", &[op::READ_6, 0x1F, 0xFF, 0xFF, 0xFF, C], decode::read_write_6)
        .lock(SHARED_BLOCKS).waits();
    pub static WRITE_6: Row = Row::new("WRITE(6)", &[op::WRITE_6, 0x1F, 0xFF, 0xFF, 0xFF, C], decode::read_write_6)
        .writes(Blocks);
    pub static INQUIRY: Row = Row::new("INQUIRY", &[op::INQUIRY, 0x03, 0xFF, 0xFF, 0xFF, C], decode::inquiry);
    pub static MODE_SELECT_6: Row = Row::new("MODE SELECT(6)", &[op::MODE_SELECT_6, 0x11, 0, 0, 0xFF, C], decode::mode_select);
    pub static MODE_SENSE_6: Row = Row::new("MODE SENSE(6)", &[op::MODE_SENSE_6, 0x08, 0xFF, 0xFF, 0xFF, C], decode::mode_sense);
    pub static START_STOP_UNIT: Row = Row::new("START STOP UNIT", &[op::START_STOP_UNIT, 0x01, 0, 0, 0xF7, C], decode::start_stop_unit);
    pub static PREVENT_ALLOW_MEDIUM_REMOVAL: Row = Row::new("PREVENT ALLOW MEDIUM REMOVAL",
        &[op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 0x03, C], decode::prevent_allow_medium_removal);
    pub static READ_CAPACITY_10: Row = Row::new("READ CAPACITY(10)",
        &[op::READ_CAPACITY_10, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, C], decode::read_capacity_10);
    pub static READ_10: Row = Row::new("READ(10)",
        &[op::READ_10, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, C], decode::read_write)
        .lock(SHARED_BLOCKS).waits();
    pub static WRITE_10: Row = Row::new("WRITE(10)",
        &[op::WRITE_10, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, C], decode::read_write)
        .writes(Blocks);
    pub static WRITE_AND_VERIFY_10: Row = Row::new("WRITE AND VERIFY(10)",
        &[op::WRITE_AND_VERIFY_10, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, C], decode::write_and_verify)
        .writes(Blocks);
    pub static VERIFY_10: Row = Row::new("VERIFY(10)",
        &[op::VERIFY_10, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, C], decode::verify)
        .lock(SHARED_BLOCKS).waits();
    pub static PRE_FETCH_10: Row = Row::new("PRE-FETCH(10)",
        &[op::PRE_FETCH_10, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, C], decode::pre_fetch)
        .waits();
    pub static SYNCHRONIZE_CACHE_10: Row = Row::new("SYNCHRONIZE CACHE(10)",
        &[op::SYNCHRONIZE_CACHE_10, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, C], decode::synchronize_cache)
        .waits();
    pub static READ_DEFECT_DATA_10: Row = Row::new("READ DEFECT DATA(10)",
        &[op::READ_DEFECT_DATA_10, 0, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, C], decode::read_defect_data);
    pub static WRITE_SAME_10: Row = Row::new("WRITE SAME(10)",
        &[op::WRITE_SAME_10, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, C], decode::write_same)
        .writes(Blocks);
    pub static UNMAP: Row = Row::new("UNMAP", &[op::UNMAP, 0x01, 0, 0, 0, 0, 0, 0xFF, 0xFF, C], decode::unmap)
        .writes(Medium);
    // SBC-4 5.30.1: IMMED, AUSE, service action, parameter list length.
    pub static SANITIZE_OVERWRITE: Row = Row::new("SANITIZE",
        &[op::SANITIZE, 0x80 | 0x20 | 0x01, 0, 0, 0, 0, 0, 0xFF, 0xFF, C], decode::sanitize)
        .action(Some("OVERWRITE")).writes(Medium);
    pub static SANITIZE_BLOCK_ERASE: Row = Row::new("SANITIZE",
        &[op::SANITIZE, 0x80 | 0x20 | 0x02, 0, 0, 0, 0, 0, 0xFF, 0xFF, C], decode::sanitize)
        .action(Some("BLOCK ERASE")).writes(Medium);
    pub static SANITIZE_CRYPTOGRAPHIC_ERASE: Row = Row::new("SANITIZE",
        &[op::SANITIZE, 0x80 | 0x20 | 0x03, 0, 0, 0, 0, 0, 0xFF, 0xFF, C], decode::sanitize)
        .action(Some("CRYPTOGRAPHIC ERASE")).writes(Medium);
    // Leaves the failure mode without touching a block, but still excludes every other command while it does.
    pub static SANITIZE_EXIT_FAILURE_MODE: Row = Row::new("SANITIZE",
        &[op::SANITIZE, 0x80 | 0x20 | 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, C], decode::sanitize)
        .action(Some("EXIT FAILURE MODE")).lock(EXCLUSIVE_MEDIUM).waits();
    pub static MODE_SELECT_10: Row = Row::new("MODE SELECT(10)",
        &[op::MODE_SELECT_10, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, C], decode::mode_select);
    pub static MODE_SENSE_10: Row = Row::new("MODE SENSE(10)",
        &[op::MODE_SENSE_10, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, C], decode::mode_sense);
    // SPC-4 6.13.1: service action, allocation length.
    pub static PRIN_READ_KEYS: Row = Row::new("PERSISTENT RESERVE IN",
        &[op::PERSISTENT_RESERVE_IN, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, C], decode::persistent_reserve_in)
        .action(Some("READ KEYS"));
    pub static PRIN_READ_RESERVATION: Row = Row::new("PERSISTENT RESERVE IN",
        &[op::PERSISTENT_RESERVE_IN, 1, 0, 0, 0, 0, 0, 0xFF, 0xFF, C], decode::persistent_reserve_in)
        .action(Some("READ RESERVATION"));
    pub static PRIN_REPORT_CAPABILITIES: Row = Row::new("PERSISTENT RESERVE IN",
        &[op::PERSISTENT_RESERVE_IN, 2, 0, 0, 0, 0, 0, 0xFF, 0xFF, C], decode::persistent_reserve_in)
        .action(Some("REPORT CAPABILITIES"));
    pub static PRIN_READ_FULL_STATUS: Row = Row::new("PERSISTENT RESERVE IN",
        &[op::PERSISTENT_RESERVE_IN, 3, 0, 0, 0, 0, 0, 0xFF, 0xFF, C], decode::persistent_reserve_in)
        .action(Some("READ FULL STATUS"));
    // SPC-4 6.14.1: service action, scope/type, parameter list length. Every service action holds the medium
    // exclusively and may fsync the APTPL state.
    pub static PROUT_REGISTER: Row = Row::new("PERSISTENT RESERVE OUT",
        &[op::PERSISTENT_RESERVE_OUT, 0, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, C], decode::persistent_reserve_out)
        .action(Some("REGISTER")).lock(EXCLUSIVE_MEDIUM).waits().arbitrates();
    pub static PROUT_RESERVE: Row = Row::new("PERSISTENT RESERVE OUT",
        &[op::PERSISTENT_RESERVE_OUT, 1, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, C], decode::persistent_reserve_out)
        .action(Some("RESERVE")).lock(EXCLUSIVE_MEDIUM).waits().arbitrates();
    pub static PROUT_RELEASE: Row = Row::new("PERSISTENT RESERVE OUT",
        &[op::PERSISTENT_RESERVE_OUT, 2, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, C], decode::persistent_reserve_out)
        .action(Some("RELEASE")).lock(EXCLUSIVE_MEDIUM).waits().arbitrates();
    pub static PROUT_CLEAR: Row = Row::new("PERSISTENT RESERVE OUT",
        &[op::PERSISTENT_RESERVE_OUT, 3, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, C], decode::persistent_reserve_out)
        .action(Some("CLEAR")).lock(EXCLUSIVE_MEDIUM).waits().arbitrates();
    pub static PROUT_PREEMPT: Row = Row::new("PERSISTENT RESERVE OUT",
        &[op::PERSISTENT_RESERVE_OUT, 4, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, C], decode::persistent_reserve_out)
        .action(Some("PREEMPT")).lock(EXCLUSIVE_MEDIUM).waits().arbitrates();
    pub static PROUT_PREEMPT_AND_ABORT: Row = Row::new("PERSISTENT RESERVE OUT",
        &[op::PERSISTENT_RESERVE_OUT, 5, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, C], decode::persistent_reserve_out)
        .action(Some("PREEMPT AND ABORT")).lock(EXCLUSIVE_MEDIUM).waits().arbitrates();
    pub static PROUT_REGISTER_AND_IGNORE_EXISTING_KEY: Row = Row::new("PERSISTENT RESERVE OUT",
        &[op::PERSISTENT_RESERVE_OUT, 6, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, C], decode::persistent_reserve_out)
        .action(Some("REGISTER AND IGNORE EXISTING KEY")).lock(EXCLUSIVE_MEDIUM).waits().arbitrates();
    pub static PROUT_REGISTER_AND_MOVE: Row = Row::new("PERSISTENT RESERVE OUT",
        &[op::PERSISTENT_RESERVE_OUT, 7, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, C], decode::persistent_reserve_out)
        .action(Some("REGISTER AND MOVE")).lock(EXCLUSIVE_MEDIUM).waits().arbitrates();
    // SPC-2 7.21, 7.13: whole-LU reservations change what every command may do, like PERSISTENT RESERVE OUT.
    pub static RESERVE_6: Row = Row::new("RESERVE(6)", &[op::RESERVE_6, 0, 0, 0, 0, C], decode::reserve_release)
        .lock(EXCLUSIVE_MEDIUM);
    pub static RELEASE_6: Row = Row::new("RELEASE(6)", &[op::RELEASE_6, 0, 0, 0, 0, C], decode::reserve_release)
        .lock(EXCLUSIVE_MEDIUM);
    pub static RESERVE_10: Row = Row::new("RESERVE(10)",
        &[op::RESERVE_10, 0, 0, 0, 0, 0, 0, 0, 0, C], decode::reserve_release)
        .lock(EXCLUSIVE_MEDIUM);
    pub static RELEASE_10: Row = Row::new("RELEASE(10)",
        &[op::RELEASE_10, 0, 0, 0, 0, 0, 0, 0, 0, C], decode::reserve_release)
        .lock(EXCLUSIVE_MEDIUM);
    // SPC-4 6.4.1: service action 00h (LID1), PARAMETER LIST LENGTH.
    pub static EXTENDED_COPY_LID1: Row = Row::new("EXTENDED COPY(LID1)",
        &[op::EXTENDED_COPY, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, C], decode::extended_copy)
        .action(None).copies();
    // SPC-3 6.18.1: service action, LIST IDENTIFIER (COPY STATUS only), ALLOCATION LENGTH.
    pub static RECEIVE_COPY_STATUS: Row = Row::new("RECEIVE COPY RESULTS",
        &[op::RECEIVE_COPY_RESULTS, 0x00, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, C],
        decode::receive_copy_results)
        .action(Some("COPY STATUS"));
    pub static RECEIVE_COPY_OPERATING_PARAMETERS: Row = Row::new("RECEIVE COPY RESULTS",
        &[op::RECEIVE_COPY_RESULTS, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, C],
        decode::receive_copy_results)
        .action(Some("OPERATING PARAMETERS"));
    pub static READ_16: Row = Row::new("READ(16)",
        &[op::READ_16, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, C],
        decode::read_write)
        .lock(SHARED_BLOCKS).waits();
    pub static WRITE_16: Row = Row::new("WRITE(16)",
        &[op::WRITE_16, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, C],
        decode::read_write)
        .writes(Blocks);
    pub static COMPARE_AND_WRITE: Row = Row::new("COMPARE AND WRITE",
        &[op::COMPARE_AND_WRITE, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0, C],
        decode::compare_and_write)
        .writes(Blocks).arbitrates();
    pub static ORWRITE_16: Row = Row::new("ORWRITE(16)",
        &[op::ORWRITE_16, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, C],
        decode::read_write)
        .writes(Blocks);
    pub static WRITE_AND_VERIFY_16: Row = Row::new("WRITE AND VERIFY(16)",
        &[op::WRITE_AND_VERIFY_16, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, C],
        decode::write_and_verify)
        .writes(Blocks);
    pub static VERIFY_16: Row = Row::new("VERIFY(16)",
        &[op::VERIFY_16, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, C],
        decode::verify)
        .lock(SHARED_BLOCKS).waits();
    pub static PRE_FETCH_16: Row = Row::new("PRE-FETCH(16)",
        &[op::PRE_FETCH_16, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, C],
        decode::pre_fetch)
        .waits();
    pub static SYNCHRONIZE_CACHE_16: Row = Row::new("SYNCHRONIZE CACHE(16)",
        &[op::SYNCHRONIZE_CACHE_16, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, C],
        decode::synchronize_cache)
        .waits();
    pub static WRITE_SAME_16: Row = Row::new("WRITE SAME(16)",
        &[op::WRITE_SAME_16, 0xF9, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, C],
        decode::write_same)
        .writes(Blocks);
    // SBC-4 5.48: WRPROTECT, DPO, FUA; LBA; ATOMIC BOUNDARY (examined: must be 0); TRANSFER LENGTH; GROUP NUMBER.
    // Exclusive over its blocks like a WRITE, so an overlapping READ sees all old or all new data (SBC-4 4.29).
    pub static WRITE_ATOMIC_16: Row = Row::new("WRITE ATOMIC(16)",
        &[op::WRITE_ATOMIC_16, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, C],
        decode::write_atomic)
        .writes(Blocks);
    pub static READ_CAPACITY_16: Row = Row::new("READ CAPACITY(16)",
        &[op::SERVICE_ACTION_IN_16, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, C],
        decode::service_action_in_16)
        .action(None);
    pub static GET_LBA_STATUS: Row = Row::new("GET LBA STATUS",
        &[op::SERVICE_ACTION_IN_16, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, C],
        decode::service_action_in_16)
        .action(None).waits();
    pub static REPORT_LUNS: Row = Row::new("REPORT LUNS",
        &[op::REPORT_LUNS, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, C], decode::report_luns);
    // SPC-4 6.37 Table 302: PARAMETER DATA FORMAT (byte 1 bits 7..5) with the service action, allocation length.
    // Memory only: no lock, no disk.
    pub static REPORT_TARGET_PORT_GROUPS: Row = Row::new("REPORT TARGET PORT GROUPS",
        &[op::MAINTENANCE_IN, 0xE0 | 0x0A, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, C], decode::maintenance_in)
        .action(None);
    pub static REPORT_SUPPORTED_OPERATION_CODES: Row = Row::new("REPORT SUPPORTED OPERATION CODES",
        &[op::MAINTENANCE_IN, 0x0C, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, C], decode::maintenance_in)
        .action(None);
    pub static REPORT_SUPPORTED_TASK_MANAGEMENT_FUNCTIONS: Row = Row::new("REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS",
        &[op::MAINTENANCE_IN, 0x0D, 0x80, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, C], decode::maintenance_in)
        .action(None);
    pub static READ_12: Row = Row::new("READ(12)",
        &[op::READ_12, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, C], decode::read_write)
        .lock(SHARED_BLOCKS).waits();
    pub static WRITE_12: Row = Row::new("WRITE(12)",
        &[op::WRITE_12, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, C], decode::read_write)
        .writes(Blocks);
    pub static WRITE_AND_VERIFY_12: Row = Row::new("WRITE AND VERIFY(12)",
        &[op::WRITE_AND_VERIFY_12, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, C], decode::write_and_verify)
        .writes(Blocks);
    pub static VERIFY_12: Row = Row::new("VERIFY(12)",
        &[op::VERIFY_12, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, C], decode::verify)
        .lock(SHARED_BLOCKS).waits();
    pub static READ_DEFECT_DATA_12: Row = Row::new("READ DEFECT DATA(12)",
        &[op::READ_DEFECT_DATA_12, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, C], decode::read_defect_data);

    /// Every row, in the order REPORT SUPPORTED OPERATION CODES lists them.
    pub static TABLE: [&Row; 65] = [
        &TEST_UNIT_READY, &REQUEST_SENSE, &READ_6, &WRITE_6, &INQUIRY, &MODE_SELECT_6, &MODE_SENSE_6,
        &START_STOP_UNIT, &PREVENT_ALLOW_MEDIUM_REMOVAL, &READ_CAPACITY_10, &READ_10, &WRITE_10,
        &WRITE_AND_VERIFY_10, &VERIFY_10, &PRE_FETCH_10, &SYNCHRONIZE_CACHE_10, &READ_DEFECT_DATA_10,
        &WRITE_SAME_10, &UNMAP, &SANITIZE_OVERWRITE, &SANITIZE_BLOCK_ERASE, &SANITIZE_CRYPTOGRAPHIC_ERASE,
        &SANITIZE_EXIT_FAILURE_MODE, &MODE_SELECT_10, &MODE_SENSE_10, &PRIN_READ_KEYS, &PRIN_READ_RESERVATION,
        &PRIN_REPORT_CAPABILITIES, &PRIN_READ_FULL_STATUS, &PROUT_REGISTER, &PROUT_RESERVE, &PROUT_RELEASE,
        &PROUT_CLEAR, &PROUT_PREEMPT, &PROUT_PREEMPT_AND_ABORT, &PROUT_REGISTER_AND_IGNORE_EXISTING_KEY,
        &PROUT_REGISTER_AND_MOVE, &RESERVE_6, &RELEASE_6, &RESERVE_10, &RELEASE_10, &EXTENDED_COPY_LID1,
        &RECEIVE_COPY_STATUS, &RECEIVE_COPY_OPERATING_PARAMETERS, &READ_16, &WRITE_16,
        &COMPARE_AND_WRITE, &ORWRITE_16, &WRITE_AND_VERIFY_16, &VERIFY_16, &PRE_FETCH_16, &SYNCHRONIZE_CACHE_16,
        &WRITE_SAME_16, &WRITE_ATOMIC_16, &READ_CAPACITY_16, &GET_LBA_STATUS, &REPORT_LUNS, &REPORT_TARGET_PORT_GROUPS,
        &REPORT_SUPPORTED_OPERATION_CODES,
        &REPORT_SUPPORTED_TASK_MANAGEMENT_FUNCTIONS, &READ_12, &WRITE_12, &WRITE_AND_VERIFY_12, &VERIFY_12,
        &READ_DEFECT_DATA_12,
    ];
}

pub use rows::TABLE;

/// No row for this opcode, in [`FIRST_ROW`].
const NO_ROW: u8 = u8::MAX;

/// The index in [`TABLE`] of each opcode's first row.
static FIRST_ROW: [u8; 256] = {
    let mut index = [NO_ROW; 256];
    let mut at = TABLE.len();
    while at > 0 {
        at -= 1;
        index[TABLE[at].opcode as usize] = at as u8;
    }
    index
};

/// Checked when the crate compiles: usage data as long as the opcode's CDB and starting with it, and an exclusive
/// lock (or exclusive locks per copy chunk) for every command that changes the medium.
const _: () = {
    assert!(TABLE.len() < NO_ROW as usize);
    let mut at = 0;
    while at < TABLE.len() {
        let row = TABLE[at];
        let length = match row.opcode >> 5 {
            0 => 6,
            1 | 2 => 10,
            4 => 16,
            5 => 12,
            _ => 0,
        };
        assert!(row.usage.len() == length && row.usage[0] == row.opcode);
        assert!(!row.writes_medium || writes_exclusively(row.lock));
        at += 1;
    }
};

/// The first row of `opcode`, whose decoder serves all its service actions.
pub(crate) fn first_row(opcode: u8) -> Option<&'static Row> {
    match FIRST_ROW[opcode as usize] {
        NO_ROW => None,
        at => Some(TABLE[at as usize]),
    }
}

/// The rows of one opcode (one, or one per service action; they are adjacent in [`TABLE`]).
pub fn rows_of(opcode: u8) -> impl Iterator<Item = &'static Row> {
    let start = match FIRST_ROW[opcode as usize] {
        NO_ROW => TABLE.len(),
        at => at as usize,
    };
    TABLE[start..]
        .iter()
        .copied()
        .take_while(move |row| row.opcode == opcode)
}

/// Whether `opcode` has service actions (SPC-4 4.2.5.2).
pub fn has_service_actions(opcode: u8) -> bool {
    first_row(opcode).is_some_and(|row| row.service_action.is_some())
}

/// The row a CDB asks for, from its opcode and service action alone (no field is checked): for naming commands
/// in logs and failure messages. None for an opcode or service action lunlock does not execute.
pub fn lookup(cdb: &[u8]) -> Option<&'static Row> {
    index_of(cdb).map(|at| TABLE[at])
}

/// The index in [`TABLE`] of the row a CDB asks for (see [`lookup`]): the runtime counts commands per row in
/// an array, without a map.
pub fn index_of(cdb: &[u8]) -> Option<usize> {
    let first = match FIRST_ROW[*cdb.first()? as usize] {
        NO_ROW => return None,
        at => at as usize,
    };
    if TABLE[first].service_action.is_none() {
        return Some(first);
    }
    let service_action = (cdb.get(1)? & 0x1F) as u16;
    (first..TABLE.len())
        .take_while(|at| TABLE[*at].opcode == TABLE[first].opcode)
        .find(|at| TABLE[*at].service_action == Some(service_action))
}

/// The name of the command a CDB asks for (see [`lookup`]).
pub fn name(cdb: &[u8]) -> Option<&'static str> {
    lookup(cdb).map(|row| row.name)
}

impl Command {
    /// The command's row. Exhaustive, with no catch-all: a new command does not compile until it has a row, and
    /// so a range lock, a may-wait and a writes-medium answer.
    pub fn row(&self) -> &'static Row {
        use rows::*;
        match self {
            Command::TestUnitReady => &TEST_UNIT_READY,
            Command::RequestSense { .. } => &REQUEST_SENSE,
            Command::Inquiry { .. } => &INQUIRY,
            Command::ReportLuns { .. } => &REPORT_LUNS,
            Command::ModeSense { ten: false, .. } => &MODE_SENSE_6,
            Command::ModeSense { ten: true, .. } => &MODE_SENSE_10,
            Command::ModeSelect { ten: false, .. } => &MODE_SELECT_6,
            Command::ModeSelect { ten: true, .. } => &MODE_SELECT_10,
            Command::ReportSupportedOpcodes { .. } => &REPORT_SUPPORTED_OPERATION_CODES,
            Command::ReportSupportedTmfs { .. } => &REPORT_SUPPORTED_TASK_MANAGEMENT_FUNCTIONS,
            Command::ReportTargetPortGroups { .. } => &REPORT_TARGET_PORT_GROUPS,
            Command::StartStopUnit { .. } => &START_STOP_UNIT,
            Command::PreventAllowMediumRemoval { .. } => &PREVENT_ALLOW_MEDIUM_REMOVAL,
            Command::ReadDefectData { twelve: false, .. } => &READ_DEFECT_DATA_10,
            Command::ReadDefectData { twelve: true, .. } => &READ_DEFECT_DATA_12,
            Command::ReadCapacity10 => &READ_CAPACITY_10,
            Command::ReadCapacity16 { .. } => &READ_CAPACITY_16,
            Command::Read { cdb, .. } => match cdb {
                RwCdb::Six => &READ_6,
                RwCdb::Ten => &READ_10,
                RwCdb::Twelve => &READ_12,
                RwCdb::Sixteen => &READ_16,
            },
            Command::Write { cdb, .. } => match cdb {
                RwCdb::Six => &WRITE_6,
                RwCdb::Ten => &WRITE_10,
                RwCdb::Twelve => &WRITE_12,
                RwCdb::Sixteen => &WRITE_16,
            },
            Command::WriteAndVerify { cdb, .. } => match cdb {
                VerifyCdb::Ten => &WRITE_AND_VERIFY_10,
                VerifyCdb::Twelve => &WRITE_AND_VERIFY_12,
                VerifyCdb::Sixteen => &WRITE_AND_VERIFY_16,
            },
            Command::Verify { cdb, .. } => match cdb {
                VerifyCdb::Ten => &VERIFY_10,
                VerifyCdb::Twelve => &VERIFY_12,
                VerifyCdb::Sixteen => &VERIFY_16,
            },
            Command::OrWrite { .. } => &ORWRITE_16,
            Command::CompareAndWrite { .. } => &COMPARE_AND_WRITE,
            Command::WriteAtomic { .. } => &WRITE_ATOMIC_16,
            Command::WriteSame { ten: true, .. } => &WRITE_SAME_10,
            Command::WriteSame { ten: false, .. } => &WRITE_SAME_16,
            Command::Unmap { .. } => &UNMAP,
            Command::GetLbaStatus { .. } => &GET_LBA_STATUS,
            Command::SynchronizeCache { ten: true, .. } => &SYNCHRONIZE_CACHE_10,
            Command::SynchronizeCache { ten: false, .. } => &SYNCHRONIZE_CACHE_16,
            Command::PreFetch { ten: true, .. } => &PRE_FETCH_10,
            Command::PreFetch { ten: false, .. } => &PRE_FETCH_16,
            Command::PersistentReserveIn(prin) => match prin {
                PrIn::ReadKeys { .. } => &PRIN_READ_KEYS,
                PrIn::ReadReservation { .. } => &PRIN_READ_RESERVATION,
                PrIn::ReportCapabilities { .. } => &PRIN_REPORT_CAPABILITIES,
                PrIn::ReadFullStatus { .. } => &PRIN_READ_FULL_STATUS,
            },
            Command::PersistentReserveOut(prout) => match prout.action {
                ServiceActionOut::Register => &PROUT_REGISTER,
                ServiceActionOut::Reserve => &PROUT_RESERVE,
                ServiceActionOut::Release => &PROUT_RELEASE,
                ServiceActionOut::Clear => &PROUT_CLEAR,
                ServiceActionOut::Preempt => &PROUT_PREEMPT,
                ServiceActionOut::PreemptAndAbort => &PROUT_PREEMPT_AND_ABORT,
                ServiceActionOut::RegisterAndIgnoreExistingKey => {
                    &PROUT_REGISTER_AND_IGNORE_EXISTING_KEY
                }
                ServiceActionOut::RegisterAndMove => &PROUT_REGISTER_AND_MOVE,
            },
            Command::Sanitize { action, .. } => match action {
                SanitizeAction::Overwrite => &SANITIZE_OVERWRITE,
                SanitizeAction::BlockErase => &SANITIZE_BLOCK_ERASE,
                SanitizeAction::CryptographicErase => &SANITIZE_CRYPTOGRAPHIC_ERASE,
                SanitizeAction::ExitFailureMode => &SANITIZE_EXIT_FAILURE_MODE,
            },
            Command::Reserve { ten: false } => &RESERVE_6,
            Command::Reserve { ten: true } => &RESERVE_10,
            Command::Release { ten: false } => &RELEASE_6,
            Command::Release { ten: true } => &RELEASE_10,
            Command::ExtendedCopy { .. } => &EXTENDED_COPY_LID1,
            Command::ReceiveCopyResults { request, .. } => match request {
                CopyResultsRequest::CopyStatus { .. } => &RECEIVE_COPY_STATUS,
                CopyResultsRequest::OperatingParameters => &RECEIVE_COPY_OPERATING_PARAMETERS,
            },
        }
    }

    /// The LBA range lock the command's row asks for, over the blocks the command names. A row that asks for its
    /// blocks when the command names none locks the whole medium: more than needed, never less.
    pub fn lock_request(&self) -> Option<LockRequest> {
        let (extent, access) = match self.row().lock {
            LockKind::None | LockKind::PerCopyChunk => return None,
            LockKind::Shared(extent) => (extent, Access::Shared),
            LockKind::Exclusive(extent) => (extent, Access::Exclusive),
        };
        let span = match (extent, self.addressed()) {
            (Extent::Blocks, Some(Addressed::Blocks { lba, blocks })) => Span::of(lba, blocks),
            (Extent::Blocks, Some(Addressed::ToEndOfMedium { .. }) | None)
            | (Extent::Medium, _) => Span::Medium,
        };
        Some(LockRequest { span, access })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdb::{cdb_length, BlockCount, Lba};

    /// A CDB for `row` with random values (or zeros) in the bytes its usage data marks, control byte 0.
    fn random_cdb(row: &Row, state: &mut u64) -> Vec<u8> {
        let mut cdb: Vec<u8> = row
            .usage
            .iter()
            .map(|&usage| {
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                // Half the fields zero, so fields that must be zero or small are often valid.
                if *state & 1 == 0 {
                    0
                } else {
                    (*state >> 24) as u8 & usage
                }
            })
            .collect();
        cdb[0] = row.opcode;
        if let Some(service_action) = row.service_action {
            cdb[1] = cdb[1] & !0x1F | service_action as u8;
        }
        *cdb.last_mut().expect("a CDB has a control byte") = 0;
        cdb
    }

    /// The plainest valid CDB for `row`: opcode, service action, and a TYPE where PERSISTENT RESERVE OUT needs one.
    fn plain_cdb(row: &Row) -> Vec<u8> {
        let mut cdb = vec![0u8; row.cdb_length()];
        cdb[0] = row.opcode;
        if let Some(service_action) = row.service_action {
            cdb[1] = service_action as u8;
        }
        if row.opcode == op::PERSISTENT_RESERVE_OUT {
            cdb[2] = 1;
        }
        cdb
    }

    #[test]
    fn every_row_that_writes_the_medium_holds_an_exclusive_lock() {
        for row in TABLE {
            if row.writes_medium {
                assert!(
                    writes_exclusively(row.lock),
                    "{} writes the medium without an exclusive lock",
                    row.full_name()
                );
                assert!(
                    row.may_wait_for_disk,
                    "{} writes without the disk",
                    row.name
                );
            }
        }
    }

    #[test]
    fn compare_and_write_and_every_persistent_reserve_out_action_arbitrate() {
        let arbitrating: Vec<String> = TABLE
            .iter()
            .filter(|row| row.arbitrates)
            .map(|row| row.full_name())
            .collect();
        assert!(arbitrating.contains(&"COMPARE AND WRITE".to_string()));
        let prout_rows = rows_of(op::PERSISTENT_RESERVE_OUT).count();
        let prout_arbitrating = arbitrating
            .iter()
            .filter(|name| name.starts_with("PERSISTENT RESERVE OUT"))
            .count();
        assert_eq!(prout_arbitrating, prout_rows, "{arbitrating:?}");
        assert_eq!(arbitrating.len(), prout_rows + 1, "{arbitrating:?}");
        for row in TABLE.iter().filter(|row| row.arbitrates) {
            // The arbitration threads are an I/O engine: a command that never waits runs inline instead.
            assert!(row.may_wait_for_disk, "{}", row.full_name());
        }
    }

    #[test]
    fn every_rows_usage_data_matches_its_cdb_length_and_service_action() {
        for row in TABLE {
            assert_eq!(
                Some(row.cdb_length()),
                cdb_length(row.opcode),
                "{}",
                row.name
            );
            assert_eq!(row.usage[0], row.opcode, "{}", row.name);
            assert_eq!(*row.usage.last().unwrap(), C, "{}: control byte", row.name);
            assert_eq!(
                row.service_action.is_some(),
                has_service_actions(row.opcode),
                "{}: every row of an opcode has a service action or none does",
                row.name
            );
            if let Some(service_action) = row.service_action {
                assert_eq!((row.usage[1] & 0x1F) as u16, service_action, "{}", row.name);
            }
        }
    }

    #[test]
    fn rows_are_unique_and_share_their_opcodes_decoder() {
        for (at, row) in TABLE.iter().enumerate() {
            for other in &TABLE[at + 1..] {
                assert!(
                    (row.opcode, row.service_action) != (other.opcode, other.service_action),
                    "{} is listed twice",
                    row.full_name()
                );
                if row.opcode == other.opcode {
                    assert!(std::ptr::fn_addr_eq(row.parse, other.parse), "{}", row.name);
                }
            }
            let of_opcode = TABLE.iter().filter(|r| r.opcode == row.opcode).count();
            assert_eq!(
                rows_of(row.opcode).count(),
                of_opcode,
                "{}: rows not adjacent",
                row.name
            );
        }
    }

    #[test]
    fn every_row_round_trips_through_parse_and_encode() {
        let mut state = 0x2545_F491_4F6C_DD1D_u64;
        for &row in &TABLE {
            let plain = Command::parse(&plain_cdb(row))
                .unwrap_or_else(|sense| panic!("{}: {sense:?}", row.full_name()));
            let mut parsed = vec![plain];
            for _ in 0..2_000 {
                if let Ok(command) = Command::parse(&random_cdb(row, &mut state)) {
                    parsed.push(command);
                }
            }
            assert!(
                parsed.len() > 1,
                "{}: no random CDB parses",
                row.full_name()
            );
            for command in parsed {
                assert!(
                    std::ptr::eq(command.row(), row),
                    "{command:?} maps to {}, not {}",
                    command.row().full_name(),
                    row.full_name()
                );
                let encoded = command.encode();
                assert_eq!(encoded.len(), row.cdb_length());
                for (at, (&byte, &usage)) in encoded.iter().zip(row.usage).enumerate() {
                    assert_eq!(
                        byte & !usage,
                        0,
                        "{}: byte {at} sets bits the usage data does not list",
                        row.full_name()
                    );
                }
                assert_eq!(
                    Command::parse(&encoded).as_ref(),
                    Ok(&command),
                    "{encoded:02x?}"
                );
                assert!(std::ptr::eq(lookup(&encoded).unwrap(), row));
            }
        }
    }

    #[test]
    fn lookup_names_commands_by_opcode_and_service_action() {
        assert_eq!(
            name(&[op::SERVICE_ACTION_IN_16, 0x10]),
            Some("READ CAPACITY(16)")
        );
        assert_eq!(
            name(&[op::SERVICE_ACTION_IN_16, 0x12]),
            Some("GET LBA STATUS")
        );
        assert_eq!(name(&[op::SERVICE_ACTION_IN_16, 0x11]), None);
        assert_eq!(name(&[op::COMPARE_AND_WRITE]), Some("COMPARE AND WRITE"));
        assert_eq!(
            name(&[op::PERSISTENT_RESERVE_OUT]),
            None,
            "no service action byte"
        );
        let preempt = lookup(&[op::PERSISTENT_RESERVE_OUT, 0x05]).unwrap();
        assert_eq!(
            preempt.full_name(),
            "PERSISTENT RESERVE OUT PREEMPT AND ABORT"
        );
        assert_eq!(name(&[op::WRITE_ATOMIC_16]), Some("WRITE ATOMIC(16)"));
        assert_eq!(
            name(&[op::EXTENDED_COPY, 0x00]),
            Some("EXTENDED COPY(LID1)")
        );
        assert_eq!(
            name(&[op::EXTENDED_COPY, 0x01]),
            None,
            "LID4 is not supported"
        );
        assert_eq!(rows::EXTENDED_COPY_LID1.family(), "EXTENDED COPY");
        assert_eq!(name(&[]), None);
        assert_eq!(rows::READ_16.family(), "READ");
        assert_eq!(rows::WRITE_AND_VERIFY_12.family(), "WRITE AND VERIFY");
        assert_eq!(rows::COMPARE_AND_WRITE.family(), "COMPARE AND WRITE");
    }

    #[test]
    fn lock_requests_follow_the_rows() {
        let span = |lba: u64, blocks: u64| Span::of(Lba(lba), BlockCount(blocks));
        let cases = [
            // (CDB, expected lock)
            (
                Command::parse(&[op::READ_10, 0, 0, 0, 0, 8, 0, 0, 2, 0]),
                Some((span(8, 2), Access::Shared)),
            ),
            (
                Command::parse(&[op::WRITE_6, 0, 0, 8, 1, 0]),
                Some((span(8, 1), Access::Exclusive)),
            ),
            (
                Command::parse(&[op::WRITE_SAME_10, 0, 0, 0, 0, 8, 0, 0, 0, 0]),
                Some((Span::Medium, Access::Exclusive)),
            ),
            (
                Command::parse(&[op::WRITE_SAME_10, 0, 0, 0, 0, 8, 0, 0, 4, 0]),
                Some((span(8, 4), Access::Exclusive)),
            ),
            (
                Ok(Command::write_atomic_16(8, 1, true)),
                Some((span(8, 1), Access::Exclusive)),
            ),
            (
                Command::parse(&[op::UNMAP, 0, 0, 0, 0, 0, 0, 0, 24, 0]),
                Some((Span::Medium, Access::Exclusive)),
            ),
            (
                Command::parse(&[op::RESERVE_6, 0, 0, 0, 0, 0]),
                Some((Span::Medium, Access::Exclusive)),
            ),
            (
                Command::parse(&[op::SYNCHRONIZE_CACHE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                None,
            ),
            (Command::parse(&[op::INQUIRY, 0, 0, 0, 36, 0]), None),
            // EXTENDED COPY locks chunk by chunk on the LUs its parameter list names, not through its row.
            (
                Command::parse(&[
                    op::EXTENDED_COPY,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    76,
                    0,
                    0,
                ]),
                None,
            ),
        ];
        for (command, expected) in cases {
            let command = command.unwrap();
            let expected = expected.map(|(span, access)| LockRequest { span, access });
            assert_eq!(command.lock_request(), expected, "{command:?}");
        }
    }
}
