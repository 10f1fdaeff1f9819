//! EXTENDED COPY(LID1) and RECEIVE COPY RESULTS (SPC-4 5.16, 6.4; SPC-3 6.3, 6.18): the copy manager of each
//! logical unit, as VMware's XCOPY clone (VAAI "Full Copy") uses it, sans-IO.
//!
//! An EXTENDED COPY goes through three steps:
//! 1. [`LogicalUnit::start_extended_copy`]: the parameter list is parsed and checked ([`parameters`]), the copy
//!    is recorded for RECEIVE COPY RESULTS ([`status`]), and every CSCD descriptor and segment is resolved
//!    against the logical units the requesting I_T nexus may access, into a plan. Nothing is read or written
//!    before every CSCD and every segment has passed: a CSCD naming a LU outside that set (another target's, or
//!    no LU at all) is COPY ABORTED, COPY TARGET DEVICE NOT REACHABLE (the rule LIO adopted for CVE-2020-28374).
//! 2. The runtime takes the plan's chunks ([`ExtendedCopy::next_chunk`], at most [`limits::CHUNK_BYTES`] each),
//!    and for each holds the source range shared while [`LogicalUnit::read_copy_chunk`] reads it, then the
//!    destination range exclusive while [`LogicalUnit::write_copy_chunk`] writes it. One range at a time: two
//!    copies in opposite directions, or a copy within one LU, cannot wait for each other. Each chunk checks the
//!    reservations under its range, as READ on the source and WRITE on the destination for the requesting nexus
//!    (RESERVATION CONFLICT), and write protection of the destination (DATA PROTECT).
//! 3. [`ExtendedCopy::finish`] answers and records the outcome.
//!
//! [`execute_blocking`] runs the three steps in the caller's thread (the `Dispatcher`, tests); the server runs
//! step 2 on the LUNs' I/O engines.

pub mod parameters;
mod status;
#[cfg(test)]
mod tests;

pub(crate) use status::CopyRecords;

use crate::cdb::{BlockCount, Command, CopyResultsRequest, Lba, RwCdb};
use crate::lu::{truncate, Admitted, Completed, LogicalUnit, Outcome};
use crate::pr::unit::Refusal;
use crate::range_lock::{Access, LockRequest, Span};
use crate::sense::{Condition, Sense, SenseKey};
use crate::{ItNexus, ScsiCommand, ScsiResponse};
use parameters::{BlockSegment, CopyParameters, Cscd, CscdTarget, DISK_BLOCK_LENGTH_AT};
use status::CopyTicket;

/// The copy manager's limits, reported by RECEIVE COPY RESULTS OPERATING PARAMETERS (SPC-3 6.18.4) and the
/// Third-party Copy VPD page (SPC-4 7.8.17), and enforced by the parser and the planner. One place, so they
/// cannot disagree.
pub mod limits {
    /// MAXIMUM CSCD DESCRIPTOR COUNT: a clone needs two (source and destination), or one within a LU.
    pub const MAX_CSCD_DESCRIPTORS: u16 = 8;
    /// MAXIMUM SEGMENT DESCRIPTOR COUNT.
    pub const MAX_SEGMENT_DESCRIPTORS: u16 = 8;
    /// MAXIMUM DESCRIPTOR LIST LENGTH in bytes: room for the maximum counts of 64-byte CSCD descriptors and
    /// 28-byte segment descriptors, and so the bound on the memory one parameter list takes.
    pub const MAX_DESCRIPTOR_LIST_BYTES: u32 = 1024;
    /// MAXIMUM SEGMENT LENGTH in bytes: 32 MiB, what a block to block segment moves at most with 512-byte blocks
    /// (NUMBER OF BLOCKS is 16 bits); ESXi sends 4 MiB per segment by default.
    pub const MAX_SEGMENT_BYTES: u32 = 32 << 20;
    /// MAXIMUM INLINE DATA LENGTH and HELD DATA LIMIT: no supported descriptor uses inline or held data.
    pub const MAX_INLINE_DATA_BYTES: u32 = 0;
    pub const HELD_DATA_LIMIT: u32 = 0;
    /// TOTAL CONCURRENT COPIES (per copy manager, i.e. per LU) and MAXIMUM CONCURRENT COPIES (per I_T nexus).
    pub const TOTAL_CONCURRENT_COPIES: u16 = 32;
    pub const MAX_CONCURRENT_COPIES: u8 = 8;
    /// Copy status records a LU keeps for RECEIVE COPY RESULTS (more than copies can run at once).
    pub const RETAINED_COPY_STATUSES: usize = 64;
    /// Bytes read and written per step of a copy, holding one range: bounds the copy's buffer and how long it
    /// holds back commands of the same blocks.
    pub const CHUNK_BYTES: u64 = 1 << 20;
    const _: () = assert!(TOTAL_CONCURRENT_COPIES as usize <= RETAINED_COPY_STATUSES);
    const _: () = assert!(MAX_CONCURRENT_COPIES as u16 <= TOTAL_CONCURRENT_COPIES);
}

