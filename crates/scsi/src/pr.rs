//! PERSISTENT RESERVE IN (SPC-4 6.13) for a logical unit that holds no registrations and no reservation.
//!
//! lunlock does not yet implement persistent reservations: PERSISTENT RESERVE OUT stays INVALID COMMAND OPERATION
//! CODE, so no initiator can ever register a key, and the truthful answers to READ KEYS and READ RESERVATION are the
//! empty ones (PRGENERATION 0, ADDITIONAL LENGTH 0). Initiators (and libiscsi's test harness, which reads the keys
//! after every suite to clear them) rely on these two service actions. The full PR state machine, with REGISTER,
//! RESERVE, PREEMPT and the REPORT CAPABILITIES / READ FULL STATUS service actions, comes with issue 3.

use crate::sense::Sense;

/// PERSISTENT RESERVE IN service actions (SPC-4 Table 164).
pub mod service_action {
    pub const READ_KEYS: u8 = 0x00;
    pub const READ_RESERVATION: u8 = 0x01;
}

/// PRGENERATION (SPC-4 6.13.2): incremented by every PERSISTENT RESERVE OUT that changes registrations. None has
/// ever succeeded here, so it is still the value a power-on sets.
const PR_GENERATION: u32 = 0;

/// A decoded PERSISTENT RESERVE IN command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrIn {
    ReadKeys { allocation_length: u32 },
    ReadReservation { allocation_length: u32 },
}

impl PrIn {
    /// Decode the 10-byte CDB (SPC-4 6.13.1 Table 163). A service action other than READ KEYS or READ RESERVATION
    /// is INVALID FIELD IN CDB pointing at the SERVICE ACTION field (byte 1, bits 4..0), as SPC-4 4.2.1 requires for
    /// an unsupported service action of a supported operation code.
    pub(crate) fn parse(cdb: &[u8]) -> Result<PrIn, Sense> {
        let allocation_length = u16::from_be_bytes([cdb[7], cdb[8]]) as u32;
        match cdb[1] & 0x1F {
            service_action::READ_KEYS => Ok(PrIn::ReadKeys { allocation_length }),
            service_action::READ_RESERVATION => Ok(PrIn::ReadReservation { allocation_length }),
            _ => Err(Sense::invalid_cdb_field(1, Some(4))),
        }
    }

    /// The parameter data, truncated to the allocation length (SPC-4 4.2.5.6: the device server stops at the
    /// allocation length and does not report an error; the ADDITIONAL LENGTH still counts everything).
    pub(crate) fn execute(self) -> Vec<u8> {
        // Both answers start with PRGENERATION and ADDITIONAL LENGTH (Tables 165, 167). With no registrations
        // READ KEYS lists no keys, and with no reservation READ RESERVATION has no reservation descriptor, so the
        // ADDITIONAL LENGTH is 0 for both.
        let allocation_length = match self {
            PrIn::ReadKeys { allocation_length } | PrIn::ReadReservation { allocation_length } => {
                allocation_length
            }
        };
        let mut data = Vec::with_capacity(8);
        data.extend_from_slice(&PR_GENERATION.to_be_bytes());
        data.extend_from_slice(&0u32.to_be_bytes());
        data.truncate(allocation_length as usize);
        data
    }
}
