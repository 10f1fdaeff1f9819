//! REPORT SUPPORTED OPERATION CODES (SPC-4 6.35) and REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 6.36).
//!
//! [`SUPPORTED`] is the one list of commands lunlock executes, each with its CDB usage data: a bit is set where
//! the decoder in [`crate::cdb`] reads the CDB (byte 0 is the opcode; for service-action commands byte 1 holds the
//! service action). A unit test checks that every listed command parses and that every unlisted opcode is refused.

use crate::cdb::op;
use crate::lu::truncate;
use crate::sense::Sense;

/// One supported command: opcode, service action (when the opcode has service actions), CDB usage data.
pub(crate) struct Supported {
    pub opcode: u8,
    pub service_action: Option<u16>,
    pub usage: &'static [u8],
}

const fn cmd(opcode: u8, usage: &'static [u8]) -> Supported {
    Supported {
        opcode,
        service_action: None,
        usage,
    }
}
const fn sa(opcode: u8, service_action: u16, usage: &'static [u8]) -> Supported {
    Supported {
        opcode,
        service_action: Some(service_action),
        usage,
    }
}

const PR_READ_KEYS: u16 = crate::pr::service_action::READ_KEYS as u16;
const PR_READ_RESERVATION: u16 = crate::pr::service_action::READ_RESERVATION as u16;
const PR_REPORT_CAPABILITIES: u16 = crate::pr::service_action::REPORT_CAPABILITIES as u16;
const PR_READ_FULL_STATUS: u16 = crate::pr::service_action::READ_FULL_STATUS as u16;

/// PERSISTENT RESERVE IN usage data: service action, allocation length.
const fn prin(service_action: u16) -> Supported {
    sa(
        op::PERSISTENT_RESERVE_IN,
        service_action,
        match service_action {
            0 => &[op::PERSISTENT_RESERVE_IN, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, C],
            1 => &[op::PERSISTENT_RESERVE_IN, 1, 0, 0, 0, 0, 0, 0xFF, 0xFF, C],
            2 => &[op::PERSISTENT_RESERVE_IN, 2, 0, 0, 0, 0, 0, 0xFF, 0xFF, C],
            _ => &[op::PERSISTENT_RESERVE_IN, 3, 0, 0, 0, 0, 0, 0xFF, 0xFF, C],
        },
    )
}

/// PERSISTENT RESERVE OUT usage data: service action, scope/type, parameter list length.
const fn prout(service_action: u16) -> Supported {
    const fn usage(sa: u8) -> [u8; 10] {
        [
            op::PERSISTENT_RESERVE_OUT,
            sa,
            0xFF,
            0,
            0,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            C,
        ]
    }
    const U: [[u8; 10]; 8] = [
        usage(0),
        usage(1),
        usage(2),
        usage(3),
        usage(4),
        usage(5),
        usage(6),
        usage(7),
    ];
    sa(
        op::PERSISTENT_RESERVE_OUT,
        service_action,
        &U[service_action as usize],
    )
}

const SANITIZE_OVERWRITE: u16 = 0x01;
const SANITIZE_BLOCK_ERASE: u16 = 0x02;
const SANITIZE_CRYPTOGRAPHIC_ERASE: u16 = 0x03;
const SANITIZE_EXIT_FAILURE_MODE: u16 = 0x1F;

/// SANITIZE usage data (SBC-4 5.30.1): IMMED, AUSE, service action, parameter list length.
const fn sanitize(service_action: u16) -> Supported {
    const fn usage(sa: u8) -> [u8; 10] {
        [op::SANITIZE, 0x80 | 0x20 | sa, 0, 0, 0, 0, 0, 0xFF, 0xFF, C]
    }
    const U: [[u8; 10]; 4] = [usage(0x01), usage(0x02), usage(0x03), usage(0x1F)];
    let index = match service_action {
        SANITIZE_OVERWRITE => 0,
        SANITIZE_BLOCK_ERASE => 1,
        SANITIZE_CRYPTOGRAPHIC_ERASE => 2,
        _ => 3,
    };
    sa(op::SANITIZE, service_action, &U[index])
}

/// Control byte usage: NACA (bit 2) and LINK (bit 0) are examined (and refused when set).
const C: u8 = 0x05;

