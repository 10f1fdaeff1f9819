//! Typed helpers for the SCSI commands lunlock's clients send, over [`Session::execute_checked`]: TEST UNIT READY
//! (SPC-4 6.47), INQUIRY and its VPD pages (SPC-4 6.6, 7.8), READ CAPACITY (SBC-4 5.20, 5.21), READ(16) and
//! WRITE(16) (SBC-4 5.14, 5.40), SYNCHRONIZE CACHE(16) (SBC-4 5.26), REPORT LUNS (SPC-4 6.33), REPORT TARGET PORT
//! GROUPS (SPC-4 6.37), and the task management functions ABORT TASK and LOGICAL UNIT RESET (RFC 7143 11.5.1).
//!
//! Decoders never trust the target's lengths: fields past the returned data are an error, not a panic.

//!
//! CDBs come from `lunlock_scsi`'s command registry ([`Command::encode`]), the same table the target decodes with.

use crate::{DataDirection, InitiatorError, Session, Task};
use lunlock_iscsi::message::decode_lun;
use lunlock_scsi::cdb::{BlockCount, Command, Lba, TargetPortGroupsFormat};

/// How many unit attentions `test_unit_ready` clears before giving up (power on, reset, parameters changed...).
pub const MAX_UNIT_ATTENTION_RETRIES: usize = 8;
/// Allocation length of the standard INQUIRY we send.
const STANDARD_INQUIRY_BYTES: u16 = 96;
/// Allocation length of VPD page requests.
const VPD_PAGE_BYTES: u16 = 1024;
/// REPORT LUNS allocation length: 8-byte header plus 511 LUNs.
const REPORT_LUNS_BYTES: u32 = 4096;
/// REPORT TARGET PORT GROUPS allocation length: the extended header plus 340 groups of one port.
const TARGET_PORT_GROUPS_BYTES: u32 = 4096;

/// The standard INQUIRY data we print (SPC-4 6.6.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StandardInquiry {
    pub peripheral_device_type: u8,
    pub vendor: String,
    pub product: String,
    pub revision: String,
}

/// A designation descriptor of the Device Identification VPD page (SPC-4 7.8.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Designator {
    /// Designator type: 3 = NAA, 4 = relative target port, 5 = target port group, 8 = SCSI name string.
    pub designator_type: u8,
    /// Association: 0 = logical unit, 1 = target port, 2 = target device.
    pub association: u8,
    pub value: Vec<u8>,
}

/// One target port group descriptor of REPORT TARGET PORT GROUPS (SPC-4 6.37 Table 306).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetPortGroupDescriptor {
    pub id: u16,
    /// PREF: a preferred primary target port group.
    pub preferred: bool,
    /// ASYMMETRIC ACCESS STATE (Table 307): 0h active/optimized, 1h active/non-optimized, 2h standby, 3h
    /// unavailable, 4h logical block dependent, Eh offline, Fh transitioning.
    pub asymmetric_access_state: u8,
    /// Byte 1 as sent: T_SUP, O_SUP, (reserved), LBD_SUP, U_SUP, S_SUP, AN_SUP, AO_SUP from bit 7 down.
    pub supported_states: u8,
    pub status_code: u8,
    pub relative_target_ports: Vec<u16>,
}

/// REPORT TARGET PORT GROUPS parameter data (SPC-4 6.37 Tables 304, 305).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetPortGroupsReport {
    /// RETURN DATA LENGTH: the length of the whole data after this field, which may be more than was returned.
    pub return_data_length: u32,
    /// IMPLICIT TRANSITION TIME (seconds, 0 unspecified) when the target answered with the extended header.
    pub implicit_transition_time: Option<u8>,
    /// The descriptors returned whole.
    pub groups: Vec<TargetPortGroupDescriptor>,
}

/// The capacity of a logical unit (SBC-4 5.20.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub blocks: u64,
    pub block_size: u32,
    /// LBPME: logical block provisioning management (thin provisioning) enabled; false from READ CAPACITY(10).
    pub thin_provisioned: bool,
}

impl Capacity {
    pub fn bytes(&self) -> u64 {
        self.blocks * self.block_size as u64
    }
}

