//! CDB decoding (SPC-4 4.2, SBC-4 5): bytes in, a typed [`Command`] out, or the [`Sense`] that rejects it.
//!
//! Parsing is separate from execution (as in rust-vmm's virtio-blk `Request::parse`): everything checkable from the
//! CDB alone is checked here, with field pointers, so executors only see well-formed commands. Checks that need the
//! logical unit's state (capacity, limits, read-only) happen in the executors.

use crate::pr::wire::PrOutCdb;
use crate::pr::PrIn;
use crate::sense::{Condition, Sense};

/// Logical block address (SBC-4 4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lba(pub u64);

/// A number of logical blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BlockCount(pub u64);

/// Operation codes lunlock knows; they live with the command table in [`crate::registry`].
pub use crate::registry::op;

/// Which CDB carried a READ or WRITE (SBC-4 5.14-5.17, 5.39-5.42), so the command maps back to its row in
/// [`crate::registry`] and encodes to the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RwCdb {
    Six,
    Ten,
    Twelve,
    Sixteen,
}

/// Which CDB carried a WRITE AND VERIFY or a VERIFY (SBC-4 5.33-5.35, 5.44-5.46).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyCdb {
    Ten,
    Twelve,
    Sixteen,
}

/// Which VERIFY data comparison is asked for (SBC-4 5.33 Table 116, BYTCHK).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteCheck {
    /// 00b: medium verification only, no Data-Out.
    None,
    /// 01b: compare each block with the Data-Out.
    Full,
    /// 11b: compare each block with the one block of Data-Out.
    SingleBlock,
}

/// SANITIZE service actions (SBC-4 5.30.1 Table 133).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SanitizeAction {
    /// 01h: write the initialization pattern to every logical block (SBC-4 5.30.2).
    Overwrite,
    /// 02h: block erase (SBC-4 5.30.3).
    BlockErase,
    /// 03h: cryptographic erase (SBC-4 5.30.4).
    CryptographicErase,
    /// 1Fh: leave the sanitize failure mode of an unrestricted failed sanitize operation (SBC-4 5.30.5).
    ExitFailureMode,
}

/// The PARAMETER DATA FORMAT of REPORT TARGET PORT GROUPS (SPC-4 6.37 Table 303): which header the parameter data
/// starts with. The codes 010b..111b are reserved and refused by the decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetPortGroupsFormat {
    /// 000b: a 4-byte header holding only the RETURN DATA LENGTH (Table 304).
    LengthOnly,
    /// 001b: an 8-byte header that adds FORMAT TYPE and IMPLICIT TRANSITION TIME (Table 305).
    Extended,
}

/// What a RECEIVE COPY RESULTS asks for (SPC-3 6.18.1 Table 144; SPC-4 calls these RECEIVE COPY STATUS(LID1)
/// and RECEIVE COPY OPERATING PARAMETERS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyResultsRequest {
    /// 00h COPY STATUS of the latest EXTENDED COPY with this LIST IDENTIFIER from the same I_T nexus.
    CopyStatus { list_id: u8 },
    /// 03h OPERATING PARAMETERS: the copy manager's limits (the LIST IDENTIFIER field is ignored).
    OperatingParameters,
}

/// Page control of MODE SENSE (SPC-4 6.11 Table 131).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageControl {
    Current,
    Changeable,
    Default,
    Saved,
}

/// A decoded command. Lengths are in the units the CDB uses; `data_out_len` is always bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    TestUnitReady,
    RequestSense {
        descriptor: bool,
        allocation_length: u32,
    },
    Inquiry {
        evpd: bool,
        page_code: u8,
        allocation_length: u32,
    },
    ReportLuns {
        select_report: u8,
        allocation_length: u32,
    },
    ModeSense {
        ten: bool,
        dbd: bool,
        llbaa: bool,
        page_control: PageControl,
        page_code: u8,
        subpage_code: u8,
        allocation_length: u32,
    },
    ModeSelect {
        ten: bool,
        pf: bool,
        save_pages: bool,
        parameter_list_length: u32,
    },
    ReportSupportedOpcodes {
        rctd: bool,
        options: u8,
        opcode: u8,
        service_action: u16,
        allocation_length: u32,
    },
    ReportSupportedTmfs {
        repd: bool,
        allocation_length: u32,
    },
    /// REPORT TARGET PORT GROUPS (SPC-4 6.37).
    ReportTargetPortGroups {
        format: TargetPortGroupsFormat,
        allocation_length: u32,
    },
    StartStopUnit {
        immediate: bool,
        power_condition: u8,
        no_flush: bool,
        load_eject: bool,
        start: bool,
    },
    PreventAllowMediumRemoval {
        prevent: u8,
    },
    ReadDefectData {
        twelve: bool,
        plist: bool,
        glist: bool,
        format: u8,
        allocation_length: u32,
    },
    ReadCapacity10,
    ReadCapacity16 {
        allocation_length: u32,
    },
    Read {
        lba: Lba,
        blocks: BlockCount,
        fua: bool,
        cdb: RwCdb,
    },
    Write {
        lba: Lba,
        blocks: BlockCount,
        fua: bool,
        cdb: RwCdb,
    },
    WriteAndVerify {
        lba: Lba,
        blocks: BlockCount,
        byte_check: bool,
        cdb: VerifyCdb,
    },
    Verify {
        lba: Lba,
        blocks: BlockCount,
        byte_check: ByteCheck,
        cdb: VerifyCdb,
    },
    OrWrite {
        lba: Lba,
        blocks: BlockCount,
        fua: bool,
    },
    /// COMPARE AND WRITE (SBC-4 5.3): `blocks` of verify data then `blocks` of write data.
    CompareAndWrite {
        lba: Lba,
        blocks: BlockCount,
        fua: bool,
    },
    /// WRITE ATOMIC (16) (SBC-4 5.48): `blocks` written all or nothing (SBC-4 4.29), against overlapping commands
    /// and across a power loss. ATOMIC BOUNDARY is always 0: the decoder refuses boundaries, which lunlock does not
    /// support (VPD B0h MAXIMUM ATOMIC BOUNDARY SIZE 0). DPO and GROUP NUMBER are hints lunlock does not act on
    /// (no cache to bypass beyond the page cache; no grouping function, SBC-4 4.22).
    WriteAtomic {
        lba: Lba,
        blocks: BlockCount,
        dpo: bool,
        fua: bool,
        group_number: u8,
    },
    /// `blocks == 0` means "to the end of the medium" (SBC-4 5.50, WSNZ=0).
    WriteSame {
        lba: Lba,
        blocks: BlockCount,
        unmap: bool,
        anchor: bool,
        ndob: bool,
        ten: bool,
    },
    Unmap {
        anchor: bool,
        parameter_list_length: u32,
    },
    GetLbaStatus {
        lba: Lba,
        allocation_length: u32,
    },
    SynchronizeCache {
        lba: Lba,
        blocks: BlockCount,
        ten: bool,
    },
    PreFetch {
        lba: Lba,
        blocks: BlockCount,
        ten: bool,
    },
    PersistentReserveIn(PrIn),
    PersistentReserveOut(PrOutCdb),
    /// SANITIZE (SBC-4 5.30). The PARAMETER LIST LENGTH of OVERWRITE is checked against the block size by the
    /// executor; every other service action has been checked to carry no parameter list.
    Sanitize {
        immediate: bool,
        /// AUSE: allow unrestricted sanitize exit (SBC-4 4.33.3).
        ause: bool,
        action: SanitizeAction,
        parameter_list_length: u32,
    },
    /// RESERVE(6)/(10) (SPC-2 7.21): a whole-LU reservation for the sending nexus; third-party and extent
    /// reservations are not supported.
    Reserve {
        ten: bool,
    },
    /// RELEASE(6)/(10) (SPC-2 7.13).
    Release {
        ten: bool,
    },
    /// EXTENDED COPY(LID1) (SPC-4 6.4, SPC-3 6.3): the parameter list, `parameter_list_length` bytes of
    /// Data-Out, is parsed and checked by `crate::xcopy`.
    ExtendedCopy {
        parameter_list_length: u32,
    },
    /// RECEIVE COPY RESULTS (SPC-3 6.18): COPY STATUS or OPERATING PARAMETERS.
    ReceiveCopyResults {
        request: CopyResultsRequest,
        allocation_length: u32,
    },
}

