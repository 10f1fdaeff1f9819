//! Typed views of each PDU kind (RFC 7143 11.3 - 11.19). Each struct holds the fields of one opcode;
//! `from_pdu` reads them from a [`Pdu`] (whose opcode the caller has already matched) and `to_pdu` builds one.
//! Byte offsets are the RFC's, named once here so no other module indexes a BHS by number.

use crate::pdu::{Opcode, Pdu};

/// The reserved ITT/TTT value 0xffffffff (RFC 7143 11.18.4, 11.19.1).
pub const RESERVED_TAG: u32 = 0xFFFF_FFFF;

// Offsets shared by several opcodes.
const TTT: usize = 20;
const CMD_SN: usize = 24;
const EXP_STAT_SN: usize = 28;
const STAT_SN: usize = 24;
const EXP_CMD_SN: usize = 28;
const MAX_CMD_SN: usize = 32;

/// The sequence numbers every target-to-initiator PDU carries (RFC 7143 11.4.3 ff.).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetSequence {
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

impl TargetSequence {
    fn write(&self, pdu: &mut Pdu) {
        pdu.set_u32_at(STAT_SN, self.stat_sn);
        pdu.set_u32_at(EXP_CMD_SN, self.exp_cmd_sn);
        pdu.set_u32_at(MAX_CMD_SN, self.max_cmd_sn);
    }

    fn read(pdu: &Pdu) -> Self {
        TargetSequence {
            stat_sn: pdu.u32_at(STAT_SN),
            exp_cmd_sn: pdu.u32_at(EXP_CMD_SN),
            max_cmd_sn: pdu.u32_at(MAX_CMD_SN),
        }
    }
}

/// SCSI Command (RFC 7143 11.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiCommand {
    pub immediate: bool,
    pub final_bit: bool,
    pub read: bool,
    pub write: bool,
    /// Task attribute, 3 bits (0 untagged, 1 simple, 2 ordered, 3 head of queue, 4 ACA).
    pub attribute: u8,
    pub lun: [u8; 8],
    pub itt: u32,
    pub expected_data_transfer_length: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    /// The CDB: the 16 bytes of the BHS, extended by an Extended CDB AHS (RFC 7143 11.2.2.3) when present.
    pub cdb: Vec<u8>,
    /// Immediate data.
    pub data: Vec<u8>,
}

/// AHS type of an Extended CDB (RFC 7143 11.2.2.3).
pub const AHS_EXTENDED_CDB: u8 = 1;
/// AHS type of an Expected Bidirectional Read Data Length (RFC 7143 11.2.2.4).
pub const AHS_BIDI_READ_LENGTH: u8 = 2;

impl ScsiCommand {
    /// Reads the command. A malformed AHS yields `Err` with a reason suitable for a Reject.
    pub fn from_pdu(pdu: &Pdu) -> Result<Self, &'static str> {
        let flags = pdu.bhs[1];
        let mut cdb = pdu.bhs[32..48].to_vec();
        let mut ahs = &pdu.ahs[..];
        while ahs.len() >= 4 {
            let length = u16::from_be_bytes([ahs[0], ahs[1]]) as usize;
            let kind = ahs[2];
            let padded_len = crate::pdu::padded(length + 3);
            if padded_len > ahs.len() {
                return Err("AHS length exceeds TotalAHSLength");
            }
            if kind == AHS_EXTENDED_CDB {
                if length < 1 {
                    return Err("empty extended CDB AHS");
                }
                cdb.extend_from_slice(&ahs[4..3 + length]);
            }
            ahs = &ahs[padded_len..];
        }
        Ok(ScsiCommand {
            immediate: pdu.immediate(),
            final_bit: flags & 0x80 != 0,
            read: flags & 0x40 != 0,
            write: flags & 0x20 != 0,
            attribute: flags & 0x07,
            lun: pdu.lun_field(),
            itt: pdu.itt(),
            expected_data_transfer_length: pdu.u32_at(20),
            cmd_sn: pdu.u32_at(CMD_SN),
            exp_stat_sn: pdu.u32_at(EXP_STAT_SN),
            cdb,
            data: pdu.data.clone(),
        })
    }

    pub fn to_pdu(&self) -> Pdu {
        let mut pdu = Pdu::new(Opcode::ScsiCommand);
        pdu.set_immediate(self.immediate);
        pdu.bhs[1] = (self.final_bit as u8) << 7
            | (self.read as u8) << 6
            | (self.write as u8) << 5
            | (self.attribute & 0x07);
        pdu.set_lun_field(self.lun);
        pdu.set_itt(self.itt);
        pdu.set_u32_at(20, self.expected_data_transfer_length);
        pdu.set_u32_at(CMD_SN, self.cmd_sn);
        pdu.set_u32_at(EXP_STAT_SN, self.exp_stat_sn);
        let head = self.cdb.len().min(16);
        pdu.bhs[32..32 + head].copy_from_slice(&self.cdb[..head]);
        if self.cdb.len() > 16 {
            let extra = &self.cdb[16..];
            let length = (extra.len() + 1) as u16;
            let mut ahs = length.to_be_bytes().to_vec();
            ahs.push(AHS_EXTENDED_CDB);
            ahs.push(0);
            ahs.extend_from_slice(extra);
            ahs.resize(crate::pdu::padded(ahs.len()), 0);
            pdu.ahs = ahs;
        }
        pdu.data = self.data.clone();
        pdu
    }
}