/// Task management responses (RFC 7143 11.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TmfResponse {
    FunctionComplete,
    TaskDoesNotExist,
    LunDoesNotExist,
    TaskStillAllegiant,
    ReassignmentNotSupported,
    NotSupported,
    AuthorizationFailed,
    Rejected,
    Other(u8),
}

impl TmfResponse {
    pub fn from_code(code: u8) -> TmfResponse {
        match code {
            0 => TmfResponse::FunctionComplete,
            1 => TmfResponse::TaskDoesNotExist,
            2 => TmfResponse::LunDoesNotExist,
            3 => TmfResponse::TaskStillAllegiant,
            4 => TmfResponse::ReassignmentNotSupported,
            5 => TmfResponse::NotSupported,
            6 => TmfResponse::AuthorizationFailed,
            255 => TmfResponse::Rejected,
            other => TmfResponse::Other(other),
        }
    }
}

/// Task management function codes (RFC 7143 11.5.1).
const TMF_ABORT_TASK: u8 = 1;
const TMF_LOGICAL_UNIT_RESET: u8 = 5;

fn too_short(what: &str, length: usize) -> InitiatorError {
    InitiatorError::Protocol(format!("{what} returned only {length} bytes"))
}

fn ascii(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_matches(|c: char| c == ' ' || c == '\0')
        .to_string()
}

/// Decodes standard INQUIRY data (SPC-4 6.6.2).
pub fn parse_standard_inquiry(data: &[u8]) -> Result<StandardInquiry, InitiatorError> {
    if data.len() < 36 {
        return Err(too_short("INQUIRY", data.len()));
    }
    Ok(StandardInquiry {
        peripheral_device_type: data[0] & 0x1F,
        vendor: ascii(&data[8..16]),
        product: ascii(&data[16..32]),
        revision: ascii(&data[32..36]),
    })
}

/// Decodes the designation descriptors of VPD page 0x83 (SPC-4 7.8.6), stopping at the returned data's end.
pub fn parse_designators(page: &[u8]) -> Vec<Designator> {
    let mut designators = Vec::new();
    let end = page.len().min(
        4 + u16::from_be_bytes([
            page.get(2).copied().unwrap_or(0),
            page.get(3).copied().unwrap_or(0),
        ]) as usize,
    );
    let mut at = 4;
    while at + 4 <= end {
        let length = page[at + 3] as usize;
        let Some(value) = page
            .get(at + 4..at + 4 + length)
            .filter(|_| at + 4 + length <= end)
        else {
            break;
        };
        designators.push(Designator {
            designator_type: page[at + 1] & 0x0F,
            association: (page[at + 1] >> 4) & 0x3,
            value: value.to_vec(),
        });
        at += 4 + length;
    }
    designators
}

/// Decodes READ CAPACITY(16) parameter data (SBC-4 5.21.2).
pub fn parse_read_capacity_16(data: &[u8]) -> Result<Capacity, InitiatorError> {
    if data.len() < 15 {
        return Err(too_short("READ CAPACITY(16)", data.len()));
    }
    let last_lba = u64::from_be_bytes(data[..8].try_into().expect("8 bytes"));
    let block_size = u32::from_be_bytes(data[8..12].try_into().expect("4 bytes"));
    capacity(last_lba, block_size, data[14] & 0x80 != 0)
}

/// Decodes READ CAPACITY(10) parameter data (SBC-4 5.20.2).
pub fn parse_read_capacity_10(data: &[u8]) -> Result<Capacity, InitiatorError> {
    if data.len() < 8 {
        return Err(too_short("READ CAPACITY(10)", data.len()));
    }
    let last_lba = u32::from_be_bytes(data[..4].try_into().expect("4 bytes"));
    let block_size = u32::from_be_bytes(data[4..8].try_into().expect("4 bytes"));
    capacity(last_lba as u64, block_size, false)
}

fn capacity(last_lba: u64, block_size: u32, thin: bool) -> Result<Capacity, InitiatorError> {
    if block_size == 0 {
        return Err(InitiatorError::Protocol(
            "the target reports a block size of 0".into(),
        ));
    }
    Ok(Capacity {
        blocks: last_lba.saturating_add(1),
        block_size,
        thin_provisioned: thin,
    })
}