pub(crate) fn be16(cdb: &[u8], at: usize) -> u32 {
    u16::from_be_bytes([cdb[at], cdb[at + 1]]) as u32
}
fn be24(cdb: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([0, cdb[at], cdb[at + 1], cdb[at + 2]])
}
pub(crate) fn be32(cdb: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([cdb[at], cdb[at + 1], cdb[at + 2], cdb[at + 3]])
}
pub(crate) fn be64(cdb: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&cdb[at..at + 8]);
    u64::from_be_bytes(bytes)
}

/// CDB length by group code (SPC-4 4.2.5.1): 6, 10, 10, reserved, 16, 12, vendor, vendor.
pub fn cdb_length(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// The service action of a CDB whose opcode carries one ([`crate::registry::has_service_actions`]), for error
/// reporting and REPORT SUPPORTED OPCODES.
pub fn service_action(cdb: &[u8]) -> Option<u16> {
    if crate::registry::has_service_actions(*cdb.first()?) {
        cdb.get(1).map(|b| (b & 0x1F) as u16)
    } else {
        None
    }
}

/// Check the control byte (SAM-5 5.2, SPC-4 4.2.4): lunlock supports neither NACA nor linked commands.
fn check_control(cdb: &[u8]) -> Result<(), Sense> {
    let at = cdb.len() - 1;
    let control = cdb[at];
    if control & 0x04 != 0 {
        return Err(Sense::invalid_cdb_field(at as u16, Some(2)));
    }
    if control & 0x01 != 0 {
        return Err(Sense::invalid_cdb_field(at as u16, Some(0)));
    }
    Ok(())
}

/// RDPROTECT / WRPROTECT / VRPROTECT (byte 1 bits 7..5): lunlock has no protection information (SBC-4 4.22),
/// so any non-zero value is INVALID FIELD IN CDB.
fn check_protect(cdb: &[u8]) -> Result<(), Sense> {
    if cdb[1] & 0xE0 != 0 {
        return Err(Sense::invalid_cdb_field(1, Some(7)));
    }
    Ok(())
}

fn invalid(byte: u16, bit: Option<u8>) -> Sense {
    Sense::invalid_cdb_field(byte, bit)
}

fn byte_check(cdb: &[u8]) -> Result<ByteCheck, Sense> {
    match (cdb[1] >> 1) & 0x03 {
        0b00 => Ok(ByteCheck::None),
        0b01 => Ok(ByteCheck::Full),
        0b11 => Ok(ByteCheck::SingleBlock),
        _ => Err(invalid(1, Some(2))),
    }
}

impl Command {
    /// Decode `cdb`. An unknown opcode or service action is INVALID COMMAND OPERATION CODE (SPC-4 4.2.1). The
    /// opcode's row in [`crate::registry`] names the decoder; the control byte is checked last, so a bad field
    /// is reported before a bad control byte.
    pub fn parse(cdb: &[u8]) -> Result<Command, Sense> {
        let opcode = *cdb
            .first()
            .ok_or(Sense::new(Condition::InvalidCommandOperationCode))?;
        let length =
            cdb_length(opcode).ok_or(Sense::new(Condition::InvalidCommandOperationCode))?;
        if cdb.len() < length {
            return Err(Sense::new(Condition::InvalidCommandOperationCode));
        }
        let cdb = &cdb[..length];
        let row = crate::registry::first_row(opcode)
            .ok_or(Sense::new(Condition::InvalidCommandOperationCode))?;
        let command = (row.parse)(cdb)?;
        check_control(cdb)?;
        debug_assert_eq!(command.row().opcode, opcode, "{command:?} left its row");
        Ok(command)
    }

    /// The same block write limited to the whole blocks actually received, for a Data-Out shorter than the CDB
    /// asks (RFC 7143 11.4.5.1 with FCP-4 9.4.2 a): "process the command normally except that data beyond the
    /// expected length shall not be requested or transferred"). None for commands that cannot be shortened:
    /// parameter lists, WRITE SAME's single block, VERIFY's comparison data, and WRITE ATOMIC, whose blocks are
    /// one all-or-nothing write (SBC-4 4.29): a part of it is not the write the initiator asked for.
    pub fn limited_to_blocks(&self, received_blocks: u64) -> Option<Command> {
        let limit = |blocks: &BlockCount| BlockCount(blocks.0.min(received_blocks));
        match self {
            Command::Write {
                lba,
                blocks,
                fua,
                cdb,
            } => Some(Command::Write {
                lba: *lba,
                blocks: limit(blocks),
                fua: *fua,
                cdb: *cdb,
            }),
            Command::OrWrite { lba, blocks, fua } => Some(Command::OrWrite {
                lba: *lba,
                blocks: limit(blocks),
                fua: *fua,
            }),
            Command::WriteAndVerify {
                lba,
                blocks,
                byte_check,
                cdb,
            } => Some(Command::WriteAndVerify {
                lba: *lba,
                blocks: limit(blocks),
                byte_check: *byte_check,
                cdb: *cdb,
            }),
            _ => None,
        }
    }

    /// Bytes of Data-Out the CDB asks for (SAM-5 5.4.3), given the logical block size.
    pub fn data_out_length(&self, block_size: u32) -> u64 {
        let bytes = |blocks: BlockCount| blocks.0.saturating_mul(block_size as u64);
        match self {
            Command::Write { blocks, .. }
            | Command::OrWrite { blocks, .. }
            | Command::WriteAndVerify { blocks, .. }
            | Command::WriteAtomic { blocks, .. } => bytes(*blocks),
            Command::CompareAndWrite { blocks, .. } => bytes(*blocks).saturating_mul(2),
            Command::Verify {
                blocks,
                byte_check: ByteCheck::Full,
                ..
            } => bytes(*blocks),
            Command::Verify {
                byte_check: ByteCheck::SingleBlock,
                blocks,
                ..
            } => {
                if blocks.0 == 0 {
                    0
                } else {
                    block_size as u64
                }
            }
            Command::WriteSame { ndob: false, .. } => block_size as u64,
            Command::ModeSelect {
                parameter_list_length,
                ..
            }
            | Command::Unmap {
                parameter_list_length,
                ..
            }
            | Command::Sanitize {
                parameter_list_length,
                ..
            } => *parameter_list_length as u64,
            Command::PersistentReserveOut(cdb) => cdb.parameter_list_length as u64,
            Command::ExtendedCopy {
                parameter_list_length,
            } => *parameter_list_length as u64,
            _ => 0,
        }
    }

    /// Whether executing the command may wait for the disk: store I/O, a flush, or an fsync of saved state
    /// (PERSISTENT RESERVE OUT with APTPL). The runtime runs these on its I/O engine, never on a reactor thread;
    /// the others only read or change in-memory state. From the command's row in [`crate::registry`].
    pub fn may_wait_for_disk(&self) -> bool {
        self.row().may_wait_for_disk
    }

    /// True for commands that change the medium (refused with DATA PROTECT on a read-only LU). From the
    /// command's row in [`crate::registry`], whose tests check that every such row locks its range exclusively.
    pub fn writes_medium(&self) -> bool {
        self.row().writes_medium
    }

    /// True for the commands that arbitrate between hosts (COMPARE AND WRITE, PERSISTENT RESERVE OUT): the runtime
    /// runs them ahead of bulk I/O. From the command's row in [`crate::registry`].
    pub fn arbitrates(&self) -> bool {
        self.row().arbitrates
    }

    /// The blocks the CDB's LOGICAL BLOCK ADDRESS and count name (SBC-4 4.5), for the commands that have them.
    pub fn addressed(&self) -> Option<Addressed> {
        match *self {
            Command::Read { lba, blocks, .. }
            | Command::Write { lba, blocks, .. }
            | Command::WriteAndVerify { lba, blocks, .. }
            | Command::Verify { lba, blocks, .. }
            | Command::OrWrite { lba, blocks, .. }
            | Command::CompareAndWrite { lba, blocks, .. }
            | Command::WriteAtomic { lba, blocks, .. }
            | Command::SynchronizeCache { lba, blocks, .. }
            | Command::PreFetch { lba, blocks, .. } => Some(Addressed::Blocks { lba, blocks }),
            Command::WriteSame { lba, blocks, .. } if blocks.0 == 0 => {
                Some(Addressed::ToEndOfMedium { lba })
            }
            Command::WriteSame { lba, blocks, .. } => Some(Addressed::Blocks { lba, blocks }),
            Command::GetLbaStatus { lba, .. } => Some(Addressed::ToEndOfMedium { lba }),
            Command::TestUnitReady
            | Command::RequestSense { .. }
            | Command::Inquiry { .. }
            | Command::ReportLuns { .. }
            | Command::ModeSense { .. }
            | Command::ModeSelect { .. }
            | Command::ReportSupportedOpcodes { .. }
            | Command::ReportSupportedTmfs { .. }
            | Command::ReportTargetPortGroups { .. }
            | Command::StartStopUnit { .. }
            | Command::PreventAllowMediumRemoval { .. }
            | Command::ReadDefectData { .. }
            | Command::ReadCapacity10
            | Command::ReadCapacity16 { .. }
            | Command::Unmap { .. }
            | Command::PersistentReserveIn(_)
            | Command::PersistentReserveOut(_)
            | Command::Sanitize { .. }
            | Command::Reserve { .. }
            | Command::Release { .. }
            // The blocks of an EXTENDED COPY are in its parameter list, on the logical units it names.
            | Command::ExtendedCopy { .. }
            | Command::ReceiveCopyResults { .. } => None,
        }
    }

    /// READ(16) (SBC-4 5.16), the read lunlock's clients send.
    pub fn read_16(lba: u64, blocks: u32, fua: bool) -> Command {
        Command::Read {
            lba: Lba(lba),
            blocks: BlockCount(blocks as u64),
            fua,
            cdb: RwCdb::Sixteen,
        }
    }

    /// WRITE(16) (SBC-4 5.42), the write lunlock's clients send.
    pub fn write_16(lba: u64, blocks: u32, fua: bool) -> Command {
        Command::Write {
            lba: Lba(lba),
            blocks: BlockCount(blocks as u64),
            fua,
            cdb: RwCdb::Sixteen,
        }
    }

    /// COMPARE AND WRITE (SBC-4 5.3) of `blocks` blocks at `lba`.
    pub fn compare_and_write(lba: u64, blocks: u8, fua: bool) -> Command {
        Command::CompareAndWrite {
            lba: Lba(lba),
            blocks: BlockCount(blocks as u64),
            fua,
        }
    }

    /// WRITE ATOMIC (16) (SBC-4 5.48) of `blocks` blocks at `lba`, without boundary, DPO or group.
    pub fn write_atomic_16(lba: u64, blocks: u16, fua: bool) -> Command {
        Command::WriteAtomic {
            lba: Lba(lba),
            blocks: BlockCount(blocks as u64),
            dpo: false,
            fua,
            group_number: 0,
        }
    }

    /// The CDB that [`Command::parse`] decodes back to this command (SPC-4 4.2), control byte 0: what initiators
    /// and the simulator send. Opcode, service action and length come from the command's row in
    /// [`crate::registry`]. Each value is written in its field's width (a value that does not fit is cut; READ(6)
    /// and WRITE(6) send 256 blocks as 0), so `parse(encode(c)) == c` for every command whose values fit.
    pub fn encode(&self) -> Vec<u8> {
        let row = self.row();
        let mut cdb = vec![0u8; row.cdb_length()];
        cdb[0] = row.opcode;
        if let Some(service_action) = row.service_action {
            cdb[1] = service_action as u8 & 0x1F;
        }
        let put16 = |cdb: &mut [u8], at: usize, value: u32| {
            cdb[at..at + 2].copy_from_slice(&(value as u16).to_be_bytes())
        };
        let put32 = |cdb: &mut [u8], at: usize, value: u64| {
            cdb[at..at + 4].copy_from_slice(&(value as u32).to_be_bytes())
        };
        let put64 = |cdb: &mut [u8], at: usize, value: u64| {
            cdb[at..at + 8].copy_from_slice(&value.to_be_bytes())
        };
        // LBA and count at the standard places of 10-, 12- and 16-byte block CDBs (the inverse of
        // `lba_and_count`).
        let lba_and_count = |cdb: &mut [u8], lba: Lba, blocks: BlockCount| match cdb.len() {
            10 => {
                put32(cdb, 2, lba.0);
                put16(cdb, 7, blocks.0 as u32);
            }
            12 => {
                put32(cdb, 2, lba.0);
                put32(cdb, 6, blocks.0);
            }
            _ => {
                put64(cdb, 2, lba.0);
                put32(cdb, 10, blocks.0);
            }
        };
        let bit = |set: bool, mask: u8| if set { mask } else { 0 };
        match *self {
            Command::TestUnitReady | Command::ReadCapacity10 => {}
            Command::RequestSense {
                descriptor,
                allocation_length,
            } => {
                cdb[1] = bit(descriptor, 0x01);
                cdb[4] = allocation_length as u8;
            }
            Command::Inquiry {
                evpd,
                page_code,
                allocation_length,
            } => {
                cdb[1] = bit(evpd, 0x01);
                cdb[2] = page_code;
                put16(&mut cdb, 3, allocation_length);
            }
            Command::ReportLuns {
                select_report,
                allocation_length,
            } => {
                cdb[2] = select_report;
                put32(&mut cdb, 6, allocation_length as u64);
            }
            Command::ModeSense {
                ten,
                dbd,
                llbaa,
                page_control,
                page_code,
                subpage_code,
                allocation_length,
            } => {
                cdb[1] = bit(dbd, 0x08) | bit(ten && llbaa, 0x10);
                let pc = match page_control {
                    PageControl::Current => 0,
                    PageControl::Changeable => 1,
                    PageControl::Default => 2,
                    PageControl::Saved => 3,
                };
                cdb[2] = pc << 6 | page_code & 0x3F;
                cdb[3] = subpage_code;
                if ten {
                    put16(&mut cdb, 7, allocation_length);
                } else {
                    cdb[4] = allocation_length as u8;
                }
            }
            Command::ModeSelect {
                ten,
                pf,
                save_pages,
                parameter_list_length,
            } => {
                cdb[1] = bit(pf, 0x10) | bit(save_pages, 0x01);
                if ten {
                    put16(&mut cdb, 7, parameter_list_length);
                } else {
                    cdb[4] = parameter_list_length as u8;
                }
            }
            Command::ReportSupportedOpcodes {
                rctd,
                options,
                opcode,
                service_action,
                allocation_length,
            } => {
                cdb[2] = bit(rctd, 0x80) | options & 0x07;
                cdb[3] = opcode;
                put16(&mut cdb, 4, service_action as u32);
                put32(&mut cdb, 6, allocation_length as u64);
            }
            Command::ReportSupportedTmfs {
                repd,
                allocation_length,
            } => {
                cdb[2] = bit(repd, 0x80);
                put32(&mut cdb, 6, allocation_length as u64);
            }
            Command::ReportTargetPortGroups {
                format,
                allocation_length,
            } => {
                let code = match format {
                    TargetPortGroupsFormat::LengthOnly => 0b000,
                    TargetPortGroupsFormat::Extended => 0b001,
                };
                cdb[1] |= code << 5;
                put32(&mut cdb, 6, allocation_length as u64);
            }
            Command::StartStopUnit {
                immediate,
                power_condition,
                no_flush,
                load_eject,
                start,
            } => {
                cdb[1] = bit(immediate, 0x01);
                cdb[4] = power_condition << 4
                    | bit(no_flush, 0x04)
                    | bit(load_eject, 0x02)
                    | bit(start, 0x01);
            }
            Command::PreventAllowMediumRemoval { prevent } => cdb[4] = prevent & 0x03,
            Command::ReadDefectData {
                twelve,
                plist,
                glist,
                format,
                allocation_length,
            } => {
                let flags = bit(plist, 0x10) | bit(glist, 0x08) | format & 0x07;
                if twelve {
                    cdb[1] = flags;
                    put32(&mut cdb, 6, allocation_length as u64);
                } else {
                    cdb[2] = flags;
                    put16(&mut cdb, 7, allocation_length);
                }
            }
            Command::ReadCapacity16 { allocation_length } => {
                put32(&mut cdb, 10, allocation_length as u64)
            }
            Command::GetLbaStatus {
                lba,
                allocation_length,
            } => {
                put64(&mut cdb, 2, lba.0);
                put32(&mut cdb, 10, allocation_length as u64);
            }
            Command::Read {
                lba,
                blocks,
                cdb: RwCdb::Six,
                ..
            }
            | Command::Write {
                lba,
                blocks,
                cdb: RwCdb::Six,
                ..
            } => {
                let [_, high, middle, low] = (lba.0 as u32 & 0x1F_FFFF).to_be_bytes();
                cdb[1..4].copy_from_slice(&[high, middle, low]);
                cdb[4] = blocks.0 as u8;
            }
            Command::Read {
                lba, blocks, fua, ..
            }
            | Command::Write {
                lba, blocks, fua, ..
            }
            | Command::OrWrite { lba, blocks, fua } => {
                cdb[1] = bit(fua, 0x08);
                lba_and_count(&mut cdb, lba, blocks);
            }
            Command::CompareAndWrite { lba, blocks, fua } => {
                cdb[1] = bit(fua, 0x08);
                put64(&mut cdb, 2, lba.0);
                cdb[13] = blocks.0 as u8;
            }
            Command::WriteAtomic {
                lba,
                blocks,
                dpo,
                fua,
                group_number,
            } => {
                cdb[1] = bit(dpo, 0x10) | bit(fua, 0x08);
                put64(&mut cdb, 2, lba.0);
                put16(&mut cdb, 12, blocks.0 as u32);
                cdb[14] = group_number & 0x1F;
            }
            Command::WriteAndVerify {
                lba,
                blocks,
                byte_check,
                ..
            } => {
                cdb[1] = bit(byte_check, 0x02);
                lba_and_count(&mut cdb, lba, blocks);
            }
            Command::Verify {
                lba,
                blocks,
                byte_check,
                ..
            } => {
                cdb[1] = match byte_check {
                    ByteCheck::None => 0,
                    ByteCheck::Full => 0b01 << 1,
                    ByteCheck::SingleBlock => 0b11 << 1,
                };
                lba_and_count(&mut cdb, lba, blocks);
            }
            Command::WriteSame {
                lba,
                blocks,
                unmap,
                anchor,
                ndob,
                ten,
            } => {
                cdb[1] = bit(unmap, 0x08) | bit(anchor, 0x10) | bit(!ten && ndob, 0x01);
                lba_and_count(&mut cdb, lba, blocks);
            }
            Command::Unmap {
                anchor,
                parameter_list_length,
            } => {
                cdb[1] = bit(anchor, 0x01);
                put16(&mut cdb, 7, parameter_list_length);
            }
            Command::SynchronizeCache { lba, blocks, .. }
            | Command::PreFetch { lba, blocks, .. } => lba_and_count(&mut cdb, lba, blocks),
            Command::PersistentReserveIn(ref prin) => {
                put16(&mut cdb, 7, prin.allocation_length());
            }
            Command::PersistentReserveOut(ref prout) => {
                cdb[2] = prout.kind.map_or(0, |kind| kind.code());
                put32(&mut cdb, 5, prout.parameter_list_length as u64);
            }
            Command::Sanitize {
                immediate,
                ause,
                parameter_list_length,
                ..
            } => {
                cdb[1] |= bit(immediate, 0x80) | bit(ause, 0x20);
                put16(&mut cdb, 7, parameter_list_length);
            }
            Command::Reserve { .. } | Command::Release { .. } => {}
            Command::ExtendedCopy {
                parameter_list_length,
            } => put32(&mut cdb, 10, parameter_list_length as u64),
            Command::ReceiveCopyResults {
                request,
                allocation_length,
            } => {
                if let CopyResultsRequest::CopyStatus { list_id } = request {
                    cdb[2] = list_id;
                }
                put32(&mut cdb, 10, allocation_length as u64);
            }
        }
        cdb
    }
}

/// The blocks a command's CDB names (SBC-4 4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addressed {
    /// `blocks` blocks from `lba`.
    Blocks { lba: Lba, blocks: BlockCount },
    /// Every block from `lba` to the end of the medium: WRITE SAME with NUMBER OF LOGICAL BLOCKS 0 (SBC-4 5.50,
    /// WSNZ=0), GET LBA STATUS.
    ToEndOfMedium { lba: Lba },
}

