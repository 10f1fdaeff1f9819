//! SBC-4 block commands: READ CAPACITY, READ/WRITE/WRITE AND VERIFY/VERIFY/ORWRITE, WRITE ATOMIC, WRITE SAME,
//! UNMAP, GET LBA STATUS, SYNCHRONIZE CACHE, PRE-FETCH.
//!
//! Invariants, for every command here:
//! - the range `lba .. lba + blocks` is checked with `checked_add` against the capacity before any I/O
//!   (SBC-4 4.5: LOGICAL BLOCK ADDRESS OUT OF RANGE 21/00); it never wraps;
//! - a transfer above the advertised maximum ([`limits`]) is INVALID FIELD IN CDB (SBC-4 6.6.4 / 5.x);
//! - store errors become MEDIUM ERROR (11/00 for reads, 0C/00 for writes), never a panic;
//! - FUA flushes the store before GOOD (SBC-4 4.15 "force unit access");
//! - READ and WRITE do one buffer allocation and one store call each.

use crate::cdb::{BlockCount, ByteCheck, Lba};
use crate::lu::{truncate, Completed, LogicalUnit, Outcome};
use crate::sense::{Condition, Sense};
use crate::store_failure::{store_failure, StoreOperation};
use std::io;

/// Limits the data path enforces and VPD page B0h advertises (SBC-4 6.6.4). One place, so they cannot disagree.
pub mod limits {
    /// MAXIMUM TRANSFER LENGTH in bytes (converted to blocks per block size): bounds one command's buffer.
    pub const MAX_TRANSFER_BYTES: u64 = 8 * 1024 * 1024;
    /// MAXIMUM WRITE SAME LENGTH in blocks. WRITE SAME without UNMAP writes every block, so this bounds the work of
    /// one command (16 MiB with 512-byte blocks). Kept below 65536 on purpose: libiscsi's WriteSame16.Unmap, when
    /// this limit allows 65536 blocks, prepares them with one 65536-block WRITE (16), which MAXIMUM TRANSFER LENGTH
    /// (16384 blocks of 512 bytes) rightly refuses.
    pub const MAX_WRITE_SAME_BLOCKS: u64 = 0x8000;
    /// MAXIMUM COMPARE AND WRITE LENGTH (VPD B0h byte 5), in blocks. ATS users compare one block; a small bound
    /// keeps the range a COMPARE AND WRITE locks short.
    pub const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 64;
    /// MAXIMUM ATOMIC TRANSFER LENGTH (VPD B0h bytes 44..48), in logical blocks, of a LU without an atomic write
    /// journal: what lunlock can write all or nothing across a power loss (SBC-4 4.29), not only against
    /// overlapping commands (the range lock gives that for any length). With a journal
    /// (`LogicalUnit::with_atomic_journal`, as the server installs on every writable LUN) it is what the journal
    /// holds. Without one, one logical block, because that is all the backings guarantee:
    /// - a logical block is written whole by one pwrite, at a block-aligned offset, so it lands on whole device
    ///   sectors (block devices: a block is at least the logical sector, checked at open; files: the file
    ///   system keeps block-aligned file offsets sector-aligned), and a device writes its physical sector all or
    ///   nothing. This is the model every WRITE already relies on. It holds for a logical block no larger than
    ///   the physical sector (512-byte blocks anywhere; 4096-byte blocks on 4Kn or 512e devices such as this
    ///   host's virtio disk, physical_block_size 4096); a 4096-byte logical block on a device with 512-byte
    ///   physical sectors is beyond what any device promises, for WRITE and WRITE ATOMIC alike;
    /// - a write of several blocks is one pwrite too, but the page cache writes it back page by page and the
    ///   device sector by sector, so a power loss can leave any mix of old and new sectors (O_DIRECT tears the
    ///   same way, at the device's sectors);
    /// - Linux can do better only with RWF_ATOMIC (6.11+) on a backing whose statx STATX_WRITE_ATOMIC reports an
    ///   atomic write unit. The development host's ext4 on virtio-blk reports stx_atomic_write_unit_max 0 (the
    ///   device's queue/atomic_write_unit_max_bytes is 0) and refuses RWF_ATOMIC with EOPNOTSUPP, so there is
    ///   nothing larger to promise there; a backing that reports a unit could advertise up to it, written with
    ///   pwritev2(RWF_ATOMIC) under O_DIRECT (not implemented: no such backing to test on).
    ///
    /// So WRITE ATOMIC of one block is exactly as atomic as a WRITE of one block, and goes straight to the image
    /// even with a journal; several blocks need the journal (`lunlock_store::journal`).
    pub const MAX_ATOMIC_TRANSFER_BLOCKS: u32 = 1;
    /// ATOMIC ALIGNMENT (VPD B0h bytes 48..52): any LBA may start an atomic write of one block.
    pub const ATOMIC_ALIGNMENT_BLOCKS: u32 = 1;
    /// ATOMIC TRANSFER LENGTH GRANULARITY (VPD B0h bytes 52..56): any length up to the maximum.
    pub const ATOMIC_GRANULARITY_BLOCKS: u32 = 1;
    /// MAXIMUM UNMAP LBA COUNT, blocks per UNMAP command.
    pub const MAX_UNMAP_BLOCKS: u64 = 1024 * 1024;
    /// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT.
    pub const MAX_UNMAP_DESCRIPTORS: u64 = 256;
    /// Bytes written per store call while WRITE SAME replicates its block.
    pub const WRITE_SAME_CHUNK_BYTES: u64 = 1024 * 1024;
    /// The backing file system's page: the OPTIMAL UNMAP GRANULARITY is at least this. Stores deallocate whole
    /// pages, so an UNMAP of part of a page reads back as zeros but stays mapped.
    pub const FILE_SYSTEM_PAGE_BYTES: u64 = 4096;
}

