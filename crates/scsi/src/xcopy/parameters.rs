//! The EXTENDED COPY(LID1) parameter list (SPC-4 6.4.3, SPC-3 6.3.1) and every check that needs no logical unit.
//!
//! Layout: a 16-byte header (LIST IDENTIFIER, STR/LIST ID USAGE/PRIORITY, CSCD DESCRIPTOR LIST LENGTH, SEGMENT
//! DESCRIPTOR LIST LENGTH, INLINE DATA LENGTH), then the CSCD descriptors, then the segment descriptors, then the
//! inline data. Every offset is checked against the bytes received before it is read, so a parameter list of any
//! length or content ends in a [`Sense`], never an index out of bounds.
//!
//! Order of checks (libiscsi's ExtendedCopy tests depend on it): truncation and MAXIMUM DESCRIPTOR LIST LENGTH
//! (PARAMETER LIST LENGTH ERROR), descriptor counts (TOO MANY ...), descriptor types (UNSUPPORTED ... TYPE CODE),
//! descriptor fields (INVALID FIELD IN PARAMETER LIST), and last the segments' CSCD indexes (COPY ABORTED).

use super::limits;
use crate::cdb::{be32, be64};
use crate::sense::{Condition, Sense};

/// Bytes of the parameter list header (SPC-4 6.4.3.1 Table 105).
pub const HEADER_BYTES: usize = 16;
/// Identification Descriptor CSCD descriptor type code (SPC-4 6.4.5.6).
pub const IDENTIFICATION_CSCD: u8 = 0xE4;
/// Block device to block device segment descriptor type code (SPC-4 6.4.6, Table 146).
pub const BLOCK_TO_BLOCK: u8 = 0x02;
/// CSCD descriptors are 32 bytes, except these types, which are 64 (SPC-4 6.4.5.1 Table 111).
const LONG_CSCD_TYPES: [u8; 3] = [0xEA, 0xEB, 0xFE];
const CSCD_BYTES: usize = 32;
const LONG_CSCD_BYTES: usize = 64;
/// DESCRIPTOR LENGTH of a block to block segment descriptor (SPC-4 Table 151): the bytes after byte 3.
const BLOCK_TO_BLOCK_LENGTH: usize = 0x18;
/// A segment descriptor's header: type, DC/CAT, DESCRIPTOR LENGTH (SPC-4 Table 147).
const SEGMENT_HEADER_BYTES: usize = 4;
/// Code set 1 (binary), association 00b (logical unit), designator type 3 (NAA) (SPC-4 7.8.6.1).
const CODE_SET_BINARY: u8 = 0x1;
const DESIGNATOR_TYPE_NAA: u8 = 0x3;
/// An NAA IEEE Registered Extended designator, the one each lunlock LU reports in VPD page 83h.
const NAA_BYTES: usize = 16;

/// LIST ID USAGE (SPC-4 6.4.3.2 Table 106).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListIdUsage {
    /// 00b: keep the copy's status (and held data, of which lunlock has none) for RECEIVE COPY RESULTS.
    Hold,
    /// 10b: keep the status, hold no data.
    Retain,
    /// 11b: the LIST IDENTIFIER is not used (it must be zero) and no status is kept.
    Unlisted,
}

impl ListIdUsage {
    /// Whether RECEIVE COPY RESULTS can ask about the copy afterwards.
    pub fn keeps_status(self) -> bool {
        match self {
            ListIdUsage::Hold | ListIdUsage::Retain => true,
            ListIdUsage::Unlisted => false,
        }
    }
}

/// Which logical unit an Identification Descriptor CSCD descriptor names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CscdTarget {
    /// NUL=1 (SPC-3 6.3.6.1; obsolete in SPC-4): a null device, unreachable for any segment that uses it.
    Null,
    /// The LU whose NAA designator (VPD 83h) is this.
    Naa([u8; NAA_BYTES]),
}