/// The decoders the rows of [`crate::registry`] point at, one per opcode (or family of opcodes sharing a layout).
/// Each gets exactly the CDB's length (by group code) and checks everything but the control byte.
pub(crate) mod decode {
    use super::*;

    type Parsed = Result<Command, Sense>;

    pub(crate) fn test_unit_ready(_cdb: &[u8]) -> Parsed {
        Ok(Command::TestUnitReady)
    }

    pub(crate) fn request_sense(cdb: &[u8]) -> Parsed {
        Ok(Command::RequestSense {
            descriptor: cdb[1] & 0x01 != 0,
            allocation_length: cdb[4] as u32,
        })
    }

    pub(crate) fn inquiry(cdb: &[u8]) -> Parsed {
        let evpd = cdb[1] & 0x01 != 0;
        if cdb[1] & 0x02 != 0 {
            return Err(invalid(1, Some(1)));
        }
        if !evpd && cdb[2] != 0 {
            return Err(invalid(2, None));
        }
        Ok(Command::Inquiry {
            evpd,
            page_code: cdb[2],
            allocation_length: be16(cdb, 3),
        })
    }

    pub(crate) fn report_luns(cdb: &[u8]) -> Parsed {
        Ok(Command::ReportLuns {
            select_report: cdb[2],
            allocation_length: be32(cdb, 6),
        })
    }