/// MISCOMPARE DURING VERIFY OPERATION with INFORMATION = offset of the first byte of `medium` that differs from
/// `expected` (SBC-4 5.3.2, 5.33), the rule VERIFY, WRITE AND VERIFY and COMPARE AND WRITE share.
fn compare<'a>(medium: &[u8], expected: impl Iterator<Item = &'a u8>) -> Result<(), Sense> {
    match medium.iter().zip(expected).position(|(a, b)| a != b) {
        Some(offset) => Err(Sense::new(Condition::Miscompare).with_information(offset as u64)),
        None => Ok(()),
    }
}

/// What WRITE ATOMIC accepts (SBC-4 5.48) and the Block Limits VPD page reports (SBC-4 6.6.4), in logical blocks.
/// Atomic boundaries are not supported: MAXIMUM ATOMIC TRANSFER LENGTH WITH ATOMIC BOUNDARY and MAXIMUM ATOMIC
/// BOUNDARY SIZE are 0, and the decoder refuses a non-zero ATOMIC BOUNDARY.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AtomicLimits {
    pub max_blocks: u32,
    /// 0 or 1: no constraint; otherwise the LBA must be a multiple of it.
    pub alignment: u32,
    /// 0 or 1: no constraint; otherwise the TRANSFER LENGTH must be a multiple of it.
    pub granularity: u32,
}

/// Field pointers into the WRITE ATOMIC (16) CDB (SBC-4 5.48).
const WRITE_ATOMIC_LBA_BYTE: u16 = 2;
const WRITE_ATOMIC_TRANSFER_LENGTH_BYTE: u16 = 12;

impl AtomicLimits {
    /// What lunlock guarantees on every backing (see [`limits::MAX_ATOMIC_TRANSFER_BLOCKS`]).
    pub(crate) const GUARANTEED: AtomicLimits = AtomicLimits {
        max_blocks: limits::MAX_ATOMIC_TRANSFER_BLOCKS,
        alignment: limits::ATOMIC_ALIGNMENT_BLOCKS,
        granularity: limits::ATOMIC_GRANULARITY_BLOCKS,
    };

