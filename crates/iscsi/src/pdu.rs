//! iSCSI PDU framing (RFC 7143 11.2): the 48-byte Basic Header Segment, Additional Header Segments, the data
//! segment with its padding, and the optional CRC32C header and data digests (RFC 7143 13.1, 11.2.3).
//!
//! Framing is pure and split in two, as in mini-redis: [`frame_length`] checks a buffer cheaply and says
//! "incomplete" (need more bytes) apart from "malformed" before anything is allocated; [`decode`] then builds the
//! [`Pdu`]. Opcode-specific meaning lives in `crate::message`; this module knows only the layout common to every PDU.
//!
//! Invariants: a decoded PDU's data segment never exceeds the limit the caller passes (the negotiated
//! MaxRecvDataSegmentLength, RFC 7143 13.12); digests are verified before a PDU is returned.

use std::fmt;

/// Length of the Basic Header Segment (RFC 7143 11.2.1).
pub const BHS_LEN: usize = 48;
/// Largest data segment the 24-bit DataSegmentLength field can describe.
pub const MAX_DATA_SEGMENT_FIELD: u32 = (1 << 24) - 1;

/// iSCSI opcodes (RFC 7143 11.2.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    NopOut = 0x00,
    ScsiCommand = 0x01,
    TaskManagementRequest = 0x02,
    LoginRequest = 0x03,
    TextRequest = 0x04,
    DataOut = 0x05,
    LogoutRequest = 0x06,
    SnackRequest = 0x10,
    NopIn = 0x20,
    ScsiResponse = 0x21,
    TaskManagementResponse = 0x22,
    LoginResponse = 0x23,
    TextResponse = 0x24,
    DataIn = 0x25,
    LogoutResponse = 0x26,
    ReadyToTransfer = 0x31,
    AsyncMessage = 0x32,
    Reject = 0x3F,
}

impl Opcode {
    /// The opcode for a 6-bit code, or None for a reserved or vendor-specific one.
    pub fn from_code(code: u8) -> Option<Opcode> {
        use Opcode::*;
        Some(match code & 0x3F {
            0x00 => NopOut,
            0x01 => ScsiCommand,
            0x02 => TaskManagementRequest,
            0x03 => LoginRequest,
            0x04 => TextRequest,
            0x05 => DataOut,
            0x06 => LogoutRequest,
            0x10 => SnackRequest,
            0x20 => NopIn,
            0x21 => ScsiResponse,
            0x22 => TaskManagementResponse,
            0x23 => LoginResponse,
            0x24 => TextResponse,
            0x25 => DataIn,
            0x26 => LogoutResponse,
            0x31 => ReadyToTransfer,
            0x32 => AsyncMessage,
            0x3F => Reject,
            _ => return None,
        })
    }
}

/// Which digests are in force on a connection (negotiated at login, RFC 7143 13.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

/// Why bytes could not be framed as a PDU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The data segment is longer than the receiver allows. The connection cannot be resynchronised safely if
    /// this is ignored, so the usual answer is a Reject followed by closing the connection.
    DataSegmentTooLong {
        length: u32,
        limit: u32,
        header: Box<[u8; BHS_LEN]>,
    },
    /// The header digest did not match: the header cannot be trusted, not even its lengths (RFC 7143 7.8: the
    /// connection must be dropped).
    HeaderDigest { expected: u32, found: u32 },
    /// The data digest did not match; the header is valid, so the PDU can be rejected (RFC 7143 7.8, reason 0x02)
    /// and the connection kept.
    DataDigest {
        expected: u32,
        found: u32,
        header: Box<[u8; BHS_LEN]>,
        frame_length: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::DataSegmentTooLong { length, limit, .. } => {
                write!(
                    f,
                    "data segment of {length} bytes exceeds the limit of {limit}"
                )
            }
            FrameError::HeaderDigest { expected, found } => {
                write!(
                    f,
                    "header digest mismatch: computed {expected:#010x}, received {found:#010x}"
                )
            }
            FrameError::DataDigest {
                expected, found, ..
            } => {
                write!(
                    f,
                    "data digest mismatch: computed {expected:#010x}, received {found:#010x}"
                )
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// One PDU: the raw Basic Header Segment plus AHS bytes and data segment (without padding or digests).
/// Field accessors below read the layout common to all opcodes; `crate::message` gives typed views.
#[derive(Clone, PartialEq, Eq)]
pub struct Pdu {
    pub bhs: [u8; BHS_LEN],
    pub ahs: Vec<u8>,
    pub data: Vec<u8>,
}

impl fmt::Debug for Pdu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pdu")
            .field("opcode", &self.opcode())
            .field("itt", &format_args!("{:#x}", self.itt()))
            .field("ahs_len", &self.ahs.len())
            .field("data_len", &self.data.len())
            .finish()
    }
}