    /// MODE SENSE(6) and (10).
    pub(crate) fn mode_sense(cdb: &[u8]) -> Parsed {
        let ten = cdb[0] == op::MODE_SENSE_10;
        let page_control = match cdb[2] >> 6 {
            0 => PageControl::Current,
            1 => PageControl::Changeable,
            2 => PageControl::Default,
            _ => PageControl::Saved,
        };
        Ok(Command::ModeSense {
            ten,
            dbd: cdb[1] & 0x08 != 0,
            llbaa: ten && cdb[1] & 0x10 != 0,
            page_control,
            page_code: cdb[2] & 0x3F,
            subpage_code: cdb[3],
            allocation_length: if ten { be16(cdb, 7) } else { cdb[4] as u32 },
        })
    }

    /// MODE SELECT(6) and (10).
    pub(crate) fn mode_select(cdb: &[u8]) -> Parsed {
        let ten = cdb[0] == op::MODE_SELECT_10;
        Ok(Command::ModeSelect {
            ten,
            pf: cdb[1] & 0x10 != 0,
            save_pages: cdb[1] & 0x01 != 0,
            parameter_list_length: if ten { be16(cdb, 7) } else { cdb[4] as u32 },
        })
    }

    /// MAINTENANCE IN: REPORT TARGET PORT GROUPS, REPORT SUPPORTED OPERATION CODES and REPORT SUPPORTED TASK
    /// MANAGEMENT FUNCTIONS.
    pub(crate) fn maintenance_in(cdb: &[u8]) -> Parsed {
        match service_action(cdb) {
            Some(op::SA_REPORT_TARGET_PORT_GROUPS) => Ok(Command::ReportTargetPortGroups {
                format: target_port_groups_format(cdb[1] >> 5)?,
                allocation_length: be32(cdb, 6),
            }),
            Some(op::SA_REPORT_SUPPORTED_OPCODES) => {
                let options = cdb[2] & 0x07;
                if options > 3 {
                    return Err(invalid(2, Some(2)));
                }
                Ok(Command::ReportSupportedOpcodes {
                    rctd: cdb[2] & 0x80 != 0,
                    options,
                    opcode: cdb[3],
                    service_action: be16(cdb, 4) as u16,
                    allocation_length: be32(cdb, 6),
                })
            }
            Some(op::SA_REPORT_SUPPORTED_TMFS) => Ok(Command::ReportSupportedTmfs {
                repd: cdb[2] & 0x80 != 0,
                allocation_length: be32(cdb, 6),
            }),
            _ => Err(invalid(1, Some(4))),
        }
    }