    /// SBC-4 5.48: a TRANSFER LENGTH above MAXIMUM ATOMIC TRANSFER LENGTH, an LBA that is not a multiple of ATOMIC
    /// ALIGNMENT, or a TRANSFER LENGTH that is not a multiple of ATOMIC TRANSFER LENGTH GRANULARITY is ILLEGAL
    /// REQUEST, INVALID FIELD IN CDB, pointing at the field.
    pub(crate) fn check(&self, lba: Lba, blocks: BlockCount) -> Result<(), Sense> {
        let not_multiple = |value: u64, of: u32| of > 1 && !value.is_multiple_of(of as u64);
        if blocks.0 > self.max_blocks as u64 || not_multiple(blocks.0, self.granularity) {
            return Err(Sense::invalid_cdb_field(
                WRITE_ATOMIC_TRANSFER_LENGTH_BYTE,
                None,
            ));
        }
        if not_multiple(lba.0, self.alignment) {
            return Err(Sense::invalid_cdb_field(WRITE_ATOMIC_LBA_BYTE, None));
        }
        Ok(())
    }
}

fn read_error(error: io::Error) -> Sense {
    store_failure(StoreOperation::Read, &error)
}

fn write_error(error: io::Error) -> Sense {
    store_failure(StoreOperation::Write, &error)
}

fn flush_error(error: io::Error) -> Sense {
    store_failure(StoreOperation::Flush, &error)
}

fn deallocate_error(error: io::Error) -> Sense {
    store_failure(StoreOperation::Deallocate, &error)
}

impl LogicalUnit {
    /// MAXIMUM TRANSFER LENGTH in blocks (VPD B0h).
    pub(crate) fn max_transfer_blocks(&self) -> u64 {
        limits::MAX_TRANSFER_BYTES / self.block_size
    }

    /// Logical blocks per physical block, from the configuration's `physical_block_size` (1 unless configured).
    pub(crate) fn blocks_per_physical(&self) -> u64 {
        (self.config.physical_block_size / self.config.block_size) as u64
    }

    /// OPTIMAL UNMAP GRANULARITY (VPD B0h, SBC-4 6.6.4) in logical blocks: a physical block, or the backing file
    /// system's page when that is larger, because stores deallocate whole pages (an UNMAP of part of one reads back
    /// as zeros but stays mapped).
    pub(crate) fn unmap_granularity(&self) -> u64 {
        let physical = self.config.physical_block_size as u64;
        physical.max(limits::FILE_SYSTEM_PAGE_BYTES) / self.block_size
    }

    /// log2(logical blocks per physical block): LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT, READ CAPACITY (16)
    /// byte 13 (SBC-4 5.20.2). 3 for a 512e LUN (512-byte logical blocks in 4096-byte physical ones).
    ///
    /// The default LUN reports 0. With an exponent of 1 or more, libiscsi 1.19's GetLBAStatus.UnmapSingle sends
    /// GET LBA STATUS for LBA i + 1 and requires the first descriptor to start at LBA i + LBPPB, while SBC-4
    /// (5.8.2, "LBA status descriptor relationships") requires the first descriptor's LBA to equal the STARTING
    /// LOGICAL BLOCK ADDRESS; the 512e LUN of scripts/conformance lists that test as libiscsi's defect.
    pub(crate) fn physical_exponent(&self) -> u8 {
        self.blocks_per_physical().trailing_zeros() as u8
    }

    /// Logical block provisioning management as reported (SBC-4 4.7.3: LBPME, UNMAP, WRITE SAME with UNMAP): the
    /// configuration asks for it and the store can give blocks back. Never claimed for a store that cannot.
    pub(crate) fn thin_provisioned(&self) -> bool {
        self.config.thin_provisioned && self.store.supports_deallocate()
    }

    /// LBPRZ (SBC-4 4.7.4.5, 5.20.2): a deallocated block reads as zeros. False for a device whose discarded
    /// blocks read back as whatever the device chooses.
    pub(crate) fn unmapped_reads_zero(&self) -> bool {
        self.thin_provisioned() && self.store.deallocated_reads_zero()
    }