impl Pdu {
    /// A PDU with an all-zero header, the given opcode, and no data.
    pub fn new(opcode: Opcode) -> Pdu {
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = opcode as u8;
        Pdu {
            bhs,
            ahs: Vec::new(),
            data: Vec::new(),
        }
    }

    /// The 6-bit opcode code, which may be reserved (see [`Opcode::from_code`]).
    pub fn opcode_code(&self) -> u8 {
        self.bhs[0] & 0x3F
    }

    pub fn opcode(&self) -> Option<Opcode> {
        Opcode::from_code(self.bhs[0])
    }

    /// The I bit: an immediate request (RFC 7143 11.2.1.1), initiator PDUs only.
    pub fn immediate(&self) -> bool {
        self.bhs[0] & 0x40 != 0
    }

    pub fn set_immediate(&mut self, immediate: bool) {
        self.set_bit(0, 0x40, immediate);
    }

    /// The F (final) bit, bit 7 of byte 1, for the opcodes that have one.
    pub fn final_bit(&self) -> bool {
        self.bhs[1] & 0x80 != 0
    }

    pub fn set_final(&mut self, final_bit: bool) {
        self.set_bit(1, 0x80, final_bit);
    }

    pub fn set_bit(&mut self, byte: usize, mask: u8, on: bool) {
        if on {
            self.bhs[byte] |= mask;
        } else {
            self.bhs[byte] &= !mask;
        }
    }

    /// TotalAHSLength in bytes (the field counts 4-byte words).
    pub fn total_ahs_length(&self) -> usize {
        self.bhs[4] as usize * 4
    }

    /// DataSegmentLength as it stands in the header.
    pub fn data_segment_length(&self) -> u32 {
        u32::from_be_bytes([0, self.bhs[5], self.bhs[6], self.bhs[7]])
    }

    /// The 8-byte LUN field (bytes 8..16), raw (SAM-5 4.7).
    pub fn lun_field(&self) -> [u8; 8] {
        self.bhs[8..16].try_into().expect("8-byte slice")
    }

    pub fn set_lun_field(&mut self, lun: [u8; 8]) {
        self.bhs[8..16].copy_from_slice(&lun);
    }

    /// Initiator Task Tag (bytes 16..20).
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }

    pub fn set_itt(&mut self, itt: u32) {
        self.set_u32_at(16, itt);
    }

    /// Big-endian u32 at `offset` of the BHS.
    pub fn u32_at(&self, offset: usize) -> u32 {
        u32::from_be_bytes(
            self.bhs[offset..offset + 4]
                .try_into()
                .expect("4-byte slice"),
        )
    }

    pub fn set_u32_at(&mut self, offset: usize, value: u32) {
        self.bhs[offset..offset + 4].copy_from_slice(&value.to_be_bytes());
    }

    pub fn u16_at(&self, offset: usize) -> u16 {
        u16::from_be_bytes([self.bhs[offset], self.bhs[offset + 1]])
    }

    pub fn set_u16_at(&mut self, offset: usize, value: u16) {
        self.bhs[offset..offset + 2].copy_from_slice(&value.to_be_bytes());
    }

    /// Length of this PDU on the wire with the given digests.
    pub fn wire_length(&self, digests: Digests) -> usize {
        let mut length = BHS_LEN + padded(self.ahs.len());
        if digests.header {
            length += 4;
        }
        if !self.data.is_empty() {
            length += padded(self.data.len());
            if digests.data {
                length += 4;
            }
        }
        length
    }

    /// Appends the wire form to `out`: header (with TotalAHSLength and DataSegmentLength filled from the
    /// contents), AHS, header digest, padded data, data digest.
    pub fn encode(&self, digests: Digests, out: &mut Vec<u8>) {
        debug_assert!(
            self.ahs.len().is_multiple_of(4),
            "AHS is made of 4-byte words"
        );
        debug_assert!(self.data.len() as u64 <= MAX_DATA_SEGMENT_FIELD as u64);
        out.reserve(self.wire_length(digests));
        let header_start = out.len();
        out.extend_from_slice(&self.bhs);
        out[header_start + 4] = (self.ahs.len() / 4) as u8;
        let length = (self.data.len() as u32).to_be_bytes();
        out[header_start + 5..header_start + 8].copy_from_slice(&length[1..]);
        out.extend_from_slice(&self.ahs);
        if digests.header {
            let crc = crc32c::crc32c(&out[header_start..]);
            out.extend_from_slice(&crc.to_le_bytes());
        }
        if !self.data.is_empty() {
            let data_start = out.len();
            out.extend_from_slice(&self.data);
            out.resize(data_start + padded(self.data.len()), 0);
            if digests.data {
                let crc = crc32c::crc32c(&out[data_start..]);
                out.extend_from_slice(&crc.to_le_bytes());
            }
        }
    }

    /// The wire form as a new buffer.
    pub fn to_bytes(&self, digests: Digests) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(digests, &mut out);
        out
    }
}