    /// SPC-4 6.37 Table 303. SPC-4 lets a device server ignore the field, but an initiator that asks for a format
    /// lunlock does not know would misread whichever it got, so a reserved code is INVALID FIELD IN CDB, pointing
    /// at the field's most significant bit (byte 1, bit 7; SPC-4 4.5.2.4.2).
    fn target_port_groups_format(code: u8) -> Result<TargetPortGroupsFormat, Sense> {
        match code {
            0b000 => Ok(TargetPortGroupsFormat::LengthOnly),
            0b001 => Ok(TargetPortGroupsFormat::Extended),
            _ => Err(invalid(1, Some(7))),
        }
    }

    pub(crate) fn start_stop_unit(cdb: &[u8]) -> Parsed {
        Ok(Command::StartStopUnit {
            immediate: cdb[1] & 0x01 != 0,
            power_condition: cdb[4] >> 4,
            no_flush: cdb[4] & 0x04 != 0,
            load_eject: cdb[4] & 0x02 != 0,
            start: cdb[4] & 0x01 != 0,
        })
    }

    pub(crate) fn prevent_allow_medium_removal(cdb: &[u8]) -> Parsed {
        Ok(Command::PreventAllowMediumRemoval {
            prevent: cdb[4] & 0x03,
        })
    }

