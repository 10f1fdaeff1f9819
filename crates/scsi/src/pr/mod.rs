//! Reservations: SCSI-3 persistent reservations (SPC-4 5.13, PERSISTENT RESERVE IN 6.13 and OUT 6.14) and SCSI-2
//! RESERVE / RELEASE (SPC-2 7.21, 7.13 with SPC-3 5.6.3), for one logical unit.
//!
//! Layout:
//! - [`state`]: the pure PR state machine (registrations, reservation, PRGENERATION, APTPL);
//! - [`wire`]: CDB and parameter-list decoding (TransportIDs) and PERSISTENT RESERVE IN encodings;
//! - [`conflict`]: which commands conflict with which reservation, per nexus role (SPC-4 5.13.1 Table 66 and SBC-4
//!   4.17 Table 13);
//! - [`codec`]: the versioned byte encoding of the APTPL state for [`PrPersistence`];
//! - [`unit`]: the per-LU runtime part: the lock, the lock-free "no reservation" fast path, persistence, unit
//!   attentions and abort requests.

pub mod codec;
pub mod conflict;
pub mod state;
#[cfg(test)]
mod tests;
pub mod unit;
pub mod wire;

pub use codec::{decode_pr_state, encode_pr_state, PrStateError};
pub use state::{Holder, PrState, Registration, Reservation, MAX_REGISTRATIONS};
pub use unit::PrPersistence;
pub use wire::{PrIn, PrOutCommand, TransportId};

/// PERSISTENT RESERVE IN service actions (SPC-4 6.13.1 Table 164).
pub mod service_action {
    pub const READ_KEYS: u8 = 0x00;
    pub const READ_RESERVATION: u8 = 0x01;
    pub const REPORT_CAPABILITIES: u8 = 0x02;
    pub const READ_FULL_STATUS: u8 = 0x03;
}

/// PERSISTENT RESERVE OUT service actions (SPC-4 6.14.1 Table 172).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceActionOut {
    Register,
    Reserve,
    Release,
    Clear,
    Preempt,
    PreemptAndAbort,
    RegisterAndIgnoreExistingKey,
    RegisterAndMove,
}

impl ServiceActionOut {
    pub fn from_code(code: u8) -> Option<ServiceActionOut> {
        Some(match code {
            0x00 => ServiceActionOut::Register,
            0x01 => ServiceActionOut::Reserve,
            0x02 => ServiceActionOut::Release,
            0x03 => ServiceActionOut::Clear,
            0x04 => ServiceActionOut::Preempt,
            0x05 => ServiceActionOut::PreemptAndAbort,
            0x06 => ServiceActionOut::RegisterAndIgnoreExistingKey,
            0x07 => ServiceActionOut::RegisterAndMove,
            _ => return None,
        })
    }

    pub fn code(self) -> u8 {
        match self {
            ServiceActionOut::Register => 0x00,
            ServiceActionOut::Reserve => 0x01,
            ServiceActionOut::Release => 0x02,
            ServiceActionOut::Clear => 0x03,
            ServiceActionOut::Preempt => 0x04,
            ServiceActionOut::PreemptAndAbort => 0x05,
            ServiceActionOut::RegisterAndIgnoreExistingKey => 0x06,
            ServiceActionOut::RegisterAndMove => 0x07,
        }
    }

    /// Service actions whose SCOPE and TYPE fields are used (SPC-4 6.14.2 Table 173).
    fn uses_type(self) -> bool {
        matches!(
            self,
            ServiceActionOut::Reserve
                | ServiceActionOut::Release
                | ServiceActionOut::Preempt
                | ServiceActionOut::PreemptAndAbort
        )
    }
}

/// Persistent reservation types (SPC-4 6.14.2 Table 174).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrType {
    WriteExclusive,
    ExclusiveAccess,
    WriteExclusiveRegistrantsOnly,
    ExclusiveAccessRegistrantsOnly,
    WriteExclusiveAllRegistrants,
    ExclusiveAccessAllRegistrants,
}

impl PrType {
    pub const ALL: [PrType; 6] = [
        PrType::WriteExclusive,
        PrType::ExclusiveAccess,
        PrType::WriteExclusiveRegistrantsOnly,
        PrType::ExclusiveAccessRegistrantsOnly,
        PrType::WriteExclusiveAllRegistrants,
        PrType::ExclusiveAccessAllRegistrants,
    ];

    pub fn from_code(code: u8) -> Option<PrType> {
        Some(match code {
            1 => PrType::WriteExclusive,
            3 => PrType::ExclusiveAccess,
            5 => PrType::WriteExclusiveRegistrantsOnly,
            6 => PrType::ExclusiveAccessRegistrantsOnly,
            7 => PrType::WriteExclusiveAllRegistrants,
            8 => PrType::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    pub fn code(self) -> u8 {
        match self {
            PrType::WriteExclusive => 1,
            PrType::ExclusiveAccess => 3,
            PrType::WriteExclusiveRegistrantsOnly => 5,
            PrType::ExclusiveAccessRegistrantsOnly => 6,
            PrType::WriteExclusiveAllRegistrants => 7,
            PrType::ExclusiveAccessAllRegistrants => 8,
        }
    }

    /// Types 7 and 8: every registrant is a reservation holder (SPC-4 5.13.10).
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// Exclusive Access types also keep non-holders from reading.
    pub fn exclusive_access(self) -> bool {
        matches!(
            self,
            PrType::ExclusiveAccess
                | PrType::ExclusiveAccessRegistrantsOnly
                | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// Types in which registrants who do not hold the reservation still have access (5..8).
    pub fn registrants_have_access(self) -> bool {
        !matches!(self, PrType::WriteExclusive | PrType::ExclusiveAccess)
    }
}
