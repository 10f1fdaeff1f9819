//! PERSISTENT RESERVE IN and OUT from the initiator's side: CDB builders, parameter-list encoders and response
//! decoders (SPC-4 6.13 PERSISTENT RESERVE IN, 6.14 PERSISTENT RESERVE OUT, 7.6.4 TransportID).
//!
//! Everything here is pure bytes in, bytes out, so the `lunlock persist` client and the lock manager share one
//! encoding. Decoders never trust the target's lengths: a descriptor that runs past the returned data is an error,
//! and lists are cut at what was actually returned (the target truncates to the allocation length, SPC-4 4.2.5.6).

use lunlock_scsi::cdb::Command;
use lunlock_scsi::pr::wire::PrOutCdb;
use lunlock_scsi::pr::{PrIn, ServiceActionOut};
use std::fmt;

/// The protocol identifier of iSCSI in a TransportID (SPC-4 Table 362).
pub const PROTOCOL_ISCSI: u8 = 0x5;
/// The shortest TransportID (SPC-4 7.6.4.1): every format is at least 24 bytes.
pub const TRANSPORT_ID_MIN_BYTES: usize = 24;
/// The longest iSCSI name a TransportID carries: 223 bytes of name (RFC 7143 6.1) plus the ",i,0x" ISID suffix fits.
pub const TRANSPORT_ID_MAX_BYTES: usize = 256;

/// A reservation key (SPC-4 5.12.3): 8 bytes, 0 meaning "none".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReservationKey(pub u64);

impl fmt::Display for ReservationKey {
    /// The form sg_persist prints: `0x` and lower-case hex without leading zeros.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// PERSISTENT RESERVE IN service actions (SPC-4 Table 164).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrInAction {
    ReadKeys = 0x0,
    ReadReservation = 0x1,
    ReportCapabilities = 0x2,
    ReadFullStatus = 0x3,
}

impl PrInAction {
    /// The names sg_persist uses in its messages.
    pub fn name(self) -> &'static str {
        match self {
            PrInAction::ReadKeys => "Read keys",
            PrInAction::ReadReservation => "Read reservation",
            PrInAction::ReportCapabilities => "Report capabilities",
            PrInAction::ReadFullStatus => "Read full status",
        }
    }
}

/// PERSISTENT RESERVE OUT service actions (SPC-4 Table 172).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrOutAction {
    Register = 0x0,
    Reserve = 0x1,
    Release = 0x2,
    Clear = 0x3,
    Preempt = 0x4,
    PreemptAndAbort = 0x5,
    RegisterAndIgnoreExistingKey = 0x6,
    RegisterAndMove = 0x7,
}

impl PrOutAction {
    /// The names sg_persist uses in its messages.
    pub fn name(self) -> &'static str {
        match self {
            PrOutAction::Register => "Register",
            PrOutAction::Reserve => "Reserve",
            PrOutAction::Release => "Release",
            PrOutAction::Clear => "Clear",
            PrOutAction::Preempt => "Preempt",
            PrOutAction::PreemptAndAbort => "Preempt and abort",
            PrOutAction::RegisterAndIgnoreExistingKey => "Register and ignore existing key",
            PrOutAction::RegisterAndMove => "Register and move",
        }
    }
}

/// The TYPE field (SPC-4 Table 169). Any 4-bit value can be sent (a target must reject the reserved ones), so this
/// is a newtype over the raw value rather than an enum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrType(pub u8);

impl PrType {
    pub const WRITE_EXCLUSIVE: PrType = PrType(1);
    pub const EXCLUSIVE_ACCESS: PrType = PrType(3);
    pub const WRITE_EXCLUSIVE_REGISTRANTS_ONLY: PrType = PrType(5);
    pub const EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: PrType = PrType(6);
    pub const WRITE_EXCLUSIVE_ALL_REGISTRANTS: PrType = PrType(7);
    pub const EXCLUSIVE_ACCESS_ALL_REGISTRANTS: PrType = PrType(8);