    /// READ DEFECT DATA(10) and (12).
    pub(crate) fn read_defect_data(cdb: &[u8]) -> Parsed {
        Ok(if cdb[0] == op::READ_DEFECT_DATA_10 {
            Command::ReadDefectData {
                twelve: false,
                plist: cdb[2] & 0x10 != 0,
                glist: cdb[2] & 0x08 != 0,
                format: cdb[2] & 0x07,
                allocation_length: be16(cdb, 7),
            }
        } else {
            Command::ReadDefectData {
                twelve: true,
                plist: cdb[1] & 0x10 != 0,
                glist: cdb[1] & 0x08 != 0,
                format: cdb[1] & 0x07,
                allocation_length: be32(cdb, 6),
            }
        })
    }

    pub(crate) fn read_capacity_10(cdb: &[u8]) -> Parsed {
        if be32(cdb, 2) != 0 {
            return Err(invalid(2, None));
        }
        Ok(Command::ReadCapacity10)
    }

    /// SERVICE ACTION IN(16): READ CAPACITY(16) and GET LBA STATUS.
    pub(crate) fn service_action_in_16(cdb: &[u8]) -> Parsed {
        match service_action(cdb) {
            Some(op::SA_READ_CAPACITY_16) => Ok(Command::ReadCapacity16 {
                allocation_length: be32(cdb, 10),
            }),
            Some(op::SA_GET_LBA_STATUS) => Ok(Command::GetLbaStatus {
                lba: Lba(be64(cdb, 2)),
                allocation_length: be32(cdb, 10),
            }),
            _ => Err(invalid(1, Some(4))),
        }
    }

    /// READ(6) and WRITE(6).
    pub(crate) fn read_write_6(cdb: &[u8]) -> Parsed {
        // SBC-4 5.14 / 5.39: TRANSFER LENGTH 0 means 256 blocks.
        let lba = Lba((be24(cdb, 1) & 0x1F_FFFF) as u64);
        let blocks = BlockCount(match cdb[4] {
            0 => 256,
            n => n as u64,
        });
        let cdb_size = RwCdb::Six;
        Ok(if cdb[0] == op::READ_6 {
            Command::Read {
                lba,
                blocks,
                fua: false,
                cdb: cdb_size,
            }
        } else {
            Command::Write {
                lba,
                blocks,
                fua: false,
                cdb: cdb_size,
            }
        })
    }

    /// READ, WRITE (10), (12), (16) and ORWRITE(16).
    pub(crate) fn read_write(cdb: &[u8]) -> Parsed {
        check_protect(cdb)?;
        let (lba, blocks) = lba_and_count(cdb);
        let fua = cdb[1] & 0x08 != 0;
        let cdb_size = match cdb.len() {
            10 => RwCdb::Ten,
            12 => RwCdb::Twelve,
            _ => RwCdb::Sixteen,
        };
        Ok(match cdb[0] {
            op::READ_10 | op::READ_12 | op::READ_16 => Command::Read {
                lba,
                blocks,
                fua,
                cdb: cdb_size,
            },
            op::ORWRITE_16 => Command::OrWrite { lba, blocks, fua },
            _ => Command::Write {
                lba,
                blocks,
                fua,
                cdb: cdb_size,
            },
        })
    }

    pub(crate) fn compare_and_write(cdb: &[u8]) -> Parsed {
        // SBC-4 5.3: byte 1 WRPROTECT/DPO/FUA (bit 0 obsolete), 2..10 LBA, 10..13 reserved,
        // 13 NUMBER OF LOGICAL BLOCKS, 14 group number.
        check_protect(cdb)?;
        if cdb[1] & 0x07 != 0 {
            return Err(invalid(1, Some(2)));
        }
        if cdb[10..13].iter().any(|&b| b != 0) {
            return Err(invalid(10, None));
        }
        // SBC-4 5.3: above MAXIMUM COMPARE AND WRITE LENGTH (VPD B0h) is INVALID FIELD IN CDB.
        if cdb[13] > crate::sbc::limits::MAX_COMPARE_AND_WRITE_BLOCKS {
            return Err(invalid(13, None));
        }
        Ok(Command::CompareAndWrite {
            lba: Lba(be64(cdb, 2)),
            blocks: BlockCount(cdb[13] as u64),
            fua: cdb[1] & 0x08 != 0,
        })
    }

    /// WRITE ATOMIC (16), SBC-4 5.48: byte 1 WRPROTECT (7..5), DPO (4), FUA (3); 2..10 LOGICAL BLOCK ADDRESS;
    /// 10..12 ATOMIC BOUNDARY; 12..14 TRANSFER LENGTH; 14 GROUP NUMBER (4..0). The limits that depend on the
    /// logical unit (MAXIMUM ATOMIC TRANSFER LENGTH, ATOMIC ALIGNMENT, GRANULARITY) are checked by the executor,
    /// after the LBA range, so a write beyond the end is reported as such (SBC-4 4.5).
    pub(crate) fn write_atomic(cdb: &[u8]) -> Parsed {
        check_protect(cdb)?;
        // SBC-4 5.48: a non-zero ATOMIC BOUNDARY when the Block Limits VPD page reports MAXIMUM ATOMIC BOUNDARY
        // SIZE 0 (boundaries not supported, as lunlock reports) is INVALID FIELD IN CDB.
        if be16(cdb, 10) != 0 {
            return Err(invalid(10, None));
        }
        Ok(Command::WriteAtomic {
            lba: Lba(be64(cdb, 2)),
            blocks: BlockCount(be16(cdb, 12) as u64),
            dpo: cdb[1] & 0x10 != 0,
            fua: cdb[1] & 0x08 != 0,
            group_number: cdb[14] & 0x1F,
        })
    }

    fn verify_cdb(cdb: &[u8]) -> VerifyCdb {
        match cdb.len() {
            10 => VerifyCdb::Ten,
            12 => VerifyCdb::Twelve,
            _ => VerifyCdb::Sixteen,
        }
    }

    /// WRITE AND VERIFY (10), (12), (16).
    pub(crate) fn write_and_verify(cdb: &[u8]) -> Parsed {
        check_protect(cdb)?;
        if cdb[1] & 0x04 != 0 {
            return Err(invalid(1, Some(2)));
        }
        let (lba, blocks) = lba_and_count(cdb);
        Ok(Command::WriteAndVerify {
            lba,
            blocks,
            byte_check: cdb[1] & 0x02 != 0,
            cdb: verify_cdb(cdb),
        })
    }