/// Descriptor type codes the copy manager implements: block to block segments and Identification Descriptor
/// CSCDs (SPC-3 6.18.4 IMPLEMENTED DESCRIPTOR LIST, SPC-4 7.8.17.6).
const IMPLEMENTED_DESCRIPTORS: [u8; 2] =
    [parameters::BLOCK_TO_BLOCK, parameters::IDENTIFICATION_CSCD];

/// How a started EXTENDED COPY goes on.
#[derive(Debug)]
pub enum CopyStart {
    /// Answered without touching any medium: refused, or a PARAMETER LIST LENGTH of 0 (GOOD, SPC-4 6.4.1).
    Answered(ScsiResponse),
    /// Passed every check: copy its chunks, then [`ExtendedCopy::finish`].
    Run(ExtendedCopy),
}

/// One segment of a plan, with its LUs as indexes into the units the plan was made over.
#[derive(Clone, Copy, Debug)]
struct PlannedSegment {
    segment: BlockSegment,
    source: usize,
    destination: usize,
    source_cscd: u16,
    destination_cscd: u16,
    block_size: u64,
}

impl PlannedSegment {
    /// A copy forward within one LU onto a later, overlapping range would read blocks it has already
    /// overwritten; it goes backward instead, so the destination gets the source as it was.
    fn backward(&self) -> bool {
        let segment = &self.segment;
        self.source == self.destination
            && segment.destination_lba > segment.source_lba
            && segment.destination_lba < segment.source_lba + segment.blocks as u64
    }
}

/// A planned EXTENDED COPY being carried out, chunk by chunk.
#[derive(Debug)]
pub struct ExtendedCopy {
    segments: Vec<PlannedSegment>,
    ticket: CopyTicket,
    data_out_wanted: Option<u32>,
    /// The segment being copied and how many of its blocks are done.
    at_segment: usize,
    done_blocks: u64,
    bytes_written: u64,
}

/// One step of a copy: `blocks` blocks from the source LU to the destination LU (indexes into the units the copy
/// was planned over).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyChunk {
    pub source: usize,
    pub destination: usize,
    pub source_lba: u64,
    pub destination_lba: u64,
    pub blocks: u64,
    segment: u16,
    source_cscd: u16,
    destination_cscd: u16,
}

impl CopyChunk {
    /// The range the read holds, shared.
    pub fn source_lock(&self) -> LockRequest {
        LockRequest {
            span: Span::of(Lba(self.source_lba), BlockCount(self.blocks)),
            access: Access::Shared,
        }
    }

    /// The range the write holds, exclusive.
    pub fn destination_lock(&self) -> LockRequest {
        LockRequest {
            span: Span::of(Lba(self.destination_lba), BlockCount(self.blocks)),
            access: Access::Exclusive,
        }
    }

    /// A failure of the command the copy manager "sent" to a CSCD: its RESERVATION CONFLICT or DATA PROTECT as
    /// is; anything else is COPY ABORTED at this segment, pointing at the CSCD descriptor (SPC-4 5.16.7.4 f),
    /// and a medium error of the CSCD is a THIRD PARTY DEVICE FAILURE.
    fn failure(&self, refusal: Refusal, cscd: u16) -> CopyFailure {
        let sense = match refusal {
            Refusal::Conflict => return CopyFailure(Refusal::Conflict),
            Refusal::Check(sense) => sense,
        };
        let sense = match sense.condition.key() {
            SenseKey::DataProtect => sense,
            SenseKey::CopyAborted => sense,
            _ => Sense::new(Condition::ThirdPartyDeviceFailure),
        };
        CopyFailure(Refusal::Check(
            sense
                .with_copy_segment(self.segment)
                .at_parameter_byte(cscd, None),
        ))
    }