/// Residual flags and count of a SCSI Response or a final Data-In (RFC 7143 11.4.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Residual {
    #[default]
    None,
    /// O bit: the command wanted more than the expected data transfer length; count = bytes not transferred.
    Overflow(u32),
    /// U bit: less than the expected data transfer length was transferred; count = the shortfall.
    Underflow(u32),
}

impl Residual {
    /// The residual of a transfer that the command wanted to be `wanted` bytes long, against the initiator's
    /// expected data transfer length (RFC 7143 11.4.5.2).
    pub fn of(wanted: u32, expected: u32) -> Residual {
        match wanted.cmp(&expected) {
            std::cmp::Ordering::Greater => Residual::Overflow(wanted - expected),
            std::cmp::Ordering::Less => Residual::Underflow(expected - wanted),
            std::cmp::Ordering::Equal => Residual::None,
        }
    }

    /// (flag bits for byte 1 with O=0x04 and U=0x02, residual count).
    fn bits(self) -> (u8, u32) {
        match self {
            Residual::None => (0, 0),
            Residual::Overflow(count) => (0x04, count),
            Residual::Underflow(count) => (0x02, count),
        }
    }

    fn from_bits(flags: u8, count: u32) -> Residual {
        if flags & 0x04 != 0 {
            Residual::Overflow(count)
        } else if flags & 0x02 != 0 {
            Residual::Underflow(count)
        } else {
            Residual::None
        }
    }
}

/// SCSI Response (RFC 7143 11.4).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScsiResponse {
    /// iSCSI service response: 0x00 command completed at target, 0x01 target failure.
    pub response: u8,
    pub status: u8,
    pub residual: Residual,
    pub itt: u32,
    pub sequence: TargetSequence,
    pub exp_data_sn: u32,
    /// Sense data (without the 2-byte SenseLength prefix, which `to_pdu` adds).
    pub sense: Vec<u8>,
}

impl ScsiResponse {
    pub fn to_pdu(&self) -> Pdu {
        let mut pdu = Pdu::new(Opcode::ScsiResponse);
        let (bits, count) = self.residual.bits();
        pdu.bhs[1] = 0x80 | bits;
        pdu.bhs[2] = self.response;
        pdu.bhs[3] = self.status;
        pdu.set_itt(self.itt);
        self.sequence.write(&mut pdu);
        pdu.set_u32_at(36, self.exp_data_sn);
        pdu.set_u32_at(44, count);
        if !self.sense.is_empty() {
            let mut data = (self.sense.len() as u16).to_be_bytes().to_vec();
            data.extend_from_slice(&self.sense);
            pdu.data = data;
        }
        pdu
    }

    pub fn from_pdu(pdu: &Pdu) -> Self {
        let sense = if pdu.data.len() >= 2 {
            let length = u16::from_be_bytes([pdu.data[0], pdu.data[1]]) as usize;
            pdu.data[2..(2 + length).min(pdu.data.len())].to_vec()
        } else {
            Vec::new()
        };
        ScsiResponse {
            response: pdu.bhs[2],
            status: pdu.bhs[3],
            residual: Residual::from_bits(pdu.bhs[1], pdu.u32_at(44)),
            itt: pdu.itt(),
            sequence: TargetSequence::read(pdu),
            exp_data_sn: pdu.u32_at(36),
            sense,
        }
    }
}