    /// SBC-4 4.5: the whole range must lie inside the medium.
    pub(crate) fn check_range(&self, lba: Lba, blocks: BlockCount) -> Result<(), Sense> {
        match lba.0.checked_add(blocks.0) {
            Some(end) if end <= self.capacity_blocks => Ok(()),
            _ => Err(Sense::new(Condition::LbaOutOfRange)),
        }
    }

    /// Range first (so an out-of-range LBA is reported as such, as libiscsi's BeyondEol tests expect), then the
    /// transfer limit, whose field is the TRANSFER LENGTH (byte 7 of 10-byte CDBs; field pointer left generic).
    pub(crate) fn check_transfer(&self, lba: Lba, blocks: BlockCount) -> Result<(), Sense> {
        self.check_range(lba, blocks)?;
        if blocks.0 > self.max_transfer_blocks() {
            return Err(Sense::new(Condition::InvalidFieldInCdb));
        }
        Ok(())
    }

    fn offset(&self, lba: Lba) -> u64 {
        lba.0 * self.block_size
    }

    pub(crate) fn flush(&self) -> Result<(), Sense> {
        self.store.flush().map_err(flush_error)
    }

    /// The bytes of `len` blocks at `lba`, as the medium holds them.
    pub(crate) fn read_blocks(&self, lba: Lba, len: usize) -> Result<Vec<u8>, Sense> {
        let mut data = vec![0u8; len];
        self.store
            .read_at(&mut data, self.offset(lba))
            .map_err(read_error)?;
        Ok(data)
    }

    /// Writes `data` at `lba`; with FUA it is durable before GOOD (SBC-4 4.15).
    pub(crate) fn write_blocks(&self, lba: Lba, data: &[u8], fua: bool) -> Outcome {
        self.store
            .write_at(data, self.offset(lba))
            .map_err(write_error)?;
        if fua {
            self.flush()?;
        }
        Ok(Completed::Good(Vec::new()))
    }

    /// READ (6/10/12/16), SBC-4 5.14..5.17.
    pub(crate) fn read(&self, lba: Lba, blocks: BlockCount, fua: bool) -> Outcome {
        self.check_transfer(lba, blocks)?;
        if blocks.0 == 0 {
            return Ok(Completed::Good(Vec::new()));
        }
        // FUA on READ (SBC-4 5.16): data must come from the medium, so write back anything cached first.
        if fua {
            self.store.flush().map_err(flush_error)?;
        }
        let data = self.read_blocks(lba, (blocks.0 * self.block_size) as usize)?;
        Ok(Completed::Good(data))
    }

    /// WRITE (6/10/12/16), SBC-4 5.39..5.42, and WRITE AND VERIFY (the verify is of data just written from the
    /// same buffer, so it is a flush: SBC-4 5.43 needs the data on the medium before comparing).
    pub(crate) fn write(
        &self,
        lba: Lba,
        blocks: BlockCount,
        fua: bool,
        data_out: &[u8],
    ) -> Outcome {
        self.check_transfer(lba, blocks)?;
        if blocks.0 == 0 {
            return Ok(Completed::Good(Vec::new()));
        }
        self.write_blocks(lba, data_out, fua)
    }

    /// The atomic write limits this unit reports and enforces (SBC-4 6.6.4): one block without a journal; with one, as many whole blocks as its record holds (up to MAXIMUM TRANSFER
    /// LENGTH), since the journal makes any write that fits all or nothing.
    pub(crate) fn atomic_limits(&self) -> AtomicLimits {
        match &self.atomic_journal {
            None => AtomicLimits::GUARANTEED,
            Some(journal) => AtomicLimits {
                max_blocks: (journal.max_bytes() / self.block_size)
                    .clamp(1, self.max_transfer_blocks())
                    .min(u32::MAX as u64) as u32,
                ..AtomicLimits::GUARANTEED
            },
        }
    }