/// One Identification Descriptor CSCD descriptor (SPC-4 6.4.5.6 Table 117).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cscd {
    /// Where it starts in the parameter list (field pointers name it).
    pub offset: u16,
    pub target: CscdTarget,
    /// PERIPHERAL DEVICE TYPE: lunlock's LUs are 00h, direct access block devices.
    pub device_type: u8,
    /// DISK BLOCK LENGTH of the block device type specific parameters (SPC-4 6.4.5.2 Table 113).
    pub disk_block_length: u32,
}

/// Offset of DISK BLOCK LENGTH in a CSCD descriptor.
pub const DISK_BLOCK_LENGTH_AT: u16 = 29;

/// One block device to block device segment descriptor (SPC-4 6.4.6, Table 151).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSegment {
    /// Its position among the segment descriptors, from 0 (SPC-4 5.16.7.4 b).
    pub number: u16,
    /// Where it starts in the parameter list.
    pub offset: u16,
    /// SOURCE and DESTINATION CSCD DESCRIPTOR INDEX: positions in the CSCD descriptor list.
    pub source: u16,
    pub destination: u16,
    /// BLOCK DEVICE NUMBER OF BLOCKS. lunlock copies only between LUs of equal block size, so it counts the
    /// source's and the destination's blocks alike whatever the DC bit says, and no residue is left for CAT.
    pub blocks: u16,
    pub source_lba: u64,
    pub destination_lba: u64,
}

/// Offsets of the fields of a block to block segment descriptor, for field pointers.
pub mod segment_field {
    pub const DESCRIPTOR_LENGTH: u16 = 2;
    pub const SOURCE_INDEX: u16 = 4;
    pub const DESTINATION_INDEX: u16 = 6;
    pub const NUMBER_OF_BLOCKS: u16 = 10;
    pub const SOURCE_LBA: u16 = 12;
    pub const DESTINATION_LBA: u16 = 20;
}

/// A parameter list that passed every check needing no logical unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyParameters {
    pub list_id: u8,
    pub usage: ListIdUsage,
    pub cscds: Vec<Cscd>,
    pub segments: Vec<BlockSegment>,
}

fn be16(bytes: &[u8], at: usize) -> u16 {
    crate::cdb::be16(bytes, at) as u16
}

fn length_error() -> Sense {
    Sense::new(Condition::ParameterListLengthError)
}