    /// sg_persist's name for the type.
    pub fn name(self) -> String {
        match self.0 {
            1 => "Write Exclusive".into(),
            3 => "Exclusive Access".into(),
            5 => "Write Exclusive, registrants only".into(),
            6 => "Exclusive Access, registrants only".into(),
            7 => "Write Exclusive, all registrants".into(),
            8 => "Exclusive Access, all registrants".into(),
            other if other < 10 => format!("obsolete [{other}]"),
            other => format!("obsolete [{other:#x}]"),
        }
    }
}

/// The 10-byte PERSISTENT RESERVE IN CDB (SPC-4 Table 163), encoded by `lunlock_scsi`'s command registry.
pub fn prin_cdb(action: PrInAction, allocation_length: u16) -> Vec<u8> {
    let allocation_length = allocation_length as u32;
    Command::PersistentReserveIn(match action {
        PrInAction::ReadKeys => PrIn::ReadKeys { allocation_length },
        PrInAction::ReadReservation => PrIn::ReadReservation { allocation_length },
        PrInAction::ReportCapabilities => PrIn::ReportCapabilities { allocation_length },
        PrInAction::ReadFullStatus => PrIn::ReadFullStatus { allocation_length },
    })
    .encode()
}

/// The 10-byte PERSISTENT RESERVE OUT CDB (SPC-4 Table 171), encoded by `lunlock_scsi`'s command registry. SCOPE
/// is always LU_SCOPE (0), the only scope SPC-4 still defines. The TYPE is written as given, for every service
/// action: a client may send any 4-bit type, including the reserved ones a target must refuse, which the
/// target's own `Command` cannot hold.
pub fn prout_cdb(action: PrOutAction, pr_type: PrType, parameter_list_length: u32) -> Vec<u8> {
    let action = match action {
        PrOutAction::Register => ServiceActionOut::Register,
        PrOutAction::Reserve => ServiceActionOut::Reserve,
        PrOutAction::Release => ServiceActionOut::Release,
        PrOutAction::Clear => ServiceActionOut::Clear,
        PrOutAction::Preempt => ServiceActionOut::Preempt,
        PrOutAction::PreemptAndAbort => ServiceActionOut::PreemptAndAbort,
        PrOutAction::RegisterAndIgnoreExistingKey => ServiceActionOut::RegisterAndIgnoreExistingKey,
        PrOutAction::RegisterAndMove => ServiceActionOut::RegisterAndMove,
    };
    let mut cdb = Command::PersistentReserveOut(PrOutCdb {
        action,
        kind: None,
        parameter_list_length,
    })
    .encode();
    // SPC-4 6.14.1 Table 171: byte 2 is SCOPE (7..4) and TYPE (3..0).
    cdb[2] = pr_type.0 & 0x0F;
    cdb
}

/// Why a TransportID or a response could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrError {
    /// A TransportID given as text that is neither an iSCSI name nor hex bytes.
    BadTransportId(String),
    /// The response is shorter than its own header or a descriptor says.
    Truncated {
        what: &'static str,
        needed: usize,
        got: usize,
    },
    /// The response contradicts the standard (e.g. REPORT CAPABILITIES with a LENGTH other than 8).
    Malformed(String),
}

impl fmt::Display for PrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrError::BadTransportId(why) => write!(f, "bad TransportID: {why}"),
            PrError::Truncated { what, needed, got } => {
                write!(f, "{what}: needs {needed} bytes, got {got}")
            }
            PrError::Malformed(why) => write!(f, "malformed response: {why}"),
        }
    }
}

impl std::error::Error for PrError {}

/// A TransportID (SPC-4 7.6.4) as bytes, padded as the standard requires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportId(Vec<u8>);

impl TransportId {
    /// An iSCSI TransportID (SPC-4 7.6.4.6): format 00 carries the initiator name (an initiator device), format 01
    /// the name, ",i,0x" and the ISID in hex (one initiator port). The name is NUL-terminated and padded to a
    /// multiple of 4 bytes, at least 20 (so the whole TransportID is at least 24 bytes).
    pub fn iscsi(name: &str, isid: Option<[u8; 6]>) -> Result<TransportId, PrError> {
        let text = match isid {
            Some(isid) => format!("{name},i,0x{}", hex(&isid)),
            None => name.to_string(),
        };
        Self::iscsi_text(&text, isid.is_some())
    }

