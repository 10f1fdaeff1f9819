//! INQUIRY (SPC-4 6.6): standard data and the vital product data pages lunlock supports (SPC-4 7.8, SBC-4 6.6).
//!
//! Supported VPD pages, in ascending order as SPC-4 7.8.13 requires: 00h supported pages, 80h unit serial number,
//! 83h device identification, 86h extended INQUIRY data, 8Fh third-party copy, B0h block limits, B1h block device characteristics,
//! B2h logical block provisioning. Values in B0h come from [`crate::sbc::limits`], the same constants the data path
//! enforces.

use crate::lu::{truncate, Completed, LogicalUnit, Outcome};
use crate::sbc::limits;
use crate::sense::Sense;
use crate::ItNexus;

/// Version descriptors (SPC-4 Table 150): SAM-5, SPC-4, SBC-3, iSCSI (no version claimed).
const VERSION_DESCRIPTORS: [u16; 4] = [0x00A0, 0x0460, 0x04C0, 0x0960];
/// Length of the standard INQUIRY data lunlock returns.
const STANDARD_LENGTH: usize = 96;
/// Supported VPD page codes, ascending.
pub(crate) const VPD_PAGES: [u8; 8] = [0x00, 0x80, 0x83, 0x86, 0x8F, 0xB0, 0xB1, 0xB2];
/// iSCSI protocol identifier (SPC-4 Table 476).
const PROTOCOL_ISCSI: u8 = 0x5;
/// Designation descriptor byte 0: protocol iSCSI, CODE SET 1h (binary), as types 4h and 5h require (SPC-4
/// 7.8.6.7, 7.8.6.8).
const ISCSI_BINARY: u8 = (PROTOCOL_ISCSI << 4) | 0x01;
/// Designation descriptor byte 1: PIV=1 and ASSOCIATION 01b (the target port that received the command).
const PIV_TARGET_PORT: u8 = 0x80 | 0x10;
/// DESIGNATOR TYPE 4h, relative target port identifier (SPC-4 7.8.6.7).
const DESIGNATOR_RELATIVE_TARGET_PORT: u8 = 0x04;
/// DESIGNATOR TYPE 5h, target port group (SPC-4 7.8.6.8).
const DESIGNATOR_TARGET_PORT_GROUP: u8 = 0x05;
/// DESIGNATOR TYPE 8h, SCSI name string (SPC-4 7.8.6.11).
const DESIGNATOR_SCSI_NAME_STRING: u8 = 0x08;

/// ASCII field padded with spaces (SPC-4 4.4.1) and cut to `width`; non-printable characters become spaces.
fn ascii_field(text: &str, width: usize) -> Vec<u8> {
    let mut field: Vec<u8> = text
        .bytes()
        .map(|b| if (0x20..=0x7E).contains(&b) { b } else { b' ' })
        .take(width)
        .collect();
    field.resize(width, b' ');
    field
}

/// Standard INQUIRY data for a LUN that does not exist (SPC-4 6.6.2): peripheral qualifier 011b, device type 1Fh.
pub fn not_present_inquiry(allocation_length: u32) -> Vec<u8> {
    let mut data = vec![0u8; 36];
    data[0] = 0x7F;
    data[2] = 0x06;
    data[3] = 0x12;
    data[4] = 31;
    truncate(data, allocation_length)
}

impl LogicalUnit {
    pub(crate) fn inquiry(
        &self,
        nexus: &ItNexus,
        evpd: bool,
        page_code: u8,
        allocation_length: u32,
    ) -> Outcome {
        let data = if !evpd {
            self.standard_inquiry()
        } else {
            match page_code {
                0x00 => vpd_page(0x00, &VPD_PAGES),
                0x80 => vpd_page(
                    0x80,
                    &ascii_field(&self.config.serial, self.config.serial.len().max(1)),
                ),
                0x83 => vpd_page(0x83, &self.device_identification(nexus)),
                0x86 => self.extended_inquiry(),
                0x8F => vpd_page(0x8F, &self.third_party_copy_descriptors()),
                0xB0 => self.block_limits(),
                0xB1 => self.block_device_characteristics(),
                0xB2 => self.logical_block_provisioning(),
                _ => return Err(Sense::invalid_cdb_field(2, None)),
            }
        };
        Ok(Completed::Good(truncate(data, allocation_length)))
    }