/// `length` rounded up to a multiple of 4 (RFC 7143 11.2.3: segments are padded to 4-byte words).
pub fn padded(length: usize) -> usize {
    (length + 3) & !3
}

/// Checks whether `buf` begins with a complete PDU. Returns `Ok(None)` when more bytes are needed, or the frame
/// length when complete. Only the header is inspected; digests are checked by [`decode`].
pub fn frame_length(
    buf: &[u8],
    digests: Digests,
    max_data_segment: u32,
) -> Result<Option<usize>, FrameError> {
    if buf.len() < BHS_LEN {
        return Ok(None);
    }
    let header: &[u8; BHS_LEN] = buf[..BHS_LEN].try_into().expect("48-byte slice");
    let ahs_len = header[4] as usize * 4;
    let data_len = u32::from_be_bytes([0, header[5], header[6], header[7]]);
    // With a header digest, a corrupt length must not make us wait for or reject on garbage: check the digest
    // first when its bytes are here.
    if digests.header {
        let digest_end = BHS_LEN + ahs_len + 4;
        if buf.len() < digest_end {
            return Ok(None);
        }
        verify_header_digest(&buf[..digest_end])?;
    }
    if data_len > max_data_segment {
        return Err(FrameError::DataSegmentTooLong {
            length: data_len,
            limit: max_data_segment,
            header: Box::new(*header),
        });
    }
    let mut total = BHS_LEN + ahs_len + if digests.header { 4 } else { 0 };
    if data_len > 0 {
        total += padded(data_len as usize) + if digests.data { 4 } else { 0 };
    }
    Ok(if buf.len() >= total {
        Some(total)
    } else {
        None
    })
}

fn verify_header_digest(header_with_digest: &[u8]) -> Result<(), FrameError> {
    let (covered, digest) = header_with_digest.split_at(header_with_digest.len() - 4);
    let expected = crc32c::crc32c(covered);
    let found = u32::from_le_bytes(digest.try_into().expect("4-byte digest"));
    if expected != found {
        return Err(FrameError::HeaderDigest { expected, found });
    }
    Ok(())
}

/// Decodes one PDU from the start of `buf`. Returns `Ok(None)` when incomplete, else the PDU and the number of
/// bytes it used.
pub fn decode(
    buf: &[u8],
    digests: Digests,
    max_data_segment: u32,
) -> Result<Option<(Pdu, usize)>, FrameError> {
    let Some(total) = frame_length(buf, digests, max_data_segment)? else {
        return Ok(None);
    };
    let bhs: [u8; BHS_LEN] = buf[..BHS_LEN].try_into().expect("48-byte slice");
    let ahs_len = bhs[4] as usize * 4;
    let data_len = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
    let ahs = buf[BHS_LEN..BHS_LEN + ahs_len].to_vec();
    let data_start = BHS_LEN + ahs_len + if digests.header { 4 } else { 0 };
    let mut data = Vec::new();
    if data_len > 0 {
        let padded_end = data_start + padded(data_len);
        if digests.data {
            let expected = crc32c::crc32c(&buf[data_start..padded_end]);
            let found = u32::from_le_bytes(
                buf[padded_end..padded_end + 4]
                    .try_into()
                    .expect("4-byte digest"),
            );
            if expected != found {
                return Err(FrameError::DataDigest {
                    expected,
                    found,
                    header: Box::new(bhs),
                    frame_length: total,
                });
            }
        }
        data = buf[data_start..data_start + data_len].to_vec();
    }
    Ok(Some((Pdu { bhs, ahs, data }, total)))
}