/// SCSI Data-In (RFC 7143 11.7).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataIn {
    pub final_bit: bool,
    pub acknowledge: bool,
    /// S bit: this PDU carries the command's status (only with F).
    pub status: Option<u8>,
    pub residual: Residual,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    /// StatSN is meaningful only when `status` is set; ExpCmdSN/MaxCmdSN always.
    pub sequence: TargetSequence,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub data: Vec<u8>,
}

impl DataIn {
    pub fn to_pdu(&self) -> Pdu {
        let mut pdu = Pdu::new(Opcode::DataIn);
        let (bits, count) = self.residual.bits();
        pdu.bhs[1] = (self.final_bit as u8) << 7 | (self.acknowledge as u8) << 6;
        if let Some(status) = self.status {
            pdu.bhs[1] |= 0x01 | bits;
            pdu.bhs[3] = status;
            pdu.set_u32_at(44, count);
        }
        pdu.set_lun_field(self.lun);
        pdu.set_itt(self.itt);
        pdu.set_u32_at(TTT, self.ttt);
        self.sequence.write(&mut pdu);
        if self.status.is_none() {
            pdu.set_u32_at(STAT_SN, 0);
        }
        pdu.set_u32_at(36, self.data_sn);
        pdu.set_u32_at(40, self.buffer_offset);
        pdu.data = self.data.clone();
        pdu
    }

    pub fn from_pdu(pdu: &Pdu) -> Self {
        let flags = pdu.bhs[1];
        let has_status = flags & 0x01 != 0;
        DataIn {
            final_bit: flags & 0x80 != 0,
            acknowledge: flags & 0x40 != 0,
            status: has_status.then_some(pdu.bhs[3]),
            residual: if has_status {
                Residual::from_bits(flags, pdu.u32_at(44))
            } else {
                Residual::None
            },
            lun: pdu.lun_field(),
            itt: pdu.itt(),
            ttt: pdu.u32_at(TTT),
            sequence: TargetSequence::read(pdu),
            data_sn: pdu.u32_at(36),
            buffer_offset: pdu.u32_at(40),
            data: pdu.data.clone(),
        }
    }
}

/// SCSI Data-Out (RFC 7143 11.7).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataOut {
    pub final_bit: bool,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub data: Vec<u8>,
}

impl DataOut {
    pub fn to_pdu(&self) -> Pdu {
        let mut pdu = Pdu::new(Opcode::DataOut);
        pdu.set_final(self.final_bit);
        pdu.set_lun_field(self.lun);
        pdu.set_itt(self.itt);
        pdu.set_u32_at(TTT, self.ttt);
        pdu.set_u32_at(EXP_STAT_SN, self.exp_stat_sn);
        pdu.set_u32_at(36, self.data_sn);
        pdu.set_u32_at(40, self.buffer_offset);
        pdu.data = self.data.clone();
        pdu
    }

    /// Reads the header fields; takes the data out of the PDU to avoid a copy on the write path.
    pub fn from_pdu(mut pdu: Pdu) -> Self {
        DataOut {
            final_bit: pdu.final_bit(),
            lun: pdu.lun_field(),
            itt: pdu.itt(),
            ttt: pdu.u32_at(TTT),
            exp_stat_sn: pdu.u32_at(EXP_STAT_SN),
            data_sn: pdu.u32_at(36),
            buffer_offset: pdu.u32_at(40),
            data: std::mem::take(&mut pdu.data),
        }
    }
}

/// Ready To Transfer (RFC 7143 11.8).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadyToTransfer {
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub sequence: TargetSequence,
    pub r2t_sn: u32,
    pub buffer_offset: u32,
    pub desired_length: u32,
}

impl ReadyToTransfer {
    pub fn to_pdu(&self) -> Pdu {
        let mut pdu = Pdu::new(Opcode::ReadyToTransfer);
        pdu.set_final(true);
        pdu.set_lun_field(self.lun);
        pdu.set_itt(self.itt);
        pdu.set_u32_at(TTT, self.ttt);
        self.sequence.write(&mut pdu);
        pdu.set_u32_at(36, self.r2t_sn);
        pdu.set_u32_at(40, self.buffer_offset);
        pdu.set_u32_at(44, self.desired_length);
        pdu
    }

