//! REPORT SUPPORTED OPERATION CODES (SPC-4 6.35) and REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 6.36).
//!
//! The commands and their CDB usage data are the rows of [`crate::registry`], in its order; this module only
//! formats them. A unit test checks that every listed command parses and that every unlisted opcode is refused.

use crate::lu::truncate;
use crate::registry::{self, Row, TABLE};
use crate::sense::Sense;

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
            for command in TABLE {
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
            let with_sa = registry::has_service_actions(opcode);
            match (options, with_sa) {
                (1, true) => return Err(Sense::invalid_cdb_field(3, None)),
                (2, false) => return Err(Sense::invalid_cdb_field(3, None)),
                _ => {}
            }
            let found = registry::rows_of(opcode)
                .find(|row| !with_sa || row.service_action == Some(service_action));
            one_command(rctd, found)
        }
    };
    Ok(truncate(data, allocation_length))
}

/// One-command parameter data (SPC-4 6.35.3): SUPPORT 011b with usage data, or 001b "not supported".
fn one_command(rctd: bool, found: Option<&Row>) -> Vec<u8> {
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
    use crate::cdb::{cdb_length, op, Command};

    #[test]
    fn every_listed_command_parses_and_usage_length_matches() {
        for command in TABLE {
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
            if TABLE.iter().any(|s| s.opcode == opcode) {
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
        assert_eq!(all.len(), 4 + TABLE.len() * 20);
        assert_eq!(all[4 + 5] & 0x02, 0x02, "CTDP set with RCTD");
        assert_eq!(&all[12..14], &[0x00, 0x0A]);
    }
}
