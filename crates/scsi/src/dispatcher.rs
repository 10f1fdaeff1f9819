//! The target-wide part of command handling (SAM-5 4.6.20, SPC-4 6.33): routing a command to its logical unit,
//! REPORT LUNS for any LUN, and the answers for LUNs that do not exist (SPC-4 6.6.2 peripheral qualifier 011b,
//! otherwise LOGICAL UNIT NOT SUPPORTED 25/00).

use crate::cdb::op;
use crate::inquiry::not_present_inquiry;
use crate::lu::{truncate, Admission, LogicalUnit};
use crate::sense::{Condition, Sense};
use crate::{ItNexus, ResetKind, ScsiCommand, ScsiResponse, ScsiStatus, SideEffects};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Named limit on LUN numbers: single-level flat space addressing (SAM-5 4.7.7.3) reaches 16383.
pub const MAX_LUN: u64 = 0x3FFF;

pub struct Dispatcher {
    target_name: String,
    luns: BTreeMap<u64, Arc<LogicalUnit>>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("target_name", &self.target_name)
            .field("luns", &self.lun_ids())
            .finish()
    }
}

/// The 8-byte LUN field for `lun` (SAM-5 4.7.7): peripheral device addressing below 256, flat space above.
pub fn encode_lun(lun: u64) -> [u8; 8] {
    let mut field = [0u8; 8];
    if lun < 256 {
        field[1] = lun as u8;
    } else {
        field[0] = 0x40 | ((lun >> 8) as u8 & 0x3F);
        field[1] = lun as u8;
    }
    field
}

impl Dispatcher {
    /// LUN numbers above [`MAX_LUN`] cannot be addressed and are refused by panicking at configuration time.
    pub fn new(target_name: &str, luns: Vec<(u64, Arc<LogicalUnit>)>) -> Dispatcher {
        for (lun, _) in &luns {
            assert!(
                *lun <= MAX_LUN,
                "LUN {lun} is above the addressable maximum {MAX_LUN}"
            );
        }
        Dispatcher {
            target_name: target_name.to_string(),
            luns: luns.into_iter().collect(),
        }
    }

    pub fn target_name(&self) -> &str {
        &self.target_name
    }

    pub fn lun_ids(&self) -> Vec<u64> {
        self.luns.keys().copied().collect()
    }

    pub fn lun_exists(&self, lun: u64) -> bool {
        self.luns.contains_key(&lun)
    }

    pub fn logical_unit(&self, lun: u64) -> Option<&Arc<LogicalUnit>> {
        self.luns.get(&lun)
    }

    pub fn execute(&self, cmd: &ScsiCommand) -> ScsiResponse {
        let opcode = cmd.cdb.first().copied();
        if opcode == Some(op::REPORT_LUNS) {
            return self.report_luns(cmd);
        }
        // A LUN the nexus's ACL masks is, to it, a LUN that does not exist (SPC-4 6.6.2).
        match self.luns.get(&cmd.lun).filter(|_| cmd.access.sees(cmd.lun)) {
            Some(unit) if opcode == Some(op::EXTENDED_COPY) => self.extended_copy(unit, cmd),
            Some(unit) => unit.execute(cmd),
            None => self.missing_lun(cmd),
        }
    }

    /// EXTENDED COPY through the copy manager of `unit`, which may copy between the LUs of this target that the
    /// nexus may access (SPC-4 5.16; CVE-2020-28374): a descriptor naming a masked LU finds no such LU.
    fn extended_copy(&self, unit: &LogicalUnit, cmd: &ScsiCommand) -> ScsiResponse {
        match unit.admit(cmd) {
            Admission::Done(response) => response,
            Admission::Ready(admitted) => {
                let units: Vec<&LogicalUnit> = self
                    .luns
                    .iter()
                    .filter(|(lun, _)| cmd.access.sees(**lun))
                    .map(|(_, unit)| &**unit)
                    .collect();
                crate::xcopy::execute_blocking(unit, cmd, &admitted, &units)
            }
        }
    }