    /// The runtime could not run a step (its I/O engine failed): a THIRD PARTY DEVICE FAILURE at this segment.
    pub fn engine_failure(&self) -> CopyFailure {
        let sense = Sense::new(Condition::ThirdPartyDeviceFailure);
        self.failure(Refusal::Check(sense), self.source_cscd)
    }
}

/// Why a copy stopped; [`ExtendedCopy::finish`] turns it into the response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyFailure(Refusal);

impl ExtendedCopy {
    /// The next chunk to copy, None when every segment is done.
    pub fn next_chunk(&mut self) -> Option<CopyChunk> {
        while let Some(planned) = self.segments.get(self.at_segment) {
            let total = planned.segment.blocks as u64;
            if self.done_blocks < total {
                return Some(self.chunk_of(planned, total));
            }
            self.at_segment += 1;
            self.done_blocks = 0;
        }
        None
    }

    fn chunk_of(&self, planned: &PlannedSegment, total: u64) -> CopyChunk {
        let chunk_blocks = (limits::CHUNK_BYTES / planned.block_size).max(1);
        let blocks = chunk_blocks.min(total - self.done_blocks);
        let first = if planned.backward() {
            total - self.done_blocks - blocks
        } else {
            self.done_blocks
        };
        CopyChunk {
            source: planned.source,
            destination: planned.destination,
            source_lba: planned.segment.source_lba + first,
            destination_lba: planned.segment.destination_lba + first,
            blocks,
            segment: planned.segment.number,
            source_cscd: planned.source_cscd,
            destination_cscd: planned.destination_cscd,
        }
    }

    /// Records that `chunk` (the last [`ExtendedCopy::next_chunk`]) was written.
    pub fn chunk_copied(&mut self, chunk: &CopyChunk) {
        let Some(planned) = self.segments.get(self.at_segment) else {
            return;
        };
        self.done_blocks += chunk.blocks;
        self.bytes_written += chunk.blocks * planned.block_size;
        let segments_done =
            self.at_segment + (self.done_blocks == planned.segment.blocks as u64) as usize;
        self.ticket
            .progress(segments_done as u16, self.bytes_written);
    }

    /// The copy's response, from the copy manager `manager` (the LU the command was sent to), and its status for
    /// RECEIVE COPY RESULTS.
    pub fn finish(self, manager: &LogicalUnit, outcome: Result<(), CopyFailure>) -> ScsiResponse {
        self.ticket.finish(outcome.is_ok());
        let result = outcome
            .map(|()| Completed::Good(Vec::new()))
            .map_err(|CopyFailure(refusal)| refusal);
        manager.response_of(result, self.data_out_wanted)
    }
}

/// Runs a whole EXTENDED COPY in the caller's thread: start, every chunk under its range lock (waiting for the
/// range blocks the thread), finish. `units` are the logical units the requesting nexus may access.
pub fn execute_blocking(
    manager: &LogicalUnit,
    cmd: &ScsiCommand,
    admitted: &Admitted,
    units: &[&LogicalUnit],
) -> ScsiResponse {
    let mut copy = match manager.start_extended_copy(cmd, admitted, units) {
        CopyStart::Answered(response) => return response,
        CopyStart::Run(copy) => copy,
    };
    let outcome = copy_every_chunk(&mut copy, cmd.nexus, units);
    copy.finish(manager, outcome)
}

fn copy_every_chunk(
    copy: &mut ExtendedCopy,
    nexus: &ItNexus,
    units: &[&LogicalUnit],
) -> Result<(), CopyFailure> {
    while let Some(chunk) = copy.next_chunk() {
        let (source, destination) = (units[chunk.source], units[chunk.destination]);
        let data = {
            let _range = source.range_locks().lock_blocking(chunk.source_lock());
            source.read_copy_chunk(nexus, &chunk)?
        };
        let _range = destination
            .range_locks()
            .lock_blocking(chunk.destination_lock());
        destination.write_copy_chunk(nexus, &chunk, &data)?;
        copy.chunk_copied(&chunk);
    }
    Ok(())
}

