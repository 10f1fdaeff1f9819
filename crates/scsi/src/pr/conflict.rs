//! Which commands a reservation lets through (SPC-4 5.13.1 Table 66 for SPC commands, SBC-4 4.17.1 Table 13 for
//! block commands; SPC-2 5.5.1 for SCSI-2 reservations).
//!
//! Every command lunlock implements falls into one of three classes, which reproduce the tables' columns:
//!
//! | class        | WE non-holder | EA non-holder | registrant (types 5-8) | non-registrant WE-RO/AR | EA-RO/AR |
//! |--------------|---------------|---------------|------------------------|-------------------------|----------|
//! | `Allowed`    | allowed       | allowed       | allowed                | allowed                 | allowed  |
//! | `Read`       | allowed       | conflict      | allowed                | allowed                 | conflict |
//! | `Write`      | conflict      | conflict      | allowed                | conflict                | conflict |
//!
//! The holder (every registrant, for types 7 and 8) is never in conflict. "Registrant" for types 1 and 3 counts as
//! non-holder: only types 5-8 grant registrants access.

use super::PrType;
use crate::cdb::Command;

/// A command's column in the conflict tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandClass {
    /// Never conflicts with a persistent reservation (INQUIRY, REPORT LUNS, TEST UNIT READY, READ CAPACITY, PR IN/OUT,
    /// PREVENT ALLOW MEDIUM REMOVAL with PREVENT 0, START STOP UNIT with START 1 ...).
    Allowed,
    /// Reads the medium or its state (READ, VERIFY, PRE-FETCH, GET LBA STATUS, READ DEFECT DATA, MODE SENSE).
    Read,
    /// Changes the medium or the LU's state (WRITE family, UNMAP, SYNCHRONIZE CACHE, MODE SELECT, ...).
    Write,
}

/// The relation of the nexus that sent a command to the persistent reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Holder,
    Registrant,
    NonRegistrant,
}

/// The class of `command` (SPC-4 Table 66, SBC-4 Table 13).
pub fn class(command: &Command) -> CommandClass {
    match command {
        Command::TestUnitReady
        | Command::RequestSense { .. }
        | Command::Inquiry { .. }
        | Command::ReportLuns { .. }
        | Command::ReportSupportedOpcodes { .. }
        | Command::ReportSupportedTmfs { .. }
        | Command::ReportTargetPortGroups { .. }
        | Command::ReadCapacity10
        | Command::ReadCapacity16 { .. }
        | Command::PersistentReserveIn(_)
        | Command::PersistentReserveOut(_)
        | Command::Reserve { .. }
        | Command::Release { .. }
        // SPC-4 5.13.1 Table 66 leaves EXTENDED COPY to the copy manager's policy: lunlock checks the reservations
        // of every LU the copy reads (as READ) and writes (as WRITE) for the requesting nexus (`crate::xcopy`).
        | Command::ExtendedCopy { .. } => CommandClass::Allowed,
        Command::PreventAllowMediumRemoval { prevent } => {
            if *prevent == 0 {
                CommandClass::Allowed
            } else {
                CommandClass::Write
            }
        }
        Command::StartStopUnit {
            start,
            power_condition,
            ..
        } => {
            if *start && *power_condition == 0 {
                CommandClass::Allowed
            } else {
                CommandClass::Write
            }
        }
        Command::Read { .. }
        | Command::Verify { .. }
        | Command::PreFetch { .. }
        | Command::GetLbaStatus { .. }
        | Command::ReadDefectData { .. }
        | Command::ModeSense { .. }
        // Reports the copy manager's state, like MODE SENSE reports the LU's.
        | Command::ReceiveCopyResults { .. } => CommandClass::Read,
        Command::Write { .. }
        | Command::WriteAndVerify { .. }
        | Command::OrWrite { .. }
        | Command::CompareAndWrite { .. }
        | Command::WriteAtomic { .. }
        | Command::WriteSame { .. }
        | Command::Unmap { .. }
        | Command::SynchronizeCache { .. }
        | Command::ModeSelect { .. }
        // SBC-4 Table 13: SANITIZE conflicts like a write.
        | Command::Sanitize { .. } => CommandClass::Write,
    }
}

/// True when a command of `class` from a nexus in `role` conflicts with a reservation of type `kind`.
pub fn conflicts(kind: PrType, role: Role, class: CommandClass) -> bool {
    if role == Role::Holder || class == CommandClass::Allowed {
        return false;
    }
    if role == Role::Registrant && kind.registrants_have_access() {
        return false;
    }
    match class {
        CommandClass::Read => kind.exclusive_access(),
        _ => true,
    }
}

/// True when `command` from a nexus other than the SCSI-2 reservation holder conflicts (SPC-2 5.5.1: only INQUIRY,
/// REQUEST SENSE, REPORT LUNS, RELEASE (a no-op) and PREVENT ALLOW MEDIUM REMOVAL with PREVENT 0 pass).
pub fn conflicts_with_scsi2(command: &Command) -> bool {
    !matches!(
        command,
        Command::Inquiry { .. }
            | Command::RequestSense { .. }
            | Command::ReportLuns { .. }
            | Command::Release { .. }
            | Command::PreventAllowMediumRemoval { prevent: 0 }
    )
}