pub(crate) const SUPPORTED: &[Supported] = &[
    cmd(op::TEST_UNIT_READY, &[op::TEST_UNIT_READY, 0, 0, 0, 0, C]),
    cmd(op::REQUEST_SENSE, &[op::REQUEST_SENSE, 0x01, 0, 0, 0xFF, C]),
    cmd(op::READ_6, &[op::READ_6, 0x1F, 0xFF, 0xFF, 0xFF, C]),
    cmd(op::WRITE_6, &[op::WRITE_6, 0x1F, 0xFF, 0xFF, 0xFF, C]),
    cmd(op::INQUIRY, &[op::INQUIRY, 0x03, 0xFF, 0xFF, 0xFF, C]),
    cmd(op::MODE_SELECT_6, &[op::MODE_SELECT_6, 0x11, 0, 0, 0xFF, C]),
    cmd(
        op::MODE_SENSE_6,
        &[op::MODE_SENSE_6, 0x08, 0xFF, 0xFF, 0xFF, C],
    ),
    cmd(
        op::START_STOP_UNIT,
        &[op::START_STOP_UNIT, 0x01, 0, 0, 0xF7, C],
    ),
    cmd(
        op::PREVENT_ALLOW_MEDIUM_REMOVAL,
        &[op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 0x03, C],
    ),
    cmd(
        op::READ_CAPACITY_10,
        &[op::READ_CAPACITY_10, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, C],
    ),
    cmd(
        op::READ_10,
        &[op::READ_10, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, C],
    ),
    cmd(
        op::WRITE_10,
        &[op::WRITE_10, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, C],
    ),
    cmd(
        op::WRITE_AND_VERIFY_10,
        &[
            op::WRITE_AND_VERIFY_10,
            0xF6,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            0xFF,
            0xFF,
            C,
        ],
    ),
    cmd(
        op::VERIFY_10,
        &[
            op::VERIFY_10,
            0xF6,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            0xFF,
            0xFF,
            C,
        ],
    ),
    cmd(
        op::PRE_FETCH_10,
        &[
            op::PRE_FETCH_10,
            0x02,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            0xFF,
            0xFF,
            C,
        ],
    ),
    cmd(
        op::SYNCHRONIZE_CACHE_10,
        &[
            op::SYNCHRONIZE_CACHE_10,
            0x02,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            0xFF,
            0xFF,
            C,
        ],
    ),
    cmd(
        op::READ_DEFECT_DATA_10,
        &[op::READ_DEFECT_DATA_10, 0, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, C],
    ),
    cmd(
        op::WRITE_SAME_10,
        &[
            op::WRITE_SAME_10,
            0xF8,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            0xFF,
            0xFF,
            C,
        ],
    ),
    cmd(op::UNMAP, &[op::UNMAP, 0x01, 0, 0, 0, 0, 0, 0xFF, 0xFF, C]),
    sanitize(SANITIZE_OVERWRITE),
    sanitize(SANITIZE_BLOCK_ERASE),
    sanitize(SANITIZE_CRYPTOGRAPHIC_ERASE),
    sanitize(SANITIZE_EXIT_FAILURE_MODE),
    cmd(
        op::MODE_SELECT_10,
        &[op::MODE_SELECT_10, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, C],
    ),
    cmd(
        op::MODE_SENSE_10,
        &[op::MODE_SENSE_10, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, C],
    ),
    prin(PR_READ_KEYS),
    prin(PR_READ_RESERVATION),
    prin(PR_REPORT_CAPABILITIES),
    prin(PR_READ_FULL_STATUS),
    prout(0),
    prout(1),
    prout(2),
    prout(3),
    prout(4),
    prout(5),
    prout(6),
    prout(7),
    cmd(op::RESERVE_6, &[op::RESERVE_6, 0, 0, 0, 0, C]),
    cmd(op::RELEASE_6, &[op::RELEASE_6, 0, 0, 0, 0, C]),
    cmd(op::RESERVE_10, &[op::RESERVE_10, 0, 0, 0, 0, 0, 0, 0, 0, C]),
    cmd(op::RELEASE_10, &[op::RELEASE_10, 0, 0, 0, 0, 0, 0, 0, 0, C]),
    cmd(
        op::READ_16,
        &[
            op::READ_16,
            0xF8,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            C,
        ],
    ),
    cmd(
        op::WRITE_16,
        &[
            op::WRITE_16,
            0xF8,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            C,
        ],
    ),
    cmd(
        op::COMPARE_AND_WRITE,
        &[
            op::COMPARE_AND_WRITE,
            0xF8,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            0,
            0,
            0xFF,
            0,
            C,
        ],
    ),
    cmd(
        op::ORWRITE_16,
        &[
            op::ORWRITE_16,
            0xF8,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            C,
        ],
    ),
    cmd(
        op::WRITE_AND_VERIFY_16,
        &[
            op::WRITE_AND_VERIFY_16,
            0xF6,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            C,
        ],
    ),
    cmd(
        op::VERIFY_16,
        &[
            op::VERIFY_16,
            0xF6,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            C,
        ],
    ),
    cmd(
        op::PRE_FETCH_16,
        &[
            op::PRE_FETCH_16,
            0x02,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            C,
        ],
    ),
    cmd(
        op::SYNCHRONIZE_CACHE_16,
        &[
            op::SYNCHRONIZE_CACHE_16,
            0x02,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            C,
        ],
    ),
    cmd(
        op::WRITE_SAME_16,
        &[
            op::WRITE_SAME_16,
            0xF9,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            C,
        ],
    ),
    sa(
        op::SERVICE_ACTION_IN_16,
        op::SA_READ_CAPACITY_16,
        &[
            op::SERVICE_ACTION_IN_16,
            0x10,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            C,
        ],
    ),
    sa(
        op::SERVICE_ACTION_IN_16,
        op::SA_GET_LBA_STATUS,
        &[
            op::SERVICE_ACTION_IN_16,
            0x12,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            C,
        ],
    ),
    cmd(
        op::REPORT_LUNS,
        &[
            op::REPORT_LUNS,
            0,
            0xFF,
            0,
            0,
            0,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            C,
        ],
    ),
    sa(
        op::MAINTENANCE_IN,
        op::SA_REPORT_SUPPORTED_OPCODES,
        &[
            op::MAINTENANCE_IN,
            0x0C,
            0x87,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            C,
        ],
    ),
    sa(
        op::MAINTENANCE_IN,
        op::SA_REPORT_SUPPORTED_TMFS,
        &[
            op::MAINTENANCE_IN,
            0x0D,
            0x80,
            0,
            0,
            0,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            C,
        ],
    ),
    cmd(
        op::READ_12,
        &[
            op::READ_12,
            0xF8,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            C,
        ],
    ),
    cmd(
        op::WRITE_12,
        &[
            op::WRITE_12,
            0xF8,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            C,
        ],
    ),
    cmd(
        op::WRITE_AND_VERIFY_12,
        &[
            op::WRITE_AND_VERIFY_12,
            0xF6,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            C,
        ],
    ),
    cmd(
        op::VERIFY_12,
        &[
            op::VERIFY_12,
            0xF6,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            C,
        ],
    ),
    cmd(
        op::READ_DEFECT_DATA_12,
        &[
            op::READ_DEFECT_DATA_12,
            0x1F,
            0,
            0,
            0,
            0,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            C,
        ],
    ),
];

