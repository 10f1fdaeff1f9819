//! Wire formats of PERSISTENT RESERVE IN / OUT (SPC-4 6.13, 6.14) and iSCSI TransportIDs (SPC-4 7.6.4.6).
//!
//! Decoding checks everything checkable without the PR state, with the sense SPC-4 names: an unsupported service
//! action or type is INVALID FIELD IN CDB, a parameter list of the wrong length PARAMETER LIST LENGTH ERROR, a bad
//! TransportID INVALID FIELD IN PARAMETER LIST pointing at it.

use super::state::{Holder, PrState};
use super::{service_action, PrType, ServiceActionOut};
use crate::sense::{Condition, Sense};
use crate::Isid;

/// A decoded PERSISTENT RESERVE IN command (SPC-4 6.13.1 Table 163).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrIn {
    ReadKeys { allocation_length: u32 },
    ReadReservation { allocation_length: u32 },
    ReportCapabilities { allocation_length: u32 },
    ReadFullStatus { allocation_length: u32 },
}

impl PrIn {
    /// Decode the 10-byte CDB. An unknown service action is INVALID FIELD IN CDB at byte 1 bit 4 (SPC-4 4.2.1).
    pub(crate) fn parse(cdb: &[u8]) -> Result<PrIn, Sense> {
        let allocation_length = u16::from_be_bytes([cdb[7], cdb[8]]) as u32;
        Ok(match cdb[1] & 0x1F {
            service_action::READ_KEYS => PrIn::ReadKeys { allocation_length },
            service_action::READ_RESERVATION => PrIn::ReadReservation { allocation_length },
            service_action::REPORT_CAPABILITIES => PrIn::ReportCapabilities { allocation_length },
            service_action::READ_FULL_STATUS => PrIn::ReadFullStatus { allocation_length },
            _ => return Err(Sense::invalid_cdb_field(1, Some(4))),
        })
    }

    /// The ALLOCATION LENGTH field.
    pub fn allocation_length(&self) -> u32 {
        match *self {
            PrIn::ReadKeys { allocation_length }
            | PrIn::ReadReservation { allocation_length }
            | PrIn::ReportCapabilities { allocation_length }
            | PrIn::ReadFullStatus { allocation_length } => allocation_length,
        }
    }

    /// The parameter data, truncated to the allocation length (SPC-4 4.2.5.6; the length fields still count all).
    pub fn execute(self, state: &PrState, persistence_capable: bool) -> Vec<u8> {
        let (mut data, allocation_length) = match self {
            PrIn::ReadKeys { allocation_length } => (read_keys(state), allocation_length),
            PrIn::ReadReservation { allocation_length } => {
                (read_reservation(state), allocation_length)
            }
            PrIn::ReportCapabilities { allocation_length } => (
                report_capabilities(state, persistence_capable),
                allocation_length,
            ),
            PrIn::ReadFullStatus { allocation_length } => {
                (read_full_status(state), allocation_length)
            }
        };
        data.truncate(allocation_length as usize);
        data
    }
}

fn header(generation: u32, additional_length: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(8 + additional_length);
    data.extend_from_slice(&generation.to_be_bytes());
    data.extend_from_slice(&(additional_length as u32).to_be_bytes());
    data
}

/// READ KEYS (SPC-4 6.13.2 Table 165).
fn read_keys(state: &PrState) -> Vec<u8> {
    let mut data = header(state.generation, 8 * state.registrations.len());
    for registration in &state.registrations {
        data.extend_from_slice(&registration.key.to_be_bytes());
    }
    data
}

/// READ RESERVATION (SPC-4 6.13.3 Table 167): key 0 for all-registrants types; scope is always LU_SCOPE (0).
fn read_reservation(state: &PrState) -> Vec<u8> {
    let Some(reservation) = &state.reservation else {
        return header(state.generation, 0);
    };
    let mut data = header(state.generation, 16);
    data.extend_from_slice(&state.reservation_key().to_be_bytes());
    data.extend_from_slice(&[0; 4]);
    data.push(0);
    data.push(reservation.kind.code());
    data.extend_from_slice(&[0; 2]);
    data
}