    /// SPC-4 6.6.2 Table 142.
    fn standard_inquiry(&self) -> Vec<u8> {
        let mut data = vec![0u8; STANDARD_LENGTH];
        data[0] = 0x00; // qualifier 000b, direct access block device
        data[2] = 0x06; // SPC-4
        data[3] = 0x10 | 0x02; // HISUP, response data format 2
        data[4] = (STANDARD_LENGTH - 5) as u8;
        // TPGS 01b: implicit asymmetric access; 3PC: EXTENDED COPY is supported (SPC-4 6.6.2, 5.16).
        data[5] = 0x10 | 0x08;
        data[7] = 0x02; // CMDQUE
        data[8..16].copy_from_slice(&ascii_field(&self.config.vendor, 8));
        data[16..32].copy_from_slice(&ascii_field(&self.config.product, 16));
        data[32..36].copy_from_slice(&ascii_field(&self.config.revision, 4));
        for (index, descriptor) in VERSION_DESCRIPTORS.iter().enumerate() {
            data[58 + 2 * index..60 + 2 * index].copy_from_slice(&descriptor.to_be_bytes());
        }
        data
    }

    /// Device Identification VPD page designators (SPC-4 7.8.6): NAA (LU), relative target port and target port
    /// group (the target port the command arrived through, from the nexus), SCSI name strings of the target port
    /// and target device.
    fn device_identification(&self, nexus: &ItNexus) -> Vec<u8> {
        let mut out = Vec::new();
        // NAA, binary, association LU (00b), PIV 0 (SPC-4 7.8.6.6.5).
        designator(&mut out, 0x01, 0x03, &self.config.naa);
        let port = nexus.relative_target_port;
        designator(
            &mut out,
            ISCSI_BINARY,
            PIV_TARGET_PORT | DESIGNATOR_RELATIVE_TARGET_PORT,
            &two_reserved_then(port),
        );
        // A port the runtime did not describe has no group to name; naming one would send a multipath initiator
        // to the wrong group's state in REPORT TARGET PORT GROUPS.
        if let Some(group) = self.port_groups.group_of(port) {
            designator(
                &mut out,
                ISCSI_BINARY,
                PIV_TARGET_PORT | DESIGNATOR_TARGET_PORT_GROUP,
                &two_reserved_then(group),
            );
        }
        // SCSI name string (type 8, UTF-8; SPC-4 7.8.6.11): target port "<name>,t,0x<tpgt>" and target device
        // "<name>".
        let port_name = format!("{},t,0x{:04x}", nexus.target_name, port);
        designator(
            &mut out,
            (PROTOCOL_ISCSI << 4) | 0x03,
            PIV_TARGET_PORT | DESIGNATOR_SCSI_NAME_STRING,
            &name_string(&port_name),
        );
        designator(
            &mut out,
            (PROTOCOL_ISCSI << 4) | 0x03,
            0x80 | 0x20 | DESIGNATOR_SCSI_NAME_STRING,
            &name_string(&nexus.target_name),
        );
        out
    }

    /// Extended INQUIRY Data VPD page (SPC-4 7.8.7): HEADSUP, ORDSUP, SIMPSUP.
    fn extended_inquiry(&self) -> Vec<u8> {
        let mut body = vec![0u8; 60];
        body[1] = 0x07;
        vpd_page(0x86, &body)
    }