/// A READ of `blocks` at `lba`, as the reservation tables see the copy's reads (SPC-4 5.13.1).
fn as_read(lba: u64, blocks: u64) -> Command {
    Command::Read {
        lba: Lba(lba),
        blocks: BlockCount(blocks),
        fua: false,
        cdb: RwCdb::Sixteen,
    }
}

/// A WRITE of `blocks` at `lba`, as the reservation tables and write protection see the copy's writes.
fn as_write(lba: u64, blocks: u64) -> Command {
    Command::Write {
        lba: Lba(lba),
        blocks: BlockCount(blocks),
        fua: false,
        cdb: RwCdb::Sixteen,
    }
}

impl LogicalUnit {
    /// Step 1 of an EXTENDED COPY sent to this LU (see the module comment). `units` are the logical units the
    /// requesting I_T nexus may access: those of the target it is logged in to.
    pub fn start_extended_copy(
        &self,
        cmd: &ScsiCommand,
        admitted: &Admitted,
        units: &[&LogicalUnit],
    ) -> CopyStart {
        let data_out_wanted = admitted.data_out_wanted();
        let answer = |result: Result<Completed, Refusal>| {
            CopyStart::Answered(self.response_of(result, data_out_wanted))
        };
        if let Err(refusal) = self.reservations.check(cmd.nexus, admitted.command()) {
            return answer(Err(refusal));
        }
        let list = admitted.data_out(cmd);
        if list.is_empty() {
            return answer(Ok(Completed::Good(Vec::new())));
        }
        let parameters = match parameters::parse(list) {
            Ok(parameters) => parameters,
            Err(sense) => return answer(Err(Refusal::Check(sense))),
        };
        if cmd.access.read_only {
            // Every copy this manager runs writes a block device, and a read-only export may write none: refused
            // before any block is read (SBC-4 4.11, DATA PROTECT, WRITE PROTECTED).
            return answer(Err(Refusal::Check(Sense::new(Condition::WriteProtected))));
        }
        let list_id = parameters
            .usage
            .keeps_status()
            .then_some(parameters.list_id);
        let ticket = match self.copies.begin(cmd.nexus, list_id) {
            Ok(ticket) => ticket,
            Err(sense) => return answer(Err(Refusal::Check(sense))),
        };
        match plan(&parameters, units, cmd.nexus) {
            Ok(segments) => CopyStart::Run(ExtendedCopy {
                segments,
                ticket,
                data_out_wanted,
                at_segment: 0,
                done_blocks: 0,
                bytes_written: 0,
            }),
            Err(CopyFailure(refusal)) => {
                ticket.finish(false);
                answer(Err(refusal))
            }
        }
    }

    /// Reads a chunk's source blocks for `nexus`. Call it holding [`CopyChunk::source_lock`] on this LU, on an
    /// I/O engine: it reads the store.
    pub fn read_copy_chunk(
        &self,
        nexus: &ItNexus,
        chunk: &CopyChunk,
    ) -> Result<Vec<u8>, CopyFailure> {
        let length = (chunk.blocks * self.block_size) as usize;
        self.copy_target_refusal(nexus, &as_read(chunk.source_lba, chunk.blocks))
            .and_then(|()| Ok(self.read_blocks(Lba(chunk.source_lba), length)?))
            .map_err(|refusal| chunk.failure(refusal, chunk.source_cscd))
    }

    /// Writes a chunk's data to its destination blocks for `nexus`. Call it holding
    /// [`CopyChunk::destination_lock`] on this LU, on an I/O engine.
    pub fn write_copy_chunk(
        &self,
        nexus: &ItNexus,
        chunk: &CopyChunk,
        data: &[u8],
    ) -> Result<(), CopyFailure> {
        self.copy_target_refusal(nexus, &as_write(chunk.destination_lba, chunk.blocks))
            .and_then(|()| Ok(self.write_blocks(Lba(chunk.destination_lba), data, false)?))
            .map(|_| ())
            .map_err(|refusal| chunk.failure(refusal, chunk.destination_cscd))
    }