/// Parses and checks an EXTENDED COPY(LID1) parameter list (SPC-4 6.4.3). An empty list is not parsed: the
/// caller answers GOOD for PARAMETER LIST LENGTH 0 (SPC-4 6.4.1).
pub fn parse(list: &[u8]) -> Result<CopyParameters, Sense> {
    let header = Header::parse(list)?;
    let cscd_list = header.cscd_list(list);
    let segment_list = header.segment_list(list);
    let cscd_spans = spans(cscd_list, HEADER_BYTES, cscd_length, 2)?;
    if cscd_spans.len() > limits::MAX_CSCD_DESCRIPTORS as usize {
        return Err(Sense::new(Condition::TooManyTargetDescriptors));
    }
    let segment_base = HEADER_BYTES + cscd_list.len();
    let segment_spans = spans(segment_list, segment_base, segment_length, 8)?;
    if segment_spans.len() > limits::MAX_SEGMENT_DESCRIPTORS as usize {
        return Err(Sense::new(Condition::TooManySegmentDescriptors));
    }
    let cscds = cscd_spans
        .iter()
        .map(|span| parse_cscd(&list[span.start..span.end], span.start as u16))
        .collect::<Result<Vec<_>, _>>()?;
    let segments = segment_spans
        .iter()
        .enumerate()
        .map(|(number, span)| {
            parse_segment(
                &list[span.start..span.end],
                span.start as u16,
                number as u16,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    for segment in &segments {
        check_indexes(segment, cscds.len())?;
    }
    Ok(CopyParameters {
        list_id: header.list_id,
        usage: header.usage,
        cscds,
        segments,
    })
}

/// The parameter list header (SPC-4 6.4.3.1 Table 105).
struct Header {
    list_id: u8,
    usage: ListIdUsage,
    cscd_list_bytes: usize,
    segment_list_bytes: usize,
}

impl Header {
    fn parse(list: &[u8]) -> Result<Header, Sense> {
        if list.len() < HEADER_BYTES {
            return Err(length_error());
        }
        let list_id = list[0];
        // Byte 1: STR (bit 5) and PRIORITY (bits 2..0) are hints lunlock may ignore; LIST ID USAGE in bits 4..3.
        let usage = match (list[1] >> 3) & 0x03 {
            0b00 => ListIdUsage::Hold,
            0b10 => ListIdUsage::Retain,
            0b11 => ListIdUsage::Unlisted,
            _ => return Err(Sense::invalid_parameter_field(1, Some(4))),
        };
        // SPC-4 6.4.3.2: with LIST ID USAGE 11b the LIST IDENTIFIER shall be zero.
        if usage == ListIdUsage::Unlisted && list_id != 0 {
            return Err(Sense::invalid_parameter_field(0, None));
        }
        let cscd_list_bytes = be16(list, 2) as u64;
        let segment_list_bytes = be32(list, 8) as u64;
        let inline_bytes = be32(list, 12) as u64;
        // SPC-4 6.4.3.1: descriptor lists longer than MAXIMUM DESCRIPTOR LIST LENGTH are a PARAMETER LIST LENGTH
        // ERROR, checked first (libiscsi's DescrLimits sends too many of both kinds in too long a list).
        if cscd_list_bytes + segment_list_bytes > limits::MAX_DESCRIPTOR_LIST_BYTES as u64 {
            return Err(length_error());
        }
        // MAXIMUM INLINE DATA LENGTH is 0: no supported segment descriptor uses inline data.
        if inline_bytes > limits::MAX_INLINE_DATA_BYTES as u64 {
            return Err(Sense::invalid_parameter_field(12, None));
        }
        // SPC-4 6.4.1: a PARAMETER LIST LENGTH that truncates the lists is a PARAMETER LIST LENGTH ERROR.
        if HEADER_BYTES as u64 + cscd_list_bytes + segment_list_bytes + inline_bytes
            > list.len() as u64
        {
            return Err(length_error());
        }
        Ok(Header {
            list_id,
            usage,
            cscd_list_bytes: cscd_list_bytes as usize,
            segment_list_bytes: segment_list_bytes as usize,
        })
    }

    fn cscd_list<'l>(&self, list: &'l [u8]) -> &'l [u8] {
        &list[HEADER_BYTES..HEADER_BYTES + self.cscd_list_bytes]
    }

    fn segment_list<'l>(&self, list: &'l [u8]) -> &'l [u8] {
        let start = HEADER_BYTES + self.cscd_list_bytes;
        &list[start..start + self.segment_list_bytes]
    }
}

/// Where one descriptor lies in the parameter list: `start..end`.
struct DescriptorSpan {
    start: usize,
    end: usize,
}

/// Cuts a descriptor list into its descriptors. `length_of` tells a descriptor's length from its first bytes
/// (None: too few bytes left to tell); a descriptor that runs past the list's end makes the list's length field
/// (at `length_field` of the parameter list) invalid. `base` is the list's offset in the parameter list.
fn spans(
    descriptors: &[u8],
    base: usize,
    length_of: fn(&[u8]) -> Option<usize>,
    length_field: u16,
) -> Result<Vec<DescriptorSpan>, Sense> {
    let overrun = || Sense::invalid_parameter_field(length_field, None);
    let mut spans = Vec::new();
    let mut at = 0;
    while at < descriptors.len() {
        let length = length_of(&descriptors[at..]).ok_or_else(overrun)?;
        if length > descriptors.len() - at {
            return Err(overrun());
        }
        spans.push(DescriptorSpan {
            start: base + at,
            end: base + at + length,
        });
        at += length;
    }
    Ok(spans)
}

/// A CSCD descriptor's length, from its type code (SPC-4 6.4.5.1).
fn cscd_length(descriptor: &[u8]) -> Option<usize> {
    let type_code = *descriptor.first()?;
    Some(if LONG_CSCD_TYPES.contains(&type_code) {
        LONG_CSCD_BYTES
    } else {
        CSCD_BYTES
    })
}