    /// VERIFY (10), (12), (16).
    pub(crate) fn verify(cdb: &[u8]) -> Parsed {
        check_protect(cdb)?;
        let byte_check = byte_check(cdb)?;
        let (lba, blocks) = lba_and_count(cdb);
        Ok(Command::Verify {
            lba,
            blocks,
            byte_check,
            cdb: verify_cdb(cdb),
        })
    }

    /// WRITE SAME (10) and (16).
    pub(crate) fn write_same(cdb: &[u8]) -> Parsed {
        check_protect(cdb)?;
        let ten = cdb[0] == op::WRITE_SAME_10;
        let ndob = !ten && cdb[1] & 0x01 != 0;
        if ten && cdb[1] & 0x01 != 0 {
            return Err(invalid(1, Some(0)));
        }
        if cdb[1] & 0x06 != 0 {
            // LBDATA/PBDATA (bits 2, 1) are obsolete in SBC-4 and unsupported here.
            let bit = if cdb[1] & 0x04 != 0 { 2 } else { 1 };
            return Err(invalid(1, Some(bit)));
        }
        let (lba, blocks) = lba_and_count(cdb);
        Ok(Command::WriteSame {
            lba,
            blocks,
            unmap: cdb[1] & 0x08 != 0,
            anchor: cdb[1] & 0x10 != 0,
            ndob,
            ten,
        })
    }

    pub(crate) fn unmap(cdb: &[u8]) -> Parsed {
        Ok(Command::Unmap {
            anchor: cdb[1] & 0x01 != 0,
            parameter_list_length: be16(cdb, 7),
        })
    }

    /// SYNCHRONIZE CACHE (10) and (16).
    pub(crate) fn synchronize_cache(cdb: &[u8]) -> Parsed {
        let (lba, blocks) = lba_and_count(cdb);
        Ok(Command::SynchronizeCache {
            lba,
            blocks,
            ten: cdb.len() == 10,
        })
    }

    /// PRE-FETCH (10) and (16).
    pub(crate) fn pre_fetch(cdb: &[u8]) -> Parsed {
        let (lba, blocks) = lba_and_count(cdb);
        Ok(Command::PreFetch {
            lba,
            blocks,
            ten: cdb.len() == 10,
        })
    }

    pub(crate) fn sanitize(cdb: &[u8]) -> Parsed {
        // SBC-4 5.30.1: byte 1 IMMED (7), reserved (6), AUSE (5), SERVICE ACTION (4..0); bytes 2..7
        // reserved; 7..9 PARAMETER LIST LENGTH.
        if cdb[1] & 0x40 != 0 {
            return Err(invalid(1, Some(6)));
        }
        if let Some(at) = (2..7).find(|&at| cdb[at] != 0) {
            return Err(invalid(at as u16, None));
        }
        let action = match cdb[1] & 0x1F {
            0x01 => SanitizeAction::Overwrite,
            0x02 => SanitizeAction::BlockErase,
            0x03 => SanitizeAction::CryptographicErase,
            0x1F => SanitizeAction::ExitFailureMode,
            // SBC-4 5.30.1: a reserved service action is INVALID FIELD IN CDB.
            _ => return Err(invalid(1, Some(4))),
        };
        let parameter_list_length = be16(cdb, 7);
        // SBC-4 5.30.1 Table 133: BLOCK ERASE, CRYPTOGRAPHIC ERASE and EXIT FAILURE MODE take no parameter
        // list; a non-zero PARAMETER LIST LENGTH is INVALID FIELD IN CDB.
        if action != SanitizeAction::Overwrite && parameter_list_length != 0 {
            return Err(invalid(7, None));
        }
        Ok(Command::Sanitize {
            immediate: cdb[1] & 0x80 != 0,
            ause: cdb[1] & 0x20 != 0,
            action,
            parameter_list_length,
        })
    }

    /// EXTENDED COPY (SPC-4 6.4.1 Table 103): service action 00h (LID1) in byte 1, bytes 2..10 reserved,
    /// PARAMETER LIST LENGTH in bytes 10..14. LID4 (01h) and the ROD token service actions are not supported.
    pub(crate) fn extended_copy(cdb: &[u8]) -> Parsed {
        if service_action(cdb) != Some(op::SA_EXTENDED_COPY_LID1) {
            return Err(invalid(1, Some(4)));
        }
        if cdb[1] & 0xE0 != 0 {
            return Err(invalid(1, Some(7)));
        }
        if let Some(at) = (2..10).chain(14..15).find(|&at| cdb[at] != 0) {
            return Err(invalid(at as u16, None));
        }
        Ok(Command::ExtendedCopy {
            parameter_list_length: be32(cdb, 10),
        })
    }

    /// RECEIVE COPY RESULTS (SPC-3 6.18.1 Table 144): service action in byte 1, LIST IDENTIFIER in byte 2,
    /// ALLOCATION LENGTH in bytes 10..14.
    pub(crate) fn receive_copy_results(cdb: &[u8]) -> Parsed {
        let request = match service_action(cdb) {
            Some(op::SA_COPY_STATUS) => CopyResultsRequest::CopyStatus { list_id: cdb[2] },
            Some(op::SA_COPY_OPERATING_PARAMETERS) => CopyResultsRequest::OperatingParameters,
            // RECEIVE DATA (01h) and FAILED SEGMENT DETAILS (04h) are not supported.
            _ => return Err(invalid(1, Some(4))),
        };
        Ok(Command::ReceiveCopyResults {
            request,
            allocation_length: be32(cdb, 10),
        })
    }

    pub(crate) fn persistent_reserve_in(cdb: &[u8]) -> Parsed {
        Ok(Command::PersistentReserveIn(PrIn::parse(cdb)?))
    }

    pub(crate) fn persistent_reserve_out(cdb: &[u8]) -> Parsed {
        Ok(Command::PersistentReserveOut(PrOutCdb::parse(cdb)?))
    }

    /// RESERVE and RELEASE (6) and (10).
    pub(crate) fn reserve_release(cdb: &[u8]) -> Parsed {
        // SPC-2 7.21.2 / 7.13.2: 3RDPTY (bit 4) and LONGID (bit 1) and the obsolete extent bit (bit 0) select
        // forms lunlock does not support.
        if cdb[1] & 0x13 != 0 {
            return Err(invalid(1, Some(4)));
        }
        let ten = cdb.len() == 10;
        Ok(if matches!(cdb[0], op::RESERVE_6 | op::RESERVE_10) {
            Command::Reserve { ten }
        } else {
            Command::Release { ten }
        })
    }
}