    /// WRITE ATOMIC (16), SBC-4 5.48: the LBA range first (SBC-4 4.5), then the atomic limits; within them it is a
    /// WRITE (one store call; TRANSFER LENGTH 0 writes nothing and is not an error). Atomic against overlapping
    /// commands because the caller holds the range exclusively (its registry row), and across a power loss because
    /// the limits allow only what the backing writes all or nothing (SBC-4 4.29; see
    /// [`limits::MAX_ATOMIC_TRANSFER_BLOCKS`]).
    pub(crate) fn write_atomic(
        &self,
        lba: Lba,
        blocks: BlockCount,
        fua: bool,
        data_out: &[u8],
    ) -> Outcome {
        self.check_range(lba, blocks)?;
        self.atomic_limits().check(lba, blocks)?;
        match &self.atomic_journal {
            // One block is one sector-aligned pwrite, whole on every backing; FUA as for WRITE.
            Some(journal) if blocks.0 > 1 => {
                journal
                    .write(&*self.store, data_out, self.offset(lba))
                    .map_err(write_error)?;
                // Durable already: the journal flushed the image before returning, which FUA asks for.
                Ok(Completed::Good(Vec::new()))
            }
            _ => self.write(lba, blocks, fua, data_out),
        }
    }

    /// VERIFY (10/12/16), SBC-4 5.33..5.35. BYTCHK 00b checks only that the blocks are readable; 01b compares with
    /// the Data-Out; 11b compares every block with the single Data-Out block. A difference is MISCOMPARE 1D/00
    /// with INFORMATION = byte offset of the first difference (SBC-4 5.33).
    pub(crate) fn verify(
        &self,
        lba: Lba,
        blocks: BlockCount,
        byte_check: ByteCheck,
        data_out: &[u8],
    ) -> Outcome {
        self.check_transfer(lba, blocks)?;
        if blocks.0 == 0 {
            return Ok(Completed::Good(Vec::new()));
        }
        let medium = self.read_blocks(lba, (blocks.0 * self.block_size) as usize)?;
        match byte_check {
            ByteCheck::None => Ok(()),
            ByteCheck::Full => compare(&medium, data_out.iter()),
            ByteCheck::SingleBlock => compare(&medium, data_out.iter().cycle()),
        }?;
        Ok(Completed::Good(Vec::new()))
    }

    /// ORWRITE (16), SBC-4 5.12: with ORPROTECT 0 and no BMOP, the new data is the bitwise OR of the medium and
    /// the Data-Out.
    pub(crate) fn or_write(
        &self,
        lba: Lba,
        blocks: BlockCount,
        fua: bool,
        data_out: &[u8],
    ) -> Outcome {
        self.check_transfer(lba, blocks)?;
        if blocks.0 == 0 {
            return Ok(Completed::Good(Vec::new()));
        }
        let mut data = self.read_blocks(lba, data_out.len())?;
        for (byte, new) in data.iter_mut().zip(data_out) {
            *byte |= new;
        }
        self.write_blocks(lba, &data, fua)
    }

    /// COMPARE AND WRITE (SBC-4 5.3): compares the medium with the first `blocks` of the Data-Out and, only if every
    /// byte matches, writes the second `blocks`. The caller holds the range exclusively (`crate::range_lock`), so no
    /// overlapping command can see or change the blocks between the compare and the write. A miscompare is
    /// MISCOMPARE DURING VERIFY OPERATION with INFORMATION = offset of the first differing byte (SBC-4 5.3.2).
    pub(crate) fn compare_and_write(
        &self,
        lba: Lba,
        blocks: BlockCount,
        fua: bool,
        data_out: &[u8],
    ) -> Outcome {
        self.check_range(lba, blocks)?;
        if blocks.0 == 0 {
            return Ok(Completed::Good(Vec::new()));
        }
        let (verify, write) = data_out.split_at(data_out.len() / 2);
        compare(&self.read_blocks(lba, verify.len())?, verify.iter())?;
        self.write_blocks(lba, write, fua)
    }