    pub fn from_pdu(pdu: &Pdu) -> Self {
        ReadyToTransfer {
            lun: pdu.lun_field(),
            itt: pdu.itt(),
            ttt: pdu.u32_at(TTT),
            sequence: TargetSequence::read(pdu),
            r2t_sn: pdu.u32_at(36),
            buffer_offset: pdu.u32_at(40),
            desired_length: pdu.u32_at(44),
        }
    }
}

/// NOP-Out (RFC 7143 11.18).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub data: Vec<u8>,
}

impl NopOut {
    pub fn to_pdu(&self) -> Pdu {
        let mut pdu = Pdu::new(Opcode::NopOut);
        pdu.set_immediate(self.immediate);
        pdu.set_final(true);
        pdu.set_lun_field(self.lun);
        pdu.set_itt(self.itt);
        pdu.set_u32_at(TTT, self.ttt);
        pdu.set_u32_at(CMD_SN, self.cmd_sn);
        pdu.set_u32_at(EXP_STAT_SN, self.exp_stat_sn);
        pdu.data = self.data.clone();
        pdu
    }

    pub fn from_pdu(pdu: &Pdu) -> Self {
        NopOut {
            immediate: pdu.immediate(),
            lun: pdu.lun_field(),
            itt: pdu.itt(),
            ttt: pdu.u32_at(TTT),
            cmd_sn: pdu.u32_at(CMD_SN),
            exp_stat_sn: pdu.u32_at(EXP_STAT_SN),
            data: pdu.data.clone(),
        }
    }
}

/// NOP-In (RFC 7143 11.19).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NopIn {
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub sequence: TargetSequence,
    pub data: Vec<u8>,
}

impl NopIn {
    pub fn to_pdu(&self) -> Pdu {
        let mut pdu = Pdu::new(Opcode::NopIn);
        pdu.set_final(true);
        pdu.set_lun_field(self.lun);
        pdu.set_itt(self.itt);
        pdu.set_u32_at(TTT, self.ttt);
        self.sequence.write(&mut pdu);
        pdu.data = self.data.clone();
        pdu
    }

    pub fn from_pdu(pdu: &Pdu) -> Self {
        NopIn {
            lun: pdu.lun_field(),
            itt: pdu.itt(),
            ttt: pdu.u32_at(TTT),
            sequence: TargetSequence::read(pdu),
            data: pdu.data.clone(),
        }
    }
}

/// Login stages (RFC 7143 11.12.3): CSG and NSG values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum LoginStage {
    Security = 0,
    Operational = 1,
    FullFeature = 3,
}

impl LoginStage {
    pub fn from_code(code: u8) -> Option<LoginStage> {
        match code {
            0 => Some(LoginStage::Security),
            1 => Some(LoginStage::Operational),
            3 => Some(LoginStage::FullFeature),
            _ => None,
        }
    }
}

/// Login Request (RFC 7143 11.12).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoginRequest {
    pub transit: bool,
    pub continue_bit: bool,
    /// Raw CSG and NSG codes (see [`LoginStage::from_code`]); 2 is reserved.
    pub current_stage: u8,
    pub next_stage: u8,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub data: Vec<u8>,
}

impl LoginRequest {
    pub fn to_pdu(&self) -> Pdu {
        let mut pdu = Pdu::new(Opcode::LoginRequest);
        pdu.set_immediate(true);
        pdu.bhs[1] = stage_flags(
            self.transit,
            self.continue_bit,
            self.current_stage,
            self.next_stage,
        );
        pdu.bhs[2] = self.version_max;
        pdu.bhs[3] = self.version_min;
        pdu.bhs[8..14].copy_from_slice(&self.isid);
        pdu.set_u16_at(14, self.tsih);
        pdu.set_itt(self.itt);
        pdu.set_u16_at(20, self.cid);
        pdu.set_u32_at(CMD_SN, self.cmd_sn);
        pdu.set_u32_at(EXP_STAT_SN, self.exp_stat_sn);
        pdu.data = self.data.clone();
        pdu
    }