    /// Block Limits VPD page (SBC-4 6.6.4), page length 3Ch.
    fn block_limits(&self) -> Vec<u8> {
        let mut body = vec![0u8; 0x3C];
        // body index = page byte - 4.
        body[0] = 0x00; // WSNZ 0: WRITE SAME with 0 blocks means "to the end"
        body[1] = limits::MAX_COMPARE_AND_WRITE_BLOCKS; // exactly what COMPARE AND WRITE accepts
                                                        // OPTIMAL TRANSFER LENGTH GRANULARITY: one physical block, so writes that follow it never split one.
        let transfer_granularity = self.blocks_per_physical().min(u16::MAX as u64) as u16;
        body[2..4].copy_from_slice(&transfer_granularity.to_be_bytes());
        body[4..8].copy_from_slice(&(self.max_transfer_blocks() as u32).to_be_bytes());
        body[8..12].copy_from_slice(&(self.max_transfer_blocks() as u32).to_be_bytes());
        body[12..16].copy_from_slice(&(self.max_transfer_blocks() as u32).to_be_bytes()); // MAXIMUM PREFETCH LENGTH
        if self.thin_provisioned() {
            body[16..20].copy_from_slice(&(limits::MAX_UNMAP_BLOCKS as u32).to_be_bytes());
            body[20..24].copy_from_slice(&(limits::MAX_UNMAP_DESCRIPTORS as u32).to_be_bytes());
            body[24..28].copy_from_slice(&(self.unmap_granularity() as u32).to_be_bytes());
            // UGAVALID=1, alignment 0: LBA 0 starts a physical block (READ CAPACITY (16) LOWEST ALIGNED LBA 0).
            body[28] = 0x80;
        }
        body[32..40].copy_from_slice(&limits::MAX_WRITE_SAME_BLOCKS.to_be_bytes());
        // SBC-4 6.6.4, 4.29: the atomic write limits WRITE ATOMIC enforces. Boundaries are not supported, so
        // MAXIMUM ATOMIC TRANSFER LENGTH WITH ATOMIC BOUNDARY (page bytes 56..60) and MAXIMUM ATOMIC BOUNDARY SIZE
        // (60..64) stay 0.
        let atomic = self.atomic_limits();
        body[40..44].copy_from_slice(&atomic.max_blocks.to_be_bytes());
        body[44..48].copy_from_slice(&atomic.alignment.to_be_bytes());
        body[48..52].copy_from_slice(&atomic.granularity.to_be_bytes());
        vpd_page(0xB0, &body)
    }

    /// Block Device Characteristics VPD page (SBC-4 6.6.2): MEDIUM ROTATION RATE 1 = non-rotating; WABEREQ and
    /// WACEREQ 01b: after a SANITIZE BLOCK ERASE or CRYPTOGRAPHIC ERASE, reads complete with GOOD status (the
    /// erased blocks read as zeros, see `crate::sanitize`).
    fn block_device_characteristics(&self) -> Vec<u8> {
        let mut body = vec![0u8; 0x3C];
        body[0..2].copy_from_slice(&1u16.to_be_bytes());
        body[3] = 0x40 | 0x10; // page byte 7: WABEREQ 01b (bits 7..6), WACEREQ 01b (bits 5..4)
        vpd_page(0xB1, &body)
    }

    /// Logical Block Provisioning VPD page (SBC-4 6.6.6): only what the store can do. LBPRZ 001b only when
    /// deallocated blocks read as zeros; 000b (vendor specific) after a plain discard.
    fn logical_block_provisioning(&self) -> Vec<u8> {
        let mut body = vec![0u8; 4];
        if self.thin_provisioned() {
            body[1] = 0x80 | 0x40 | 0x20; // LBPU, LBPWS, LBPWS10 (ANC_SUP 0, DP 0)
            if self.unmapped_reads_zero() {
                body[1] |= 0x04; // LBPRZ 001b
            }
            body[2] = 0x02; // PROVISIONING TYPE: thin
        }
        vpd_page(0xB2, &body)
    }
}

fn vpd_page(page_code: u8, body: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(4 + body.len());
    data.extend_from_slice(&[0x00, page_code]);
    data.extend_from_slice(&(body.len() as u16).to_be_bytes());
    data.extend_from_slice(body);
    data
}

/// One designation descriptor (SPC-4 7.8.6.1 Table 459).
fn designator(
    out: &mut Vec<u8>,
    protocol_and_code_set: u8,
    piv_association_type: u8,
    value: &[u8],
) {
    out.extend_from_slice(&[
        protocol_and_code_set,
        piv_association_type,
        0,
        value.len() as u8,
    ]);
    out.extend_from_slice(value);
}

/// Two reserved bytes, then a 16-bit identifier: the DESIGNATOR of types 4h and 5h (SPC-4 Tables 607 and 609), and
/// the target port descriptor of REPORT TARGET PORT GROUPS (SPC-4 6.37 Table 309).
pub(crate) fn two_reserved_then(identifier: u16) -> [u8; 4] {
    let [high, low] = identifier.to_be_bytes();
    [0, 0, high, low]
}

/// SCSI name string: null-terminated, padded with nulls to a multiple of 4 bytes (SPC-4 7.8.6.11), at most 256.
fn name_string(name: &str) -> Vec<u8> {
    let mut bytes: Vec<u8> = name.bytes().take(251).collect();
    bytes.push(0);
    while !bytes.len().is_multiple_of(4) {
        bytes.push(0);
    }
    bytes
}