/// Decodes REPORT LUNS parameter data (SPC-4 6.33.2); LUNs in address methods lunlock cannot name are skipped.
pub fn parse_report_luns(data: &[u8]) -> Result<Vec<u64>, InitiatorError> {
    if data.len() < 8 {
        return Err(too_short("REPORT LUNS", data.len()));
    }
    let listed = u32::from_be_bytes(data[..4].try_into().expect("4 bytes")) as usize;
    let end = data.len().min(8 + listed);
    Ok(data[8..end]
        .chunks_exact(8)
        .filter_map(|entry| decode_lun(entry.try_into().expect("8 bytes")))
        .collect())
}

/// Decodes REPORT TARGET PORT GROUPS parameter data (SPC-4 6.37) asked for in `asked` format. A target may ignore
/// the PARAMETER DATA FORMAT field and answer with the length-only header, so the FORMAT TYPE decides, as Linux's
/// scsi_dh_alua does: a length-only answer has a descriptor's reserved bits 6..4 where FORMAT TYPE would be.
/// Descriptors cut short by the allocation length or the RETURN DATA LENGTH are left out.
pub fn parse_target_port_groups(
    data: &[u8],
    asked: TargetPortGroupsFormat,
) -> Result<TargetPortGroupsReport, InitiatorError> {
    if data.len() < 4 {
        return Err(too_short("REPORT TARGET PORT GROUPS", data.len()));
    }
    let return_data_length = u32::from_be_bytes(data[..4].try_into().expect("4 bytes"));
    let extended = asked == TargetPortGroupsFormat::Extended
        && data.len() >= 8
        && (data[4] >> 4) & 0x07 == 0b001;
    let end = data
        .len()
        .min(4usize.saturating_add(return_data_length as usize));
    let mut groups = Vec::new();
    let mut at = if extended { 8 } else { 4 };
    while let Some((group, next)) = target_port_group_at(&data[..end], at) {
        groups.push(group);
        at = next;
    }
    Ok(TargetPortGroupsReport {
        return_data_length,
        implicit_transition_time: extended.then(|| data[5]),
        groups,
    })
}

/// The descriptor at `at` and where the next one starts, if it is there whole (Tables 306, 309).
fn target_port_group_at(data: &[u8], at: usize) -> Option<(TargetPortGroupDescriptor, usize)> {
    let header = data.get(at..at + 8)?;
    let ports_end = at + 8 + 4 * header[7] as usize;
    let ports = data.get(at + 8..ports_end)?;
    let group = TargetPortGroupDescriptor {
        id: u16::from_be_bytes([header[2], header[3]]),
        preferred: header[0] & 0x80 != 0,
        asymmetric_access_state: header[0] & 0x0F,
        supported_states: header[1],
        status_code: header[5],
        relative_target_ports: ports
            .chunks_exact(4)
            .map(|port| u16::from_be_bytes([port[2], port[3]]))
            .collect(),
    };
    Some((group, ports_end))
}

/// An INQUIRY CDB (SPC-4 6.6): the standard data, or VPD page `page` with `evpd`.
pub fn inquiry_cdb(evpd: bool, page: u8, allocation_length: u16) -> Vec<u8> {
    Command::Inquiry {
        evpd,
        page_code: page,
        allocation_length: allocation_length as u32,
    }
    .encode()
}

impl Session {
    /// TEST UNIT READY, retrying while the target reports unit attentions (a fresh I_T nexus sees at least one).
    pub async fn test_unit_ready(&self, lun: u64) -> Result<(), InitiatorError> {
        let mut last = None;
        for _ in 0..MAX_UNIT_ATTENTION_RETRIES {
            match self
                .execute_checked(lun, &Command::TestUnitReady.encode(), DataDirection::None)
                .await
            {
                Ok(_) => return Ok(()),
                Err(InitiatorError::Scsi(failure)) if failure.is_unit_attention() => {
                    last = Some(failure)
                }
                Err(other) => return Err(other),
            }
        }
        Err(InitiatorError::Scsi(last.expect("at least one attempt")))
    }