/// Command timeouts descriptor (SPC-4 6.35.4): nominal and recommended timeouts in seconds.
const NOMINAL_TIMEOUT_SECONDS: u32 = 1;
const RECOMMENDED_TIMEOUT_SECONDS: u32 = 30;

fn timeouts() -> [u8; 12] {
    let mut descriptor = [0u8; 12];
    descriptor[0..2].copy_from_slice(&0x0Au16.to_be_bytes());
    descriptor[4..8].copy_from_slice(&NOMINAL_TIMEOUT_SECONDS.to_be_bytes());
    descriptor[8..12].copy_from_slice(&RECOMMENDED_TIMEOUT_SECONDS.to_be_bytes());
    descriptor
}

fn has_service_actions(opcode: u8) -> bool {
    SUPPORTED
        .iter()
        .any(|s| s.opcode == opcode && s.service_action.is_some())
}

/// REPORT SUPPORTED OPERATION CODES with REPORTING OPTIONS 000b..011b (SPC-4 6.35.1 Table 251).
pub(crate) fn report(
    rctd: bool,
    options: u8,
    opcode: u8,
    service_action: u16,
    allocation_length: u32,
) -> Result<Vec<u8>, Sense> {
    let data = match options {
        0 => {
            let mut data = vec![0u8; 4];
            for command in SUPPORTED {
                data.push(command.opcode);
                data.push(0);
                data.extend_from_slice(&command.service_action.unwrap_or(0).to_be_bytes());
                data.push(0);
                data.push((rctd as u8) << 1 | command.service_action.is_some() as u8);
                data.extend_from_slice(&(command.usage.len() as u16).to_be_bytes());
                if rctd {
                    data.extend_from_slice(&timeouts());
                }
            }
            let length = (data.len() - 4) as u32;
            data[0..4].copy_from_slice(&length.to_be_bytes());
            data
        }
        _ => {
            // 001b: opcode without service action; 010b: with; 011b: either (SPC-4 6.35.1).
            let with_sa = has_service_actions(opcode);
            match (options, with_sa) {
                (1, true) => return Err(Sense::invalid_cdb_field(3, None)),
                (2, false) => return Err(Sense::invalid_cdb_field(3, None)),
                _ => {}
            }
            let found = SUPPORTED.iter().find(|s| {
                s.opcode == opcode && (!with_sa || s.service_action == Some(service_action))
            });
            one_command(rctd, found)
        }
    };
    Ok(truncate(data, allocation_length))
}