    fn iscsi_text(text: &str, with_isid: bool) -> Result<TransportId, PrError> {
        if text.is_empty() || text.bytes().any(|b| b == 0 || b.is_ascii_whitespace()) {
            return Err(PrError::BadTransportId(format!(
                "iSCSI name {text:?} is empty or has spaces"
            )));
        }
        let padded = (text.len() + 1).max(20).next_multiple_of(4);
        if 4 + padded > TRANSPORT_ID_MAX_BYTES {
            return Err(PrError::BadTransportId(format!(
                "iSCSI name too long ({} bytes)",
                text.len()
            )));
        }
        let mut bytes = vec![0u8; 4 + padded];
        bytes[0] = PROTOCOL_ISCSI | if with_isid { 0x40 } else { 0 };
        bytes[2..4].copy_from_slice(&(padded as u16).to_be_bytes());
        bytes[4..4 + text.len()].copy_from_slice(text.as_bytes());
        Ok(TransportId(bytes))
    }

    /// sg_persist's command-line forms: `iqn.…` (format 00), `iqn.…,i,0x<isid>` (format 01), or hex bytes separated
    /// by commas or spaces (short lists are padded with zeros to 24 bytes).
    pub fn parse(text: &str) -> Result<TransportId, PrError> {
        if text.starts_with("iqn.") || text.starts_with("eui.") || text.starts_with("naa.") {
            return Self::iscsi_text(text, text.contains(",i,0x"));
        }
        let mut bytes = Vec::new();
        for (index, item) in text
            .split([',', ' '])
            .filter(|item| !item.is_empty())
            .enumerate()
        {
            let digits = item.trim_start_matches("0x").trim_start_matches("0X");
            let byte = u8::from_str_radix(digits, 16).map_err(|_| {
                PrError::BadTransportId(format!("item {} ({item:?}) is not a hex byte", index + 1))
            })?;
            bytes.push(byte);
        }
        if bytes.is_empty() {
            return Err(PrError::BadTransportId("no bytes given".into()));
        }
        if bytes.len() > TRANSPORT_ID_MAX_BYTES {
            return Err(PrError::BadTransportId(format!(
                "{} bytes is longer than {TRANSPORT_ID_MAX_BYTES}",
                bytes.len()
            )));
        }
        if bytes.len() < TRANSPORT_ID_MIN_BYTES {
            bytes.resize(TRANSPORT_ID_MIN_BYTES, 0);
        }
        Ok(TransportId(bytes))
    }

    /// The TransportID as given (already padded).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Wraps raw bytes (e.g. taken from READ FULL STATUS) without checking them.
    pub fn from_bytes(bytes: Vec<u8>) -> TransportId {
        TransportId(bytes)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The basic PERSISTENT RESERVE OUT parameter list (SPC-4 6.14.3, Table 174), used by every service action except
/// REGISTER AND MOVE.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProutParameters {
    pub reservation_key: ReservationKey,
    pub service_action_key: ReservationKey,
    /// SPEC_I_PT: the TransportIDs below name the other initiator ports to register (REGISTER only).
    pub specify_initiator_ports: bool,
    pub all_target_ports: bool,
    pub activate_persist_through_power_loss: bool,
    pub transport_ids: Vec<TransportId>,
}

impl ProutParameters {
    /// 24 bytes, then with SPEC_I_PT the TRANSPORTID PARAMETER DATA LENGTH and the TransportIDs back to back.
    pub fn encode(&self) -> Vec<u8> {
        let mut list = vec![0u8; 24];
        list[0..8].copy_from_slice(&self.reservation_key.0.to_be_bytes());
        list[8..16].copy_from_slice(&self.service_action_key.0.to_be_bytes());
        list[20] = (self.specify_initiator_ports as u8) << 3
            | (self.all_target_ports as u8) << 2
            | self.activate_persist_through_power_loss as u8;
        if self.specify_initiator_ports {
            let ids: Vec<u8> = self
                .transport_ids
                .iter()
                .flat_map(|id| id.as_bytes().iter().copied())
                .collect();
            list.extend_from_slice(&(ids.len() as u32).to_be_bytes());
            list.extend_from_slice(&ids);
        }
        list
    }
}

/// A PERSISTENT RESERVE OUT CDB and its basic parameter list: the reservation key, the service action reservation
/// key and APTPL, nothing else (what the lock manager's fencing needs).
pub fn basic_prout(
    action: PrOutAction,
    pr_type: PrType,
    key: u64,
    service_action_key: u64,
    aptpl: bool,
) -> (Vec<u8>, Vec<u8>) {
    let parameters = ProutParameters {
        reservation_key: ReservationKey(key),
        service_action_key: ReservationKey(service_action_key),
        activate_persist_through_power_loss: aptpl,
        ..ProutParameters::default()
    }
    .encode();
    (
        prout_cdb(action, pr_type, parameters.len() as u32),
        parameters,
    )
}

/// The REGISTER AND MOVE parameter list (SPC-4 6.14.4, Table 176).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterAndMoveParameters {
    pub reservation_key: ReservationKey,
    pub service_action_key: ReservationKey,
    /// UNREG: unregister the I_T nexus that sends the command once the reservation has moved.
    pub unregister: bool,
    pub activate_persist_through_power_loss: bool,
    pub relative_target_port: u16,
    pub transport_id: TransportId,
}