    /// Standard INQUIRY (SPC-4 6.6.2).
    pub async fn inquiry(&self, lun: u64) -> Result<StandardInquiry, InitiatorError> {
        let cdb = inquiry_cdb(false, 0, STANDARD_INQUIRY_BYTES);
        let outcome = self
            .execute_checked(
                lun,
                &cdb,
                DataDirection::Read(STANDARD_INQUIRY_BYTES as u32),
            )
            .await?;
        parse_standard_inquiry(&outcome.data_in)
    }

    /// One VPD page, as returned (SPC-4 7.8).
    pub async fn inquiry_vpd(&self, lun: u64, page: u8) -> Result<Vec<u8>, InitiatorError> {
        let cdb = inquiry_cdb(true, page, VPD_PAGE_BYTES);
        let data = self
            .execute_checked(lun, &cdb, DataDirection::Read(VPD_PAGE_BYTES as u32))
            .await?
            .data_in;
        if data.len() < 4 || data[1] != page {
            return Err(InitiatorError::Protocol(format!(
                "INQUIRY VPD page {page:#04x} came back malformed"
            )));
        }
        Ok(data)
    }

    /// The unit serial number (VPD page 0x80, SPC-4 7.8.15).
    pub async fn serial_number(&self, lun: u64) -> Result<String, InitiatorError> {
        let page = self.inquiry_vpd(lun, 0x80).await?;
        let length = u16::from_be_bytes([page[2], page[3]]) as usize;
        Ok(ascii(&page[4..page.len().min(4 + length)]))
    }

    /// The designators of the Device Identification page (VPD 0x83, SPC-4 7.8.6).
    pub async fn designators(&self, lun: u64) -> Result<Vec<Designator>, InitiatorError> {
        Ok(parse_designators(&self.inquiry_vpd(lun, 0x83).await?))
    }

    /// READ CAPACITY(16), or READ CAPACITY(10) when the target does not know the 16-byte command.
    pub async fn read_capacity(&self, lun: u64) -> Result<Capacity, InitiatorError> {
        let cdb = Command::ReadCapacity16 {
            allocation_length: 32,
        }
        .encode();
        match self
            .execute_checked(lun, &cdb, DataDirection::Read(32))
            .await
        {
            Ok(outcome) => parse_read_capacity_16(&outcome.data_in),
            Err(InitiatorError::Scsi(failure))
                if failure.sense.is_some_and(|s| s.key == 0x5 && s.asc == 0x20) =>
            {
                // ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE: an SBC-2 era target.
                let cdb = Command::ReadCapacity10.encode();
                let outcome = self
                    .execute_checked(lun, &cdb, DataDirection::Read(8))
                    .await?;
                parse_read_capacity_10(&outcome.data_in)
            }
            Err(other) => Err(other),
        }
    }

    /// READ(16) of `blocks` blocks of `block_size` bytes.
    pub async fn read(
        &self,
        lun: u64,
        lba: u64,
        blocks: u32,
        block_size: u32,
    ) -> Result<Vec<u8>, InitiatorError> {
        let length = blocks.checked_mul(block_size).ok_or_else(|| {
            InitiatorError::Protocol("read longer than 4 GiB in one command".into())
        })?;
        let cdb = Command::read_16(lba, blocks, false).encode();
        let outcome = self
            .execute_checked(lun, &cdb, DataDirection::Read(length))
            .await?;
        if outcome.data_in.len() != length as usize {
            return Err(InitiatorError::Protocol(format!(
                "READ(16) returned {} of {length} bytes",
                outcome.data_in.len()
            )));
        }
        Ok(outcome.data_in)
    }