/// One-command parameter data (SPC-4 6.35.3): SUPPORT 011b with usage data, or 001b "not supported".
fn one_command(rctd: bool, found: Option<&Supported>) -> Vec<u8> {
    let mut data = vec![0u8; 4];
    match found {
        Some(command) => {
            data[1] = (rctd as u8) << 7 | 0x03;
            data[2..4].copy_from_slice(&(command.usage.len() as u16).to_be_bytes());
            data.extend_from_slice(command.usage);
            if rctd {
                data.extend_from_slice(&timeouts());
            }
        }
        None => data[1] = 0x01,
    }
    data
}

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 6.36): ABORT TASK, ABORT TASK SET, CLEAR TASK SET,
/// LOGICAL UNIT RESET, TARGET RESET (iSCSI target warm/cold reset), I_T NEXUS RESET, QUERY TASK.
pub(crate) fn report_tmfs(repd: bool, allocation_length: u32) -> Vec<u8> {
    let mut data = vec![0u8; if repd { 16 } else { 4 }];
    data[0] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02; // ATS, ATSS, CACAS, LURS, TRS
    data[1] = 0x01; // ITNRS
    if repd {
        data[3] = 0x0C; // additional data length
    }
    truncate(data, allocation_length)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdb::{cdb_length, Command};

    #[test]
    fn every_listed_command_parses_and_usage_length_matches() {
        for command in SUPPORTED {
            let length = cdb_length(command.opcode).unwrap();
            assert_eq!(command.usage.len(), length, "opcode {:02x}", command.opcode);
            assert_eq!(command.usage[0], command.opcode);
            let mut cdb = vec![0u8; length];
            cdb[0] = command.opcode;
            if let Some(sa) = command.service_action {
                cdb[1] = sa as u8;
                assert_eq!(command.usage[1] & 0x1F, sa as u8);
            }
            if command.opcode == op::PERSISTENT_RESERVE_OUT {
                cdb[2] = 1; // a valid TYPE for the service actions that use it
            }
            // MODE SENSE page 0 is not a page, but the CDB itself decodes.
            assert!(
                Command::parse(&cdb).is_ok(),
                "opcode {:02x} does not parse",
                command.opcode
            );
        }
    }

    #[test]
    fn every_unlisted_opcode_is_refused() {
        for opcode in 0..=255u8 {
            let Some(length) = cdb_length(opcode) else {
                continue;
            };
            if SUPPORTED.iter().any(|s| s.opcode == opcode) {
                continue;
            }
            let mut cdb = vec![0u8; length];
            cdb[0] = opcode;
            assert!(
                Command::parse(&cdb).is_err(),
                "opcode {opcode:02x} parses but is not reported"
            );
        }
    }

    #[test]
    fn reporting_options_table() {
        // (options, opcode, sa, ok)
        let cases = [
            (1, op::READ_10, 0, true),
            (2, op::READ_10, 0, false),
            (1, op::SERVICE_ACTION_IN_16, 0x10, false),
            (2, op::SERVICE_ACTION_IN_16, 0x10, true),
            (3, op::SERVICE_ACTION_IN_16, 0x10, true),
            (3, op::READ_10, 0, true),
        ];
        for (options, opcode, sa, ok) in cases {
            let result = report(false, options, opcode, sa, 65535);
            assert_eq!(result.is_ok(), ok, "options {options} opcode {opcode:02x}");
            if let Ok(data) = result {
                assert_eq!(data[1] & 0x07, 0x03);
                assert_eq!(data[4], opcode);
            }
        }
        let all = report(true, 0, 0, 0, 65535).unwrap();
        assert_eq!(all.len(), 4 + SUPPORTED.len() * 20);
        assert_eq!(all[4 + 5] & 0x02, 0x02, "CTDP set with RCTD");
        assert_eq!(&all[12..14], &[0x00, 0x0A]);
    }
}