/// A segment descriptor's length: its header and DESCRIPTOR LENGTH bytes (SPC-4 6.4.6.1).
fn segment_length(descriptor: &[u8]) -> Option<usize> {
    if descriptor.len() < SEGMENT_HEADER_BYTES {
        return None;
    }
    Some(SEGMENT_HEADER_BYTES + be16(descriptor, 2) as usize)
}

/// An Identification Descriptor CSCD descriptor (SPC-4 6.4.5.6): `descriptor` is exactly its 32 or 64 bytes.
fn parse_cscd(descriptor: &[u8], offset: u16) -> Result<Cscd, Sense> {
    let at = |byte: u16| offset + byte;
    if descriptor[0] != IDENTIFICATION_CSCD || descriptor.len() != CSCD_BYTES {
        return Err(Sense::new(Condition::UnsupportedTargetDescriptorTypeCode)
            .at_parameter_byte(offset, None));
    }
    // Byte 1: LU ID TYPE (bits 7..6) is reserved for this descriptor in SPC-4 and ignored; NUL (bit 5);
    // PERIPHERAL DEVICE TYPE (bits 4..0). Bytes 2..4, RELATIVE INITIATOR PORT IDENTIFIER, may be any port.
    let device_type = descriptor[1] & 0x1F;
    let disk_block_length = u32::from_be_bytes([0, descriptor[29], descriptor[30], descriptor[31]]);
    let target = if descriptor[1] & 0x20 != 0 {
        CscdTarget::Null
    } else {
        CscdTarget::Naa(naa_designator(descriptor, at)?)
    };
    Ok(Cscd {
        offset,
        target,
        device_type,
        disk_block_length,
    })
}

/// The designation descriptor in bytes 4..28 of an Identification Descriptor CSCD descriptor (SPC-4 7.8.6.1
/// Table 459): lunlock's LUs are named by their binary NAA designator of the logical unit (what VPD 83h reports).
fn naa_designator(descriptor: &[u8], at: impl Fn(u16) -> u16) -> Result<[u8; NAA_BYTES], Sense> {
    if descriptor[4] & 0x0F != CODE_SET_BINARY {
        return Err(Sense::invalid_parameter_field(at(4), Some(3)));
    }
    // Byte 5: PIV (bit 7) is ignored; ASSOCIATION (bits 5..4) must be the logical unit (00b).
    if descriptor[5] & 0x30 != 0 {
        return Err(Sense::invalid_parameter_field(at(5), Some(5)));
    }
    if descriptor[5] & 0x0F != DESIGNATOR_TYPE_NAA {
        return Err(Sense::invalid_parameter_field(at(5), Some(3)));
    }
    if descriptor[7] as usize != NAA_BYTES {
        return Err(Sense::invalid_parameter_field(at(7), None));
    }
    let mut naa = [0u8; NAA_BYTES];
    naa.copy_from_slice(&descriptor[8..8 + NAA_BYTES]);
    Ok(naa)
}

/// A block to block segment descriptor (SPC-4 6.4.6, Table 151): `descriptor` is exactly its bytes.
fn parse_segment(descriptor: &[u8], offset: u16, number: u16) -> Result<BlockSegment, Sense> {
    if descriptor[0] != BLOCK_TO_BLOCK {
        return Err(Sense::new(Condition::UnsupportedSegmentDescriptorTypeCode)
            .at_parameter_byte(offset, None));
    }
    if descriptor.len() != SEGMENT_HEADER_BYTES + BLOCK_TO_BLOCK_LENGTH {
        return Err(Sense::invalid_parameter_field(
            offset + segment_field::DESCRIPTOR_LENGTH,
            None,
        ));
    }
    Ok(BlockSegment {
        number,
        offset,
        source: be16(descriptor, segment_field::SOURCE_INDEX as usize),
        destination: be16(descriptor, segment_field::DESTINATION_INDEX as usize),
        blocks: be16(descriptor, segment_field::NUMBER_OF_BLOCKS as usize),
        source_lba: be64(descriptor, segment_field::SOURCE_LBA as usize),
        destination_lba: be64(descriptor, segment_field::DESTINATION_LBA as usize),
    })
}