    /// WRITE(16) of whole blocks; `fua` asks for the data on stable media before GOOD (SBC-4 5.40).
    pub async fn write(
        &self,
        lun: u64,
        lba: u64,
        block_size: u32,
        data: Vec<u8>,
        fua: bool,
    ) -> Result<(), InitiatorError> {
        if block_size == 0 || !data.len().is_multiple_of(block_size as usize) {
            return Err(InitiatorError::Protocol(format!(
                "{} bytes are not whole {block_size}-byte blocks",
                data.len()
            )));
        }
        let blocks = u32::try_from(data.len() / block_size as usize)
            .map_err(|_| InitiatorError::Protocol("too many blocks in one command".into()))?;
        let cdb = Command::write_16(lba, blocks, fua).encode();
        self.execute_checked(lun, &cdb, DataDirection::Write(data))
            .await?;
        Ok(())
    }

    /// SYNCHRONIZE CACHE(16) of the whole logical unit.
    pub async fn synchronize_cache(&self, lun: u64) -> Result<(), InitiatorError> {
        let cdb = Command::SynchronizeCache {
            lba: Lba(0),
            blocks: BlockCount(0),
            ten: false,
        }
        .encode();
        self.execute_checked(lun, &cdb, DataDirection::None).await?;
        Ok(())
    }

    /// REPORT LUNS (select report 0: every LUN), sent to LUN 0.
    pub async fn report_luns(&self) -> Result<Vec<u64>, InitiatorError> {
        let cdb = Command::ReportLuns {
            select_report: 0,
            allocation_length: REPORT_LUNS_BYTES,
        }
        .encode();
        let outcome = self
            .execute_checked(0, &cdb, DataDirection::Read(REPORT_LUNS_BYTES))
            .await?;
        parse_report_luns(&outcome.data_in)
    }

    /// REPORT TARGET PORT GROUPS (SPC-4 6.37) with the parameter data header `format`.
    pub async fn report_target_port_groups(
        &self,
        lun: u64,
        format: TargetPortGroupsFormat,
    ) -> Result<TargetPortGroupsReport, InitiatorError> {
        let cdb = Command::ReportTargetPortGroups {
            format,
            allocation_length: TARGET_PORT_GROUPS_BYTES,
        }
        .encode();
        let outcome = self
            .execute_checked(lun, &cdb, DataDirection::Read(TARGET_PORT_GROUPS_BYTES))
            .await?;
        parse_target_port_groups(&outcome.data_in, format)
    }

    /// ABORT TASK for a command sent with [`Session::submit`].
    pub async fn abort_task(&self, task: &Task) -> Result<TmfResponse, InitiatorError> {
        let code = self
            .task_management(TMF_ABORT_TASK, task.lun, Some((task.itt, task.cmd_sn)))
            .await?;
        Ok(TmfResponse::from_code(code))
    }