    /// What refuses the copy's READ or WRITE (`command`) of this LU for `nexus`: the LU is offline (not
    /// reachable), a sanitize operation runs or failed (the LU cannot serve it), a reservation conflicts, or the
    /// LU is write-protected (SBC-4 4.11).
    fn copy_target_refusal(&self, nexus: &ItNexus, command: &Command) -> Result<(), Refusal> {
        if self.offline.is_some() {
            return Err(Sense::new(Condition::CopyTargetDeviceNotReachable).into());
        }
        if self.sanitize_in_progress() || self.sanitize_failure_refusal(command).is_some() {
            return Err(Sense::new(Condition::ThirdPartyDeviceFailure).into());
        }
        self.reservations.check(nexus, command)?;
        if command.writes_medium() && self.write_protected() {
            return Err(Sense::new(Condition::WriteProtected).into());
        }
        Ok(())
    }

    /// RECEIVE COPY RESULTS (SPC-3 6.18).
    pub(crate) fn receive_copy_results(
        &self,
        nexus: &ItNexus,
        request: CopyResultsRequest,
        allocation_length: u32,
    ) -> Outcome {
        let data = match request {
            // SPC-3 6.18.2: a LIST IDENTIFIER no copy of this nexus used is INVALID FIELD IN CDB.
            CopyResultsRequest::CopyStatus { list_id } => {
                self.copies
                    .copy_status(nexus, list_id)
                    .ok_or(Sense::invalid_cdb_field(2, None))?
            }
            CopyResultsRequest::OperatingParameters => self.copy_operating_parameters(),
        };
        Ok(Completed::Good(truncate(data, allocation_length)))
    }