    pub fn from_pdu(pdu: &Pdu) -> Self {
        let flags = pdu.bhs[1];
        LoginRequest {
            transit: flags & 0x80 != 0,
            continue_bit: flags & 0x40 != 0,
            current_stage: (flags >> 2) & 0x03,
            next_stage: flags & 0x03,
            version_max: pdu.bhs[2],
            version_min: pdu.bhs[3],
            isid: pdu.bhs[8..14].try_into().expect("6-byte slice"),
            tsih: pdu.u16_at(14),
            itt: pdu.itt(),
            cid: pdu.u16_at(20),
            cmd_sn: pdu.u32_at(CMD_SN),
            exp_stat_sn: pdu.u32_at(EXP_STAT_SN),
            data: pdu.data.clone(),
        }
    }
}

fn stage_flags(transit: bool, continue_bit: bool, current: u8, next: u8) -> u8 {
    (transit as u8) << 7 | (continue_bit as u8) << 6 | (current & 0x03) << 2 | (next & 0x03)
}

/// Login Response (RFC 7143 11.13).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoginResponse {
    pub transit: bool,
    pub continue_bit: bool,
    pub current_stage: u8,
    pub next_stage: u8,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub sequence: TargetSequence,
    /// Status-Class and Status-Detail (RFC 7143 11.13.5).
    pub status_class: u8,
    pub status_detail: u8,
    pub data: Vec<u8>,
}

impl LoginResponse {
    pub fn to_pdu(&self) -> Pdu {
        let mut pdu = Pdu::new(Opcode::LoginResponse);
        pdu.bhs[1] = stage_flags(
            self.transit,
            self.continue_bit,
            self.current_stage,
            self.next_stage,
        );
        pdu.bhs[2] = self.version_max;
        pdu.bhs[3] = self.version_active;
        pdu.bhs[8..14].copy_from_slice(&self.isid);
        pdu.set_u16_at(14, self.tsih);
        pdu.set_itt(self.itt);
        self.sequence.write(&mut pdu);
        pdu.bhs[36] = self.status_class;
        pdu.bhs[37] = self.status_detail;
        pdu.data = self.data.clone();
        pdu
    }

    pub fn from_pdu(pdu: &Pdu) -> Self {
        let flags = pdu.bhs[1];
        LoginResponse {
            transit: flags & 0x80 != 0,
            continue_bit: flags & 0x40 != 0,
            current_stage: (flags >> 2) & 0x03,
            next_stage: flags & 0x03,
            version_max: pdu.bhs[2],
            version_active: pdu.bhs[3],
            isid: pdu.bhs[8..14].try_into().expect("6-byte slice"),
            tsih: pdu.u16_at(14),
            itt: pdu.itt(),
            sequence: TargetSequence::read(pdu),
            status_class: pdu.bhs[36],
            status_detail: pdu.bhs[37],
            data: pdu.data.clone(),
        }
    }
}

/// Text Request (RFC 7143 11.10).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextRequest {
    pub immediate: bool,
    pub final_bit: bool,
    pub continue_bit: bool,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub data: Vec<u8>,
}

impl TextRequest {
    pub fn to_pdu(&self) -> Pdu {
        let mut pdu = Pdu::new(Opcode::TextRequest);
        pdu.set_immediate(self.immediate);
        pdu.bhs[1] = (self.final_bit as u8) << 7 | (self.continue_bit as u8) << 6;
        pdu.set_lun_field(self.lun);
        pdu.set_itt(self.itt);
        pdu.set_u32_at(TTT, self.ttt);
        pdu.set_u32_at(CMD_SN, self.cmd_sn);
        pdu.set_u32_at(EXP_STAT_SN, self.exp_stat_sn);
        pdu.data = self.data.clone();
        pdu
    }

    pub fn from_pdu(pdu: &Pdu) -> Self {
        TextRequest {
            immediate: pdu.immediate(),
            final_bit: pdu.bhs[1] & 0x80 != 0,
            continue_bit: pdu.bhs[1] & 0x40 != 0,
            lun: pdu.lun_field(),
            itt: pdu.itt(),
            ttt: pdu.u32_at(TTT),
            cmd_sn: pdu.u32_at(CMD_SN),
            exp_stat_sn: pdu.u32_at(EXP_STAT_SN),
            data: pdu.data.clone(),
        }
    }
}

/// Text Response (RFC 7143 11.11).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextResponse {
    pub final_bit: bool,
    pub continue_bit: bool,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub sequence: TargetSequence,
    pub data: Vec<u8>,
}