/// REPORT CAPABILITIES (SPC-4 6.13.4 Table 170). CRH: SPC-3 5.6.3 handling of RESERVE/RELEASE; SIP_C, ATP_C:
/// SPEC_I_PT and ALL_TG_PT are supported; PTPL_C only when a persistence hook is installed. ALLOW COMMANDS 001b:
/// TEST UNIT READY is allowed through Write Exclusive and Exclusive Access reservations ([`super::conflict`]).
fn report_capabilities(state: &PrState, persistence_capable: bool) -> Vec<u8> {
    let mut data = vec![0u8; 8];
    data[1] = 8;
    data[2] = 0x10 | 0x08 | 0x04 | persistence_capable as u8;
    data[3] = 0x80 | (0b001 << 4) | state.aptpl as u8;
    // PERSISTENT RESERVATION TYPE MASK (Table 171): WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX; EX_AC_AR.
    data[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02;
    data[5] = 0x01;
    data
}

/// READ FULL STATUS (SPC-4 6.13.5 Tables 172/173): one descriptor per registration.
fn read_full_status(state: &PrState) -> Vec<u8> {
    let mut descriptors = Vec::new();
    for registration in &state.registrations {
        let holder = match state.reservation.as_ref().map(|r| &r.holder) {
            Some(Holder::AllRegistrants) => true,
            Some(Holder::Registration(id)) => *id == registration.id(),
            None => false,
        };
        let transport_id = TransportId {
            name: registration.initiator_name.clone(),
            isid: registration.isid,
            offset: 0,
        }
        .encode();
        descriptors.extend_from_slice(&registration.key.to_be_bytes());
        descriptors.extend_from_slice(&[0; 4]);
        descriptors.push((registration.relative_target_port.is_none() as u8) << 1 | holder as u8);
        descriptors.push(match (&state.reservation, holder) {
            (Some(reservation), true) => reservation.kind.code(),
            _ => 0,
        });
        descriptors.extend_from_slice(&[0; 4]);
        descriptors
            .extend_from_slice(&registration.relative_target_port.unwrap_or(0).to_be_bytes());
        descriptors.extend_from_slice(&(transport_id.len() as u32).to_be_bytes());
        descriptors.extend_from_slice(&transport_id);
    }
    let mut data = header(state.generation, descriptors.len());
    data.extend_from_slice(&descriptors);
    data
}

/// An iSCSI initiator port (format 01b: name and ISID) or initiator device (format 00b: name only) named by a
/// TransportID (SPC-4 7.6.4.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportId {
    pub name: String,
    pub isid: Option<Isid>,
    /// Byte offset of this TransportID in the parameter list, for field pointers.
    pub offset: u16,
}

/// PROTOCOL IDENTIFIER for iSCSI (SPC-4 7.6.1 Table 444).
const PROTOCOL_ISCSI: u8 = 0x5;
/// Byte offset of the ",i,0x" separator's hex digits count: 12 hex digits of ISID.
const ISID_SEPARATOR: &str = ",i,0x";

impl TransportId {
    /// Decode the TransportID at `offset` of `list`; returns it and its length. Errors: truncated ->
    /// PARAMETER LIST LENGTH ERROR; other protocol, format or malformed name -> INVALID FIELD IN PARAMETER LIST.
    pub fn parse(list: &[u8], offset: usize) -> Result<(TransportId, usize), Sense> {
        let field = |byte: usize, bit: Option<u8>| Sense::invalid_parameter_field(byte as u16, bit);
        let head = list
            .get(offset..offset + 4)
            .ok_or(Sense::new(Condition::ParameterListLengthError))?;
        if head[0] & 0x0F != PROTOCOL_ISCSI {
            return Err(field(offset, Some(3)));
        }
        let format = head[0] >> 6;
        if format > 1 || head[0] & 0x30 != 0 {
            return Err(field(offset, Some(7)));
        }
        let additional = u16::from_be_bytes([head[2], head[3]]) as usize;
        // SPC-4 7.6.4.6: ADDITIONAL LENGTH is a multiple of 4 and at least 20.
        if additional < 20 || !additional.is_multiple_of(4) {
            return Err(field(offset + 2, None));
        }
        let body = list
            .get(offset + 4..offset + 4 + additional)
            .ok_or(Sense::new(Condition::ParameterListLengthError))?;
        let end = body
            .iter()
            .position(|b| *b == 0)
            .ok_or(field(offset + 4, None))?;
        let text = std::str::from_utf8(&body[..end]).map_err(|_| field(offset + 4, None))?;
        let (name, isid) = match format {
            0 => (text, None),
            _ => {
                let at = text
                    .to_ascii_lowercase()
                    .find(ISID_SEPARATOR)
                    .ok_or(field(offset + 4, None))?;
                let hex = &text[at + ISID_SEPARATOR.len()..];
                (
                    &text[..at],
                    Some(parse_isid(hex).ok_or(field(offset + 4, None))?),
                )
            }
        };
        if name.is_empty() || name.contains(',') {
            return Err(field(offset + 4, None));
        }
        let id = TransportId {
            name: name.to_string(),
            isid,
            offset: offset as u16,
        };
        Ok((id, 4 + additional))
    }

    /// Encode as SPC-4 7.6.4.6 says: NUL-terminated, padded to a multiple of 4, at least 24 bytes in all.
    pub fn encode(&self) -> Vec<u8> {
        let text = match self.isid {
            Some(isid) => format!(
                "{}{ISID_SEPARATOR}{}",
                self.name,
                isid.0
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            ),
            None => self.name.clone(),
        };
        let mut body = text.into_bytes();
        body.push(0);
        while !body.len().is_multiple_of(4) || body.len() < 20 {
            body.push(0);
        }
        let mut data = vec![(self.isid.is_some() as u8) << 6 | PROTOCOL_ISCSI, 0];
        data.extend_from_slice(&(body.len() as u16).to_be_bytes());
        data.extend_from_slice(&body);
        data
    }
}

fn parse_isid(hex: &str) -> Option<Isid> {
    if hex.len() != 12 {
        return None;
    }
    let mut isid = [0u8; 6];
    for (i, byte) in isid.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(Isid(isid))
}