    /// OPERATING PARAMETERS parameter data (SPC-3 6.18.4 Table 151).
    fn copy_operating_parameters(&self) -> Vec<u8> {
        let mut data = vec![0u8; 44];
        data[4] = 0x01; // SNLID: LIST ID USAGE 11b is supported
        data[8..10].copy_from_slice(&limits::MAX_CSCD_DESCRIPTORS.to_be_bytes());
        data[10..12].copy_from_slice(&limits::MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
        data[12..16].copy_from_slice(&limits::MAX_DESCRIPTOR_LIST_BYTES.to_be_bytes());
        data[16..20].copy_from_slice(&limits::MAX_SEGMENT_BYTES.to_be_bytes());
        data[20..24].copy_from_slice(&limits::MAX_INLINE_DATA_BYTES.to_be_bytes());
        data[24..28].copy_from_slice(&limits::HELD_DATA_LIMIT.to_be_bytes());
        // Bytes 28..32, MAXIMUM STREAM DEVICE TRANSFER SIZE: 0, no stream devices.
        data[34..36].copy_from_slice(&limits::TOTAL_CONCURRENT_COPIES.to_be_bytes());
        data[36] = limits::MAX_CONCURRENT_COPIES;
        data[37] = self.data_segment_granularity();
        // Bytes 38, 39: INLINE and HELD DATA GRANULARITY 2^0, unused.
        data[43] = IMPLEMENTED_DESCRIPTORS.len() as u8;
        data.extend_from_slice(&IMPLEMENTED_DESCRIPTORS);
        let available = (data.len() - 4) as u32;
        data[0..4].copy_from_slice(&available.to_be_bytes());
        data
    }

    /// DATA SEGMENT GRANULARITY: log2 of the logical block size, the unit segments move.
    fn data_segment_granularity(&self) -> u8 {
        self.block_size.trailing_zeros() as u8
    }

    /// The third-party copy descriptors of the Third-party Copy VPD page (SPC-4 7.8.17): Supported Commands,
    /// Parameter Data, Supported Descriptors, Supported CSCD Descriptor IDs (none: LID1 only), General Copy
    /// Operations. The values are those of OPERATING PARAMETERS.
    pub(crate) fn third_party_copy_descriptors(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Supported Commands (SPC-4 7.8.17.3): EXTENDED COPY(LID1); RECEIVE COPY STATUS(LID1) and OPERATING
        // PARAMETERS.
        let commands = [
            crate::cdb::op::EXTENDED_COPY,
            1,
            crate::cdb::op::SA_EXTENDED_COPY_LID1 as u8,
            crate::cdb::op::RECEIVE_COPY_RESULTS,
            2,
            crate::cdb::op::SA_COPY_STATUS as u8,
            crate::cdb::op::SA_COPY_OPERATING_PARAMETERS as u8,
        ];
        let mut body = vec![commands.len() as u8];
        body.extend_from_slice(&commands);
        third_party_descriptor(&mut out, 0x0001, &body);
        // Parameter Data (SPC-4 7.8.17.4): bytes 4..8 reserved, then the counts and lengths.
        let mut body = vec![0u8; 28];
        body[4..6].copy_from_slice(&limits::MAX_CSCD_DESCRIPTORS.to_be_bytes());
        body[6..8].copy_from_slice(&limits::MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
        body[8..12].copy_from_slice(&limits::MAX_DESCRIPTOR_LIST_BYTES.to_be_bytes());
        body[12..16].copy_from_slice(&limits::MAX_INLINE_DATA_BYTES.to_be_bytes());
        third_party_descriptor(&mut out, 0x0004, &body);
        // Supported Descriptors (SPC-4 7.8.17.5).
        let mut body = vec![IMPLEMENTED_DESCRIPTORS.len() as u8];
        body.extend_from_slice(&IMPLEMENTED_DESCRIPTORS);
        third_party_descriptor(&mut out, 0x0008, &body);
        // Supported CSCD Descriptor IDs (SPC-4 7.8.17.6): an empty list.
        third_party_descriptor(&mut out, 0x000C, &[0, 0]);
        // General Copy Operations (SPC-4 7.8.17.8).
        let mut body = vec![0u8; 32];
        body[0..4].copy_from_slice(&(limits::TOTAL_CONCURRENT_COPIES as u32).to_be_bytes());
        body[4..8].copy_from_slice(&(limits::MAX_CONCURRENT_COPIES as u32).to_be_bytes());
        body[8..12].copy_from_slice(&limits::MAX_SEGMENT_BYTES.to_be_bytes());
        body[12] = self.data_segment_granularity();
        third_party_descriptor(&mut out, 0x8001, &body);
        out
    }
}

/// One third-party copy descriptor (SPC-4 7.8.17.1 Table 589): type, length, and its body padded to a multiple
/// of four bytes.
fn third_party_descriptor(out: &mut Vec<u8>, descriptor_type: u16, body: &[u8]) {
    let padded = body.len().next_multiple_of(4);
    out.extend_from_slice(&descriptor_type.to_be_bytes());
    out.extend_from_slice(&(padded as u16).to_be_bytes());
    out.extend_from_slice(body);
    out.resize(out.len() + padded - body.len(), 0);
}

/// Resolves every CSCD descriptor to one of `units` and checks every segment against its LUs, before any I/O.
fn plan(
    parameters: &CopyParameters,
    units: &[&LogicalUnit],
    nexus: &ItNexus,
) -> Result<Vec<PlannedSegment>, CopyFailure> {
    let resolved = parameters
        .cscds
        .iter()
        .map(|cscd| resolve(cscd, units, first_user(parameters, cscd)))
        .collect::<Result<Vec<_>, _>>()?;
    parameters
        .segments
        .iter()
        .map(|segment| plan_segment(segment, &parameters.cscds, &resolved, units, nexus))
        .collect()
}

/// The number of the first segment that uses `cscd`, for the sense of an unusable CSCD (0 when none does).
fn first_user(parameters: &CopyParameters, cscd: &Cscd) -> u16 {
    let index = parameters.cscds.iter().position(|c| c == cscd);
    parameters
        .segments
        .iter()
        .find(|s| Some(s.source as usize) == index || Some(s.destination as usize) == index)
        .map_or(0, |s| s.number)
}

/// The index in `units` of the LU a CSCD descriptor names (None: a null device), or why it cannot be used.
fn resolve(cscd: &Cscd, units: &[&LogicalUnit], user: u16) -> Result<Option<usize>, CopyFailure> {
    let aborted = |condition: Condition, byte: u16| {
        let sense = Sense::new(condition)
            .with_copy_segment(user)
            .at_parameter_byte(byte, None);
        CopyFailure(Refusal::Check(sense))
    };
    let naa = match cscd.target {
        CscdTarget::Null => return Ok(None),
        CscdTarget::Naa(naa) => naa,
    };
    // Only the LUs this nexus may access are candidates: a CSCD naming any other LU is unreachable, and nothing
    // of it is read or written (CVE-2020-28374).
    let Some(index) = units.iter().position(|unit| unit.config.naa == naa) else {
        return Err(aborted(
            Condition::CopyTargetDeviceNotReachable,
            cscd.offset,
        ));
    };
    let unit = units[index];
    if unit.offline.is_some() {
        return Err(aborted(
            Condition::CopyTargetDeviceNotReachable,
            cscd.offset,
        ));
    }
    if cscd.device_type != 0 {
        // SPC-4 5.16.7.4: the LU is a direct access block device, not the type the descriptor names.
        return Err(aborted(
            Condition::IncorrectCopyTargetDeviceType,
            cscd.offset + 1,
        ));
    }
    if cscd.disk_block_length as u64 != unit.block_size {
        let sense = Sense::invalid_parameter_field(cscd.offset + DISK_BLOCK_LENGTH_AT, None);
        return Err(CopyFailure(Refusal::Check(sense)));
    }
    Ok(Some(index))
}

/// Checks one segment against its source and destination LUs: both reachable, equal block sizes, at most
/// MAXIMUM SEGMENT LENGTH, both ranges inside their media, and nothing refusing the copy's READ of the source or
/// WRITE of the destination for `nexus` now (each chunk checks again under its range).
fn plan_segment(
    segment: &BlockSegment,
    cscds: &[Cscd],
    resolved: &[Option<usize>],
    units: &[&LogicalUnit],
    nexus: &ItNexus,
) -> Result<PlannedSegment, CopyFailure> {
    use parameters::segment_field as field;
    let abort = |condition: Condition, byte: u16| {
        CopyFailure(Refusal::Check(segment.aborted(condition, byte)))
    };
    let (source_cscd, destination_cscd) = (
        cscds[segment.source as usize].offset,
        cscds[segment.destination as usize].offset,
    );
    let unreachable = |cscd: u16| {
        let sense = Sense::new(Condition::CopyTargetDeviceNotReachable)
            .with_copy_segment(segment.number)
            .at_parameter_byte(cscd, None);
        CopyFailure(Refusal::Check(sense))
    };
    let source = resolved[segment.source as usize].ok_or_else(|| unreachable(source_cscd))?;
    let destination =
        resolved[segment.destination as usize].ok_or_else(|| unreachable(destination_cscd))?;
    let (from, to) = (units[source], units[destination]);
    if from.block_size != to.block_size {
        // Residual data between block sizes (SPC-4 5.16.7.2) is not supported.
        let sense = Sense::invalid_parameter_field(segment.offset + field::DESTINATION_INDEX, None);
        return Err(CopyFailure(Refusal::Check(sense)));
    }
    let blocks = segment.blocks as u64;
    if blocks * from.block_size > limits::MAX_SEGMENT_BYTES as u64 {
        let sense = Sense::invalid_parameter_field(segment.offset + field::NUMBER_OF_BLOCKS, None);
        return Err(CopyFailure(Refusal::Check(sense)));
    }
    if from
        .check_range(Lba(segment.source_lba), BlockCount(blocks))
        .is_err()
    {
        return Err(abort(Condition::CopySegmentError, field::SOURCE_LBA));
    }
    if to
        .check_range(Lba(segment.destination_lba), BlockCount(blocks))
        .is_err()
    {
        return Err(abort(Condition::CopySegmentError, field::DESTINATION_LBA));
    }
    let planned = PlannedSegment {
        segment: *segment,
        source,
        destination,
        source_cscd,
        destination_cscd,
        block_size: from.block_size,
    };
    let whole = CopyChunk {
        source,
        destination,
        source_lba: segment.source_lba,
        destination_lba: segment.destination_lba,
        blocks,
        segment: segment.number,
        source_cscd,
        destination_cscd,
    };
    from.copy_target_refusal(nexus, &as_read(segment.source_lba, blocks))
        .map_err(|refusal| whole.failure(refusal, source_cscd))?;
    to.copy_target_refusal(nexus, &as_write(segment.destination_lba, blocks))
        .map_err(|refusal| whole.failure(refusal, destination_cscd))?;
    Ok(planned)
}