impl TextResponse {
    pub fn to_pdu(&self) -> Pdu {
        let mut pdu = Pdu::new(Opcode::TextResponse);
        pdu.bhs[1] = (self.final_bit as u8) << 7 | (self.continue_bit as u8) << 6;
        pdu.set_lun_field(self.lun);
        pdu.set_itt(self.itt);
        pdu.set_u32_at(TTT, self.ttt);
        self.sequence.write(&mut pdu);
        pdu.data = self.data.clone();
        pdu
    }

    pub fn from_pdu(pdu: &Pdu) -> Self {
        TextResponse {
            final_bit: pdu.bhs[1] & 0x80 != 0,
            continue_bit: pdu.bhs[1] & 0x40 != 0,
            lun: pdu.lun_field(),
            itt: pdu.itt(),
            ttt: pdu.u32_at(TTT),
            sequence: TargetSequence::read(pdu),
            data: pdu.data.clone(),
        }
    }
}

/// Logout Request (RFC 7143 11.14). Reason: 0 close session, 1 close connection, 2 remove connection for recovery.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogoutRequest {
    pub immediate: bool,
    pub reason: u8,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

impl LogoutRequest {
    pub fn to_pdu(&self) -> Pdu {
        let mut pdu = Pdu::new(Opcode::LogoutRequest);
        pdu.set_immediate(self.immediate);
        pdu.bhs[1] = 0x80 | (self.reason & 0x7F);
        pdu.set_itt(self.itt);
        pdu.set_u16_at(20, self.cid);
        pdu.set_u32_at(CMD_SN, self.cmd_sn);
        pdu.set_u32_at(EXP_STAT_SN, self.exp_stat_sn);
        pdu
    }

    pub fn from_pdu(pdu: &Pdu) -> Self {
        LogoutRequest {
            immediate: pdu.immediate(),
            reason: pdu.bhs[1] & 0x7F,
            itt: pdu.itt(),
            cid: pdu.u16_at(20),
            cmd_sn: pdu.u32_at(CMD_SN),
            exp_stat_sn: pdu.u32_at(EXP_STAT_SN),
        }
    }
}

/// Logout Response (RFC 7143 11.15).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogoutResponse {
    pub response: u8,
    pub itt: u32,
    pub sequence: TargetSequence,
    pub time2wait: u16,
    pub time2retain: u16,
}

impl LogoutResponse {
    pub fn to_pdu(&self) -> Pdu {
        let mut pdu = Pdu::new(Opcode::LogoutResponse);
        pdu.set_final(true);
        pdu.bhs[2] = self.response;
        pdu.set_itt(self.itt);
        self.sequence.write(&mut pdu);
        pdu.set_u16_at(40, self.time2wait);
        pdu.set_u16_at(42, self.time2retain);
        pdu
    }

    pub fn from_pdu(pdu: &Pdu) -> Self {
        LogoutResponse {
            response: pdu.bhs[2],
            itt: pdu.itt(),
            sequence: TargetSequence::read(pdu),
            time2wait: pdu.u16_at(40),
            time2retain: pdu.u16_at(42),
        }
    }
}

/// Task management function codes (RFC 7143 11.5.1).
pub mod tmf {
    pub const ABORT_TASK: u8 = 1;
    pub const ABORT_TASK_SET: u8 = 2;
    pub const CLEAR_ACA: u8 = 3;
    pub const CLEAR_TASK_SET: u8 = 4;
    pub const LOGICAL_UNIT_RESET: u8 = 5;
    pub const TARGET_WARM_RESET: u8 = 6;
    pub const TARGET_COLD_RESET: u8 = 7;
    pub const TASK_REASSIGN: u8 = 8;
    // SAM-5 additions carried by iSCSI (RFC 7143 11.5.1): QUERY TASK etc. are not defined for iSCSI; I_T NEXUS
    // RESET has no iSCSI function code in RFC 7143 and is reached through session reinstatement or logout.

    /// TMF responses (RFC 7143 11.6.1).
    pub const FUNCTION_COMPLETE: u8 = 0;
    pub const TASK_DOES_NOT_EXIST: u8 = 1;
    pub const LUN_DOES_NOT_EXIST: u8 = 2;
    pub const TASK_STILL_ALLEGIANT: u8 = 3;
    pub const TASK_REASSIGNMENT_NOT_SUPPORTED: u8 = 4;
    pub const FUNCTION_NOT_SUPPORTED: u8 = 5;
    pub const AUTHORIZATION_FAILED: u8 = 6;
    pub const FUNCTION_REJECTED: u8 = 255;
}

