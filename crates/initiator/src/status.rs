//! A failed SCSI command, decoded for people: status (SAM-5 5.3), sense key (SPC-4 4.5.6) and the additional
//! sense code text (SPC-4 annex D, through `lunlock_scsi::sense::describe`), printed as sg3_utils does:
//! "READ(16): Check Condition: Illegal request, Logical block address out of range".

use crate::{ScsiOutcome, SenseSummary};
use std::fmt;

/// A command that ended with a status other than GOOD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiFailure {
    /// The operation code of the command.
    pub opcode: u8,
    /// The command's name, from the registry ([`command_name`]).
    pub command: &'static str,
    pub status: u8,
    /// The decoded sense, when the target sent readable sense data.
    pub sense: Option<SenseSummary>,
    /// The raw sense data (empty when the target sent none).
    pub raw_sense: Vec<u8>,
}

impl ScsiFailure {
    pub fn from_outcome(cdb: &[u8], outcome: &ScsiOutcome) -> ScsiFailure {
        ScsiFailure {
            opcode: cdb.first().copied().unwrap_or(0),
            command: command_name(cdb),
            status: outcome.status,
            sense: outcome.sense_summary(),
            raw_sense: outcome.sense.clone(),
        }
    }

    /// True for CHECK CONDITION with UNIT ATTENTION, which a retry normally clears.
    pub fn is_unit_attention(&self) -> bool {
        self.status == STATUS_CHECK_CONDITION && self.sense.is_some_and(|s| s.key == 0x6)
    }
}

/// CHECK CONDITION (SAM-5 Table 32).
pub const STATUS_CHECK_CONDITION: u8 = 0x02;

/// Status names as sg3_utils prints them (SAM-5 Table 32).
pub fn status_name(status: u8) -> &'static str {
    match status {
        0x00 => "Good",
        0x02 => "Check Condition",
        0x04 => "Condition Met",
        0x08 => "Busy",
        0x18 => "Reservation Conflict",
        0x28 => "Task Set Full",
        0x30 => "ACA Active",
        0x40 => "Task Aborted",
        _ => "Unexpected status",
    }
}

/// Sense key names as sg3_utils prints them (SPC-4 Table 28).
pub fn sense_key_name(key: u8) -> &'static str {
    match key {
        0x0 => "No sense",
        0x1 => "Recovered error",
        0x2 => "Not ready",
        0x3 => "Medium error",
        0x4 => "Hardware error",
        0x5 => "Illegal request",
        0x6 => "Unit attention",
        0x7 => "Data protect",
        0x8 => "Blank check",
        0x9 => "Vendor specific",
        0xA => "Copy aborted",
        0xB => "Aborted command",
        0xD => "Volume overflow",
        0xE => "Miscompare",
        _ => "Reserved sense key",
    }
}

/// The additional sense text with only its first letter capitalised ("Logical block address out of range"), or
/// the codes in hex when the table does not know them.
pub fn additional_sense_text(asc: u8, ascq: u8) -> String {
    match lunlock_scsi::sense::describe(asc, ascq) {
        Some(text) => {
            let lower = text.to_lowercase();
            let mut chars = lower.chars();
            chars
                .next()
                .map(|c| c.to_uppercase().collect::<String>() + chars.as_str())
                .unwrap_or_default()
        }
        None => format!("ASC {asc:#04x} ASCQ {ascq:#04x}"),
    }
}

/// The name of the command a CDB asks for, from its opcode and service action in `lunlock_scsi`'s command
/// registry ("READ CAPACITY(16)"), or "SCSI command" for one lunlock does not know.
pub fn command_name(cdb: &[u8]) -> &'static str {
    lunlock_scsi::registry::name(cdb).unwrap_or("SCSI command")
}

impl fmt::Display for ScsiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.command, status_name(self.status))?;
        match self.sense {
            Some(sense) => write!(
                f,
                ": {}, {}",
                sense_key_name(sense.key),
                additional_sense_text(sense.asc, sense.ascq)
            ),
            None if self.status == STATUS_CHECK_CONDITION => write!(f, " (no sense data)"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lunlock_iscsi::message::Residual;

    fn outcome(status: u8, sense: Vec<u8>) -> ScsiOutcome {
        ScsiOutcome {
            status,
            sense,
            data_in: Vec::new(),
            residual: Residual::None,
        }
    }

    #[test]
    fn failures_read_like_sg3_utils() {
        let fixed = vec![
            0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0x00, 0, 0, 0, 0,
        ];
        let failure = ScsiFailure::from_outcome(&[0x88], &outcome(2, fixed));
        assert_eq!(
            failure.to_string(),
            "READ(16): Check Condition: Illegal request, Logical block address out of range"
        );
        assert!(!failure.is_unit_attention());
        let conflict = ScsiFailure::from_outcome(&[0x2A], &outcome(0x18, Vec::new()));
        assert_eq!(conflict.to_string(), "WRITE(10): Reservation Conflict");
        let unknown = ScsiFailure::from_outcome(
            &[0x28],
            &outcome(2, vec![0x72, 0x06, 0xEE, 0x01, 0, 0, 0, 0]),
        );
        assert_eq!(
            unknown.to_string(),
            "READ(10): Check Condition: Unit attention, ASC 0xee ASCQ 0x01"
        );
        assert!(unknown.is_unit_attention());
    }
}