    /// The MISCOMPARE a COMPARE AND WRITE ends with, if the store can read its blocks without waiting for the disk
    /// (the page cache holds them) and they differ from the verify data. None: they match, or reading them would
    /// wait; then the command runs in full on the I/O engine. Nothing is written either way. The caller holds the
    /// range exclusively, as for [`LogicalUnit::compare_and_write`], so the answer is the one the full run gives.
    pub(crate) fn miscompare_without_waiting(
        &self,
        lba: Lba,
        blocks: BlockCount,
        data_out: &[u8],
    ) -> Option<Sense> {
        if blocks.0 == 0 || self.check_range(lba, blocks).is_err() {
            return None;
        }
        let (verify, _) = data_out.split_at(data_out.len() / 2);
        let mut medium = vec![0u8; verify.len()];
        match self
            .store
            .read_at_without_waiting(&mut medium, self.offset(lba))
        {
            Ok(true) => compare(&medium, verify.iter()).err(),
            _ => None,
        }
    }

    /// WRITE SAME (10/16), SBC-4 5.50, 5.51.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn write_same(
        &self,
        lba: Lba,
        blocks: BlockCount,
        unmap: bool,
        anchor: bool,
        ndob: bool,
        ten: bool,
        data_out: &[u8],
    ) -> Outcome {
        // SBC-4 5.50: ANCHOR=1 with UNMAP=0 is invalid; ANCHOR=1 needs ANC_SUP, which lunlock does not claim.
        if anchor {
            return Err(Sense::invalid_cdb_field(1, Some(4)));
        }
        // UNMAP needs thin provisioning (SBC-4 4.7.3.4.x, LBPWS/LBPWS10).
        if unmap && !self.thin_provisioned() {
            return Err(Sense::invalid_cdb_field(1, Some(3)));
        }
        // SBC-4 5.51: NDOB=1 with UNMAP=0 writes zeros; both are fine.
        let _ = ten;
        // NUMBER OF LOGICAL BLOCKS 0 (WSNZ=0): from LBA to the last block (SBC-4 5.50).
        if lba.0 > self.capacity_blocks {
            return Err(Sense::new(Condition::LbaOutOfRange));
        }
        let blocks = if blocks.0 == 0 {
            BlockCount(self.capacity_blocks - lba.0)
        } else {
            blocks
        };
        self.check_range(lba, blocks)?;
        if blocks.0 > limits::MAX_WRITE_SAME_BLOCKS {
            return Err(Sense::invalid_cdb_field(if ten { 7 } else { 10 }, None));
        }
        if blocks.0 == 0 {
            return Ok(Completed::Good(Vec::new()));
        }
        let offset = self.offset(lba);
        let length = blocks.0 * self.block_size;
        // With LBPRZ=0 a deallocated block could read back as anything, so the blocks are written instead: SBC-4
        // 5.50 lets the device server write rather than unmap ("may"), and the Data-Out is then what reads back.
        if unmap && self.unmapped_reads_zero() {
            // LBPRZ=1: deallocated blocks read as zeros, which is what SBC-4 4.7.3.5 lets an unmapping WRITE SAME
            // leave behind regardless of the Data-Out (libiscsi WriteSame*.Unmap* check exactly this).
            self.store
                .deallocate(offset, length)
                .map_err(deallocate_error)?;
            return Ok(Completed::Good(Vec::new()));
        }
        let pattern: &[u8] = if ndob { &[] } else { data_out };
        let chunk_blocks = (limits::WRITE_SAME_CHUNK_BYTES / self.block_size).min(blocks.0);
        let mut chunk = vec![0u8; (chunk_blocks * self.block_size) as usize];
        if !pattern.is_empty() {
            for block in chunk.chunks_mut(self.block_size as usize) {
                block.copy_from_slice(pattern);
            }
        }
        let mut written = 0u64;
        while written < length {
            let this = (length - written).min(chunk.len() as u64) as usize;
            self.store
                .write_at(&chunk[..this], offset + written)
                .map_err(write_error)?;
            written += this as u64;
        }
        Ok(Completed::Good(Vec::new()))
    }

    /// UNMAP (SBC-4 5.32) with its parameter list checks (SBC-4 5.32.2).
    pub(crate) fn unmap(&self, anchor: bool, parameters: &[u8]) -> Outcome {
        if !self.thin_provisioned() {
            return Err(Sense::new(Condition::InvalidCommandOperationCode));
        }
        if anchor {
            return Err(Sense::invalid_cdb_field(1, Some(0)));
        }
        // A zero-length parameter list is not an error (SBC-4 5.32.1).
        if parameters.is_empty() {
            return Ok(Completed::Good(Vec::new()));
        }
        if parameters.len() < 8 {
            return Err(Sense::new(Condition::ParameterListLengthError));
        }
        let data_length = u16::from_be_bytes([parameters[0], parameters[1]]) as usize;
        let descriptors_length = u16::from_be_bytes([parameters[2], parameters[3]]) as usize;
        if data_length + 2 > parameters.len() || descriptors_length + 8 > parameters.len() {
            return Err(Sense::new(Condition::ParameterListLengthError));
        }
        let count = descriptors_length / 16;
        if count as u64 > limits::MAX_UNMAP_DESCRIPTORS {
            return Err(Sense::invalid_parameter_field(2, None));
        }
        let mut ranges = Vec::with_capacity(count);
        let mut total = 0u64;
        for index in 0..count {
            let at = 8 + index * 16;
            let descriptor = &parameters[at..at + 16];
            let lba = Lba(u64::from_be_bytes(
                descriptor[0..8].try_into().expect("8 bytes"),
            ));
            let blocks = BlockCount(u32::from_be_bytes(
                descriptor[8..12].try_into().expect("4 bytes"),
            ) as u64);
            self.check_range(lba, blocks)?;
            total = total.saturating_add(blocks.0);
            if total > limits::MAX_UNMAP_BLOCKS {
                return Err(Sense::invalid_parameter_field(at as u16 + 8, None));
            }
            ranges.push((lba, blocks));
        }
        for (lba, blocks) in ranges {
            if blocks.0 > 0 {
                self.store
                    .deallocate(self.offset(lba), blocks.0 * self.block_size)
                    .map_err(deallocate_error)?;
            }
        }
        Ok(Completed::Good(Vec::new()))
    }

    /// GET LBA STATUS (SBC-4 5.8): descriptors from the store's allocation map, the first starting at the requested
    /// LBA (SBC-4 5.8.2), the rest at physical block boundaries.
    pub(crate) fn get_lba_status(&self, lba: Lba, allocation_length: u32) -> Outcome {
        if lba.0 >= self.capacity_blocks {
            return Err(Sense::new(Condition::LbaOutOfRange));
        }
        // Header (8 bytes) plus as many 16-byte descriptors as fit, at most a named limit.
        const MAX_DESCRIPTORS: usize = 64;
        let room = (allocation_length as usize).saturating_sub(8) / 16;
        let wanted = room.clamp(1, MAX_DESCRIPTORS);
        let mut data = vec![0u8; 8];
        let mut next = lba.0;
        while next < self.capacity_blocks && (data.len() - 8) / 16 < wanted {
            let (mapped, end) = self.provisioning_run(next)?;
            let blocks = (end - next).min(u32::MAX as u64);
            data.extend_from_slice(&next.to_be_bytes());
            data.extend_from_slice(&(blocks as u32).to_be_bytes());
            // PROVISIONING STATUS: 0 mapped, 1 deallocated (SBC-4 Table 54).
            data.extend_from_slice(&[if mapped { 0 } else { 1 }, 0, 0, 0]);
            next += blocks;
        }
        let parameter_length = (data.len() - 4) as u32;
        data[0..4].copy_from_slice(&parameter_length.to_be_bytes());
        Ok(Completed::Good(truncate(data, allocation_length)))
    }

    /// The provisioning status of the physical block holding `lba`, and where the run of blocks that share it ends
    /// (a physical block boundary, or the capacity). Status is a physical block's: deallocated only when all of its
    /// logical blocks are, mapped when any is (SBC-4 4.7.1: a physical block is mapped or not as a whole).
    fn provisioning_run(&self, lba: u64) -> Result<(bool, u64), Sense> {
        let per = self.blocks_per_physical();
        let physical_start = lba - lba % per;
        let extent = self
            .store
            .allocation_at(physical_start * self.block_size)
            .map_err(read_error)?;
        let extent_end = physical_start
            + extent
                .len_bytes
                .div_ceil(self.block_size)
                .clamp(1, self.capacity_blocks - physical_start);
        let at_capacity = |end: u64| end.min(self.capacity_blocks);
        if extent.mapped {
            return Ok((true, at_capacity(extent_end.next_multiple_of(per))));
        }
        let whole_physical_end = if extent_end >= self.capacity_blocks {
            self.capacity_blocks
        } else {
            extent_end - extent_end % per
        };
        if whole_physical_end > physical_start {
            Ok((false, whole_physical_end))
        } else {
            // Deallocated only in part: the physical block is mapped.
            Ok((true, at_capacity(physical_start + per)))
        }
    }

    /// SYNCHRONIZE CACHE (10/16), SBC-4 5.22, 5.23: range checked, then the whole store is flushed (a superset).
    pub(crate) fn synchronize_cache(&self, lba: Lba, blocks: BlockCount) -> Outcome {
        self.check_range(lba, blocks)?;
        self.flush()?;
        Ok(Completed::Good(Vec::new()))
    }

    /// PRE-FETCH (10/16), SBC-4 5.9/5.10: nothing to load (the store's page cache does it); CONDITION MET says
    /// the blocks "fit in the cache", which libiscsi's tests accept as success.
    pub(crate) fn pre_fetch(&self, lba: Lba, blocks: BlockCount) -> Outcome {
        self.check_range(lba, blocks)?;
        Ok(Completed::ConditionMet)
    }

    /// READ CAPACITY (10), SBC-4 5.19: the last LBA, or FFFFFFFFh when it does not fit.
    pub(crate) fn read_capacity_10(&self) -> Vec<u8> {
        let last = self.capacity_blocks.saturating_sub(1);
        let last = u32::try_from(last).unwrap_or(u32::MAX);
        let mut data = Vec::with_capacity(8);
        data.extend_from_slice(&last.to_be_bytes());
        data.extend_from_slice(&(self.block_size as u32).to_be_bytes());
        data
    }

    /// READ CAPACITY (16), SBC-4 5.20: 32 bytes; LBPME when thin provisioned, LBPRZ when deallocated blocks also
    /// read as zeros.
    pub(crate) fn read_capacity_16(&self, allocation_length: u32) -> Vec<u8> {
        let mut data = vec![0u8; 32];
        data[0..8].copy_from_slice(&self.capacity_blocks.saturating_sub(1).to_be_bytes());
        data[8..12].copy_from_slice(&(self.block_size as u32).to_be_bytes());
        data[13] = self.physical_exponent() & 0x0F;
        if self.thin_provisioned() {
            data[14] = 0x80; // LBPME
        }
        if self.unmapped_reads_zero() {
            data[14] |= 0x40; // LBPRZ
        }
        truncate(data, allocation_length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_limits_refuse_long_misaligned_and_off_granularity_writes() {
        let limits = AtomicLimits {
            max_blocks: 8,
            alignment: 4,
            granularity: 2,
        };
        let check = |lba: u64, blocks: u64| limits.check(Lba(lba), BlockCount(blocks));
        assert_eq!(check(0, 8), Ok(()));
        assert_eq!(check(4, 2), Ok(()));
        assert_eq!(check(0, 0), Ok(()));
        let length = Err(Sense::invalid_cdb_field(12, None));
        assert_eq!(check(0, 10), length, "above the maximum");
        assert_eq!(check(0, 3), length, "not a multiple of the granularity");
        assert_eq!(
            check(2, 2),
            Err(Sense::invalid_cdb_field(2, None)),
            "misaligned"
        );
    }

    #[test]
    fn the_guaranteed_limits_accept_one_block_anywhere_and_nothing_longer() {
        let check =
            |lba: u64, blocks: u64| AtomicLimits::GUARANTEED.check(Lba(lba), BlockCount(blocks));
        for lba in [0, 1, 7, u64::MAX] {
            assert_eq!(check(lba, 1), Ok(()));
            assert_eq!(check(lba, 2), Err(Sense::invalid_cdb_field(12, None)));
        }
    }
}