/// Task Management Function Request (RFC 7143 11.5).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskManagementRequest {
    pub immediate: bool,
    pub function: u8,
    pub lun: [u8; 8],
    pub itt: u32,
    pub referenced_task_tag: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub ref_cmd_sn: u32,
    pub exp_data_sn: u32,
}

impl TaskManagementRequest {
    pub fn to_pdu(&self) -> Pdu {
        let mut pdu = Pdu::new(Opcode::TaskManagementRequest);
        pdu.set_immediate(self.immediate);
        pdu.bhs[1] = 0x80 | (self.function & 0x7F);
        pdu.set_lun_field(self.lun);
        pdu.set_itt(self.itt);
        pdu.set_u32_at(20, self.referenced_task_tag);
        pdu.set_u32_at(CMD_SN, self.cmd_sn);
        pdu.set_u32_at(EXP_STAT_SN, self.exp_stat_sn);
        pdu.set_u32_at(32, self.ref_cmd_sn);
        pdu.set_u32_at(36, self.exp_data_sn);
        pdu
    }

    pub fn from_pdu(pdu: &Pdu) -> Self {
        TaskManagementRequest {
            immediate: pdu.immediate(),
            function: pdu.bhs[1] & 0x7F,
            lun: pdu.lun_field(),
            itt: pdu.itt(),
            referenced_task_tag: pdu.u32_at(20),
            cmd_sn: pdu.u32_at(CMD_SN),
            exp_stat_sn: pdu.u32_at(EXP_STAT_SN),
            ref_cmd_sn: pdu.u32_at(32),
            exp_data_sn: pdu.u32_at(36),
        }
    }
}

/// Task Management Function Response (RFC 7143 11.6).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskManagementResponse {
    pub response: u8,
    pub itt: u32,
    pub sequence: TargetSequence,
}

impl TaskManagementResponse {
    pub fn to_pdu(&self) -> Pdu {
        let mut pdu = Pdu::new(Opcode::TaskManagementResponse);
        pdu.set_final(true);
        pdu.bhs[2] = self.response;
        pdu.set_itt(self.itt);
        self.sequence.write(&mut pdu);
        pdu
    }

    pub fn from_pdu(pdu: &Pdu) -> Self {
        TaskManagementResponse {
            response: pdu.bhs[2],
            itt: pdu.itt(),
            sequence: TargetSequence::read(pdu),
        }
    }
}

/// Reject reasons (RFC 7143 11.17.1).
pub mod reject {
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const IMMEDIATE_COMMAND_REJECT: u8 = 0x06;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_DATA_ACK: u8 = 0x08;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    pub const LONG_OPERATION_REJECT: u8 = 0x0A;
    pub const DEPRECATED_NEGOTIATION_RESET: u8 = 0x0B;
    pub const WAITING_FOR_LOGOUT: u8 = 0x0C;
}

/// Reject (RFC 7143 11.17): carries the complete header of the rejected PDU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reject {
    pub reason: u8,
    pub sequence: TargetSequence,
    pub data_sn_or_r2t_sn: u32,
    pub rejected_header: Vec<u8>,
}

impl Reject {
    pub fn to_pdu(&self) -> Pdu {
        let mut pdu = Pdu::new(Opcode::Reject);
        pdu.set_final(true);
        pdu.bhs[2] = self.reason;
        pdu.set_itt(RESERVED_TAG);
        self.sequence.write(&mut pdu);
        pdu.set_u32_at(36, self.data_sn_or_r2t_sn);
        pdu.data = self.rejected_header.clone();
        pdu
    }

    pub fn from_pdu(pdu: &Pdu) -> Self {
        Reject {
            reason: pdu.bhs[2],
            sequence: TargetSequence::read(pdu),
            data_sn_or_r2t_sn: pdu.u32_at(36),
            rejected_header: pdu.data.clone(),
        }
    }
}

/// Asynchronous Message (RFC 7143 11.9).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AsyncMessage {
    pub lun: [u8; 8],
    pub sequence: TargetSequence,
    /// 0 SCSI async event, 1 target requests logout, 2 connection drop, 3 all connections drop, 4 renegotiate.
    pub event: u8,
    pub vendor_code: u8,
    pub parameter1: u16,
    pub parameter2: u16,
    pub parameter3: u16,
    pub data: Vec<u8>,
}