impl RegisterAndMoveParameters {
    pub fn encode(&self) -> Vec<u8> {
        let id = self.transport_id.as_bytes();
        let mut list = vec![0u8; 24];
        list[0..8].copy_from_slice(&self.reservation_key.0.to_be_bytes());
        list[8..16].copy_from_slice(&self.service_action_key.0.to_be_bytes());
        list[17] = (self.unregister as u8) << 1 | self.activate_persist_through_power_loss as u8;
        list[18..20].copy_from_slice(&self.relative_target_port.to_be_bytes());
        list[20..24].copy_from_slice(&(id.len() as u32).to_be_bytes());
        list.extend_from_slice(id);
        list
    }
}

fn need(what: &'static str, data: &[u8], needed: usize) -> Result<(), PrError> {
    if data.len() < needed {
        return Err(PrError::Truncated {
            what,
            needed,
            got: data.len(),
        });
    }
    Ok(())
}

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes"))
}

fn be64(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"))
}

/// The header every READ KEYS, READ RESERVATION and READ FULL STATUS answer starts with, and the part of the list
/// that was actually returned (the ADDITIONAL LENGTH may say more than the allocation length let through).
fn header<'a>(what: &'static str, data: &'a [u8]) -> Result<(u32, u32, &'a [u8]), PrError> {
    need(what, data, 8)?;
    let additional_length = be32(&data[4..]);
    let end = data
        .len()
        .min(8usize.saturating_add(additional_length as usize));
    Ok((be32(data), additional_length, &data[8..end]))
}

/// The READ KEYS answer (SPC-4 6.13.2, Table 165).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadKeys {
    pub generation: u32,
    /// ADDITIONAL LENGTH as the target reported it: more than `keys` holds when the answer was truncated.
    pub additional_length: u32,
    pub keys: Vec<ReservationKey>,
}

impl ReadKeys {
    pub fn parse(data: &[u8]) -> Result<ReadKeys, PrError> {
        let (generation, additional_length, list) = header("READ KEYS", data)?;
        Ok(ReadKeys {
            generation,
            additional_length,
            keys: list
                .chunks_exact(8)
                .map(|key| ReservationKey(be64(key)))
                .collect(),
        })
    }
}

/// A reservation as READ RESERVATION reports it (SPC-4 Table 167).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub key: ReservationKey,
    pub scope: u8,
    pub pr_type: PrType,
}

/// The READ RESERVATION answer (SPC-4 6.13.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadReservation {
    pub generation: u32,
    pub reservation: Option<Reservation>,
}

impl ReadReservation {
    pub fn parse(data: &[u8]) -> Result<ReadReservation, PrError> {
        let (generation, additional_length, list) = header("READ RESERVATION", data)?;
        if additional_length == 0 {
            return Ok(ReadReservation {
                generation,
                reservation: None,
            });
        }
        need("READ RESERVATION descriptor", data, 8 + 16)?;
        Ok(ReadReservation {
            generation,
            reservation: Some(Reservation {
                key: ReservationKey(be64(list)),
                scope: list[13] >> 4,
                pr_type: PrType(list[13] & 0x0F),
            }),
        })
    }
}