    /// LOGICAL UNIT RESET.
    pub async fn lun_reset(&self, lun: u64) -> Result<TmfResponse, InitiatorError> {
        let code = self
            .task_management(TMF_LOGICAL_UNIT_RESET, lun, None)
            .await?;
        Ok(TmfResponse::from_code(code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_inquiry_is_decoded_and_trimmed() {
        let mut data = vec![0u8; 36];
        data[0] = 0x00;
        data[8..16].copy_from_slice(b"LUNLOCK ");
        data[16..32].copy_from_slice(b"disk            ");
        data[32..36].copy_from_slice(b"0.1 ");
        let inquiry = parse_standard_inquiry(&data).unwrap();
        assert_eq!(
            (
                inquiry.vendor.as_str(),
                inquiry.product.as_str(),
                inquiry.revision.as_str()
            ),
            ("LUNLOCK", "disk", "0.1")
        );
        assert!(parse_standard_inquiry(&data[..35]).is_err());
    }

    #[test]
    fn designators_stop_at_the_returned_data() {
        let mut page = vec![0, 0x83, 0, 20];
        page.extend_from_slice(&[0x01, 0x03, 0, 8, 0x60, 1, 2, 3, 4, 5, 6, 7]);
        page.extend_from_slice(&[0x61, 0x94, 0, 4, 0, 0, 0, 2]);
        let designators = parse_designators(&page);
        assert_eq!(designators.len(), 2);
        assert_eq!(designators[0].designator_type, 3);
        assert_eq!(designators[1].association, 1);
        // A descriptor claiming more bytes than were returned is dropped, not read past the end.
        page.truncate(page.len() - 2);
        assert_eq!(parse_designators(&page).len(), 1);
    }

    #[test]
    fn target_port_groups_are_decoded_in_either_header_format() {
        // Group 1, PREF, active/optimized, AO_SUP: port 1. Group 2, active/non-optimized, AN_SUP and AO_SUP,
        // status 02h: ports 2 and 3.
        #[rustfmt::skip]
        let descriptors = [
            0x80, 0x01, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1,
            0x01, 0x03, 0, 2, 0, 2, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3,
        ];
        let mut length_only = 28u32.to_be_bytes().to_vec();
        length_only.extend_from_slice(&descriptors);
        let mut extended = 32u32.to_be_bytes().to_vec();
        extended.extend_from_slice(&[0x10, 9, 0, 0]);
        extended.extend_from_slice(&descriptors);
        let group_2 = TargetPortGroupDescriptor {
            id: 2,
            preferred: false,
            asymmetric_access_state: 1,
            supported_states: 0x03,
            status_code: 2,
            relative_target_ports: vec![2, 3],
        };
        for (data, asked, time) in [
            (&length_only, TargetPortGroupsFormat::LengthOnly, None),
            // A target that ignores PARAMETER DATA FORMAT answers with the length-only header.
            (&length_only, TargetPortGroupsFormat::Extended, None),
            (&extended, TargetPortGroupsFormat::Extended, Some(9)),
        ] {
            let report = parse_target_port_groups(data, asked).unwrap();
            assert_eq!(report.implicit_transition_time, time);
            assert_eq!(report.groups.len(), 2);
            assert!(report.groups[0].preferred);
            assert_eq!(report.groups[0].relative_target_ports, [1]);
            assert_eq!(report.groups[1], group_2);
        }
        // Cut inside the second descriptor: only the first is whole.
        let cut = parse_target_port_groups(&length_only[..20], TargetPortGroupsFormat::LengthOnly)
            .unwrap();
        assert_eq!(cut.return_data_length, 28);
        assert_eq!(cut.groups.len(), 1);
        assert!(parse_target_port_groups(&[0, 0], TargetPortGroupsFormat::LengthOnly).is_err());
    }

    #[test]
    fn read_capacity_data_is_decoded() {
        let mut data16 = vec![0u8; 32];
        data16[..8].copy_from_slice(&2047u64.to_be_bytes());
        data16[8..12].copy_from_slice(&512u32.to_be_bytes());
        data16[14] = 0x80;
        let capacity = parse_read_capacity_16(&data16).unwrap();
        assert_eq!((capacity.blocks, capacity.bytes()), (2048, 1 << 20));
        assert!(capacity.thin_provisioned);
        let mut data10 = vec![0u8; 8];
        data10[..4].copy_from_slice(&99u32.to_be_bytes());
        data10[4..].copy_from_slice(&4096u32.to_be_bytes());
        assert_eq!(
            parse_read_capacity_10(&data10).unwrap(),
            Capacity {
                blocks: 100,
                block_size: 4096,
                thin_provisioned: false
            }
        );
        data10[4..].copy_from_slice(&0u32.to_be_bytes());
        assert!(parse_read_capacity_10(&data10).is_err());
    }

    #[test]
    fn report_luns_reads_peripheral_and_flat_addresses() {
        let mut data = vec![0, 0, 0, 24, 0, 0, 0, 0];
        data.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        data.extend_from_slice(&[0, 7, 0, 0, 0, 0, 0, 0]);
        data.extend_from_slice(&[0x41, 0x00, 0, 0, 0, 0, 0, 0]);
        assert_eq!(parse_report_luns(&data).unwrap(), vec![0, 7, 256]);
        // The list length is cut at what was returned.
        assert_eq!(parse_report_luns(&data[..16]).unwrap(), vec![0]);
    }

    #[test]
    fn write16_cdbs_carry_lba_count_and_fua() {
        let cdb = Command::write_16(0x0102_0304_0506_0708, 9, true).encode();
        assert_eq!(cdb[0], 0x8A);
        assert_eq!(cdb[1], 0x08);
        assert_eq!(&cdb[2..10], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&cdb[10..14], &[0, 0, 0, 9]);
    }
}