/// A decoded PERSISTENT RESERVE OUT: CDB (SPC-4 6.14.1) plus parameter list (6.14.3 Table 175, or 6.14.4 Table
/// 177 for REGISTER AND MOVE).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrOutCommand {
    pub action: ServiceActionOut,
    /// None when the service action ignores the TYPE field.
    pub kind: Option<PrType>,
    pub key: u64,
    pub service_action_key: u64,
    pub spec_i_pt: bool,
    pub all_tg_pt: bool,
    pub aptpl: bool,
    /// REGISTER AND MOVE: unregister the source.
    pub unreg: bool,
    /// REGISTER AND MOVE: the destination's relative target port identifier.
    pub relative_target_port: u16,
    /// SPEC_I_PT's TransportIDs, or REGISTER AND MOVE's one.
    pub transport_ids: Vec<TransportId>,
}

/// The CDB part of PERSISTENT RESERVE OUT, decoded by [`crate::cdb::Command::parse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrOutCdb {
    pub action: ServiceActionOut,
    pub kind: Option<PrType>,
    pub parameter_list_length: u32,
}

impl PrOutCdb {
    /// SPC-4 6.14.1: unknown service action -> INVALID FIELD IN CDB (byte 1); for RESERVE, RELEASE, PREEMPT and
    /// PREEMPT AND ABORT a scope other than LU_SCOPE or an unsupported type -> INVALID FIELD IN CDB (byte 2).
    pub(crate) fn parse(cdb: &[u8]) -> Result<PrOutCdb, Sense> {
        let action = ServiceActionOut::from_code(cdb[1] & 0x1F)
            .ok_or(Sense::invalid_cdb_field(1, Some(4)))?;
        let parameter_list_length = u32::from_be_bytes([cdb[5], cdb[6], cdb[7], cdb[8]]);
        let kind = if action.uses_type() {
            if cdb[2] >> 4 != 0 {
                return Err(Sense::invalid_cdb_field(2, Some(7)));
            }
            Some(PrType::from_code(cdb[2] & 0x0F).ok_or(Sense::invalid_cdb_field(2, Some(3)))?)
        } else {
            None
        };
        Ok(PrOutCdb {
            action,
            kind,
            parameter_list_length,
        })
    }

    /// Decode the parameter list (exactly `parameter_list_length` bytes, as the logical unit guarantees).
    pub fn with_parameters(self, list: &[u8]) -> Result<PrOutCommand, Sense> {
        let length_error = Sense::new(Condition::ParameterListLengthError);
        if list.len() < 24 {
            return Err(length_error);
        }
        let be64 = |at: usize| u64::from_be_bytes(list[at..at + 8].try_into().unwrap_or([0; 8]));
        let mut command = PrOutCommand {
            action: self.action,
            kind: self.kind,
            key: be64(0),
            service_action_key: be64(8),
            spec_i_pt: false,
            all_tg_pt: false,
            aptpl: false,
            unreg: false,
            relative_target_port: 0,
            transport_ids: Vec::new(),
        };
        if self.action == ServiceActionOut::RegisterAndMove {
            // SPC-4 6.14.4 (REGISTER AND MOVE parameter list): byte 16 reserved; byte 17 UNREG (bit 1), APTPL
            // (bit 0); 18..20 relative target port identifier; 20..24 TransportID parameter data length; 24.. the
            // TransportID. (sg_persist and LIO use the same layout.)
            command.unreg = list[17] & 0x02 != 0;
            command.aptpl = list[17] & 0x01 != 0;
            command.relative_target_port = u16::from_be_bytes([list[18], list[19]]);
            if command.relative_target_port == 0 {
                return Err(Sense::invalid_parameter_field(18, None));
            }
            let length = u32::from_be_bytes([list[20], list[21], list[22], list[23]]) as usize;
            if 24 + length > list.len() {
                return Err(length_error);
            }
            let (id, used) = TransportId::parse(&list[..24 + length], 24)?;
            if used > length {
                return Err(length_error);
            }
            command.transport_ids.push(id);
            return Ok(command);
        }
        command.spec_i_pt = list[20] & 0x08 != 0;
        command.all_tg_pt = list[20] & 0x04 != 0;
        command.aptpl = list[20] & 0x01 != 0;
        if !command.spec_i_pt {
            // SPC-4 6.14.3: without SPEC_I_PT the list is exactly 24 bytes.
            if list.len() != 24 {
                return Err(length_error);
            }
            return Ok(command);
        }
        if self.action != ServiceActionOut::Register {
            // SPC-4 6.14.3: SPEC_I_PT is valid only with REGISTER.
            return Err(Sense::invalid_parameter_field(20, Some(3)));
        }
        if list.len() < 28 {
            return Err(length_error);
        }
        let length = u32::from_be_bytes([list[24], list[25], list[26], list[27]]) as usize;
        if 28 + length != list.len() {
            return Err(length_error);
        }
        let mut at = 28;
        while at < list.len() {
            let (id, used) = TransportId::parse(list, at)?;
            command.transport_ids.push(id);
            at += used;
        }
        Ok(command)
    }
}