/// The REPORT CAPABILITIES answer (SPC-4 6.13.4, Table 168).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    pub replace_lost_reservation_capable: bool,
    pub compatible_reservation_handling: bool,
    pub specify_initiator_ports_capable: bool,
    pub all_target_ports_capable: bool,
    pub persist_through_power_loss_capable: bool,
    pub type_mask_valid: bool,
    pub allow_commands: u8,
    pub persist_through_power_loss_active: bool,
    /// PERSISTENT RESERVATION TYPE MASK, bytes 4 and 5 as one big-endian value.
    pub type_mask: u16,
}

impl Capabilities {
    pub fn parse(data: &[u8]) -> Result<Capabilities, PrError> {
        need("REPORT CAPABILITIES", data, 8)?;
        let length = u16::from_be_bytes([data[0], data[1]]);
        if length != 8 {
            return Err(PrError::Malformed(format!(
                "REPORT CAPABILITIES LENGTH is {length}, not 8"
            )));
        }
        Ok(Capabilities {
            replace_lost_reservation_capable: data[2] & 0x80 != 0,
            compatible_reservation_handling: data[2] & 0x10 != 0,
            specify_initiator_ports_capable: data[2] & 0x08 != 0,
            all_target_ports_capable: data[2] & 0x04 != 0,
            persist_through_power_loss_capable: data[2] & 0x01 != 0,
            type_mask_valid: data[3] & 0x80 != 0,
            allow_commands: (data[3] >> 4) & 0x7,
            persist_through_power_loss_active: data[3] & 0x01 != 0,
            type_mask: u16::from_be_bytes([data[4], data[5]]),
        })
    }

    /// Whether the type mask advertises `pr_type` (SPC-4 Table 169: WR_EX_AR bit 7 of byte 4 … EX_AC_AR bit 0 of
    /// byte 5).
    pub fn supports(&self, pr_type: PrType) -> bool {
        let bit = match pr_type.0 {
            7 => 0x8000,
            6 => 0x4000,
            5 => 0x2000,
            3 => 0x0800,
            1 => 0x0200,
            8 => 0x0001,
            _ => return false,
        };
        self.type_mask & bit != 0
    }
}

/// One full status descriptor (SPC-4 6.13.5, Table 170).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FullStatusDescriptor {
    pub key: ReservationKey,
    pub all_target_ports: bool,
    pub reservation_holder: bool,
    pub scope: u8,
    pub pr_type: PrType,
    pub relative_target_port: u16,
    pub transport_id: TransportId,
}

/// The READ FULL STATUS answer (SPC-4 6.13.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FullStatus {
    pub generation: u32,
    pub additional_length: u32,
    pub descriptors: Vec<FullStatusDescriptor>,
}

impl FullStatus {
    pub fn parse(data: &[u8]) -> Result<FullStatus, PrError> {
        let (generation, additional_length, mut list) = header("READ FULL STATUS", data)?;
        let mut descriptors = Vec::new();
        // A descriptor cut off by the allocation length is dropped, not guessed at.
        while list.len() >= 24 {
            let id_length = be32(&list[20..]) as usize;
            let Some(id) = list.get(24..24usize.saturating_add(id_length)) else {
                break;
            };
            descriptors.push(FullStatusDescriptor {
                key: ReservationKey(be64(list)),
                all_target_ports: list[12] & 0x02 != 0,
                reservation_holder: list[12] & 0x01 != 0,
                scope: list[13] >> 4,
                pr_type: PrType(list[13] & 0x0F),
                relative_target_port: u16::from_be_bytes([list[18], list[19]]),
                transport_id: TransportId::from_bytes(id.to_vec()),
            });
            list = &list[24 + id_length..];
        }
        Ok(FullStatus {
            generation,
            additional_length,
            descriptors,
        })
    }
}