impl AsyncMessage {
    pub fn to_pdu(&self) -> Pdu {
        let mut pdu = Pdu::new(Opcode::AsyncMessage);
        pdu.set_final(true);
        pdu.set_lun_field(self.lun);
        pdu.set_itt(RESERVED_TAG);
        self.sequence.write(&mut pdu);
        pdu.bhs[36] = self.event;
        pdu.bhs[37] = self.vendor_code;
        pdu.set_u16_at(38, self.parameter1);
        pdu.set_u16_at(40, self.parameter2);
        pdu.set_u16_at(42, self.parameter3);
        pdu.data = self.data.clone();
        pdu
    }

    pub fn from_pdu(pdu: &Pdu) -> Self {
        AsyncMessage {
            lun: pdu.lun_field(),
            sequence: TargetSequence::read(pdu),
            event: pdu.bhs[36],
            vendor_code: pdu.bhs[37],
            parameter1: pdu.u16_at(38),
            parameter2: pdu.u16_at(40),
            parameter3: pdu.u16_at(42),
            data: pdu.data.clone(),
        }
    }
}

/// Encodes a LUN number in the 8-byte LUN field (SAM-5 4.7.3): peripheral addressing below 256, flat space
/// addressing up to 16383.
pub fn encode_lun(lun: u64) -> [u8; 8] {
    let mut field = [0u8; 8];
    if lun < 256 {
        field[1] = lun as u8;
    } else {
        let lun = (lun & 0x3FFF) as u16;
        field[0] = 0x40 | (lun >> 8) as u8;
        field[1] = lun as u8;
    }
    field
}

/// Decodes the first level of an 8-byte LUN field (SAM-5 4.7.3): peripheral and flat space addressing. Returns
/// None for other address methods or a LUN with further levels, which lunlock never reports.
pub fn decode_lun(field: [u8; 8]) -> Option<u64> {
    if field[2..].iter().any(|&b| b != 0) {
        return None;
    }
    match field[0] >> 6 {
        0b00 if field[0] == 0 => Some(field[1] as u64),
        0b01 => Some((((field[0] & 0x3F) as u64) << 8) | field[1] as u64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scsi_command_round_trip_with_extended_cdb() {
        let command = ScsiCommand {
            immediate: false,
            final_bit: true,
            read: true,
            write: false,
            attribute: 1,
            lun: encode_lun(3),
            itt: 9,
            expected_data_transfer_length: 4096,
            cmd_sn: 100,
            exp_stat_sn: 5,
            cdb: (0..32).collect(),
            data: vec![],
        };
        let pdu = command.to_pdu();
        assert_eq!(pdu.ahs.len() % 4, 0);
        assert_eq!(ScsiCommand::from_pdu(&pdu).unwrap(), command);
    }

    #[test]
    fn response_carries_sense_and_residual() {
        let response = ScsiResponse {
            status: 2,
            residual: Residual::Underflow(512),
            itt: 4,
            sense: vec![0x70, 0, 5],
            ..Default::default()
        };
        let pdu = response.to_pdu();
        assert_eq!(pdu.bhs[1], 0x82);
        assert_eq!(ScsiResponse::from_pdu(&pdu), response);
    }

    #[test]
    fn residual_direction() {
        assert_eq!(Residual::of(4096, 512), Residual::Overflow(3584));
        assert_eq!(Residual::of(512, 4096), Residual::Underflow(3584));
        assert_eq!(Residual::of(512, 512), Residual::None);
    }

    #[test]
    fn lun_encoding_round_trips() {
        for lun in [0, 1, 255, 256, 16383] {
            assert_eq!(decode_lun(encode_lun(lun)), Some(lun));
        }
        assert_eq!(decode_lun([0xC0, 0, 0, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn login_request_round_trip() {
        let request = LoginRequest {
            transit: true,
            current_stage: 1,
            next_stage: 3,
            isid: [0x80, 1, 2, 3, 4, 5],
            itt: 1,
            cid: 1,
            data: b"A=1\0".to_vec(),
            ..Default::default()
        };
        let pdu = request.to_pdu();
        assert!(pdu.immediate());
        assert_eq!(LoginRequest::from_pdu(&pdu), request);
    }
}