/// LBA and transfer length at the standard places of 10-, 12- and 16-byte block CDBs (SBC-4 5).
fn lba_and_count(cdb: &[u8]) -> (Lba, BlockCount) {
    match cdb.len() {
        10 => (Lba(be32(cdb, 2) as u64), BlockCount(be16(cdb, 7) as u64)),
        12 => (Lba(be32(cdb, 2) as u64), BlockCount(be32(cdb, 6) as u64)),
        _ => (Lba(be64(cdb, 2)), BlockCount(be32(cdb, 10) as u64)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read6_zero_length_means_256_blocks() {
        let command = Command::parse(&[op::READ_6, 0x01, 0x02, 0x03, 0, 0]).unwrap();
        assert_eq!(
            command,
            Command::Read {
                lba: Lba(0x010203),
                blocks: BlockCount(256),
                fua: false,
                cdb: RwCdb::Six,
            }
        );
    }

    #[test]
    fn control_byte_and_protect_field_pointers() {
        let cases: &[(&[u8], u16, Option<u8>)] = &[
            (&[op::TEST_UNIT_READY, 0, 0, 0, 0, 0x04], 5, Some(2)),
            (&[op::TEST_UNIT_READY, 0, 0, 0, 0, 0x01], 5, Some(0)),
            (&[op::READ_10, 0x20, 0, 0, 0, 0, 0, 0, 1, 0], 1, Some(7)),
            (
                &[op::WRITE_12, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
                1,
                Some(7),
            ),
            (&[op::VERIFY_10, 0x04, 0, 0, 0, 0, 0, 0, 1, 0], 1, Some(2)),
            (&[op::INQUIRY, 0, 0x80, 0, 0xFF, 0], 2, None),
            (
                &[op::WRITE_SAME_10, 0x01, 0, 0, 0, 0, 0, 0, 1, 0],
                1,
                Some(0),
            ),
        ];
        for (cdb, byte, bit) in cases {
            let sense = Command::parse(cdb).unwrap_err();
            assert_eq!(
                sense,
                Sense::invalid_cdb_field(*byte, *bit),
                "cdb {cdb:02x?}"
            );
        }
    }

    #[test]
    fn unsupported_opcodes_are_invalid_operation_codes() {
        for opcode in [0xC0, 0xFF] {
            let mut cdb = [0u8; 16];
            cdb[0] = opcode;
            assert_eq!(
                Command::parse(&cdb).unwrap_err().condition,
                Condition::InvalidCommandOperationCode,
                "opcode {opcode:02x}"
            );
        }
    }

    #[test]
    fn sanitize_cdb_fields() {
        let sanitize = |byte1: u8, pll: u16| {
            let [high, low] = pll.to_be_bytes();
            Command::parse(&[op::SANITIZE, byte1, 0, 0, 0, 0, 0, high, low, 0])
        };
        assert_eq!(
            sanitize(0x80 | 0x20 | 0x01, 516).unwrap(),
            Command::Sanitize {
                immediate: true,
                ause: true,
                action: SanitizeAction::Overwrite,
                parameter_list_length: 516,
            }
        );
        assert_eq!(sanitize(0x01, 516).unwrap().data_out_length(512), 516);
        for (byte1, action) in [
            (0x02, SanitizeAction::BlockErase),
            (0x03, SanitizeAction::CryptographicErase),
            (0x1F, SanitizeAction::ExitFailureMode),
        ] {
            assert!(
                matches!(sanitize(byte1, 0), Ok(Command::Sanitize { action: a, .. }) if a == action),
                "service action {byte1:02x}"
            );
            // SBC-4 5.30.1 Table 133: these service actions take no parameter list.
            assert_eq!(
                sanitize(byte1, 8).unwrap_err(),
                Sense::invalid_cdb_field(7, None)
            );
        }
        assert!(!sanitize(0x1F, 0).unwrap().writes_medium());
        assert!(sanitize(0x02, 0).unwrap().writes_medium());
        for reserved in (0x00..=0x1E).filter(|sa| !(1..=3).contains(sa)) {
            assert_eq!(
                sanitize(reserved, 0).unwrap_err(),
                Sense::invalid_cdb_field(1, Some(4)),
                "service action {reserved:02x}"
            );
        }
        assert_eq!(
            sanitize(0x42, 0).unwrap_err(),
            Sense::invalid_cdb_field(1, Some(6))
        );
        for at in 2..7 {
            let mut cdb = [op::SANITIZE, 0x02, 0, 0, 0, 0, 0, 0, 0, 0];
            cdb[at] = 1;
            assert_eq!(
                Command::parse(&cdb).unwrap_err(),
                Sense::invalid_cdb_field(at as u16, None)
            );
        }
    }

    #[test]
    fn data_out_lengths() {
        let write = Command::parse(&[op::WRITE_10, 0, 0, 0, 0, 0, 0, 0, 3, 0]).unwrap();
        assert_eq!(write.data_out_length(512), 1536);
        let verify = Command::parse(&[op::VERIFY_10, 0x06, 0, 0, 0, 0, 0, 0, 3, 0]).unwrap();
        assert_eq!(verify.data_out_length(512), 512);
        let mut ws16 = [0u8; 16];
        ws16[0] = op::WRITE_SAME_16;
        ws16[1] = 0x01;
        assert_eq!(Command::parse(&ws16).unwrap().data_out_length(512), 0);
    }
}

#[cfg(test)]
mod write_atomic_tests {
    use super::*;

    #[test]
    fn write_atomic_decodes_every_field() {
        let mut cdb = [0u8; 16];
        cdb[0] = op::WRITE_ATOMIC_16;
        cdb[1] = 0x18;
        cdb[2..10].copy_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        cdb[12..14].copy_from_slice(&3u16.to_be_bytes());
        cdb[14] = 0xE0 | 0x15; // reserved bits above GROUP NUMBER are not examined
        let command = Command::parse(&cdb).unwrap();
        assert_eq!(
            command,
            Command::WriteAtomic {
                lba: Lba(0x0102_0304_0506_0708),
                blocks: BlockCount(3),
                dpo: true,
                fua: true,
                group_number: 0x15,
            }
        );
        assert_eq!(command.data_out_length(512), 3 * 512);
        assert!(command.writes_medium() && command.may_wait_for_disk());
        assert_eq!(
            command.limited_to_blocks(1),
            None,
            "an atomic write is never shortened"
        );
        assert_eq!(
            command.addressed(),
            Some(Addressed::Blocks {
                lba: Lba(0x0102_0304_0506_0708),
                blocks: BlockCount(3)
            })
        );
    }

    #[test]
    fn write_atomic_refuses_protection_and_boundaries() {
        let mut cdb = Command::write_atomic_16(0, 1, false).encode();
        cdb[1] = 0x20;
        assert_eq!(
            Command::parse(&cdb),
            Err(Sense::invalid_cdb_field(1, Some(7)))
        );
        let mut cdb = Command::write_atomic_16(0, 1, false).encode();
        cdb[10] = 0x80;
        assert_eq!(
            Command::parse(&cdb),
            Err(Sense::invalid_cdb_field(10, None))
        );
    }
}