/// sg3_utils' lines for a TransportID ("Transport Id of initiator:" and the decoded name), each starting with
/// `indent`.
pub fn describe_transport_id(indent: &str, id: &[u8]) -> Vec<String> {
    let mut lines = Vec::new();
    if id.len() < TRANSPORT_ID_MIN_BYTES || !id.len().is_multiple_of(4) {
        lines.push(format!(
            "{indent}Transport Id short or not multiple of 4 [length={}]:",
            id.len()
        ));
    } else {
        lines.push(format!("{indent}Transport Id of initiator:"));
    }
    let Some(&first) = id.first() else {
        return lines;
    };
    let format = first >> 6;
    let protocol = first & 0x0F;
    if protocol == PROTOCOL_ISCSI && id.len() >= 4 {
        let length = u16::from_be_bytes([id[2], id[3]]) as usize;
        let name_bytes = &id[4..id.len().min(4 + length)];
        let name_end = name_bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(name_bytes.len());
        let name = String::from_utf8_lossy(&name_bytes[..name_end]);
        lines.push(match format {
            0 => format!("{indent}  iSCSI name: {name}"),
            1 => format!("{indent}  iSCSI world wide unique port id: {name}"),
            other => format!("{indent}  iSCSI   [Unexpected TPID format: {other}]"),
        });
    } else {
        lines.push(format!(
            "{indent}  unknown protocol id={protocol:#x}  TPID format={format}"
        ));
        lines.push(format!(
            "{indent} {}",
            id.iter()
                .take(TRANSPORT_ID_MIN_BYTES)
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdbs_follow_spc4_tables_163_and_171() {
        assert_eq!(
            prin_cdb(PrInAction::ReadFullStatus, 8192),
            [0x5E, 0x03, 0, 0, 0, 0, 0, 0x20, 0x00, 0]
        );
        assert_eq!(
            prout_cdb(PrOutAction::Reserve, PrType::EXCLUSIVE_ACCESS, 24),
            [0x5F, 0x01, 0x03, 0, 0, 0, 0, 0, 24, 0]
        );
        assert_eq!(
            prout_cdb(PrOutAction::RegisterAndMove, PrType(0x15), 0x0102_0304)[..9],
            [0x5F, 0x07, 0x05, 0, 0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn basic_parameter_list_is_24_bytes_with_flags_in_byte_20() {
        let list = ProutParameters {
            reservation_key: ReservationKey(0x1122_3344_5566_7788),
            service_action_key: ReservationKey(0xabc123),
            all_target_ports: true,
            activate_persist_through_power_loss: true,
            ..ProutParameters::default()
        }
        .encode();
        assert_eq!(list.len(), 24);
        assert_eq!(list[..8], [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
        assert_eq!(list[8..16], [0, 0, 0, 0, 0, 0xab, 0xc1, 0x23]);
        assert_eq!(list[16..20], [0; 4]);
        assert_eq!(list[20], 0x05);
        assert_eq!(list[21..24], [0; 3]);
    }

    #[test]
    fn spec_i_pt_list_carries_the_transport_ids() {
        let first = TransportId::iscsi("iqn.2026-11.io.test:a", None).unwrap();
        let second =
            TransportId::iscsi("iqn.2026-11.io.test:b", Some([0x80, 1, 2, 3, 0, 0])).unwrap();
        let list = ProutParameters {
            service_action_key: ReservationKey(7),
            specify_initiator_ports: true,
            transport_ids: vec![first.clone(), second.clone()],
            ..ProutParameters::default()
        }
        .encode();
        assert_eq!(list[20], 0x08);
        let ids_length = first.as_bytes().len() + second.as_bytes().len();
        assert_eq!(be32(&list[24..]) as usize, ids_length);
        assert_eq!(list.len(), 28 + ids_length);
        assert_eq!(&list[28..28 + first.as_bytes().len()], first.as_bytes());
        assert_eq!(&list[28 + first.as_bytes().len()..], second.as_bytes());
    }

    #[test]
    fn spec_i_pt_without_ids_still_sends_the_length_field() {
        let list = ProutParameters {
            specify_initiator_ports: true,
            ..ProutParameters::default()
        }
        .encode();
        assert_eq!(list.len(), 28);
        assert_eq!(list[24..28], [0; 4]);
    }

    #[test]
    fn iscsi_transport_ids_are_nul_terminated_and_padded_to_4() {
        // 21 bytes of name + NUL = 22, padded to 24.
        let id = TransportId::iscsi("iqn.2026-11.io.test:a", None).unwrap();
        let bytes = id.as_bytes();
        assert_eq!(bytes.len(), 28);
        assert_eq!(bytes[0], 0x05);
        assert_eq!(u16::from_be_bytes([bytes[2], bytes[3]]), 24);
        assert_eq!(&bytes[4..25], b"iqn.2026-11.io.test:a");
        assert!(bytes[25..].iter().all(|&b| b == 0));
        // Short names still get the 20-byte minimum.
        let short = TransportId::iscsi("iqn.x", None).unwrap();
        assert_eq!(short.as_bytes().len(), 24);
        assert_eq!(short.as_bytes()[3], 20);
    }

    #[test]
    fn iscsi_port_transport_id_uses_format_01() {
        let id = TransportId::iscsi("iqn.x", Some([0x80, 0xab, 0xcd, 0xef, 0, 1])).unwrap();
        let text = b"iqn.x,i,0x80abcdef0001";
        assert_eq!(id.as_bytes()[0], 0x45);
        assert_eq!(&id.as_bytes()[4..4 + text.len()], text);
        assert_eq!(TransportId::parse("iqn.x,i,0x80abcdef0001").unwrap(), id);
    }

    #[test]
    fn hex_transport_ids_parse_and_pad() {
        let id = TransportId::parse("5,0,0,14,69,71").unwrap();
        assert_eq!(id.as_bytes().len(), 24);
        assert_eq!(id.as_bytes()[..6], [5, 0, 0, 0x14, 0x69, 0x71]);
        assert_eq!(
            TransportId::parse("0x5 0x40").unwrap().as_bytes()[..2],
            [5, 0x40]
        );
        assert!(TransportId::parse("5,zz").is_err());
        assert!(TransportId::parse("100").is_err());
        assert!(TransportId::parse("").is_err());
        assert!(TransportId::parse("iqn.has space").is_err());
    }

    #[test]
    fn register_and_move_list_follows_table_176() {
        let id = TransportId::iscsi("iqn.2026-11.io.test:b", Some([0x80, 1, 2, 3, 0, 0])).unwrap();
        let list = RegisterAndMoveParameters {
            reservation_key: ReservationKey(0xa),
            service_action_key: ReservationKey(0xb),
            unregister: true,
            activate_persist_through_power_loss: true,
            relative_target_port: 0x0102,
            transport_id: id.clone(),
        }
        .encode();
        assert_eq!(list[7], 0xa);
        assert_eq!(list[15], 0xb);
        assert_eq!(list[16], 0);
        assert_eq!(list[17], 0x03);
        assert_eq!(list[18..20], [1, 2]);
        assert_eq!(be32(&list[20..]) as usize, id.as_bytes().len());
        assert_eq!(&list[24..], id.as_bytes());
    }

    #[test]
    fn read_keys_decodes_and_tolerates_truncation() {
        let mut data = vec![0, 0, 0, 6, 0, 0, 0, 24];
        for key in [0xabc123u64, 0x1, 0xffff_ffff_ffff_ffff] {
            data.extend_from_slice(&key.to_be_bytes());
        }
        let keys = ReadKeys::parse(&data).unwrap();
        assert_eq!(keys.generation, 6);
        assert_eq!(
            keys.keys,
            vec![
                ReservationKey(0xabc123),
                ReservationKey(1),
                ReservationKey(u64::MAX)
            ]
        );
        let cut = ReadKeys::parse(&data[..20]).unwrap();
        assert_eq!(cut.additional_length, 24);
        assert_eq!(cut.keys, vec![ReservationKey(0xabc123)]);
        assert!(ReadKeys::parse(&data[..7]).is_err());
    }

    #[test]
    fn read_reservation_decodes_scope_and_type() {
        let mut data = vec![0, 0, 0, 2, 0, 0, 0, 16];
        data.extend_from_slice(&0xabc123u64.to_be_bytes());
        data.extend_from_slice(&[0, 0, 0, 0, 0, 0x03, 0, 0]);
        let answer = ReadReservation::parse(&data).unwrap();
        assert_eq!(
            answer.reservation,
            Some(Reservation {
                key: ReservationKey(0xabc123),
                scope: 0,
                pr_type: PrType::EXCLUSIVE_ACCESS
            })
        );
        let none = ReadReservation::parse(&[0, 0, 0, 2, 0, 0, 0, 0]).unwrap();
        assert_eq!(none.reservation, None);
        assert!(ReadReservation::parse(&data[..20]).is_err());
    }

    #[test]
    fn capabilities_decode_every_bit() {
        let caps = Capabilities::parse(&[0, 8, 0x9D, 0x91, 0xEA, 0x01, 0, 0]).unwrap();
        assert!(caps.replace_lost_reservation_capable);
        assert!(caps.compatible_reservation_handling);
        assert!(caps.specify_initiator_ports_capable);
        assert!(caps.all_target_ports_capable);
        assert!(caps.persist_through_power_loss_capable);
        assert!(caps.type_mask_valid);
        assert_eq!(caps.allow_commands, 1);
        assert!(caps.persist_through_power_loss_active);
        for pr_type in [1, 3, 5, 6, 7, 8] {
            assert!(caps.supports(PrType(pr_type)), "type {pr_type}");
        }
        assert!(!caps.supports(PrType(2)));
        assert!(Capabilities::parse(&[0, 9, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn full_status_walks_variable_length_descriptors() {
        let a = TransportId::iscsi("iqn.x", Some([0x80, 0, 0, 1, 0, 0])).unwrap();
        let b = TransportId::iscsi("iqn.2026-11.io.test:b", None).unwrap();
        let mut list = Vec::new();
        for (key, flags, scope_type, port, id) in
            [(0xa_u64, 0x01u8, 0x05u8, 1u16, &a), (0xb, 0x02, 0, 0, &b)]
        {
            list.extend_from_slice(&key.to_be_bytes());
            list.extend_from_slice(&[0, 0, 0, 0, flags, scope_type, 0, 0, 0, 0]);
            list.extend_from_slice(&port.to_be_bytes());
            list.extend_from_slice(&(id.as_bytes().len() as u32).to_be_bytes());
            list.extend_from_slice(id.as_bytes());
        }
        let mut data = vec![0, 0, 0, 9];
        data.extend_from_slice(&(list.len() as u32).to_be_bytes());
        data.extend_from_slice(&list);
        let status = FullStatus::parse(&data).unwrap();
        assert_eq!(status.generation, 9);
        assert_eq!(status.descriptors.len(), 2);
        let first = &status.descriptors[0];
        assert!(first.reservation_holder && !first.all_target_ports);
        assert_eq!(first.pr_type, PrType::WRITE_EXCLUSIVE_REGISTRANTS_ONLY);
        assert_eq!(first.relative_target_port, 1);
        assert_eq!(&first.transport_id, &a);
        let second = &status.descriptors[1];
        assert!(second.all_target_ports && !second.reservation_holder);
        assert_eq!(second.key, ReservationKey(0xb));
        // Cut inside the second descriptor: only the first survives.
        let cut = FullStatus::parse(&data[..data.len() - 4]).unwrap();
        assert_eq!(cut.descriptors.len(), 1);
    }

    #[test]
    fn transport_ids_are_described_like_sg3_utils() {
        let id = TransportId::iscsi("iqn.x", Some([0x80, 0, 0, 1, 0, 0])).unwrap();
        assert_eq!(
            describe_transport_id("      ", id.as_bytes()),
            vec![
                "      Transport Id of initiator:",
                "        iSCSI world wide unique port id: iqn.x,i,0x800000010000"
            ]
        );
        let plain = TransportId::iscsi("iqn.x", None).unwrap();
        assert_eq!(
            describe_transport_id("", plain.as_bytes())[1],
            "  iSCSI name: iqn.x"
        );
    }

    #[test]
    fn keys_and_types_print_like_sg_persist() {
        assert_eq!(ReservationKey(0xabc123).to_string(), "0xabc123");
        assert_eq!(ReservationKey(0).to_string(), "0x0");
        assert_eq!(PrType(6).name(), "Exclusive Access, registrants only");
        assert_eq!(PrType(0).name(), "obsolete [0]");
        assert_eq!(PrType(0xc).name(), "obsolete [0xc]");
    }
}