    /// REPORT LUNS (SPC-4 6.33). Not blocked by unit attentions (SAM-5 5.14); the LUN it is sent to need not exist.
    fn report_luns(&self, cmd: &ScsiCommand) -> ScsiResponse {
        let fail = |sense: Sense| ScsiResponse {
            status: ScsiStatus::CheckCondition,
            sense: sense.to_fixed(),
            data_in: Vec::new(),
            data_out_wanted: None,
            effects: SideEffects::NONE,
        };
        if cmd.cdb.len() < 12 {
            return fail(Sense::new(Condition::InvalidCommandOperationCode));
        }
        let control = cmd.cdb[11];
        if control & 0x05 != 0 {
            return fail(Sense::invalid_cdb_field(
                11,
                Some(if control & 0x04 != 0 { 2 } else { 0 }),
            ));
        }
        let allocation_length =
            u32::from_be_bytes([cmd.cdb[6], cmd.cdb[7], cmd.cdb[8], cmd.cdb[9]]);
        // SPC-4 6.33: an allocation length below 16 is INVALID FIELD IN CDB.
        if allocation_length < 16 {
            return fail(Sense::invalid_cdb_field(6, None));
        }
        let luns: Vec<u64> = match cmd.cdb[2] {
            0x00 | 0x02 => self
                .lun_ids()
                .into_iter()
                .filter(|lun| cmd.access.sees(*lun))
                .collect(),
            0x01 => Vec::new(), // well-known LUNs: lunlock has none
            _ => return fail(Sense::invalid_cdb_field(2, None)),
        };
        let mut data = Vec::with_capacity(8 + 8 * luns.len());
        data.extend_from_slice(&((luns.len() * 8) as u32).to_be_bytes());
        data.extend_from_slice(&[0; 4]);
        for lun in luns {
            data.extend_from_slice(&encode_lun(lun));
        }
        ScsiResponse {
            status: ScsiStatus::Good,
            sense: Vec::new(),
            data_in: truncate(data, allocation_length),
            data_out_wanted: None,
            effects: SideEffects::NONE,
        }
    }

    /// A command to a LUN that is not configured (SPC-4 6.6.2, 6.29, SAM-5 5.9.5).
    fn missing_lun(&self, cmd: &ScsiCommand) -> ScsiResponse {
        let good = |data_in: Vec<u8>| ScsiResponse {
            status: ScsiStatus::Good,
            sense: Vec::new(),
            data_in,
            data_out_wanted: None,
            effects: SideEffects::NONE,
        };
        match cmd.cdb.first().copied() {
            Some(op::INQUIRY) if cmd.cdb.len() >= 6 => {
                let allocation_length = u16::from_be_bytes([cmd.cdb[3], cmd.cdb[4]]) as u32;
                if cmd.cdb[1] & 0x01 != 0 {
                    // EVPD to a missing LUN: a page header with qualifier 011b and no body.
                    return good(truncate(vec![0x7F, cmd.cdb[2], 0, 0], allocation_length));
                }
                good(not_present_inquiry(allocation_length))
            }
            // REQUEST SENSE reports why the LUN cannot be used, with GOOD status (SPC-4 6.29.2).
            Some(op::REQUEST_SENSE) if cmd.cdb.len() >= 6 => {
                let sense = Sense::new(Condition::LogicalUnitNotSupported);
                let data = if cmd.cdb[1] & 0x01 != 0 {
                    sense.to_descriptor()
                } else {
                    sense.to_fixed()
                };
                good(truncate(data, cmd.cdb[4] as u32))
            }
            _ => ScsiResponse {
                status: ScsiStatus::CheckCondition,
                sense: Sense::new(Condition::LogicalUnitNotSupported).to_fixed(),
                data_in: Vec::new(),
                data_out_wanted: None,
                effects: SideEffects::NONE,
            },
        }
    }

    /// Task management (SAM-5 7): LOGICAL UNIT RESET reaches one LU; target resets reach all; nexus loss reaches
    /// the given LU or, with `lun: None`, every LU.
    pub fn task_management(&self, nexus: &Arc<ItNexus>, lun: Option<u64>, kind: ResetKind) {
        match (kind, lun) {
            (ResetKind::LogicalUnitReset, Some(lun)) | (ResetKind::NexusLoss, Some(lun)) => {
                if let Some(unit) = self.luns.get(&lun) {
                    unit.reset(nexus, kind);
                }
            }
            // A LUN reset without a LUN cannot name its target; nothing to do.
            (ResetKind::LogicalUnitReset, None) => {}
            (ResetKind::NexusLoss, None)
            | (ResetKind::TargetWarmReset, _)
            | (ResetKind::TargetColdReset, _) => {
                for unit in self.luns.values() {
                    unit.reset(nexus, kind);
                }
            }
        }
    }
}