/// A CSCD index past the CSCD descriptor list names no copy source or destination: the copy is aborted at that
/// segment, pointing at the index (SPC-4 5.16.7.4 g; what libiscsi's ValidSegDescr expects).
fn check_indexes(segment: &BlockSegment, cscds: usize) -> Result<(), Sense> {
    for (index, field) in [
        (segment.source, segment_field::SOURCE_INDEX),
        (segment.destination, segment_field::DESTINATION_INDEX),
    ] {
        if index as usize >= cscds {
            return Err(segment.aborted(Condition::CopySegmentError, field));
        }
    }
    Ok(())
}

impl BlockSegment {
    /// COPY ABORTED with `condition` while processing this segment, pointing at its byte `field`.
    pub fn aborted(&self, condition: Condition, field: u16) -> Sense {
        Sense::new(condition)
            .with_copy_segment(self.number)
            .at_parameter_byte(self.offset + field, None)
    }
}

/// Parameter lists as clients send them, the inverse of [`parse`] for what it accepts (tests and initiators).
pub mod encode {
    use super::{ListIdUsage, HEADER_BYTES};

    /// An Identification Descriptor CSCD descriptor (SPC-4 6.4.5.6) naming the LU with NAA designator `naa`, a
    /// direct access block device of `block_size`-byte blocks.
    pub fn identification_cscd(naa: [u8; 16], block_size: u32) -> Vec<u8> {
        let mut descriptor = vec![0u8; super::CSCD_BYTES];
        descriptor[0] = super::IDENTIFICATION_CSCD;
        descriptor[4] = super::CODE_SET_BINARY;
        descriptor[5] = super::DESIGNATOR_TYPE_NAA;
        descriptor[7] = super::NAA_BYTES as u8;
        descriptor[8..24].copy_from_slice(&naa);
        descriptor[29..32].copy_from_slice(&block_size.to_be_bytes()[1..]);
        descriptor
    }

    /// A block device to block device segment descriptor (SPC-4 Table 151), DC=0, CAT=0.
    pub fn block_to_block_segment(
        source: u16,
        destination: u16,
        blocks: u16,
        source_lba: u64,
        destination_lba: u64,
    ) -> Vec<u8> {
        let mut descriptor = vec![0u8; super::SEGMENT_HEADER_BYTES + super::BLOCK_TO_BLOCK_LENGTH];
        descriptor[0] = super::BLOCK_TO_BLOCK;
        descriptor[2..4].copy_from_slice(&(super::BLOCK_TO_BLOCK_LENGTH as u16).to_be_bytes());
        descriptor[4..6].copy_from_slice(&source.to_be_bytes());
        descriptor[6..8].copy_from_slice(&destination.to_be_bytes());
        descriptor[10..12].copy_from_slice(&blocks.to_be_bytes());
        descriptor[12..20].copy_from_slice(&source_lba.to_be_bytes());
        descriptor[20..28].copy_from_slice(&destination_lba.to_be_bytes());
        descriptor
    }

    /// The parameter list (SPC-4 Table 105): header, CSCD descriptors, segment descriptors, no inline data.
    pub fn parameter_list(
        list_id: u8,
        usage: ListIdUsage,
        cscds: &[Vec<u8>],
        segments: &[Vec<u8>],
    ) -> Vec<u8> {
        let cscd_bytes = cscds.concat();
        let segment_bytes = segments.concat();
        let usage_code = match usage {
            ListIdUsage::Hold => 0b00,
            ListIdUsage::Retain => 0b10,
            ListIdUsage::Unlisted => 0b11,
        };
        let mut list = vec![0u8; HEADER_BYTES];
        list[0] = list_id;
        list[1] = usage_code << 3;
        list[2..4].copy_from_slice(&(cscd_bytes.len() as u16).to_be_bytes());
        list[8..12].copy_from_slice(&(segment_bytes.len() as u32).to_be_bytes());
        list.extend_from_slice(&cscd_bytes);
        list.extend_from_slice(&segment_bytes);
        list
    }
}