/// Serial number arithmetic (RFC 1982 with SERIAL_BITS = 32), used for CmdSN, StatSN, DataSN and friends
/// (RFC 7143 4.2.2.1). Never compare sequence numbers with a plain `<`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SerialNumber(pub u32);

impl SerialNumber {
    /// `self < other` in serial-number arithmetic.
    pub fn lt(self, other: SerialNumber) -> bool {
        self.0 != other.0 && (other.0.wrapping_sub(self.0) as i32) > 0
    }

    /// `self > other` in serial-number arithmetic.
    pub fn gt(self, other: SerialNumber) -> bool {
        other.lt(self)
    }

    /// `self <= other`.
    pub fn le(self, other: SerialNumber) -> bool {
        self == other || self.lt(other)
    }

    pub fn plus(self, n: u32) -> SerialNumber {
        SerialNumber(self.0.wrapping_add(n))
    }

    /// True when `self` lies in the closed window [low, high].
    pub fn in_window(self, low: SerialNumber, high: SerialNumber) -> bool {
        low.le(self) && self.le(high)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(data_len: usize) -> Pdu {
        let mut pdu = Pdu::new(Opcode::ScsiCommand);
        pdu.set_final(true);
        pdu.set_itt(0x1234_5678);
        pdu.set_u32_at(24, 7);
        pdu.data = (0..data_len).map(|i| i as u8).collect();
        pdu
    }

    #[test]
    fn round_trip_with_and_without_digests() {
        for digests in [
            Digests::default(),
            Digests {
                header: true,
                data: false,
            },
            Digests {
                header: true,
                data: true,
            },
            Digests {
                header: false,
                data: true,
            },
        ] {
            for data_len in [0, 1, 3, 4, 5, 4096] {
                let pdu = sample(data_len);
                let bytes = pdu.to_bytes(digests);
                assert_eq!(bytes.len(), pdu.wire_length(digests));
                assert_eq!(bytes.len() % 4, 0);
                let (decoded, used) = decode(&bytes, digests, 8192).unwrap().unwrap();
                assert_eq!(used, bytes.len());
                assert_eq!(decoded.data, pdu.data);
                assert_eq!(decoded.itt(), 0x1234_5678);
                assert_eq!(decoded.data_segment_length() as usize, data_len);
                // Every strict prefix is incomplete, never an error.
                for cut in [0, 1, 47, bytes.len() - 1] {
                    assert_eq!(decode(&bytes[..cut], digests, 8192).unwrap(), None);
                }
            }
        }
    }

    #[test]
    fn corrupt_digests_are_reported() {
        let digests = Digests {
            header: true,
            data: true,
        };
        let mut bytes = sample(100).to_bytes(digests);
        bytes[BHS_LEN + 4 + 10] ^= 1;
        assert!(matches!(
            decode(&bytes, digests, 8192),
            Err(FrameError::DataDigest { .. })
        ));
        let mut bytes = sample(100).to_bytes(digests);
        bytes[20] ^= 1;
        assert!(matches!(
            decode(&bytes, digests, 8192),
            Err(FrameError::HeaderDigest { .. })
        ));
    }

    #[test]
    fn oversized_data_segment_is_refused_before_it_arrives() {
        let bytes = sample(9000).to_bytes(Digests::default());
        let err = frame_length(&bytes[..BHS_LEN], Digests::default(), 8192).unwrap_err();
        assert!(matches!(
            err,
            FrameError::DataSegmentTooLong {
                length: 9000,
                limit: 8192,
                ..
            }
        ));
    }

    #[test]
    fn serial_numbers_wrap() {
        let near_max = SerialNumber(u32::MAX - 1);
        assert!(near_max.lt(SerialNumber(3)));
        assert!(SerialNumber(3).gt(near_max));
        assert!(SerialNumber(0).in_window(near_max, SerialNumber(5)));
        assert!(!SerialNumber(6).in_window(near_max, SerialNumber(5)));
    }

    #[test]
    fn crc32c_matches_rfc_3720_test_vector() {
        // RFC 3720 B.4: 32 bytes of zeros -> 0x8a9136aa (as a little-endian word on the wire: aa 36 91 8a).
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8a91_36aa);
    }
}
